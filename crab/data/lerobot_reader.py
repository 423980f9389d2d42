"""Read the items of lerobot 0.6.1's `LeRobotDataset` fast: the same dict for the same index, with no
per-item `datasets` row access and with video decoded in batches, per camera in parallel threads.

Where the time of a `LeRobotDataset.__getitem__` goes (docs/performance.md): at 32x32 most of it in the
`datasets` library's per-item row and column access; at 480p with three cameras in decoding the cameras
one after the other, through decoders that read the file through Python (fsspec) handles. Here:

- every non-image column is read once into a numpy array (from the same memory-mapped table that
  lerobot's `load_nested_dataset` builds, so rows, order and episode filtering are lerobot's);
- `delta_timestamps` become index arithmetic over those arrays, with lerobot's clamping to the episode
  and its `<key>_is_pad` masks;
- each process (DataLoader worker) opens one torchcodec `VideoDecoder` per video file on first use, keeps
  at most `max_open_videos` of them (least recently used closed first), and asks each for all of an
  item's timestamps in one `get_frames_at` call; the cameras of an item are decoded in parallel threads
  where the process has cores to spare (cores / DataLoader workers).
  Decoders and threads are never pickled: a worker (fork or spawn) opens its own.

Frames are those of lerobot's `decode_video_frames_torchcodec` (same decoder options, same frame indices,
same timestamp tolerance check, same float32 conversion); `tests/test_crab_dataset.py` checks equality.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

if TYPE_CHECKING:
    from crab.data.frame_cache import CachedFrames

MAX_OPEN_VIDEOS = 64  # decoders kept open per process (lerobot 0.6 keeps 100 in its LRU cache)


def to_float(frames: torch.Tensor) -> torch.Tensor:
    """uint8 frames as lerobot's float32 in [0, 1] (its exact conversion, for identical floats)."""
    return (frames / 255.0).type(torch.float32)


def float_frames(batch: dict, keys: list[str]) -> dict:
    """`batch` with the uint8 frames of cameras `keys` (items read with `return_uint8`) as lerobot's float32
    items hold them, as lerobot-train converts each batch after its loader: the same floats, but a quarter
    of the bytes cross the DataLoader's worker boundary."""
    return {k: to_float(v) if k in keys and v.dtype == torch.uint8 else v for k, v in batch.items()}


class FrameTimestampError(ValueError):
    """A decoded frame is further from its query timestamp than the tolerance."""


class LeRobotFrames(torch.utils.data.Dataset):
    """The items of `LeRobotDataset(repo_id, root=root, episodes=..., delta_timestamps=...,
    video_backend=...)` (lerobot 0.6.1, no image transforms), with `meta` its `LeRobotDatasetMetadata`.

    With `frame_cache` (crab/data/frame_cache.py) the cameras' frames are read from the cache, at the
    policy's input resolution, instead of decoded. With `return_uint8`, as lerobot's argument of that name,
    video frames (decoded or cached) stay uint8 (`float_frames` converts a batch of them)."""

    def __init__(
        self,
        repo_id: str,
        root: str | Path,
        episodes: list[int] | None = None,
        delta_timestamps: dict[str, list[float]] | None = None,
        video_backend: str = "torchcodec",
        tolerance_s: float = 1e-4,
        max_open_videos: int = MAX_OPEN_VIDEOS,
        frame_cache: CachedFrames | None = None,
        return_uint8: bool = False,
    ):
        from lerobot.datasets.feature_utils import (
            check_delta_timestamps,
            get_delta_indices,
            get_hf_features_from_features,
        )
        from lerobot.datasets.io_utils import load_nested_dataset
        from lerobot.datasets.lerobot_dataset import LeRobotDatasetMetadata

        self.root, self.video_backend, self.tolerance_s = Path(root), video_backend, tolerance_s
        self.max_open_videos = max_open_videos
        self.frame_cache = frame_cache  # the cameras' frames at the policy's resolution, read instead of decoded
        self.return_uint8 = return_uint8
        self.meta = LeRobotDatasetMetadata(repo_id, root=self.root)
        features = get_hf_features_from_features(self.meta.features)
        hf = load_nested_dataset(self.root / "data", features=features, episodes=episodes)
        table = hf.data
        self.columns: dict[str, np.ndarray] = {}
        for key, feature in features.items():
            if not self.meta.features[key]["dtype"] == "image":
                self.columns[key] = _column_array(table.column(key), key, self.root)
        # Image columns (PNG bytes) stay in the memory-mapped table (pickled by file path, not contents).
        self.image_keys = [k for k in features if self.meta.features[k]["dtype"] == "image"]
        self._images = hf if self.image_keys else None
        self._row_keys = list(features)  # lerobot's item order: the table's columns

        self.index = self.columns["index"]
        self._episode = self.columns["episode_index"]
        self._relative = None  # absolute frame index -> row, when only some episodes are loaded
        if episodes is not None:
            self._relative = np.full(int(self.index.max()) + 1, -1, dtype=np.int64)
            self._relative[self.index] = np.arange(len(self.index))

        self.delta_indices: dict[str, np.ndarray] = {}
        if delta_timestamps is not None:
            check_delta_timestamps(delta_timestamps, self.meta.fps, tolerance_s)
            self.delta_indices = {k: np.asarray(v) for k, v in get_delta_indices(delta_timestamps, self.meta.fps).items()}

        # Per episode (by position, as lerobot's `meta.episodes[ep_idx]`): its frame range, and per video
        # key its file and the episode's start time in that file.
        eps = self.meta.episodes.with_format("numpy")
        self._ep_from = np.asarray(eps["dataset_from_index"])
        self._ep_to = np.asarray(eps["dataset_to_index"])
        self.video_keys = list(self.meta.video_keys)
        self._ep_video_start = {k: np.asarray(eps[f"videos/{k}/from_timestamp"], dtype=np.float64) for k in self.video_keys}
        needed = np.unique(self._episode)
        self._ep_video_path = {
            k: {int(e): str(self.root / self.meta.get_video_file_path(int(e), k)) for e in needed} for k in self.video_keys
        }
        # lerobot's `meta.tasks.iloc[task_index].name`, as lists (pandas indexing costs more than an item).
        self._tasks = list(self.meta.tasks.index)
        has_subtasks = "subtask_index" in self.meta.features and self.meta.subtasks is not None
        self._subtasks = list(self.meta.subtasks.index) if has_subtasks else None
        self._local = _ProcessLocal()

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, idx: int) -> dict:
        row = int(idx)
        if not 0 <= row < len(self):
            raise IndexError(f"index {idx} out of range for {len(self)} frames of {self.root}")
        ep = int(self._episode[row])
        abs_idx = int(self.index[row])
        ep_start, ep_end = int(self._ep_from[ep]), int(self._ep_to[ep])
        queried, padding = {}, {}
        for key, delta in self.delta_indices.items():
            query = abs_idx + delta
            padding[f"{key}_is_pad"] = torch.from_numpy((query < ep_start) | (query >= ep_end))
            query = np.minimum(np.maximum(query, ep_start), ep_end - 1)
            queried[key] = query if self._relative is None else self._relative[query]

        item = {key: self._values(key, queried.get(key, row)) for key in self._row_keys}
        item.update(padding)
        if self.video_keys and self.frame_cache is not None:
            # As decoded below: one frame per camera squeezed to (C, H, W).
            cached = {key: self._cached(key, np.atleast_1d(queried.get(key, row))).squeeze(0) for key in self.video_keys}
            item = {**cached, **item}
        elif self.video_keys:
            timestamps = {}
            for key in self.video_keys:
                # lerobot shifts the frame's float32 timestamp (as a Python float) by the episode's start.
                start = float(self._ep_video_start[key][ep])
                frames = np.atleast_1d(self.columns["timestamp"][queried.get(key, row)])
                timestamps[key] = [start + t for t in frames.tolist()]
            item = {**self._decode(ep, timestamps), **item}
        item["task"] = self._tasks[int(item["task_index"])]
        if self._subtasks is not None:
            item["subtask"] = self._subtasks[int(item["subtask_index"])]
        return item

    def _values(self, key: str, rows: int | np.ndarray) -> torch.Tensor:
        """The values of `key` at one row, or stacked at an array of rows (keys with delta timestamps), as
        lerobot's transform makes them: floats as float32, integers as int64, images as float32 CHW in
        [0, 1]. Copies, so that an item never holds (and pickles) a whole column."""
        if key in self.image_keys and self.frame_cache is not None:
            return self._cached(key, np.atleast_1d(rows))[0] if isinstance(rows, int) else self._cached(key, rows)
        if key in self.image_keys:
            if isinstance(rows, int):
                return self._image(key, rows)
            return torch.stack([self._image(key, int(r)) for r in rows])
        return torch.tensor(self.columns[key][rows])

    def _cached(self, key: str, rows: np.ndarray) -> torch.Tensor:
        """(n, C, h, w) frames of camera `key` at `rows` from the frame cache (rows by frame `index`): float,
        or uint8 for a video camera with `return_uint8`."""
        frames = self.frame_cache.read(key, self.index[rows])
        return frames if self.return_uint8 and key in self.video_keys else to_float(frames)

    def _image(self, key: str, row: int) -> torch.Tensor:
        from torchvision.transforms.functional import to_tensor

        return to_tensor(self._pil_image(key, row))

    def _image_uint8(self, key: str, row: int) -> torch.Tensor:
        from torchvision.transforms.functional import pil_to_tensor

        return pil_to_tensor(self._pil_image(key, row))

    def _pil_image(self, key: str, row: int):
        value = self._images.data.fast_slice(row, 1).column(key).to_pylist()[0]
        return self._images.features[key].decode_example(value)

    def _decode(self, ep: int, timestamps: dict[str, list[float]]) -> dict[str, torch.Tensor]:
        jobs = [(self._ep_video_path[key][ep], ts) for key, ts in timestamps.items()]
        pool = self._local.pool(len(jobs))
        if pool is None:
            frames = [self._decode_file(*job) for job in jobs]
        else:
            frames = list(pool.map(lambda job: self._decode_file(*job), jobs))
        # lerobot squeezes the time axis away when a camera has one timestamp.
        return {key: f.squeeze(0) for key, f in zip(timestamps, frames, strict=True)}

    def _decode_file(self, path: str, timestamps: list[float]) -> torch.Tensor:
        if self.video_backend != "torchcodec":
            from lerobot.datasets.video_utils import decode_video_frames

            return decode_video_frames(path, timestamps, self.tolerance_s, self.video_backend, self.return_uint8)
        frames = self._frames_at(path, timestamps)
        return frames if self.return_uint8 else to_float(frames)

    def _frames_at(self, path: str, timestamps: list[float]) -> torch.Tensor:
        """The uint8 (n, C, H, W) frames of a video file at `timestamps`, decoded in one batched call."""
        decoder = self._local.decoder(path, self.max_open_videos)
        fps = decoder.metadata.average_fps
        batch = decoder.get_frames_at(indices=[round(t * fps) for t in timestamps])
        loaded = batch.pts_seconds.tolist()
        off = [abs(q - p) for q, p in zip(timestamps, loaded, strict=True)]
        if max(off) >= self.tolerance_s:
            raise FrameTimestampError(
                f"{path}: frames decoded at {loaded} s for query timestamps {timestamps} s, off by more than "
                f"the tolerance of {self.tolerance_s} s (timestamps out of sync with the video?)"
            )
        return batch.data

    def camera_frames(self, key: str, batch: int = 32) -> Iterator[torch.Tensor]:
        """Every frame of camera `key` (a video or image feature), row after row, as uint8 (n, C, H, W)
        batches of at most `batch` rows: the frames of the items before lerobot's float conversion. Video
        is decoded in order, each batch's frames of one file in one call (for the frame cache's build)."""
        for start in range(0, len(self), batch):
            rows = range(start, min(start + batch, len(self)))
            if key in self.image_keys:
                yield torch.stack([self._image_uint8(key, r) for r in rows])
                continue
            runs: list[tuple[str, list[float]]] = []  # consecutive rows from one file
            for r in rows:
                ep = int(self._episode[r])
                path = self._ep_video_path[key][ep]
                t = float(self._ep_video_start[key][ep]) + float(self.columns["timestamp"][r])
                if runs and runs[-1][0] == path:
                    runs[-1][1].append(t)
                else:
                    runs.append((path, [t]))
            yield torch.cat([self._frames_at(path, ts) for path, ts in runs])


class _ProcessLocal:
    """The decoders and camera threads of one process; rebuilt empty after a fork or an unpickle."""

    def __init__(self):
        self._pid = os.getpid()
        self._decoders: OrderedDict[str, object] = OrderedDict()
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | bool | None = None  # False: decode the cameras in turn

    def __reduce__(self):
        # Decoders and threads belong to the process that opened them: a worker opens its own.
        return _ProcessLocal, ()

    def _check_process(self) -> None:
        if os.getpid() != self._pid:  # forked: the parent's decoders and threads are not ours
            self.__init__()

    def pool(self, cameras: int) -> ThreadPoolExecutor | None:
        """Threads for the cameras of an item: as many as the cores each loader process gets (the cores
        over the DataLoader's workers), at most one per camera; None where that is one (decode in turn).
        More threads than cores only make the decoders wait for each other."""
        self._check_process()
        if self._pool is None:
            info = torch.utils.data.get_worker_info()
            threads = min(cameras, (os.cpu_count() or 1) // (info.num_workers if info else 1))
            self._pool = ThreadPoolExecutor(threads, thread_name_prefix="crab-video") if threads > 1 else False
        return self._pool or None

    def decoder(self, path: str, capacity: int):
        from torchcodec.decoders import VideoDecoder

        self._check_process()
        with self._lock:
            decoder = self._decoders.get(path)
            if decoder is not None:
                self._decoders.move_to_end(path)
                return decoder
        # lerobot 0.6.1 opens the same way (approximate seeking, one FFmpeg thread), through an fsspec
        # handle; a path lets FFmpeg read the file itself, without calling back into Python.
        decoder = VideoDecoder(path, seek_mode="approximate")
        with self._lock:
            self._decoders[path] = decoder
            while len(self._decoders) > capacity:
                self._decoders.popitem(last=False)
        return decoder


def _column_array(column: pa.ChunkedArray, key: str, root: Path) -> np.ndarray:
    """A numeric column as the dtype lerobot's `hf_transform_to_torch` gives its values (`torch.tensor` of
    Python numbers: float32, int64 or bool), shaped (rows, *feature shape)."""
    array = column.combine_chunks()
    if isinstance(array, pa.ExtensionArray):  # datasets' Array2D..Array5D
        array = array.storage
    if array.null_count:
        raise ValueError(f"{root / 'data'}: column `{key}` has {array.null_count} missing values")
    shape = []
    while pa.types.is_list(array.type) or pa.types.is_fixed_size_list(array.type) or pa.types.is_large_list(array.type):
        lengths = pc.list_value_length(array).to_numpy(zero_copy_only=False)
        if len(lengths) and lengths.min() != lengths.max():
            raise ValueError(f"{root / 'data'}: column `{key}` has rows of different lengths")
        shape.append(int(lengths[0]) if len(lengths) else 0)
        array = array.flatten()
    values = array.to_numpy(zero_copy_only=False)
    if values.dtype == np.bool_:
        dtype = np.bool_
    elif np.issubdtype(values.dtype, np.integer):
        dtype = np.int64
    elif np.issubdtype(values.dtype, np.floating):
        dtype = np.float32
    else:
        raise ValueError(f"{root / 'data'}: column `{key}` of type {column.type} is not numeric")
    return values.astype(dtype).reshape(len(column), *shape)
