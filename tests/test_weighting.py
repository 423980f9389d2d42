"""crab/training/weighting.py: the run's weights computed once, the pre-flight table (worked example of
crab/training/docs/reward_weighting.md), and every consumer's view of them agreeing."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from crab.training.config import RewardWeightingConfig
from crab.training.rewards import per_group_normalised, signal_weights
from crab.training.weighting import DatasetFrames, WeightingError, phase_groups, preflight_table, run_weights

PLACE, OPEN = "Put the egg into the tray.", "Open the carton."


def frames(name, task, quality, signal, episodes, step_reward, success):
    return DatasetFrames(name, task, quality, np.asarray(signal, float), np.asarray(episodes), np.asarray(step_reward, float),
                         np.asarray(success, float))  # fmt: skip


def test_preflight_table_worked_example():
    clean = frames("clean", PLACE, "clean", [1, 1], [0, 0], [0, 1], [1, 1])
    failed = frames("failed", PLACE, "failed", [0, 0], [0, 0], [0, 0], [0, 0])
    rw = RewardWeightingConfig(alpha=1.0, clip_min=0.0, apply="sample", unlocated_failures="drop")
    lines = preflight_table(run_weights(rw, [clean, failed], 0.5, 0.5), "weight").splitlines()
    assert lines[1].split() == ["clean", "clean", "1/0/0", "100.00%", "100.00%", "100.00%"]
    assert lines[2].split() == ["failed", "failed", "1/0/1", "0.00%", "0.00%", "0.00%"]


# A mixed fixture: a clean dataset, a damaged one (its damage step located), a failed one nothing locates, and
# a second task; signals as a per-chunk signal would give them.
MIXED = [
    frames("clean", PLACE, "clean", [0.9, 1.0, 1.1, 0.8, 1.2], [0, 0, 0, 1, 1], [0, 0, 1, 0, 1], [1] * 5),
    frames("damaged", PLACE, "cracked", [0.7, -0.5, -1.0, 0.5], [0, 0, 1, 1], [0, -1, 0, -1], [0] * 4),
    frames("failed", PLACE, "failed", [0.2, 0.1, 0.0], [0, 0, 0], [0, 0, 0], [0] * 3),
    frames("carton", OPEN, "clean", [0.0, 0.3, 0.6, 0.9], [0, 0, 1, 1], [0, 1, 0, 1], [1] * 4),
]
SETTINGS = itertools.product(("outcome", "chunk_q"), ("loss", "sample"), ("global", "phase"), ("keep", "drop"))
COMBOS = [  # the config refuses per-phase and drop with weighted losses
    (signal, apply, normalize, drop)
    for signal, apply, normalize, drop in SETTINGS
    if apply == "sample" or (normalize == "global" and drop == "keep")
]


@pytest.mark.parametrize(("signal", "apply", "normalize", "drop"), COMBOS)
def test_every_consumer_reads_the_same_weights(signal, apply, normalize, drop):
    rw = RewardWeightingConfig(signal=signal, alpha=2.0, clip_min=0.0, clip_max=1e6, std_floor=0.1, apply=apply,
                               normalize=normalize, phase_bins=2, unlocated_failures=drop)  # fmt: skip
    mean, std = 0.3, 0.6
    w = run_weights(rw, MIXED, mean, std)
    g = torch.as_tensor(np.concatenate([d.signal for d in MIXED]), dtype=torch.float64)
    # What the loss computes per batch from each item's signal (CrabSmolVLA._weights), with the one constant
    in_batch = signal_weights(g, signal, mean, std, rw.alpha, (rw.clip_min, rw.clip_max), rw.std_floor, w.constant)[0].numpy()
    dropped = np.r_[np.zeros(9, bool), np.ones(3, bool) & (drop == "drop"), np.zeros(4, bool)]
    np.testing.assert_array_equal(w.dropped, dropped)
    np.testing.assert_allclose(w.raw, np.where(dropped, 0.0, in_batch * w.constant))
    if apply == "loss":  # the weighted loss: raw / constant, mean 1; every frame drawn alike
        np.testing.assert_allclose(w.loss, in_batch)
        assert w.loss.mean() == pytest.approx(1.0) and (w.draw == 1).all()
    else:  # the draw: raw (per phase), the loss unweighted
        expected = w.raw if normalize == "global" else per_group_normalised(w.raw, phase_groups(MIXED, 2))
        np.testing.assert_allclose(w.draw, expected / expected.mean())
        assert (w.loss == 1).all()
    assert w.trained.mean() == pytest.approx(1.0) and (w.trained[dropped] == 0).all()
    # the normalisation counts: dropped frames never; "frame" every kept frame once, "weight" its trained weight
    np.testing.assert_array_equal(w.normalization_counts("frame"), (~dropped).astype(float))
    np.testing.assert_allclose(w.normalization_counts("weight"), w.trained)
    # the table's shares are those of `trained`, per dataset
    table = preflight_table(w, "weight").splitlines()[1:]
    for line, s in zip(table, w.slices(), strict=True):
        assert line.split()[3] == f"{w.trained[s].sum() / w.trained.sum():.2%}"


def test_a_task_left_with_no_episode_is_refused_naming_it():
    only_failed = [MIXED[2], MIXED[3]]
    rw = RewardWeightingConfig(apply="sample", unlocated_failures="drop")
    with pytest.raises(WeightingError, match=r"task\(s\) \['Put the egg into the tray.'\]"):
        run_weights(rw, only_failed, 0.0, 1.0)
    assert run_weights(RewardWeightingConfig(apply="sample"), only_failed, 0.0, 1.0).dropped.sum() == 0


def test_weighting_off_is_uniform():
    w = run_weights(RewardWeightingConfig(enabled=False), MIXED, 0.0, 1.0)
    assert (w.draw == 1).all() and (w.loss == 1).all() and w.constant == 1.0 and not w.dropped.any()
