"""A run's per-frame training weights, computed once: signal -> advantage -> exp -> clip -> drop -> per phase
-> one constant (docs: crab/training/docs/reward_weighting.md).

Every consumer reads a `RunWeights`: the weighted loss (`constant`, `apply: loss`), the sampler (`draw`,
`apply: sample`), the action/state normalisation statistics (`normalization_counts`), the pre-flight table
printed before step 1 and by `reward_stats` (`preflight_table`), and the weights exported for lerobot's
trainer. Built from the training frames by the trainer and from the same frames by `reward_stats`, the two
print the same table.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from crab.training import rewards
from crab.training.config import RewardWeightingConfig
from crab.training.manifest import ManifestRow
from crab.training.rewards import episode_spans, frame_weights, per_group_normalised, unlocated_failures

if TYPE_CHECKING:
    from crab.training.crab_dataset import RewardTable


class WeightingError(ValueError):
    """Weighting settings that leave a task (or the whole run) nothing to learn from."""


@dataclasses.dataclass(frozen=True)
class DatasetFrames:
    """One dataset's training frames, in item order, and what the weights need of them."""

    name: str
    task: str
    quality: str
    signal: np.ndarray  # (N,) the return signal G of each frame
    episode_index: np.ndarray  # (N,) contiguous episodes, in order
    step_reward: np.ndarray  # (N,)
    episode_success: np.ndarray  # (N,) the frame's episode's success label
    held_out: int = 0  # episodes held out for validation (not among these frames)


@dataclasses.dataclass(frozen=True)
class RunWeights:
    """Per training frame (all datasets, item order): `raw` the clipped exp(alpha * A) (0 where `dropped`),
    `draw` the weights that choose the frames (`apply: sample`: `raw`, per phase with `normalize: phase`;
    `apply: loss`: uniform), `loss` the weights that scale the per-sample loss (`apply: loss`: `raw /
    constant`; `apply: sample`: 1), and `constant`, the mean of `raw` over the training frames."""

    datasets: tuple[DatasetFrames, ...]
    raw: np.ndarray
    dropped: np.ndarray
    draw: np.ndarray
    loss: np.ndarray
    constant: float
    apply: str

    @property
    def trained(self) -> np.ndarray:
        """What each frame contributes to training in expectation (draw x loss weight), mean 1."""
        w = self.draw * self.loss
        return w / w.mean()

    def slices(self) -> list[slice]:
        ends = np.cumsum([len(d.signal) for d in self.datasets])
        return [slice(int(e - len(d.signal)), int(e)) for d, e in zip(self.datasets, ends, strict=True)]

    def normalization_counts(self, mode: str) -> np.ndarray:
        """Per frame, how much it counts in the action/state normalisation statistics: "frame" every kept
        frame once (imitation learning of the kept episodes), "weight" its trained weight; 0 where dropped."""
        if mode == "frame":
            return (~self.dropped).astype(np.float64)
        return self.trained


def run_weights(
    rw: RewardWeightingConfig, datasets: Sequence[DatasetFrames], mean: float, std: float
) -> RunWeights:
    """The run's weights from its training frames and the manifest's signal statistics (mean, std of G).

    Refuses (`WeightingError`, naming the task) settings under which a task keeps no frame to learn from, or
    every frame weighs 0. With weighting off every weight is 1.
    """
    datasets = tuple(datasets)
    n = sum(len(d.signal) for d in datasets)
    if not rw.enabled:
        ones = np.ones(n)
        return RunWeights(datasets, ones, np.zeros(n, bool), ones, ones, 1.0, "loss")
    dropped = np.concatenate([
        unlocated_failures(d.step_reward, d.episode_index, d.episode_success) if rw.unlocated_failures == "drop"
        else np.zeros(len(d.signal), bool)
        for d in datasets
    ])  # fmt: skip
    _refuse_lost_tasks(datasets, dropped)
    clip = (rw.clip_min, rw.clip_max)
    raw = frame_weights(np.concatenate([d.signal for d in datasets]), mean, std, rw.alpha, clip, rw.std_floor, rw.signal, dropped)
    constant = float(raw.mean())
    if constant <= 0:
        raise WeightingError(
            f"every training frame has RWFM weight 0 (alpha {rw.alpha}, clip_min {rw.clip_min}): lower "
            "reward_weighting.alpha or raise reward_weighting.clip_min"
        )
    if rw.apply == "loss":
        return RunWeights(datasets, raw, dropped, np.ones(n), raw / constant, constant, "loss")
    draw = raw
    if rw.normalize == "phase":
        draw = per_group_normalised(raw, phase_groups(datasets, rw.phase_bins))
    return RunWeights(datasets, raw, dropped, draw / draw.mean(), np.ones(n), constant, "sample")


def phase_groups(datasets: Sequence[DatasetFrames], bins: int) -> np.ndarray:
    """Per frame: its (task, part of its episode) group (`rewards.phase_groups`). Held-out episodes are
    whole episodes, so leaving them out does not move the other episodes' parts."""
    return np.concatenate(rewards.phase_groups([d.task for d in datasets], [d.episode_index for d in datasets], bins))


def dataset_frames(row: ManifestRow, table: RewardTable, rows_kept: np.ndarray, held_out: int = 0) -> DatasetFrames:
    """The `DatasetFrames` of `table`'s rows `rows_kept` (positions, in item order): what `CrabDataset` serves
    for training and what `reward_stats` keeps after the same validation split."""
    return DatasetFrames(
        row.name, row.task, row.quality, table.signal[rows_kept], table.episode_index[rows_kept],
        table.step_reward[rows_kept], table.episode_success[rows_kept], held_out,
    )  # fmt: skip


def _refuse_lost_tasks(datasets: Sequence[DatasetFrames], dropped: np.ndarray) -> None:
    kept: dict[str, int] = {}
    start = 0
    for d in datasets:
        kept[d.task] = kept.get(d.task, 0) + int((~dropped[start : start + len(d.signal)]).sum())
        start += len(d.signal)
    lost = sorted(task for task, k in kept.items() if k == 0)
    if lost:
        raise WeightingError(
            f"task(s) {lost}: every training episode failed without a damage step, and "
            "`reward_weighting.unlocated_failures: drop` leaves them all out: label the successes "
            "(next.success, the quality column or the labels file) or set it to `keep`"
        )


def dataset_shares(weights: RunWeights) -> dict[str, dict]:
    """Per dataset: its task, `frame_share` (of the frames), `mean_weight` (its mean clipped raw weight),
    `weight_share` (of the run's training weight), `task_share` (of its task's) and `task_total` (its task's
    summed training weight): the shares the pre-flight table prints and the benchmark's tables show."""
    trained, frames = weights.trained, len(weights.trained)
    task_total: dict[str, float] = {}
    for d, s in zip(weights.datasets, weights.slices(), strict=True):
        task_total[d.task] = task_total.get(d.task, 0.0) + trained[s].sum()
    return {
        d.name: {
            "task": d.task, "frame_share": len(d.signal) / frames, "mean_weight": float(weights.raw[s].mean()),
            "weight_share": float(trained[s].sum() / trained.sum()),
            "task_share": float(trained[s].sum() / task_total[d.task]) if task_total[d.task] > 0 else 0.0,
            "task_total": float(task_total[d.task]),
        }
        for d, s in zip(weights.datasets, weights.slices(), strict=True)
    }  # fmt: skip


def _episodes(d: DatasetFrames, mask: np.ndarray | None = None) -> int:
    starts, _ = episode_spans(d.episode_index)
    return len(starts) if mask is None else int(mask[starts].sum())


def preflight_table(weights: RunWeights, normalization: str) -> str:
    """Per dataset: episodes for training / held out / dropped, its share of the run's training weight
    (of the draw with `apply: sample`, of the loss weight with `apply: loss`), of its task's, and of the
    normalisation statistics. Printed before step 1 and by `reward_stats`."""
    counts = weights.normalization_counts(normalization)
    shares = dataset_shares(weights)
    what = "draw" if weights.apply == "sample" else "loss weight"
    header = ("dataset", "quality", "episodes train/held out/dropped", f"of the {what}", "of its task's",
              f"of the normalisation ({normalization})")  # fmt: skip
    lines = [header]
    for d, s in zip(weights.datasets, weights.slices(), strict=True):
        share = shares[d.name]
        task_share = f"{share['task_share']:.2%}" if share["task_total"] > 0 else "-"
        lines.append((
            d.name, d.quality, f"{_episodes(d)}/{d.held_out}/{_episodes(d, weights.dropped[s])}",
            f"{share['weight_share']:.2%}", task_share, f"{counts[s].sum() / counts.sum():.2%}",
        ))  # fmt: skip
    widths = [max(len(str(row[i])) for row in lines) for i in range(len(header))]
    return "\n".join("  " + "  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in lines)
