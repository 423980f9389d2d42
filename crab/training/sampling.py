"""Train/validation split and a resumable, seeded batch order."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Sampler

from crab.training.manifest import ManifestError, ManifestRow


def split_episodes(rows: list[ManifestRow], val_per_dataset: int) -> tuple[dict[str, list[int]], dict[str, list[int]]]:
    """Hold out the last `val_per_dataset` episodes of every dataset for validation."""
    from lerobot.datasets.lerobot_dataset import LeRobotDatasetMetadata

    train, val = {}, {}
    for row in rows:
        n = LeRobotDatasetMetadata(row.repo_id, root=row.root).total_episodes
        if n <= val_per_dataset:
            raise ManifestError(
                f"{row.source}: dataset {row.name!r} has {n} episode(s); holding out {val_per_dataset} for "
                "validation would leave none to train on (lower data.val_episodes_per_dataset)"
            )
        train[row.name] = list(range(n - val_per_dataset))
        if val_per_dataset:
            val[row.name] = list(range(n - val_per_dataset, n))
    return train, val


class EpochBatchSampler(Sampler[list[int]]):
    """Batches of a seeded order per epoch, resumable at any batch, sharded across processes.

    The order is a pure function of (seed, epoch): a permutation of the n items, or, with `weights`, n
    draws with replacement, item i with probability weights[i] / sum(weights) (RWFM's `apply: sample`).
    A resumed run sees exactly the batches the uninterrupted run would have seen; the global batch of a
    step (every process's batch) is the same slice of the order at any process count; incomplete last
    batches are dropped.
    """

    def __init__(self, n: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1, weights=None):
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.probabilities = None if weights is None else sampling_probabilities(weights, n)
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def __len__(self) -> int:
        return self.n // (self.batch_size * self.world_size)

    def __iter__(self):
        if self.probabilities is None:
            g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        else:  # numpy's draw takes any number of items (torch.multinomial stops at 2^24)
            order = np.random.default_rng([self.seed, self.epoch]).choice(self.n, size=self.n, p=self.probabilities).tolist()
        for b in range(self.start, len(self)):
            first = (b * self.world_size + self.rank) * self.batch_size
            yield order[first : first + self.batch_size]


def sampling_probabilities(weights, n: int) -> np.ndarray:
    """Per-item probabilities proportional to `weights` (n finite, non-negative, not all 0)."""
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (n,) or not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"sampling weights must be {n} finite, non-negative numbers, not all 0")
    return w / w.sum()
