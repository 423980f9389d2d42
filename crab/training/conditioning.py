"""Advantage conditioning (RECAP, arXiv 2511.14759): every frame is imitated, and its task text says whether
its action chunk was better than usual at that point of the task ("Advantage: positive") or not ("Advantage:
negative"). A share of the samples carries no label, which trains the unconditioned policy in the same
weights. At deployment the policy is asked for "positive"; classifier-free guidance (CFGRL, arXiv
2505.23458) can push further: v = v_uncond + beta * (v_positive - v_uncond) at each denoising step
(`smolvla_internals.guided_action_chunk`).

Weighting can only choose which frames to imitate; conditioning also learns from the bad ones what not to
do, and keeps them as data for everything they did right. Worked example: crab/training/docs/reward_weighting.md.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from crab.training.rewards import damage_free_chunks, progress_bins, unlocated_failures
from crab.training.weighting import DatasetFrames, phase_groups

POSITIVE, NEGATIVE = "positive", "negative"


def conditioned_task(task: str, label: str | None) -> str:
    """The task text with an advantage label (None: the task itself, the unconditioned prompt).

    lerobot's SmolVLA processor appends the newline its tokenizer expects; a trailing one here is dropped
    so that the label sits on the task's line."""
    return task if label is None else f"{task.rstrip()} Advantage: {label}."


def advantage_labels(datasets: Sequence[DatasetFrames], horizon: int, bins: int, threshold: float) -> np.ndarray:
    """Per training frame (all datasets, item order): True where its chunk is labelled positive.

    A frame is positive when its signal is at least its group's mean plus `threshold` standard deviations,
    the group being its task and part of the episode (`phase_groups` with `bins` parts): a chunk is
    compared with the chunks at the same point of the same task, whatever came before. Two kinds are
    negative whatever their signal: chunks whose `horizon` steps hold a negative reward (they lead into
    located damage), and every frame of a failure nothing locates (`rewards.unlocated_failures`): their
    chunks cannot be told apart, and none of them led to a success.
    """
    signal = np.concatenate([d.signal for d in datasets]).astype(np.float64)
    groups = phase_groups(datasets, bins)
    _, inverse = np.unique(groups, return_inverse=True)
    count = np.bincount(inverse)
    mean = np.bincount(inverse, signal) / count
    std = np.sqrt(np.maximum(np.bincount(inverse, signal**2) / count - mean**2, 0.0))
    above = signal >= mean[inverse] + threshold * std[inverse]
    undamaged = np.concatenate([damage_free_chunks(d.step_reward, d.episode_index, horizon) > 0 for d in datasets])
    located = ~np.concatenate([unlocated_failures(d.step_reward, d.episode_index, d.episode_success) for d in datasets])
    return above & undamaged & located


def label_shares(datasets: Sequence[DatasetFrames], positive: np.ndarray, bins: int) -> dict[str, tuple[float, list[float]]]:
    """Per dataset: the share of its frames labelled positive, and that share in each of `bins` parts of its
    episodes, first to last (nan where a part has no frame)."""
    shares, start = {}, 0
    for d in datasets:
        mine, start = positive[start : start + len(d.signal)].astype(np.float64), start + len(d.signal)
        part = progress_bins(d.episode_index, bins)
        counts, hits = np.bincount(part, minlength=bins), np.bincount(part, mine, minlength=bins)
        parts = [float(h / c) if c else float("nan") for h, c in zip(hits, counts, strict=True)]
        shares[d.name] = (float(mine.mean()) if len(mine) else float("nan"), parts)
    return shares


def label_table(datasets: Sequence[DatasetFrames], positive: np.ndarray, bins: int) -> str:
    """The positive share of each dataset, overall and per part of its episodes: printed before step 1 and
    by `reward_stats`."""
    shares = label_shares(datasets, positive, bins)
    width = max(len(name) for name in shares)
    return "\n".join(
        f"  {name.ljust(width)}  positive {overall:.0%}; per part, first to last: "
        + " ".join("-" if np.isnan(x) else f"{x:.0%}" for x in parts)
        for name, (overall, parts) in shares.items()
    )


def unconditioned(seed: int, step: int, process: int, size: int, fraction: float) -> np.ndarray:
    """Which samples of a training batch get no label: a pure function of (seed, step, process), so that a
    resumed run draws what the uninterrupted one did."""
    return np.random.default_rng((seed, step, process)).random(size) < fraction


def labelled_tasks(tasks: Sequence[str], positive: Sequence[bool], unlabelled: Sequence[bool]) -> list[str]:
    """A batch's prompts: each task with its sample's label, or none where `unlabelled`."""
    return [
        conditioned_task(task, None if skip else POSITIVE if pos else NEGATIVE)
        for task, pos, skip in zip(tasks, positive, unlabelled, strict=True)
    ]
