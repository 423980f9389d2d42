"""Advantage conditioning: the label rule by hand, the prompts the trainer feeds, resume on changed labels,
classifier-free guidance against the two prompts alone (the shared-prefix anchor with labelled prompts:
tests/test_crab_smolvla_wrapper.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import OPEN, PLACE
from test_crab_smolvla_wrapper import PICK, build, raw_batch
from test_train import config, setup  # noqa: F401 (setup is a fixture)

from crab.training import train
from crab.training.conditioning import (
    advantage_labels,
    balanced_draw,
    conditioned_task,
    label_shares,
    labelled_tasks,
    positive_draw_shares,
    unconditioned,
)
from crab.training.config import ConfigError
from crab.training.smolvla_internals import guided_action_chunk
from crab.training.weighting import DatasetFrames


def frames(name, signal, episodes, step_reward, success) -> DatasetFrames:
    return DatasetFrames(name, "Put.", "q", np.asarray(signal, float), np.asarray(episodes), np.asarray(step_reward, float),
                         np.asarray(success, float))  # fmt: skip


# The worked example of crab/training/docs/reward_weighting.md ("Advantage labels"): two parts per episode,
# credit horizon 2. Episode 0 succeeds; episode 1 cracks the egg at its frame 2; the failed episode holds
# no reward at all.
WORKED = [
    frames("mixed", [2, 0, 2, 2, 0, 2, 0, 0], [0, 0, 0, 0, 1, 1, 1, 1], [0, 0, 0, 1, 0, 0, -1, 0], [1] * 8),
    frames("failed", [1, 1, 1, 1], [0, 0, 0, 0], [0, 0, 0, 0], [0] * 4),
]


def test_advantage_labels_worked_example():
    # Part 0 holds signals 2,0 | 0,2 | 1,1 (mean 1), part 1 holds 2,2 | 0,0 | 1,1 (mean 1). At or above the
    # mean: frames 0, 2, 3 of episode 0, frame 1 of episode 1 (but its chunk holds the crack), and the
    # failed episode (but nothing locates its failure).
    positive = advantage_labels(WORKED, horizon=2, bins=2, threshold=0.0)
    assert positive.tolist() == [True, False, True, True] + [False] * 4 + [False] * 4
    # One standard deviation (sqrt(2/3) in both parts) above the mean: only the 2s clear it.
    assert advantage_labels(WORKED, 2, 2, 1.0).tolist() == positive.tolist()
    assert not advantage_labels(WORKED, 2, 2, 3.0).any()
    # Labels from damage alone: every chunk is positive but the two whose steps hold episode 1's crack
    # (frames 1 and 2) and the failure nothing locates; the signal is not read, so k = -100 (far below any
    # mean) labels the same.
    by_damage = [True] * 5 + [False, False, True] + [False] * 4
    assert advantage_labels(WORKED, 2, 2, 0.0, "damage").tolist() == by_damage
    assert advantage_labels(WORKED, 2, 2, -100.0).tolist() == by_damage
    # By episode: episode 1 holds the crack, so all four of its frames are negative.
    assert advantage_labels(WORKED, 2, 2, 0.0, "episode").tolist() == [True] * 4 + [False] * 8
    with pytest.raises(ValueError, match="label rule 'mean'"):
        advantage_labels(WORKED, 2, 2, 0.0, "mean")
    # Without the damage step episode 1's frame 1 is positive; the rule, not its signal, made it negative.
    undamaged = [WORKED[0].__class__(**{**WORKED[0].__dict__, "step_reward": np.zeros(8)}), WORKED[1]]
    assert advantage_labels(undamaged, 2, 2, 0.0)[5]
    shares = label_shares(WORKED, positive, 2)
    assert shares["mixed"] == (pytest.approx(3 / 8), [0.25, 0.5]) and shares["failed"] == (0.0, [0.0, 0.0])


def test_balanced_draw_worked_example():
    # By episode, 4 of the 12 frames (one task) are positive. Share 0.5 from a uniform draw: the positives
    # weigh 0.5 * 12 / 4 = 1.5, the negatives 0.5 * 12 / 8 = 0.75 (mean 1 already).
    positive = advantage_labels(WORKED, 2, 2, 0.0, "episode")
    draw = balanced_draw(WORKED, np.ones(12), positive, 0.5)
    assert draw.tolist() == [1.5] * 4 + [0.75] * 8
    assert positive_draw_shares(WORKED, np.ones(12), positive) == {"Put.": pytest.approx(1 / 3)}
    assert positive_draw_shares(WORKED, draw, positive) == {"Put.": pytest.approx(0.5)}
    # Within each side the draw's own proportions stay (a frame the draw left out stays out); a task without
    # negatives keeps its draw.
    uneven = balanced_draw(WORKED, np.array([2.0, 0, 1, 1] + [1] * 8), positive, 0.5)
    assert uneven[:4].tolist() == pytest.approx([2 * uneven[2], 0, uneven[2], uneven[2]])
    assert positive_draw_shares(WORKED, uneven, positive) == {"Put.": pytest.approx(0.5)}
    alone = [WORKED[0].__class__(**{**WORKED[1].__dict__, "task": "Other."}), WORKED[0]]
    assert balanced_draw(alone, np.ones(12), np.r_[np.zeros(4, bool), positive[:8]], 0.5)[:4].tolist() == [1.0] * 4


def test_prompts_and_the_unlabelled_draw():
    assert conditioned_task("Put the egg.\n", "positive") == "Put the egg. Advantage: positive."
    assert conditioned_task("Put the egg.", None) == "Put the egg."
    assert labelled_tasks(["A.", "B.", "C."], [True, False, True], [False, False, True]) == [
        "A. Advantage: positive.", "B. Advantage: negative.", "C.",
    ]  # fmt: skip
    first = unconditioned(7, 12, 0, 4000, 0.2)
    assert np.array_equal(first, unconditioned(7, 12, 0, 4000, 0.2))  # a resumed run draws the same
    assert not np.array_equal(first, unconditioned(7, 13, 0, 4000, 0.2))
    assert not np.array_equal(first, unconditioned(7, 12, 1, 4000, 0.2))  # each process its own
    assert abs(first.mean() - 0.2) < 0.03


def test_config_refuses_guidance_without_an_unconditioned_policy(setup):  # noqa: F811
    with pytest.raises(ConfigError, match="unconditioned_fraction"):
        config(setup, "bad", **{"conditioning.enabled": "true", "conditioning.guidance": 2.0,
                                "conditioning.unconditioned_fraction": 0.0})  # fmt: skip


def test_trainer_feeds_each_sample_its_label_and_resume_refuses_other_labels(setup, monkeypatch):  # noqa: F811
    from crab.training.checkpoint import load_checkpoint
    from crab.training.crab_dataset import CrabDataset
    from crab.training.manifest import load_manifest
    from crab.training.rewards import RewardSpec

    fed, original = [], train.labelled_tasks

    def recording(tasks, positive, skip):
        out = original(tasks, positive, skip)
        fed.append((list(tasks), np.asarray(positive).copy(), out))
        return out

    monkeypatch.setattr(train, "labelled_tasks", recording)
    # Task masks are looked up by the dataset's task, not by the labelled prompt.
    masks = f'{{"{PLACE}": [0, 1, 2, 3], "{OPEN}": [0, 1, 2]}}'
    extra = {"train.steps": 6, "train.save_every": 3, "conditioning.enabled": "true",
             "conditioning.unconditioned_fraction": 0.3, "task_masks": masks}  # fmt: skip
    cfg = config(setup, "conditioned", **extra)
    run = train.train(cfg)
    ds = CrabDataset(load_manifest(setup["manifest"], setup["data_root"]), RewardSpec(chunk_size=10))
    expected = advantage_labels(ds.weight_frames(), 10, cfg.reward_weighting.phase_bins, 0.0)
    assert 0 < expected.mean() < 1
    prompts = [p for _, _, out in fed for p in out]
    assert len(fed) == 6 and len(prompts) == 24
    for tasks, positive, out in fed:
        for task, pos, prompt in zip(tasks, positive, out, strict=True):
            assert prompt in (task, conditioned_task(task, "positive" if pos else "negative"))
    assert 0 < sum("Advantage" not in p for p in prompts) < 24  # some unlabelled, most labelled
    assert sum(p.endswith("positive.") for p in prompts) and sum(p.endswith("negative.") for p in prompts)
    _, state, _ = load_checkpoint(run / "step_000003")
    inputs = state["inputs"]
    assert inputs["advantage_labels"]
    # Same data, other labels: the resume is refused by the labels' fingerprint even with the config's
    # check passed (the threshold is a training setting, so the config check alone would also refuse).
    monkeypatch.setattr(train, "advantage_labels", lambda *a: ~expected)
    with pytest.raises(train.TrainingError, match="advantage_labels"):
        train.train(cfg, resume=run / "step_000003")


def test_trainer_draws_the_balanced_share(setup, monkeypatch):  # noqa: F811
    """`conditioning.positive_share`: the sampler gets the balanced draw of the run's labels."""
    from crab.training.crab_dataset import CrabDataset
    from crab.training.manifest import load_manifest
    from crab.training.rewards import RewardSpec

    drawn, original = [], train.batch_loader
    monkeypatch.setattr(train, "batch_loader", lambda *a: drawn.append(a[-1]) or original(*a))
    cfg = config(setup, "balanced", **{"train.steps": 1, "conditioning.enabled": "true",
                                       "conditioning.label_rule": "episode", "conditioning.positive_share": 0.5})  # fmt: skip
    train.train(cfg)
    frames_ = CrabDataset(load_manifest(setup["manifest"], setup["data_root"]), RewardSpec(chunk_size=10)).weight_frames()
    positive = advantage_labels(frames_, 10, cfg.reward_weighting.phase_bins, 0.0, "episode")
    before = positive_draw_shares(frames_, np.ones(len(positive)), positive)
    assert any(0 < x < 1 and x != pytest.approx(0.5) for x in before.values())  # some task's share moves
    assert drawn[0].tolist() == pytest.approx(balanced_draw(frames_, np.ones(len(positive)), positive, 0.5).tolist())
    for task, share in positive_draw_shares(frames_, drawn[0], positive).items():
        assert share == pytest.approx(0.5 if 0 < before[task] < 1 else before[task])


@pytest.fixture(scope="module")
def tiny():
    return build()


def chunk(policy, pre, tasks, beta=None, seed=3):
    """One action chunk for the same observation: the plain prompt (beta None) or guided between two."""
    raw = raw_batch(batch_size=1, seed=4)
    obs = {k: raw[k] for k in ("observation.images.top", "observation.state")}
    noise = torch.randn(1, policy.config.chunk_size, policy.config.max_action_dim, generator=torch.Generator().manual_seed(seed))
    policy.reset()
    with torch.no_grad():
        if beta is None:
            return policy.predict_action_chunk(pre({**obs, "task": tasks}), noise=noise)
        both = {k: v.repeat(2, *[1] * (v.dim() - 1)) for k, v in obs.items()}
        return guided_action_chunk(policy, pre({**both, "task": tasks}), beta, noise)


def test_guidance_interpolates_between_the_two_prompts(tiny):
    """beta 0 is the unconditioned prompt alone, beta 1 the conditioned one; beta 2 extrapolates past it.
    The two prompts share one (padded) prefix, hence a tolerance rather than bit equality."""
    policy, pre, _ = tiny
    labelled, plain = conditioned_task(PICK, "positive"), PICK
    alone_c, alone_u = chunk(policy, pre, [labelled]), chunk(policy, pre, [plain])
    assert (alone_c - alone_u).abs().max() > 1e-4  # the label changes the actions
    torch.testing.assert_close(chunk(policy, pre, [labelled, plain], beta=0.0), alone_u, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(chunk(policy, pre, [labelled, plain], beta=1.0), alone_c, rtol=1e-5, atol=1e-6)
    beyond = chunk(policy, pre, [labelled, plain], beta=2.0)
    assert (beyond - alone_c).abs().max() > 1e-5
    assert type(policy.model).denoise_step is policy.model.denoise_step.__func__  # unwrapped afterwards


@pytest.mark.parametrize("rule", ["advantage", "damage", "episode"])
def test_reward_stats_prints_and_records_the_labels_training_uses(setup, tmp_path, capsys, rule):  # noqa: F811
    """The conditioning recipe layered on the run's config: `reward_stats --config` prints the positive
    shares training prints before step 1 (and the balanced draw's, with `positive_share`) and records the
    labels the run's checkpoint records, by each rule. `damage` and `episode` run the recipe's own
    reward_weighting (signal chunk_q, credit horizon 100) without a value file: they read neither."""
    import itertools
    import json

    from test_train import CONFIGS, overrides

    from crab.training import reward_stats
    from crab.training.checkpoint import load_checkpoint
    from crab.training.config import load_config

    layers = [CONFIGS / "train_cycle1_rwfm_anchor_cracked_factor.yaml", CONFIGS / "demo_overrides.yaml",
              CONFIGS / "recipe_conditioned.yaml"]  # fmt: skip
    stats = tmp_path / "stats.json"
    # No value model here: RECAP's rule labels by the outcome signal.
    recap = {"reward_weighting.signal": "outcome", "reward_weighting.credit_horizon": "null"} if rule == "advantage" else {}
    sets = overrides(setup, f"recipe_conditioned_{rule}", **{
        "data.reward_stats": stats.as_posix(), "train.steps": 1, "train.save_every": 1, **recap,
        "conditioning.label_rule": rule, "conditioning.positive_share": 0.5 if rule == "episode" else "null",
    })  # fmt: skip
    reward_stats.main([*(a for layer in layers for a in ("--config", str(layer))), *(a for s in sets for a in ("--set", s))])
    printed = capsys.readouterr().out
    run = train.train(load_config(layers, sets))
    logged = capsys.readouterr().out

    def table(text):
        lines = text.splitlines()
        start = next(i for i, line in enumerate(lines) if line.startswith("advantage labels"))
        return [lines[start], *itertools.takewhile(lambda line: line.startswith("  "), lines[start + 1 :])]

    # The rule's words and the table, the same in both.
    assert table(printed) == table(logged) and len(table(printed)) == 4  # header; clean, labelled, stepwise
    assert all("positive" in line for line in table(printed))
    # With `positive_share`, the balanced draw's shares too ("... 'task' 40% -> 50%").
    shares = [[line for line in text.splitlines() if line.startswith("positive share of each task")] for text in (printed, logged)]
    assert shares[0] == shares[1] and len(shares[0]) == (rule == "episode")
    assert rule != "episode" or "-> 50%" in shares[0][0]
    recorded = json.loads(stats.read_text())["advantage_labels"]
    _, state, _ = load_checkpoint(run / "step_000001")
    assert recorded["digest"] == state["inputs"]["advantage_labels"]
    assert 0 < recorded["positive_share"] < 1 and recorded["label_rule"] == rule
