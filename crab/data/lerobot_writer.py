"""Write episodes as a real LeRobot v3.0 dataset (video cameras, parquet frames) plus Crab's label file.

Used by the simulator's data generation, the demo and the tests: one way to write datasets.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

LABELS_FILE = Path("meta") / "crab_episode_labels.csv"  # per-episode success/damage labels
MIN_VIDEO_SIDE = 28  # lerobot's AV1 encoder (SVT-AV1) kills the process on smaller frames


@dataclass
class Episode:
    """One episode: `frames` maps a feature key to a (T, ...) array.

    Cameras are `observation.images.<name>` uint8 (T, H, W, 3); `observation.state` and `action` are
    float32 (T, D); optional `next.reward` float32 (T,) and `next.success` bool (T,).
    `labels` (optional) holds the episode's `success` and `damage` for the label file.
    """

    task: str
    frames: dict[str, np.ndarray]
    labels: dict[str, float] | None = None
    length: int = field(init=False)

    def __post_init__(self) -> None:
        lengths = {k: len(v) for k, v in self.frames.items()}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"episode arrays have different lengths: {lengths}")
        self.length = next(iter(lengths.values()))


def lerobot_features(
    example: Episode, state_names: list[str], action_names: list[str], use_videos: bool = True
) -> dict:
    """LeRobot feature dict for episodes shaped like `example`; cameras as video, or as PNG images in
    the parquet files when not `use_videos`."""
    features: dict[str, dict] = {}
    for key, arr in example.frames.items():
        if key.startswith("observation.images."):
            h, w, c = arr.shape[1:]
            if use_videos and min(h, w) < MIN_VIDEO_SIDE:
                raise ValueError(f"{key}: frames of {h}x{w} px; the AV1 encoder needs at least {MIN_VIDEO_SIDE} px")
            dtype = "video" if use_videos else "image"
            features[key] = {"dtype": dtype, "shape": (h, w, c), "names": ["height", "width", "channels"]}
        elif key == "observation.state":
            features[key] = {"dtype": "float32", "shape": (arr.shape[1],), "names": state_names}
        elif key == "action":
            features[key] = {"dtype": "float32", "shape": (arr.shape[1],), "names": action_names}
        elif key == "next.reward":
            features[key] = {"dtype": "float32", "shape": (1,), "names": None}
        elif key == "next.success":
            features[key] = {"dtype": "bool", "shape": (1,), "names": None}
        else:
            raise ValueError(f"unsupported feature key {key!r}")
    return features


def write_lerobot_dataset(
    root: Path,
    repo_id: str,
    fps: int,
    episodes: Iterable[Episode],
    state_names: list[str],
    action_names: list[str],
    robot_type: str = "crab_sim",
    use_videos: bool = True,
) -> Path:
    """Write `episodes` to a new LeRobot dataset at `root` (which must not exist yet)."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    os.environ.setdefault("SVT_LOG", "1")  # the AV1 encoder otherwise prints its whole config per video
    root = Path(root)
    dataset = None
    labels: list[tuple[int, float, float]] = []
    for ep_index, ep in enumerate(episodes):
        if dataset is None:
            dataset = LeRobotDataset.create(
                repo_id=repo_id,
                fps=fps,
                features=lerobot_features(ep, state_names, action_names, use_videos),
                root=root,
                robot_type=robot_type,
                use_videos=use_videos,
            )
        for t in range(ep.length):
            frame = {k: (v[t : t + 1] if v.ndim == 1 else v[t]) for k, v in ep.frames.items()}
            dataset.add_frame({**frame, "task": ep.task})
        dataset.save_episode()
        if ep.labels is not None:
            labels.append((ep_index, float(ep.labels["success"]), float(ep.labels["damage"])))
    if dataset is None:
        raise ValueError(f"no episodes to write to {root}")
    dataset.finalize()
    if labels:
        with open(root / LABELS_FILE, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["episode_index", "success", "damage"])
            writer.writerows(labels)
    return root
