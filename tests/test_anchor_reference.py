"""`anchor.reference` from a checkpoint folder: loaded, frozen, sharing the policy's VLM where the weights
agree, equal to the naive anchor; clear errors for a missing folder or another architecture."""

from __future__ import annotations

import logging

import pytest
import torch
from test_crab_smolvla_wrapper import (
    OFF,
    OPEN,
    PICK,
    build,
    metrics_and_grads_per_anchor_mode,
    noise_time,
    raw_batch,
    take_steps,
)

from crab.training.config import AnchorConfig, ConfigError, PolicyConfig, RewardWeightingConfig
from crab.training.crab_smolvla_wrapper import CrabSmolVLA, load_reference, policy_config, pretrained_stats


@pytest.fixture(scope="module")
def trained_checkpoint(tmp_path_factory):
    """A Crab-style checkpoint folder (step_XXXXXX/pretrained_model) of a policy trained a few steps away
    from its seed-0 start, with its processors."""
    policy, pre, post = build()
    take_steps(CrabSmolVLA(policy, OFF, AnchorConfig(enabled=True)), pre(raw_batch()), steps=3)
    step = tmp_path_factory.mktemp("run") / "step_000003"
    for saver in (policy, pre, post):
        saver.save_pretrained(step / "pretrained_model")
    return step, policy


def test_reference_from_a_checkpoint_is_frozen_shares_the_vlm_and_equals_the_naive_anchor(trained_checkpoint):
    step, trained = trained_checkpoint
    policy, pre, _ = build()  # the starting policy of a fine-tuning: same frozen VLM as the checkpoint's
    crab = CrabSmolVLA(policy, RewardWeightingConfig(enabled=True), AnchorConfig(enabled=True, reference=str(step)))
    ref = crab.reference
    assert crab.anchor_mode == "shared_prefix"
    assert not ref.training and not any(p.requires_grad for p in ref.parameters())
    saved = trained.state_dict()
    for name, value in ref.state_dict().items():
        assert torch.equal(value, saved[name]), name
    for p, q in zip(policy.parameters(), ref.parameters(), strict=True):
        assert (p is q) == (not p.requires_grad)  # frozen: the policy's tensors; trained: the checkpoint's
    assert any(not torch.equal(p, q) for p, q in zip(policy.parameters(), ref.parameters(), strict=True))

    batch = pre(raw_batch(batch_size=6, tasks=[PICK, OPEN, "Carry it over there, slowly."] * 2))
    (shared, shared_grads), (naive, naive_grads) = metrics_and_grads_per_anchor_mode(crab, batch)
    noise, time = noise_time(6, seed=5)
    assert naive["loss_anchor"].item() > 1e-3  # the reference is not the starting policy
    for key in ("loss_anchor", "loss"):
        torch.testing.assert_close(shared[key], naive[key], rtol=1e-5, atol=1e-7)
    for a, b in zip(shared_grads, naive_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)

    # The pretrained_model folder itself works too, and the policy (the same weights) then has no anchor loss.
    same = CrabSmolVLA(trained, OFF, AnchorConfig(enabled=True, reference=str(step / "pretrained_model")))
    _, metrics = same(batch, 0.3, noise, time)
    assert metrics["loss_anchor"].item() == 0.0


def test_reference_with_other_frozen_weights_keeps_its_own_and_the_anchor_goes_naive(trained_checkpoint, caplog):
    step, trained = trained_checkpoint
    other, _, _ = build(seed=1)  # another random VLM
    vlm_before = [p.clone() for p in other.model.vlm_with_expert.vlm.parameters()]
    with caplog.at_level(logging.WARNING):
        crab = CrabSmolVLA(other, OFF, AnchorConfig(enabled=True, reference=str(step)))
    assert crab.anchor_mode == "naive" and "not exact" in caplog.text
    ours, theirs = other.model.vlm_with_expert.vlm.parameters(), crab.reference.model.vlm_with_expert.vlm.parameters()
    shared = []
    for p, q, before in zip(ours, theirs, vlm_before, strict=True):
        assert torch.equal(p, before)  # the policy's own frozen weights are untouched
        assert (p is q) == torch.equal(p, q)  # shared where the values agree (e.g. zero biases), else not
        shared.append(p is q)
    assert not all(shared)
    for name, value in crab.reference.state_dict().items():
        assert torch.equal(value, trained.state_dict()[name]), name


def test_reference_errors_name_the_folder(trained_checkpoint, tmp_path):
    step, _ = trained_checkpoint
    policy, _, _ = build()
    with pytest.raises(ConfigError, match="no policy at .*missing_run"):
        load_reference(policy, tmp_path / "missing_run")
    wider, _, _ = build(expert_width_multiplier=0.5)
    with pytest.raises(ConfigError, match=r"architecture differs.*expert_width_multiplier"):
        load_reference(wider, step)
    longer, _, _ = build(chunk_size=12, n_action_steps=10)
    with pytest.raises(ConfigError, match=r"architecture differs.*chunk_size"):
        load_reference(longer, step)


def test_starting_from_a_checkpoint_with_its_normalisation(trained_checkpoint):
    step, trained = trained_checkpoint
    cfg = policy_config(PolicyConfig(str(step), {"device": "cpu"}))  # a step folder names its pretrained_model
    assert cfg.chunk_size == trained.config.chunk_size
    stats = pretrained_stats(step)
    assert set(stats) >= {"action", "observation.state"} and {"mean", "std"} <= set(stats["action"])
    with pytest.raises(ConfigError, match="normalizer"):
        pretrained_stats(step.parent)


def test_a_config_saved_before_the_new_keys_existed_counts_them_as_defaults():
    from crab.training.config import CrabConfig, DataConfig, to_dict, training_settings

    current = to_dict(CrabConfig("run", DataConfig("m.csv")))
    old = {**current, "anchor": {k: v for k, v in current["anchor"].items() if k != "reference"},
           "policy": {k: v for k, v in current["policy"].items() if k != "normalization"}}  # fmt: skip
    assert training_settings(old) == training_settings(current)
    changed = {**current, "anchor": {**current["anchor"], "reference": "outputs/base/step_000100"}}
    assert training_settings(changed) != training_settings(current)
