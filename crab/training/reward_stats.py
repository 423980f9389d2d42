"""Recompute the reward statistics JSON of a manifest; check statistics against their data.

    python -m crab.training.reward_stats --manifest crab/training/docs/dataset_manifest_cycle1_clean.csv \
        --out crab/training/docs/reward_weighting_stats_cycle1_clean.json [--data-root data] [--chunk-size 50]

The JSON holds counts, mean, std and percentiles per dataset and overall, alpha, the reward spec and a
fingerprint of the manifest and the data. Training refuses statistics whose fingerprint or spec does
not match what it loads. It also prints each dataset's share of the RWFM weight at `--alpha` and
`--clip-min` (default clip max and std floor): the share of bad data that the weighted loss still imitates.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

import numpy as np

from crab.training.config import RewardWeightingConfig
from crab.training.crab_dataset import RewardTable, annotate, fingerprint
from crab.training.manifest import ManifestError, ManifestRow, check_roots, load_manifest
from crab.training.rewards import RewardSpec, task_shares, weight_shares

PERCENTILES = (5, 25, 50, 75, 95)


def describe(x: np.ndarray) -> dict[str, float]:
    """Count, mean, (population) std, min, percentiles and max of a 1-D array."""
    x = np.asarray(x, dtype=np.float64)
    out = {"count": int(x.size), "mean": float(x.mean()), "std": float(x.std()), "min": float(x.min())}
    out.update({f"p{p}": float(v) for p, v in zip(PERCENTILES, np.percentile(x, PERCENTILES), strict=True)})
    out["max"] = float(x.max())
    return out


def _summary(tables: list[RewardTable]) -> dict:
    cat = {k: np.concatenate([getattr(t, k) for t in tables]) for k in ("step_reward", "chunk_return")}
    first = [np.r_[True, t.episode_index[1:] != t.episode_index[:-1]] for t in tables]
    per_episode = {
        k: np.concatenate([getattr(t, k)[f] for t, f in zip(tables, first, strict=True)])
        for k in ("episode_reward", "episode_success", "episode_damage")
    }
    return {
        "frames": int(sum(len(t.index) for t in tables)),
        "episodes": int(per_episode["episode_reward"].size),
        "success_rate": float(per_episode["episode_success"].mean()),
        "damage_rate": float(per_episode["episode_damage"].mean()),
        "signal": describe(np.concatenate([t.signal for t in tables])),
        "step_reward": describe(cat["step_reward"]),
        "chunk_return": describe(cat["chunk_return"]),
        "episode_reward": describe(per_episode["episode_reward"]),
    }


def compute_stats(
    manifest: str | Path, rows: list[ManifestRow], tables: list[RewardTable], spec: RewardSpec, alpha: float
) -> dict:
    return {
        "manifest": Path(manifest).as_posix(),
        "fingerprint": fingerprint(rows, tables, spec),
        "spec": asdict(spec),
        "alpha": alpha,
        "overall": _summary(tables),
        "per_dataset": {row.name: _summary([t]) for row, t in zip(rows, tables, strict=True)},
    }


def write_json_atomic(obj, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)


def recompute_command(manifest: str | Path, out: str | Path, data_root: str | Path, spec: RewardSpec) -> str:
    """The command line that (re)writes `out` for `manifest` with the data under `data_root`, quoted so it
    runs verbatim in a POSIX shell."""
    args = ["--manifest", manifest, "--out", out, "--data-root", data_root, "--chunk-size", spec.chunk_size]
    return "python -m crab.training.reward_stats " + " ".join(shlex.quote(str(a)) for a in args)


def load_checked(
    path: str | Path, manifest: str | Path, expected_fingerprint: str, spec: RewardSpec, data_root: str | Path
) -> dict:
    """Load a statistics JSON and refuse it, with the command to fix it, if it is stale."""
    path = Path(path)
    fix = f"recompute with: {recompute_command(manifest, path, data_root, spec)}"
    if not path.is_file():
        raise ManifestError(f"reward statistics not found: {path}; {fix}")
    stats = json.loads(path.read_text(encoding="utf-8"))
    if stats.get("spec") != asdict(spec):
        raise ManifestError(f"{path}: computed for reward spec {stats.get('spec')}, training uses {asdict(spec)}; {fix}")
    if stats.get("fingerprint") != expected_fingerprint:
        raise ManifestError(
            f"{path}: stale statistics (fingerprint {stats.get('fingerprint')} != {expected_fingerprint} of "
            f"manifest {manifest} and its data); {fix}"
        )
    return stats


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--manifest", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--data-root", default="data")
    p.add_argument("--chunk-size", type=int, default=RewardSpec.chunk_size)
    p.add_argument("--alpha", type=float, default=RewardWeightingConfig.alpha)
    p.add_argument("--clip-min", type=float, default=RewardWeightingConfig.clip_min, help="for the printed shares")
    args = p.parse_args(argv)
    spec = RewardSpec(chunk_size=args.chunk_size)
    try:
        rows = load_manifest(args.manifest, args.data_root)
        check_roots(rows)
        tables = [annotate(row, spec) for row in rows]
    except ManifestError as e:  # bad input: the message names the file, row and column
        sys.exit(f"error: {e}")
    stats = compute_stats(args.manifest, rows, tables, spec, args.alpha)
    write_json_atomic(stats, Path(args.out))
    o = stats["overall"]
    print(
        f"{args.out}: {o['frames']} frames, {o['episodes']} episodes, success {o['success_rate']:.2f}, "
        f"damage {o['damage_rate']:.2f}, signal mean {o['signal']['mean']:.3f} std {o['signal']['std']:.3f}, "
        f"fingerprint {stats['fingerprint']}"
    )
    rw = RewardWeightingConfig(clip_min=args.clip_min)
    shares = weight_shares(
        {row.name: t.signal for row, t in zip(rows, tables, strict=True)}, o["signal"]["mean"], o["signal"]["std"],
        args.alpha, (rw.clip_min, rw.clip_max), rw.std_floor,
    )  # fmt: skip
    of_task = task_shares(shares, {row.name: row.task for row in rows})
    print(f"RWFM weight at alpha {args.alpha:g} (clip [{rw.clip_min:g}, {rw.clip_max:g}], std floor {rw.std_floor:g}):")
    for row in rows:
        s = shares[row.name]
        print(
            f"  {row.name} ({row.quality}): {s['frame_share']:.1%} of frames, mean weight {s['mean_weight']:.3f}, "
            f"{s['weight_share']:.2%} of the weight, {of_task[row.name]:.2%} of its task's"
        )


if __name__ == "__main__":
    main()
