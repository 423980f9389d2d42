"""Atomic checkpoints under `outputs/<run>/step_XXXXXX`.

Layout of one checkpoint:
    step_000100/
      pretrained_model/      lerobot format: config.json, model.safetensors, policy pre/post-processor
                             files (SmolVLAPolicy.from_pretrained and lerobot's tools load it)
      training_state.pt      optimizer, scheduler, RNG states of every process, step, epoch, data
                             position, learning-rate schedule length, epoch metrics
      crab_config.yaml       the resolved training config
      reward_stats.json      the reward statistics the run used

A checkpoint is written into a hidden temporary folder beside it and renamed into place, so a kill
mid-write leaves at most a `.tmp` folder (ignored, removed by the next save) and every `step_*`
folder complete.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import yaml

from crab.training.config import ConfigError, CrabConfig, to_dict, training_settings

STEP_DIR = re.compile(r"^step_(\d{6,})$")
TMP_PREFIX = ".tmp_step_"


class CheckpointError(ValueError):
    pass


def step_dir(run_dir: Path, step: int) -> Path:
    return run_dir / f"step_{step:06d}"


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    if not run_dir.is_dir():
        return []
    found = [p for p in run_dir.iterdir() if p.is_dir() and STEP_DIR.match(p.name)]
    return sorted(found, key=lambda p: int(STEP_DIR.match(p.name).group(1)))


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def rank_rng_states(training_state: dict) -> list[dict]:
    """The saved RNG states, one per process (checkpoints before per-process states hold one dict)."""
    rng = training_state["rng"]
    return [rng] if isinstance(rng, dict) else rng


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    run_dir: Path,
    step: int,
    write_model: Callable[[Path], None],
    training_state: dict,
    config: dict,
    reward_stats: dict,
    keep_last: int,
) -> Path:
    """Write everything into a temporary folder, then rename it to `step_XXXXXX`; keep the last N."""
    for stale in run_dir.glob(f"{TMP_PREFIX}*"):  # left by a run killed mid-write
        shutil.rmtree(stale, ignore_errors=True)
    final = step_dir(run_dir, step)
    tmp = run_dir / f"{TMP_PREFIX}{step:06d}_{os.getpid()}"
    tmp.mkdir(parents=True)
    try:
        write_model(tmp / "pretrained_model")
        torch.save(training_state, tmp / "training_state.pt")
        (tmp / "crab_config.yaml").write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
        (tmp / "reward_stats.json").write_text(json.dumps(reward_stats, indent=2), encoding="utf-8")
        if final.exists():  # re-saving a step after a resume: swap, so a whole copy exists at every moment
            old = run_dir / f"{TMP_PREFIX}old_{step:06d}"
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in list_checkpoints(run_dir)[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(old)
    return final


def load_checkpoint(path: str | Path) -> tuple[Path, dict, dict]:
    """-> (pretrained_model folder, training state, saved config); a clear error if anything is missing."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint not found: {path}")
    missing = [n for n in ("pretrained_model", "training_state.pt", "crab_config.yaml") if not (path / n).exists()]
    if missing:
        raise CheckpointError(f"{path} is not a complete Crab checkpoint: missing {missing}")
    state = torch.load(path / "training_state.pt", map_location="cpu", weights_only=False)
    config = yaml.safe_load((path / "crab_config.yaml").read_text(encoding="utf-8"))
    return path / "pretrained_model", state, config

# Keys that must match between a checkpoint's config and the resuming one. Others may change: log_every,
# save_every, ..., and train.steps, which extends (or shortens) the run but never its learning-rate
# schedule: that is fixed by the run's first length (see `train`).
RESUME_MUST_MATCH = ("data", "policy", "reward_weighting", "anchor", "replay", "conditioning", "task_masks", "seed")


def check_resume_config(saved: dict, cfg: CrabConfig, path: str) -> None:
    saved, current = training_settings(saved), training_settings(to_dict(cfg))
    changed = [k for k in RESUME_MUST_MATCH if saved.get(k) != current[k]]
    if changed:
        keys = {k: (saved.get(k), current[k]) for k in changed}
        differ = "; ".join(f"`{key}` saved {a!r}, now {b!r}" for key, (a, b) in _leaf_differences(keys).items())
        raise ConfigError(
            f"cannot resume from {path}: its config differs in {changed}: {differ} (change them back, or train a "
            "new run: --set run_name=...)"
        )


def _leaf_differences(pairs: dict, prefix: str = "") -> dict[str, tuple]:
    """{dotted key: (saved, now)} of the leaves that differ between nested (saved, now) values."""
    out = {}
    for key, (a, b) in pairs.items():
        if isinstance(a, dict) and isinstance(b, dict) and key != "task_masks":
            inner = {k: (a.get(k), b.get(k)) for k in dict.fromkeys([*a, *b]) if a.get(k) != b.get(k)}
            out |= _leaf_differences(inner, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = (a, b)
    return out


def check_resume_state(state: dict, saved_cfg: dict, cfg: CrabConfig, path: str, world_size: int) -> int:
    """Check that a checkpoint can continue here; return the learning-rate schedule's length.

    The schedule is fixed by the run's first `train.steps` (lerobot's cosine schedule rescales warmup and
    decay to the length it is built with, so rebuilding it longer would jump the rate): a run extended
    past it continues at the schedule's final rate. Each process resumes its own RNG states and data
    shard, so the number of processes must match.
    """
    saved_world = state.get("world_size", 1)
    if saved_world != world_size:
        raise CheckpointError(
            f"{path} was saved by {saved_world} process(es), this run has {world_size}: resume with the same "
            "number (each process resumes its own data shard and random state)"
        )
    if cfg.train.steps <= state["step"]:
        raise ConfigError(f"cannot resume from {path}: it is at step {state['step']}, `train.steps` is {cfg.train.steps}")
    return state.get("schedule_steps", saved_cfg["train"]["steps"])
