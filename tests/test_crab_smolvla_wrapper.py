"""Masked flow loss, RWFM weighting and the anchor on the real (tiny, offline) lerobot SmolVLA."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from crab.training.conditioning import labelled_tasks
from crab.training.config import AnchorConfig, PolicyConfig, ReplayConfig, RewardWeightingConfig
from crab.training.crab_smolvla_wrapper import (
    CrabSmolVLA,
    FlowPolicy,
    make_policy,
    make_reference,
    module_bytes,
    policy_config,
    reference_extra_bytes,
)
from crab.training.flow_loss import masked_per_sample_loss, sample_flow_time
from crab.training.rewards import advantage, rwfm_weights
from crab.training.smolvla_internals import flow_velocity

STATE_DIM, ACTION_DIM, CHUNK, MAX_ACTION_DIM = 6, 4, 10, 8
PICK, OPEN = "Pick the egg.", "Open the carton."
FEATURES = {
    "observation.images.top": {"dtype": "video", "shape": (32, 32, 3), "names": ["height", "width", "channels"]},
    "observation.state": {"dtype": "float32", "shape": (STATE_DIM,), "names": None},
    "action": {"dtype": "float32", "shape": (ACTION_DIM,), "names": None},
    "timestamp": {"dtype": "float32", "shape": (1,), "names": None},
}
STATS = {
    "observation.state": {"mean": np.zeros(STATE_DIM), "std": np.ones(STATE_DIM)},
    "action": {"mean": np.zeros(ACTION_DIM), "std": np.ones(ACTION_DIM)},
}
OFF = RewardWeightingConfig(enabled=False)
NO_ANCHOR = AnchorConfig(enabled=False)


def build(seed: int = 0, **overrides):
    torch.manual_seed(seed)
    policy_cfg = PolicyConfig("tiny", {"device": "cpu", **overrides})  # CPU tests, also where CUDA exists
    return make_policy(policy_config(policy_cfg), policy_cfg, FEATURES, STATS)


@pytest.fixture(scope="module")
def tiny():
    return build()


def raw_batch(batch_size: int = 4, seed: int = 1, tasks=None) -> dict:
    """A collated CrabDataset-like batch; sample 0 runs past its episode end after step 6."""
    g = torch.Generator().manual_seed(seed)
    pad = torch.zeros(batch_size, CHUNK, dtype=torch.bool)
    pad[0, 7:] = True
    return {
        "observation.images.top": torch.rand(batch_size, 3, 32, 32, generator=g),
        "observation.state": torch.randn(batch_size, STATE_DIM, generator=g),
        "action": torch.randn(batch_size, CHUNK, ACTION_DIM, generator=g),
        "action_is_pad": pad,
        "task": tasks or [PICK, OPEN] * (batch_size // 2),
        "task_name": tasks or [PICK, OPEN] * (batch_size // 2),
        "step_reward": torch.zeros(batch_size),
        "chunk_return": torch.randn(batch_size, generator=g),
        "episode_reward": torch.randn(batch_size, generator=g, dtype=torch.float64),
        "episode_success": torch.ones(batch_size),
        "episode_damage": torch.zeros(batch_size),
        "signal": torch.randn(batch_size, generator=g, dtype=torch.float64),
        "dataset_name": ["clean"] * batch_size,
        "quality": ["clean"] * batch_size,
    }


def noise_time(batch_size: int = 4, seed: int = 2):
    torch.manual_seed(seed)
    return torch.randn(batch_size, CHUNK, MAX_ACTION_DIM), sample_flow_time(batch_size, "cpu")


def hand_loss(v, u, pad, dims_per_sample):
    out = []
    for b in range(v.shape[0]):
        terms = [(v[b, h, d] - u[b, h, d]) ** 2 for h in range(v.shape[1]) if not pad[b, h] for d in dims_per_sample[b]]
        out.append(torch.stack(terms).mean())
    return torch.stack(out)


def test_preprocessor_keeps_extra_keys(tiny):
    _, pre, _ = tiny
    raw = raw_batch()
    batch = pre(raw)
    for key in ("step_reward", "chunk_return", "episode_reward", "episode_success", "episode_damage", "signal"):
        assert torch.equal(batch[key], raw[key])
    for key in ("dataset_name", "task_name", "quality"):
        assert batch[key] == raw[key]
    assert torch.equal(batch["action_is_pad"], raw["action_is_pad"])
    assert batch["observation.language.tokens"].shape[0] == 4
    assert batch["task"] == [t + "\n" for t in raw["task"]]  # SmolVLA's newline step


def test_masked_loss_equals_hand_computation(tiny):
    policy, pre, _ = tiny
    crab = CrabSmolVLA(policy, OFF, NO_ANCHOR)
    assert isinstance(crab, FlowPolicy)
    batch = pre(raw_batch())
    noise, time = noise_time()
    loss = crab.per_sample_loss(batch, noise, time)
    v, u = flow_velocity(policy, batch, noise, time)
    expected = hand_loss(v, u, batch["action_is_pad"], [range(ACTION_DIM)] * 4)
    assert loss.shape == (4,)
    torch.testing.assert_close(loss, expected)


def test_garbage_in_padded_targets_leaves_loss_unchanged(tiny):
    policy, pre, _ = tiny
    crab = CrabSmolVLA(policy, OFF, NO_ANCHOR)
    noise, time = noise_time()
    raw = raw_batch()
    clean = crab.per_sample_loss(pre(raw), noise, time)
    garbage = dict(raw, action=raw["action"].clone())
    garbage["action"][0, 7:] = 1e4 * torch.randn(3, ACTION_DIM)  # steps past the episode's end
    torch.testing.assert_close(crab.per_sample_loss(pre(garbage), noise, time), clean)

    # Padded action dimensions (>= the robot's 4): garbage, even NaN, in targets changes neither the
    # loss nor the gradient.
    v, u = flow_velocity(policy, pre(raw), noise, time)
    mask = crab.loss_mask(pre(raw))
    bad_u = u.clone()
    bad_u[..., ACTION_DIM:] = float("nan")
    bad_u[0, 7:] = float("inf")
    v = v.detach().requires_grad_(True)
    loss = masked_per_sample_loss(v, bad_u, mask)
    torch.testing.assert_close(loss, masked_per_sample_loss(v, u, mask))
    loss.sum().backward()
    assert torch.isfinite(v.grad).all()
    assert (v.grad[..., ACTION_DIM:] == 0).all() and (v.grad[0, 7:] == 0).all()


def test_task_masks_narrow_counted_dimensions(tiny):
    policy, pre, _ = tiny
    masks = {PICK: [0, 1], OPEN: [3]}
    crab = CrabSmolVLA(policy, OFF, NO_ANCHOR, task_masks=masks)
    batch = pre(raw_batch())
    noise, time = noise_time()
    v, u = flow_velocity(policy, batch, noise, time)
    loss = crab.per_sample_loss(batch, noise, time)
    torch.testing.assert_close(loss, hand_loss(v, u, batch["action_is_pad"], [[0, 1], [3], [0, 1], [3]]))
    assert not torch.allclose(loss, CrabSmolVLA(policy, OFF, NO_ANCHOR).per_sample_loss(batch, noise, time))


def test_task_mask_errors_name_the_culprit(tiny):
    policy, pre, _ = tiny
    with pytest.raises(ValueError, match=r"index 4"):
        CrabSmolVLA(policy, OFF, NO_ANCHOR, task_masks={PICK: [0, 4]})
    with pytest.raises(ValueError, match="empty"):
        CrabSmolVLA(policy, OFF, NO_ANCHOR, task_masks={PICK: []})
    crab = CrabSmolVLA(policy, OFF, NO_ANCHOR, task_masks={PICK: [0]})
    with pytest.raises(ValueError, match="Open the carton"):
        crab(pre(raw_batch()), 0.0)
    no_task = {k: v for k, v in raw_batch().items() if k not in ("task", "task_name")}
    with pytest.raises(KeyError, match="task"):
        crab.loss_mask(no_task)


def test_disabled_weighting_is_bit_identical_to_unweighted_loss(tiny):
    policy, pre, _ = tiny
    crab = CrabSmolVLA(policy, OFF, NO_ANCHOR)
    raw = raw_batch()
    for key in ("step_reward", "chunk_return", "episode_reward", "episode_success", "episode_damage", "signal"):
        del raw[key]  # not needed when weighting is off
    batch = pre(raw)
    noise, time = noise_time()
    loss, metrics = crab(batch, 0.0, noise, time)
    assert torch.equal(loss, crab.per_sample_loss(batch, noise, time).mean())
    assert torch.equal(metrics["loss_weighted"], metrics["loss_unweighted"])
    ones = {"w_mean": 1.0, "w_std": 0.0, "w_p95": 1.0, "w_max": 1.0, "clipped_frac": 0.0}
    assert {k: metrics[k].item() for k in ones} == ones
    assert metrics["effective_batch_weight"].item() == pytest.approx(1.0)
    assert metrics["loss_anchor"].item() == 0.0


def test_enabled_weighting_uses_reward_functions(tiny):
    policy, pre, _ = tiny
    rw = RewardWeightingConfig(enabled=True, alpha=0.5, clip_min=0.1, clip_max=10.0)
    crab = CrabSmolVLA(policy, rw, NO_ANCHOR, signal_mean=0.2, signal_std=1.5, weight_mean=0.8)
    batch = pre(raw_batch())
    noise, time = noise_time()
    loss, metrics = crab(batch, 0.0, noise, time)
    signal = batch["signal"].float()  # G (outcome: R_e)
    w, _ = rwfm_weights(advantage(signal, 0.2, 1.5, 1.0), 0.5, 0.1, 10.0, 0.8)
    per_sample = crab.per_sample_loss(batch, noise, time)
    torch.testing.assert_close(loss, (w * per_sample).mean())
    torch.testing.assert_close(metrics["loss_unweighted"], per_sample.mean())
    assert metrics["alpha"].item() == 0.5 and metrics["w_mean"].item() == pytest.approx(w.mean().item())
    torch.testing.assert_close(metrics["weights"], w)
    assert not any(m.requires_grad for m in metrics.values())
    assert all(m.ndim == 0 for k, m in metrics.items() if k != "weights")


def test_enabled_weighting_names_a_missing_reward_field(tiny):
    policy, pre, _ = tiny
    crab = CrabSmolVLA(policy, RewardWeightingConfig(enabled=True), NO_ANCHOR)
    batch = pre({k: v for k, v in raw_batch().items() if k != "signal"})
    with pytest.raises(KeyError, match="signal"):
        crab(batch, 0.0)


def test_nonfinite_reward_shows_in_the_metrics_the_trainer_checks(tiny):
    policy, pre, _ = tiny
    crab = CrabSmolVLA(policy, RewardWeightingConfig(enabled=True), NO_ANCHOR)
    raw = raw_batch()
    raw["signal"][1] = float("nan")
    _, metrics = crab(pre(raw), 0.0)
    assert not torch.isfinite(metrics["w_max"]) and not torch.isfinite(metrics["loss"])


@pytest.mark.parametrize("mode", ["shared_prefix", "naive"])
def test_anchor_is_zero_at_start_and_reference_gets_no_gradient(mode):
    policy, pre, _ = build()
    crab = CrabSmolVLA(policy, RewardWeightingConfig(enabled=True), AnchorConfig(enabled=True, mode=mode))
    assert crab.anchor_mode == mode
    loss, metrics = crab(pre(raw_batch()), 0.5)
    assert metrics["loss_anchor"].item() == 0.0
    assert torch.equal(metrics["loss"], metrics["loss_weighted"])
    loss.backward()
    assert all(p.grad is None for p in crab.reference.parameters())
    assert all(p.grad is None for p in policy.model.vlm_with_expert.vlm.parameters())
    trainable = [p for p in policy.parameters() if p.requires_grad]
    assert trainable and all(p.grad is not None for p in trainable)


def test_zero_lambda_skips_the_reference():
    policy, pre, _ = build()
    crab = CrabSmolVLA(policy, OFF, AnchorConfig(enabled=True))
    calls = []
    crab.reference.model.action_out_proj.register_forward_hook(lambda *_: calls.append(1))
    _, metrics = crab(pre(raw_batch()), 0.0)
    assert calls == [] and metrics["loss_anchor"].item() == 0.0 and metrics["lambda_anchor"].item() == 0.0
    crab(pre(raw_batch()), 0.1)
    assert calls == [1]


def take_steps(crab: CrabSmolVLA, batch, steps: int) -> torch.optim.Optimizer:
    """A few AdamW steps at lambda_anchor 0.3, so the policy moves away from its reference."""
    optimizer = torch.optim.AdamW([p for p in crab.policy.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(steps):
        loss, _ = crab(batch, 0.3)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return optimizer


def metrics_and_grads_per_anchor_mode(crab: CrabSmolVLA, batch) -> list[tuple[dict, list[torch.Tensor]]]:
    """[(metrics, gradients of the trained parameters)] of one loss at lambda_anchor 0.3 on the same noise
    and time, for the "shared_prefix" then the "naive" anchor: the two must agree."""
    noise, time = noise_time(batch["observation.state"].shape[0], seed=5)
    results = []
    for mode in ("shared_prefix", "naive"):
        crab.anchor_mode = mode
        crab.policy.zero_grad()
        loss, metrics = crab(batch, 0.3, noise, time)
        loss.backward()
        results.append((metrics, [p.grad.clone() for p in crab.policy.parameters() if p.requires_grad]))
    return results


@pytest.mark.parametrize(
    "tasks",
    [
        [PICK, OPEN, "Carry it over there, slowly."] * 2,
        # advantage-conditioned prompts: each sample its own label, one unlabelled
        labelled_tasks([PICK] * 6, [True, False, True, False, True, False], [False] * 5 + [True]),
    ],
    ids=["tasks", "labelled"],
)
def test_shared_prefix_anchor_equals_naive_anchor(tasks):
    """Per-sample prompts of different lengths: the shared context still gives the naive anchor's loss and
    gradients."""
    policy, pre, _ = build()
    crab = CrabSmolVLA(policy, RewardWeightingConfig(enabled=True), AnchorConfig(enabled=True))
    batch = pre(raw_batch(batch_size=6, tasks=tasks))
    take_steps(crab, batch, steps=3)
    (shared, shared_grads), (naive, naive_grads) = metrics_and_grads_per_anchor_mode(crab, batch)
    assert naive["loss_anchor"].item() > 1e-3
    for key in ("loss_anchor", "loss_weighted", "loss"):
        torch.testing.assert_close(shared[key], naive[key], rtol=1e-5, atol=1e-7)
    for a, b in zip(shared_grads, naive_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_replayed_batch_joins_the_anchor_only():
    """With a replay batch, L_anchor is the masked mean over both batches' elements (the replay at noise
    drawn after the fine-tuning batch's), and the weighted flow loss is the fine-tuning batch's alone."""
    policy, pre, _ = build()
    crab = CrabSmolVLA(policy, RewardWeightingConfig(enabled=True), AnchorConfig(enabled=True))
    batch, replay = pre(raw_batch(seed=1)), pre(raw_batch(batch_size=2, seed=3, tasks=[OPEN, OPEN]))
    take_steps(crab, batch, steps=3)
    noise, time = noise_time(seed=5)
    _, alone = crab(batch, 0.3, noise, time)
    torch.manual_seed(7)
    loss, both = crab(batch, 0.3, noise, time, replay=replay)
    torch.manual_seed(7)
    with torch.no_grad():
        v, _, v_ref = crab._velocities(batch, noise, time, with_reference=True)
        v_r, _, v_ref_r = crab._velocities(replay, *crab.sample_noise_time(replay), with_reference=True)
    squares = [(torch.where(m, a - b, 0.0) ** 2).sum() for a, b, m in ((v, v_ref, crab.loss_mask(batch)), (v_r, v_ref_r, crab.loss_mask(replay)))]
    counts = crab.loss_mask(batch).sum() + crab.loss_mask(replay).sum()
    torch.testing.assert_close(both["loss_anchor"], sum(squares) / counts)
    assert both["loss_anchor"].item() != alone["loss_anchor"].item()
    assert torch.equal(both["loss_weighted"], alone["loss_weighted"]) and torch.equal(both["weights"], alone["weights"])
    torch.testing.assert_close(loss, both["loss_weighted"] + 0.3 * both["loss_anchor"])

    # The gradient, by hand: the replay batch's velocities carry theirs into L_anchor (a detached replay
    # velocity would lose the second term's replay part, which is not zero).
    params = [p for p in crab.policy.parameters() if p.requires_grad]
    torch.manual_seed(7)
    loss, _ = crab(batch, 0.3, noise, time, replay=replay)
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    torch.manual_seed(7)
    v, u, v_ref = crab._velocities(batch, noise, time, with_reference=True)
    v_r, _, v_ref_r = crab._velocities(replay, *crab.sample_noise_time(replay), with_reference=True)
    per_sample = masked_per_sample_loss(v, u, crab.loss_mask(batch))
    weighted = (crab._weights(batch, per_sample)[0] * per_sample).mean()
    s_b = (torch.where(crab.loss_mask(batch), v - v_ref, 0.0) ** 2).sum()
    s_r = (torch.where(crab.loss_mask(replay), v_r - v_ref_r, 0.0) ** 2).sum()
    by_hand = torch.autograd.grad(weighted + 0.3 * (s_b + s_r) / counts, params, allow_unused=True, retain_graph=True)
    replay_part = torch.autograd.grad(s_r, params, allow_unused=True)
    for ours, hand in zip(grads, by_hand, strict=True):
        assert (ours is None) == (hand is None)
        if ours is not None:
            torch.testing.assert_close(ours, hand, rtol=1e-5, atol=1e-7)
    assert sum(float(g.abs().sum()) for g in replay_part if g is not None) > 0



@pytest.mark.parametrize("anchored", [False, True])
def test_rehearsal_imitates_the_replayed_batch_at_weight_one(anchored):
    """`replay.imitate`: the weighted flow loss is the mean over both batches' samples (fine-tuning samples at
    their weights, replayed ones at 1; replay noise drawn after the fine-tuning batch's); with the anchor on
    the replay too (`replay.anchor`), L_anchor spans both batches. Loss and gradient by hand (a detached
    replay loss would lose the gradient's rehearsal part)."""
    policy, pre, _ = build()
    rw, anchor = RewardWeightingConfig(enabled=True), AnchorConfig(enabled=anchored)
    crab = CrabSmolVLA(policy, rw, anchor, replay=ReplayConfig(manifest="r.csv", anchor=anchored, imitate=True))
    batch, replay = pre(raw_batch(seed=1)), pre(raw_batch(batch_size=2, seed=3, tasks=[OPEN, OPEN]))
    take_steps(crab, batch, steps=3)
    noise, time = noise_time(seed=5)
    lam = 0.3 if anchored else 0.0
    params = [p for p in crab.policy.parameters() if p.requires_grad]
    torch.manual_seed(7)
    loss, metrics = crab(batch, lam, noise, time, replay=replay)
    grads = torch.autograd.grad(loss, params, allow_unused=True)

    torch.manual_seed(7)
    v, u, v_ref = crab._velocities(batch, noise, time, with_reference=anchored)
    v_r, u_r, v_ref_r = crab._velocities(replay, *crab.sample_noise_time(replay), with_reference=anchored)
    mask, mask_r = crab.loss_mask(batch), crab.loss_mask(replay)
    per_sample, per_replay = masked_per_sample_loss(v, u, mask), masked_per_sample_loss(v_r, u_r, mask_r)
    w = crab._weights(batch, per_sample)[0]
    assert not torch.allclose(w, torch.ones_like(w))  # weights that matter, so weight 1 on the replay shows
    imitation = ((w * per_sample).sum() + per_replay.sum()) / (len(per_sample) + len(per_replay))
    total = imitation
    if anchored:
        squares = [(torch.where(m, a - b, 0.0) ** 2).sum() for a, b, m in ((v, v_ref, mask), (v_r, v_ref_r, mask_r))]
        anchor_loss = sum(squares) / (mask.sum() + mask_r.sum())
        torch.testing.assert_close(metrics["loss_anchor"], anchor_loss.detach())
        assert metrics["loss_anchor"].item() > 0
        total = imitation + lam * anchor_loss
    torch.testing.assert_close(metrics["loss_weighted"], imitation.detach())
    torch.testing.assert_close(metrics["loss_unweighted"], per_sample.mean().detach())
    torch.testing.assert_close(loss.detach(), total.detach())
    by_hand = torch.autograd.grad(total, params, allow_unused=True, retain_graph=True)
    rehearsal_part = torch.autograd.grad(per_replay.sum(), params, allow_unused=True)
    for ours, hand in zip(grads, by_hand, strict=True):
        assert (ours is None) == (hand is None)
        if ours is not None:
            torch.testing.assert_close(ours, hand, rtol=1e-5, atol=1e-7)
    assert sum(float(g.abs().sum()) for g in rehearsal_part if g is not None) > 0

def test_resume_loads_trained_weights_into_the_policy_only(tmp_path):
    """The trainer rebuilds the starting policy (same seed/path), then loads the checkpoint: the
    reference stays the starting policy, so the anchor continues exactly."""
    policy, pre, _ = build()
    crab = CrabSmolVLA(policy, OFF, AnchorConfig(enabled=True))
    batch = pre(raw_batch())
    take_steps(crab, batch, steps=2)
    policy.save_pretrained(tmp_path / "ckpt")
    noise, time = noise_time()
    _, before = crab(batch, 0.3, noise, time)

    fresh, _, _ = build()
    resumed = CrabSmolVLA(fresh, OFF, AnchorConfig(enabled=True))
    resumed.load_policy_weights(tmp_path / "ckpt")
    assert resumed.anchor_mode == "shared_prefix"
    _, after = resumed(batch, 0.3, noise, time)
    assert before["loss_anchor"].item() > 0
    for key in ("loss_anchor", "loss_unweighted"):
        assert torch.equal(before[key], after[key]), key


def test_check_tasks_and_validation_loss(tiny):
    policy, pre, _ = tiny
    crab = CrabSmolVLA(policy, OFF, NO_ANCHOR, task_masks={PICK: [0]})
    crab.check_tasks([PICK])
    with pytest.raises(ValueError, match="Open the carton"):
        crab.check_tasks([PICK, OPEN])
    CrabSmolVLA(policy, OFF, NO_ANCHOR).check_tasks([PICK, OPEN])  # no masks: every task counts all dims

    batch = pre(raw_batch())
    plain = CrabSmolVLA(policy, OFF, NO_ANCHOR)
    first = plain.validation_loss(batch, torch.Generator().manual_seed(3))
    assert first.shape == (4,)
    assert torch.equal(first, plain.validation_loss(batch, torch.Generator().manual_seed(3)))
    _, metrics = plain(batch, 0.0)
    assert torch.equal(metrics["weights"], torch.ones(4))


def test_shared_prefix_falls_back_when_the_vlm_trains():
    policy, _, _ = build(train_expert_only=False)
    crab = CrabSmolVLA(policy, OFF, AnchorConfig(enabled=True, mode="shared_prefix"))
    assert crab.anchor_mode == "naive" and not crab.context_shared


def test_reference_shares_frozen_parameters_and_is_smaller_than_a_copy(tiny):
    policy, _, _ = tiny
    reference = make_reference(policy)
    assert not reference.training and not any(p.requires_grad for p in reference.parameters())
    for p, q in zip(policy.parameters(), reference.parameters(), strict=True):
        assert (p is q) == (not p.requires_grad)
    trainable = sum(p.numel() * p.element_size() for p in policy.parameters() if p.requires_grad)
    buffers = sum(b.numel() * b.element_size() for b in policy.buffers())
    extra, full = reference_extra_bytes(policy, reference), module_bytes(policy)
    assert extra == trainable + buffers
    assert extra < 0.6 * full
    assert reference_extra_bytes(policy, copy.deepcopy(policy)) == full


@pytest.mark.slow
def test_rwfm_moves_policy_closer_to_good_actions_than_il():
    """Each observation has good (high reward) and bad (low reward) action chunks in equal numbers:
    imitation learns the mixture, RWFM with alpha=2 mostly the good mode."""
    policy, pre, _ = build(seed=0)
    g = torch.Generator().manual_seed(0)
    n_obs, per_mode = 4, 2
    images = torch.rand(n_obs, 3, 32, 32, generator=g)
    states = torch.randn(n_obs, STATE_DIM, generator=g)
    good = 0.8 * torch.tanh(torch.randn(n_obs, CHUNK, ACTION_DIM, generator=g) * 2)
    obs = torch.arange(n_obs).repeat_interleave(2 * per_mode)  # (16,)
    is_good = torch.tensor([True, False]).repeat_interleave(per_mode).repeat(n_obs)
    size = len(obs)
    raw = {
        "observation.images.top": images[obs],
        "observation.state": states[obs],
        "action": torch.where(is_good[:, None, None], good[obs], -good[obs]),
        "action_is_pad": torch.zeros(size, CHUNK, dtype=torch.bool),
        "task": [PICK] * size,
        "signal": is_good.double() * 2 - 1,  # outcome G = R_e: success +1, crack -1
    }
    train_batch = pre(raw)
    eval_batch = pre(dict(raw, action=good[obs]))  # every sample with its good chunk

    def train(weighting: RewardWeightingConfig) -> CrabSmolVLA:
        crab = CrabSmolVLA(copy.deepcopy(policy), weighting, NO_ANCHOR, signal_mean=0.0, signal_std=1.0)
        optimizer = torch.optim.AdamW([p for p in crab.parameters() if p.requires_grad], lr=2e-3)
        torch.manual_seed(1)
        for _ in range(250):
            loss, _ = crab(train_batch, 0.0)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        return crab

    il = train(OFF)
    rwfm = train(RewardWeightingConfig(enabled=True, alpha=2.0))
    torch.manual_seed(2)
    noise = torch.randn(8, size, CHUNK, MAX_ACTION_DIM)
    time = sample_flow_time(8 * size, "cpu").view(8, size)
    with torch.no_grad():
        loss_good = {
            name: torch.stack([m.per_sample_loss(eval_batch, n, t) for n, t in zip(noise, time, strict=True)])
            .mean()
            .item()
            for name, m in (("il", il), ("rwfm", rwfm))
        }
        # Sampled chunks: mean squared distance to the good chunk, on the real action dimensions.
        sample_err = {
            name: (m.predict_action_chunk(eval_batch, noise=noise[0]) - good[obs]).pow(2).mean().item()
            for name, m in (("il", il), ("rwfm", rwfm))
        }
    assert loss_good["rwfm"] < 0.8 * loss_good["il"], loss_good
    assert sample_err["rwfm"] < 0.5 * sample_err["il"], sample_err
