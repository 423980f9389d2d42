"""The files a training run reads besides its config, identified by content: recorded in every checkpoint
and compared on `--resume`, so a run continues only on the inputs it started with.

A resume compares the config's keys (the paths), but a value file refitted, statistics recomputed or a
reference folder rewritten at the same path would change the run silently. Each input here is identified
by what decides the training, not by its path or modification time (a copy to other storage resumes).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from crab.training.config import ConfigError

# Fields of the reward statistics JSON that only describe it (the `--alpha` its printed shares used):
# recomputing them changes nothing a run trains on.
_DESCRIPTIVE_STATS = ("alpha",)


def _digest(*parts: bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part)
    return h.hexdigest()[:16]


def stats_fingerprint(stats: dict) -> str:
    """The reward statistics as training uses them (data fingerprint, signal mean and std, value file)."""
    used = {k: v for k, v in stats.items() if k not in _DESCRIPTIVE_STATS}
    return _digest(json.dumps(used, sort_keys=True).encode())


def values_digest(values: dict[str, tuple[np.ndarray, np.ndarray]]) -> str:
    """The values V(s) of a loaded value file, frame by frame (a refit with other settings or seed differs)."""
    return _digest(*(np.ascontiguousarray(a, dtype=np.float64).tobytes() for v in values.values() for a in v))


def labels_digest(positive: np.ndarray) -> str:
    """A run's advantage labels, frame by frame (other values, threshold or phases label other frames)."""
    return _digest(np.packbits(np.asarray(positive, dtype=bool)).tobytes(), str(len(positive)).encode())


def policy_digest(folder: str | Path) -> str:
    """A saved policy folder (lerobot format): its config.json and weights, byte for byte."""
    folder = Path(folder)
    h = hashlib.sha256()
    for name in ("config.json", "model.safetensors"):
        with open(folder / name, "rb") as f:
            while chunk := f.read(1 << 24):
                h.update(chunk)
    return h.hexdigest()[:16]


def reference_source(anchor_enabled: bool, reference: str | None, pretrained_path: str) -> str | None:
    """Where the anchor's frozen reference comes from, a local folder or a Hub id (None without an anchor):
    `anchor.reference`, or the starting policy `policy.pretrained_path` (rebuilt from it on resume)."""
    if not anchor_enabled:
        return None
    return reference if reference is not None else pretrained_path


def reference_fingerprint(source: str | None) -> str | None:
    """`policy_digest` of a local reference folder (a checkpoint or its pretrained_model folder); a Hub id or
    the tiny policy is its name (their weights are fixed by it and the seed)."""
    from crab.training.crab_smolvla_wrapper import pretrained_folder

    if source is None:
        return None
    folder = Path(pretrained_folder(source))
    return policy_digest(folder) if (folder / "config.json").is_file() else source


def check_reference_action_space(path: str, action_shape: tuple, state_shape: tuple | None) -> None:
    """Refuse an `anchor.reference` trained on another action (or state) space than the policy's: padded
    to `max_action_dim`, its weights have the policy's shapes, so only its saved features tell."""
    from crab.training.crab_smolvla_wrapper import pretrained_folder

    config = Path(pretrained_folder(path)) / "config.json"
    if not config.is_file():
        return  # load_reference names the missing policy
    saved = json.loads(config.read_text(encoding="utf-8"))
    for kind, key, ours in (("output", "action", action_shape), ("input", "observation.state", state_shape)):
        theirs = (saved.get(f"{kind}_features") or {}).get(key, {}).get("shape")
        if theirs is not None and ours is not None and tuple(theirs) != tuple(ours):
            raise ConfigError(
                f"anchor.reference {config.parent}: trained on `{key}` of shape {tuple(theirs)}, this run's data "
                f"has {tuple(ours)}: a reference anchors the same action and state space; choose a checkpoint "
                "trained on data of this robot (or set anchor.reference to null: the starting policy)"
            )


def changed_inputs(saved: dict, now: dict) -> list[str]:
    """The inputs whose fingerprints differ, as 'name (saved X, now Y)'; inputs a checkpoint lacks are not
    compared (it was saved before they were recorded)."""
    return [f"{k} (saved {saved[k]}, now {now.get(k)})" for k in sorted(saved) if saved[k] != now.get(k)]


def run_inputs(cfg, train_ds, reward_stats: dict, values, retention_ds, replay_ds) -> dict[str, str | None]:
    """The fingerprints a checkpoint records of the inputs a run reads besides its config (None: not used)."""
    return {
        "data": train_ds.fingerprint,
        "reward_stats": stats_fingerprint(reward_stats) if reward_stats else None,
        "value_file": None if values is None else values_digest(values),
        "retention_data": retention_ds.fingerprint if retention_ds else None,
        "replay_data": replay_ds.fingerprint if replay_ds else None,
        "reference": reference_fingerprint(
            reference_source(cfg.anchor.enabled, cfg.anchor.reference, cfg.policy.pretrained_path)
        ),
    }
