"""Shared fixtures: small real LeRobot v3.0 datasets (video) written once per test session."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("SVT_LOG", "1")

from crab.data.lerobot_writer import Episode, write_lerobot_dataset

STATE_DIM, ACTION_DIM, IMAGE = 6, 4, 32
PLACE, OPEN = "Put the egg into the tray.", "Open the carton."


def synthetic_episode(rng, task: str, length: int, rewards=None, labels=None) -> Episode:
    frames = {
        "observation.images.top": rng.integers(0, 255, (length, IMAGE, IMAGE, 3), dtype=np.uint8),
        "observation.state": rng.normal(size=(length, STATE_DIM)).astype(np.float32),
        "action": rng.normal(size=(length, ACTION_DIM)).astype(np.float32),
    }
    if rewards is not None:
        frames["next.reward"] = np.asarray(rewards, dtype=np.float32)
        frames["next.success"] = np.zeros(length, dtype=bool)
        frames["next.success"][-1] = bool(np.asarray(rewards)[-1] > 0)
    return Episode(task, frames, labels)


def write(root: Path, name: str, episodes: list[Episode], use_videos: bool = True) -> Path:
    return write_lerobot_dataset(
        root / name, f"crab_test/{name}", 10, episodes,
        [f"s{i}" for i in range(STATE_DIM)], [f"a{i}" for i in range(ACTION_DIM)], use_videos=use_videos,
    )


@pytest.fixture(scope="session")
def data_root(tmp_path_factory) -> Path:
    """Three datasets, one per reward source: quality only, label file, per-step columns."""
    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    write(root, "clean", [synthetic_episode(rng, PLACE, n) for n in (12, 9)])
    write(root, "labelled", [
        synthetic_episode(rng, PLACE, 8, labels={"success": 1, "damage": 1}),
        synthetic_episode(rng, PLACE, 7, labels={"success": 0, "damage": 0}),
    ])
    write(root, "stepwise", [synthetic_episode(rng, OPEN, 4, rewards=[0, -1, 0, 1])])
    # The cameras as PNG images inside the parquet files instead of video.
    write(root, "images", [synthetic_episode(rng, PLACE, n) for n in (6, 5)], use_videos=False)
    return root


def write_manifest(path: Path, rows: list[tuple[str, str, str]], root_prefix: str = "") -> Path:
    """rows: (name, task, quality); roots are the names, relative to the data root."""
    lines = ["name,repo_id,root,task,quality,cycle"]
    lines += [f"{n},crab_test/{n},{root_prefix}{n},{t},{q},cycle1" for n, t, q in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


ALL_ROWS = [("clean", PLACE, "clean"), ("labelled", PLACE, "cracked"), ("stepwise", OPEN, "clean")]


def train_until_first_checkpoint(monkeypatch, cfg) -> None:
    """Run the trainer on `cfg` as if killed right after it wrote its first checkpoint."""
    from train_until_first_checkpoint import interrupted_after_first_checkpoint

    from crab.training import train

    save = train.ckpt.save_checkpoint
    monkeypatch.setattr(train.ckpt, "save_checkpoint", interrupted_after_first_checkpoint(save))
    with pytest.raises(KeyboardInterrupt):
        train.train(cfg)
    monkeypatch.setattr(train.ckpt, "save_checkpoint", save)
