"""CrabDataset: the LeRobot datasets of a manifest, each item annotated with its rewards.

Rewards are computed once per dataset, vectorised over its parquet frames (see
`docs/reward_weighting.md` for the formulas and the order of sources); `__getitem__` only indexes
precomputed arrays. Each dataset's items are lerobot's `LeRobotDataset` items, read by the fast
`LeRobotFrames` (crab/data/lerobot_reader.py). Picklable, so DataLoader workers work under spawn (Windows).
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.dataset as pads
import torch
from torch.utils.data import Dataset

from crab.data.frame_cache import open_cached_frames
from crab.data.lerobot_reader import LeRobotFrames
from crab.data.lerobot_writer import LABELS_FILE
from crab.training import rewards
from crab.training.manifest import ManifestError, ManifestRow, check_roots
from crab.training.rewards import QUALITY_LABELS, RewardSpec
from crab.training.weighting import DatasetFrames, dataset_frames

logger = logging.getLogger(__name__)

# Features that must agree across the datasets of one manifest (what the policy consumes).
POLICY_FEATURE_PREFIXES = ("observation.", "action")


@dataclass
class RewardTable:
    """Per-frame reward annotation of one dataset, indexed by the dataset's absolute frame `index`."""

    index: np.ndarray  # (N,) absolute frame index, sorted
    episode_index: np.ndarray  # (N,)
    step_reward: np.ndarray  # (N,) float64
    chunk_return: np.ndarray
    episode_reward: np.ndarray
    episode_success: np.ndarray
    episode_damage: np.ndarray
    signal: np.ndarray  # the return signal G the weights come from (`rewards.SIGNALS`)


def _read_labels(row: ManifestRow) -> dict[int, tuple[float, float]] | None:
    path = row.root / LABELS_FILE
    if not path.is_file():
        return None
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in ("episode_index", "success", "damage") if c not in (reader.fieldnames or [])]
        if missing:
            raise ManifestError(f"{path}: missing column(s) {missing} (dataset {row.name!r})")
        labels = {}
        for line, rec in enumerate(reader, start=2):
            try:
                s, d = float(rec["success"]), float(rec["damage"])
            except ValueError as e:
                raise ManifestError(f"{path}:{line}: non-numeric label ({e})") from None
            if not (np.isfinite(s) and np.isfinite(d)):
                raise ManifestError(f"{path}:{line}: NaN or infinite label in `success`/`damage`")
            labels[int(rec["episode_index"])] = (s, d)
    return labels


def annotate(
    row: ManifestRow,
    spec: RewardSpec,
    signal: str = "outcome",
    values: tuple[np.ndarray, np.ndarray] | None = None,
    credit_horizon: int | None = None,
) -> RewardTable:
    """Compute the reward fields of every frame of one dataset (vectorised over its parquet files).

    `signal` chooses the return signal G; `chunk_advantage` and `chunk_q` need `values`, the (frame index, V(s)) of
    every frame of the dataset from a checked value file (`value_fit.load_values`). The per-chunk
    signals look `credit_horizon` steps ahead (None: the action chunk, `spec.chunk_size`).
    """
    horizon = spec.horizon(credit_horizon)
    data_dir = row.root / "data"
    parquet = pads.dataset(data_dir, format="parquet")
    wanted = [c for c in ("index", "episode_index", "next.reward", "next.success") if c in parquet.schema.names]
    table = parquet.to_table(columns=wanted).sort_by("index")
    index = table.column("index").to_numpy()
    ep = table.column("episode_index").to_numpy()
    episodes, ep_pos = np.unique(ep, return_inverse=True)

    # Episode labels: quality, overridden by the label file, `success` overridden by `next.success`.
    success = np.full(len(episodes), QUALITY_LABELS[row.quality][0])
    damage = np.full(len(episodes), QUALITY_LABELS[row.quality][1])
    labels = _read_labels(row)
    if labels is not None:
        absent = [int(e) for e in episodes if int(e) not in labels]
        if absent:
            raise ManifestError(f"{row.root / LABELS_FILE}: no labels for episode(s) {absent[:10]} of {row.name!r}")
        success = np.array([labels[int(e)][0] for e in episodes])
        damage = np.array([labels[int(e)][1] for e in episodes])
    if "next.success" in wanted:
        ok = _flat(table, "next.success", row).astype(np.float64)
        if ok.any() or not success.any():
            success = np.zeros(len(episodes))
            np.maximum.at(success, ep_pos, ok)
        else:  # never True while the labels name successes: a recorder that never sets it; trusting it
            # would turn the successes into failures (and `drop` would leave them out)
            logger.warning(
                "dataset %r (%s): its next.success column is never True, but its quality %r or labels file name "
                "successes; success comes from those", row.name, row.root, row.quality,
            )
    if "next.reward" in wanted:
        step = _flat(table, "next.reward", row)
        ep_reward = np.zeros(len(episodes))
        np.add.at(ep_reward, ep_pos, step)
    else:
        ep_reward = rewards.episode_reward_from_labels(success, damage, spec.damage_penalty)
        step = rewards.sparse_step_rewards(ep, ep_reward[ep_pos])
    if signal == "outcome":
        g = ep_reward[ep_pos]
    elif signal == "oracle":
        g = rewards.damage_free_chunks(step, ep, horizon)
    else:
        if values is None or not np.array_equal(values[0], index):
            raise ManifestError(f"dataset {row.name!r}: the value file does not hold a value for each of its frames")
        per_chunk = rewards.chunk_advantages if signal == "chunk_advantage" else rewards.chunk_q
        g = per_chunk(step, values[1], ep, horizon, spec.gamma)
    return RewardTable(
        index=index,
        episode_index=ep,
        step_reward=step,
        chunk_return=rewards.chunk_returns(step, ep, spec.chunk_size, spec.gamma),
        episode_reward=ep_reward[ep_pos],
        episode_success=success[ep_pos],
        episode_damage=damage[ep_pos],
        signal=g,
    )


def _flat(table, column: str, row: ManifestRow) -> np.ndarray:
    values = np.asarray(table.column(column).to_pylist(), dtype=np.float64).reshape(len(table))
    bad = ~np.isfinite(values)
    if bad.any():
        frames = table.column("index").to_numpy()[bad][:5].tolist()
        raise ManifestError(
            f"{row.source}: dataset {row.name!r} ({row.root / 'data'}): NaN or infinite values in column "
            f"`{column}` at frame index {frames}"
        )
    return values


def fingerprint(rows: list[ManifestRow], tables: list[RewardTable], spec: RewardSpec, signal: str = "outcome") -> str:
    """Identifies the manifest, the reward spec, the kind of return signal and every frame's signal.

    (`outcome` adds nothing for its kind, so statistics written before other kinds existed stay valid.)
    """
    h = hashlib.sha256(json.dumps(spec.__dict__, sort_keys=True).encode())
    if signal != "outcome":
        h.update(signal.encode())
    for row, t in zip(rows, tables, strict=True):
        h.update(json.dumps([row.name, row.repo_id, row.task, row.quality, list(row.cycles)]).encode())
        h.update(np.round(t.signal, 9).astype(np.float64).tobytes())
    return h.hexdigest()[:16]


def _policy_features(meta) -> dict:
    return {
        k: (v["dtype"], tuple(v["shape"]))
        for k, v in meta.features.items()
        if k.startswith(POLICY_FEATURE_PREFIXES)
    }


def scale_counts(stats: dict[str, dict], factor: float) -> dict[str, dict]:
    """A dataset's lerobot feature statistics with every `count` multiplied by `factor`.

    lerobot's `aggregate_stats` pools datasets in proportion to their counts. Scaling a dataset's counts
    by its mean RWFM weight makes the policy's normalisation describe the data the weighted loss
    imitates, not the frames it suppresses.
    """
    return {key: {**ft, "count": np.asarray(ft["count"]) * factor} for key, ft in stats.items()}


class CrabDataset(Dataset):
    """Concatenation of a manifest's LeRobot datasets; items carry the guide's reward fields.

    `episodes` optionally restricts each dataset (by name) to a list of episode indices. With `cache`,
    each item is decoded once and then served from memory (a copy of its dict, sharing the tensors).
    `signal` chooses the return signal G of every item; `chunk_advantage` and `chunk_q` need `state_values`, the
    checked value file's {dataset name: (frame index, V)} (`value_fit.load_values`; see `annotate`, also
    for `credit_horizon`).
    With `frame_cache` (a folder built by `python -m crab.data.frame_cache`) the cameras' frames come from
    that cache, which must have been built for `resolution`, the policy's `resize_imgs_with_padding`.
    With `return_uint8` video frames stay uint8, as in lerobot's trainer: the trainer converts each batch
    (`float_frames(batch, ds.video_keys)`) after its loader.
    """

    def __init__(
        self,
        rows: list[ManifestRow],
        spec: RewardSpec,
        episodes: dict[str, list[int]] | None = None,
        video_backend: str = "torchcodec",
        cache: bool = False,
        signal: str = "outcome",
        state_values: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
        credit_horizon: int | None = None,
        frame_cache: str | Path | None = None,
        resolution: tuple[int, int] | None = None,
        return_uint8: bool = False,
    ):
        from lerobot.datasets.lerobot_dataset import LeRobotDatasetMetadata

        check_roots(rows)
        self.rows, self.spec, self.signal = rows, spec, signal
        first = LeRobotDatasetMetadata(rows[0].repo_id, root=rows[0].root)
        self.fps = first.fps
        self.delta_timestamps = {"action": [i / self.fps for i in range(spec.chunk_size)]}
        self.video_backend = video_backend
        self.episodes = episodes
        self.datasets, self.tables, self._rewards, self._rows_of_items = [], [], [], []
        for row in rows:
            meta = LeRobotDatasetMetadata(row.repo_id, root=row.root)
            _check_compatible(rows[0], first, row, meta)
            if row.task not in set(meta.tasks.index):
                raise ManifestError(
                    f"{row.source}: task {row.task!r} of dataset {row.name!r} is not among its tasks "
                    f"{sorted(meta.tasks.index)}"
                )
            cameras = [k for k, f in meta.features.items() if f["dtype"] in ("video", "image")]
            ds = LeRobotFrames(
                row.repo_id,
                root=row.root,
                episodes=None if episodes is None else episodes[row.name],
                delta_timestamps=self.delta_timestamps,
                video_backend=video_backend,
                frame_cache=None if frame_cache is None else open_cached_frames(frame_cache, row, resolution, cameras),
                return_uint8=return_uint8,
            )
            own_values = None if state_values is None else state_values.get(row.name)
            table = annotate(row, spec, signal, own_values, credit_horizon)
            # Reward fields of every item this dataset serves, in its own (possibly episode-filtered) order.
            pos = np.searchsorted(table.index, ds.index)
            values = np.stack([getattr(table, name)[pos] for name in rewards.REWARD_FIELDS], axis=1)
            self.datasets.append(ds)
            self.tables.append(table)
            self._rewards.append(torch.from_numpy(values.astype(np.float32)))
            self._rows_of_items.append(pos)  # each served item's row in `table`
        self.meta = first
        self.video_keys = list(first.video_keys)
        # Features only some datasets have (e.g. `next.reward`) would break default collate; the
        # reward fields carry what they mean.
        keys = [set(ds.meta.features) for ds in self.datasets]
        self._uncommon = set.union(*keys) - set.intersection(*keys)
        self._offsets = np.cumsum([0] + [len(d) for d in self.datasets])
        self._cache: dict[int, dict] | None = {} if cache else None

    def lerobot_dataset(self, d: int, **options):
        """lerobot's own `LeRobotDataset` for dataset `d`: the items `self.datasets[d]` reproduces, read
        lerobot's way (for the equality tests and the loader benchmark; `options`: further `LeRobotDataset`
        arguments, e.g. `return_uint8`)."""
        from lerobot.datasets.lerobot_dataset import LeRobotDataset

        row = self.rows[d]
        return LeRobotDataset(
            row.repo_id,
            root=row.root,
            episodes=None if self.episodes is None else self.episodes[row.name],
            delta_timestamps=self.delta_timestamps,
            video_backend=self.video_backend,
            **options,
        )

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.rows, self.tables, self.spec, self.signal)

    def signals(self) -> dict[str, np.ndarray]:
        """Per dataset (manifest name): the return signal G of every item served, in item order."""
        return {
            row.name: table.signal[pos] for row, table, pos in zip(self.rows, self.tables, self._rows_of_items, strict=True)
        }

    def weight_frames(self, held_out: dict[str, list[int]] | None = None) -> list[DatasetFrames]:
        """Per dataset, the items this dataset serves as `weighting.DatasetFrames` (what the run's weights are
        computed from); `held_out`: each dataset's validation episodes, for the pre-flight table."""
        return [
            dataset_frames(row, table, pos, len((held_out or {}).get(row.name, [])))
            for row, table, pos in zip(self.rows, self.tables, self._rows_of_items, strict=True)
        ]

    def normalization_stats(self, counts: np.ndarray | None = None) -> dict:
        """lerobot statistics of the policy's features over the episodes this dataset serves.

        lerobot's own per-episode statistics (`meta/episodes`), pooled with its `aggregate_stats`, so
        held-out episodes do not leak into the normalisation. With `counts` (per item, in item order: how
        much the frame counts, `RunWeights.normalization_counts`) each episode counts as its frames' summed
        counts; episodes that count 0 (dropped) are left out.
        """
        from lerobot.datasets.compute_stats import aggregate_stats

        pooled, start = [], 0
        for row, ds, table, pos in zip(self.rows, self.datasets, self.tables, self._rows_of_items, strict=True):
            episode_of_item = table.episode_index[pos]
            mine, start = (None if counts is None else counts[start : start + len(pos)]), start + len(pos)
            for episode, stats in _episode_stats(row, ds.meta.features, np.unique(episode_of_item)).items():
                factor = 1.0 if mine is None else float(mine[episode_of_item == episode].mean())
                if factor > 0:
                    pooled.append(scale_counts(stats, factor))
        return aggregate_stats(pooled)

    def __len__(self) -> int:
        return int(self._offsets[-1])

    def locate(self, idx: int) -> tuple[int, int]:
        """Global item index -> (dataset position, index within that dataset)."""
        if not 0 <= idx < len(self):
            raise IndexError(idx)
        d = int(np.searchsorted(self._offsets, idx, side="right") - 1)
        return d, idx - int(self._offsets[d])

    def __getitem__(self, idx: int) -> dict:
        if self._cache is None:
            return self._load(idx)
        if idx not in self._cache:
            self._cache[idx] = self._load(idx)
        return dict(self._cache[idx])

    def _load(self, idx: int) -> dict:
        d, local = self.locate(idx)
        item = self.datasets[d][local]
        for key in self._uncommon.intersection(item):
            del item[key]
        row = self.rows[d]
        item.update(zip(rewards.REWARD_FIELDS, self._rewards[d][local].clone().unbind(), strict=True))
        item["dataset_name"] = row.name
        item["task_name"] = item["task"]
        item["quality"] = row.quality
        item["item_index"] = idx  # where the run's per-frame arrays (advantage labels) hold this item
        return item


def _episode_stats(row: ManifestRow, features: dict, episodes: np.ndarray) -> dict[int, dict[str, dict]]:
    """lerobot's stored statistics of the policy features (`observation.*`, `action`) of `episodes`."""
    keys = [k for k in features if k.startswith(POLICY_FEATURE_PREFIXES)]
    table = pads.dataset(row.root / "meta" / "episodes", format="parquet").to_table()
    columns = [c for c in table.column_names if c.startswith("stats/") and c.split("/")[1] in keys]
    if not columns:
        raise ManifestError(f"{row.root / 'meta' / 'episodes'}: no per-episode statistics (dataset {row.name!r})")
    wanted = set(episodes.tolist())
    out = {}
    for record in table.select(["episode_index", *columns]).to_pylist():
        if record["episode_index"] in wanted:
            stats: dict[str, dict] = {}
            for column in columns:
                _, feature, stat = column.split("/")
                stats.setdefault(feature, {})[stat] = np.asarray(record[column], dtype=np.float64)
            out[record["episode_index"]] = stats
    return out


def _check_compatible(row0: ManifestRow, meta0, row: ManifestRow, meta) -> None:
    if meta.fps != meta0.fps:
        raise ManifestError(
            f"{row.source}: dataset {row.name!r} has fps {meta.fps} but {row0.name!r} ({row0.source}) has {meta0.fps}"
        )
    f0, f = _policy_features(meta0), _policy_features(meta)
    for key in sorted(set(f0) | set(f)):
        if f0.get(key) != f.get(key):
            raise ManifestError(
                f"{row.source}: feature `{key}` of dataset {row.name!r} is {f.get(key)} but "
                f"{f0.get(key)} in {row0.name!r} ({row0.source}); the datasets of one manifest must agree"
            )
