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

from crab.training.rewards import damage_free_chunks, episode_spans, progress_bins, unlocated_failures
from crab.training.weighting import DatasetFrames, phase_groups

POSITIVE, NEGATIVE = "positive", "negative"
# `conditioning.label_rule`: what makes a chunk positive (`advantage_labels`).
LABEL_RULES = ("advantage", "damage", "episode")


def conditioned_task(task: str, label: str | None) -> str:
    """The task text with an advantage label (None: the task itself, the unconditioned prompt).

    lerobot's SmolVLA processor appends the newline its tokenizer expects; a trailing one here is dropped
    so that the label sits on the task's line."""
    return task if label is None else f"{task.rstrip()} Advantage: {label}."


def advantage_labels(
    datasets: Sequence[DatasetFrames], horizon: int, bins: int, threshold: float, rule: str = "advantage"
) -> np.ndarray:
    """Per training frame (all datasets, item order): True where its chunk is labelled positive.

    Every frame of a failure nothing locates (`rewards.unlocated_failures`) is negative under every rule:
    its chunks cannot be told apart, and none of them led to a success. Beyond that, by `rule`:
    - `advantage`: a frame is positive when its signal is at least its group's mean plus `threshold`
      standard deviations, the group being its task and part of the episode (`phase_groups` with `bins`
      parts): a chunk is compared with the chunks at the same point of the same task, whatever came before.
      Chunks whose `horizon` steps hold a negative reward (they lead into located damage) are negative
      whatever their signal.
    - `damage`: positive unless the chunk leads into located damage (the signal is not read).
    - `episode`: an episode that holds damage anywhere is negative throughout: where the damage is a style
      (a sloppy transfer is sloppy before it cracks), its careful-looking chunks do not say "careful", and
      asked "positive" the policy imitates the clean episodes' style from start to end.
    """
    if rule not in LABEL_RULES:
        raise ValueError(f"unknown label rule {rule!r} (one of {', '.join(LABEL_RULES)})")
    located = ~np.concatenate([unlocated_failures(d.step_reward, d.episode_index, d.episode_success) for d in datasets])
    if rule == "episode":
        return located & np.concatenate([undamaged_episodes(d.step_reward, d.episode_index) for d in datasets])
    undamaged = np.concatenate([damage_free_chunks(d.step_reward, d.episode_index, horizon) > 0 for d in datasets])
    if rule == "damage":
        return located & undamaged
    signal = np.concatenate([d.signal for d in datasets]).astype(np.float64)
    groups = phase_groups(datasets, bins)
    _, inverse = np.unique(groups, return_inverse=True)
    count = np.bincount(inverse)
    mean = np.bincount(inverse, signal) / count
    std = np.sqrt(np.maximum(np.bincount(inverse, signal**2) / count - mean**2, 0.0))
    above = signal >= mean[inverse] + threshold * std[inverse]
    return located & undamaged & above


def rule_text(rule: str, threshold: float) -> str:
    """What makes a chunk positive under `rule`, in the words `reward_stats` and training print."""
    return {
        "advantage": f"signal >= its phase's mean + {threshold:g} std, not into damage",
        "damage": "not into damage",
        "episode": "its episode holds no damage",
    }[rule]


def undamaged_episodes(step_reward: np.ndarray, episode_index: np.ndarray) -> np.ndarray:
    """True on every frame of an episode without a negative step reward."""
    starts, lengths = episode_spans(episode_index)
    damaged = np.logical_or.reduceat(step_reward < 0, starts) if len(starts) else np.zeros(0, bool)
    return np.repeat(~damaged, lengths)


def balanced_draw(datasets: Sequence[DatasetFrames], draw: np.ndarray, positive: np.ndarray, share: float) -> np.ndarray:
    """Draw weights (mean 1) under which each task's positive frames make up `share` of that task's draw,
    the task's total and the proportions within its positive and its negative frames kept. A task whose
    frames are all positive or all negative keeps its draw.

    Why: the "positive" policy learns from the positive frames only (and the unlabelled share); where they
    are a few clean episodes among many damaged ones, it sees them a tenth as often as filtering would.
    """
    tasks = frame_tasks(datasets)
    out = np.asarray(draw, dtype=np.float64).copy()
    for task in np.unique(tasks):
        mine = tasks == task
        pos, neg = out[mine & positive].sum(), out[mine & ~positive].sum()
        if pos > 0 and neg > 0:
            out[mine & positive] *= share * (pos + neg) / pos
            out[mine & ~positive] *= (1 - share) * (pos + neg) / neg
    return out / out.mean()


def balanced_with_report(
    datasets: Sequence[DatasetFrames], draw: np.ndarray, positive: np.ndarray, share: float
) -> tuple[np.ndarray, str]:
    """`balanced_draw`, and the line training logs: each task's positive share of the draw before and after."""
    balanced = balanced_draw(datasets, draw, positive, share)
    before, after = positive_draw_shares(datasets, draw, positive), positive_draw_shares(datasets, balanced, positive)
    return balanced, "positive share of each task's draw (conditioning.positive_share): " + "; ".join(
        f"{task!r} {before[task]:.0%} -> {after[task]:.0%}" for task in before
    )


def frame_tasks(datasets: Sequence[DatasetFrames]) -> np.ndarray:
    return np.concatenate([np.full(len(d.signal), d.task, dtype=object) for d in datasets])


def positive_draw_shares(datasets: Sequence[DatasetFrames], draw: np.ndarray, positive: np.ndarray) -> dict[str, float]:
    """Per task: the share of its draw that falls on positive frames."""
    tasks = frame_tasks(datasets)
    return {str(t): float(draw[(tasks == t) & positive].sum() / draw[tasks == t].sum()) for t in np.unique(tasks)}


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
