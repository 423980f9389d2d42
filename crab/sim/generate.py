"""Roll out the scripted demonstrators and write them as LeRobot v3.0 datasets.

    python -m crab.sim.generate --out data --episodes-per-dataset 8 --seed 0 [--image-size 32] \
        [--count egg_carton_to_tray=11 --count egg_carton_to_tray_cracked=0 ...]

Each dataset holds one quality, by rejection: rollouts are screened without rendering (physics does
not depend on it) and only those whose outcome matches the dataset are replayed with the camera and
written:

- `egg_carton_to_tray` (clean): careful transfers that succeeded without a crack;
- `egg_carton_to_tray_cracked` (cracked): rough transfers that cracked the egg;
- `egg_carton_to_tray_failed` (failed): failing attempts, no success and no crack;
- `open_the_carton` (clean): careful carton openings that succeeded;
- `close_the_carton` (clean): careful closings of the empty carton (the egg already in the tray) that
  succeeded. No cycle-1 manifest uses it; the anchor benchmark (`crab.sim.anchor_benchmark`) does.
- `egg_carton_to_tray_sloppy` (cracked): sloppy transfers (careful until the release, then dropped from a
  height) that cracked the egg. The scarce-clean manifests (`dataset_manifest_scarce_*.csv`) use it.
- `egg_carton_to_tray_squeezed` (cracked): squeezing transfers (careful but for a squeeze over the crack
  force at the grasp) that cracked the egg. `dataset_manifest_scarce_grasp_mixed.csv` uses it.
- `egg_carton_to_tray_tightened` (cracked): tightening transfers (careful but for a few steps of the
  carry with the fingers tightened over the crack force) that cracked the egg.
  `dataset_manifest_scarce_carry_mixed.csv` uses it.

Every dataset gets `--episodes-per-dataset` episodes unless `--count NAME=N` says otherwise (0: not
written), e.g. few clean transfers and many sloppy ones for the scarce-clean regime of `crab.sim.compare`.

Every episode's true `success`/`damage` also goes to the label file, and `next.reward`/`next.success`
hold the per-step reward (+1 success, -1 crack) and success flag.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from crab.sim.demonstrators import Rollout, rollout
from crab.sim.egg_env import ACTION_NAMES, CLOSE_CARTON, FPS, OPEN_CARTON, PUT_EGG, STATE_NAMES

REPO_PREFIX = "crab"


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    task: str
    style: str
    quality: str  # clean | cracked | failed (the lead's manifest schema)
    cycle: str  # ';'-separated training cycles, may be empty
    keep: Callable[[Rollout], bool]


DATASETS = (
    DatasetSpec("egg_carton_to_tray", PUT_EGG, "careful", "clean", "cycle1", lambda r: r.success and not r.cracked),
    DatasetSpec("egg_carton_to_tray_cracked", PUT_EGG, "rough", "cracked", "cycle1", lambda r: r.cracked),
    DatasetSpec(
        "egg_carton_to_tray_failed", PUT_EGG, "failing", "failed", "", lambda r: not r.success and not r.cracked
    ),
    DatasetSpec("open_the_carton", OPEN_CARTON, "careful", "clean", "cycle1", lambda r: r.success),
    # Appended last: each dataset's episode seeds come from its index here, so the others are unchanged.
    DatasetSpec("close_the_carton", CLOSE_CARTON, "careful", "clean", "", lambda r: r.success),
    DatasetSpec("egg_carton_to_tray_sloppy", PUT_EGG, "sloppy", "cracked", "", lambda r: r.cracked),
    DatasetSpec("egg_carton_to_tray_squeezed", PUT_EGG, "squeezing", "cracked", "", lambda r: r.cracked),
    DatasetSpec("egg_carton_to_tray_tightened", PUT_EGG, "tightening", "cracked", "", lambda r: r.cracked),
)


def episode_counts(episodes_per_dataset: int, counts: Mapping[str, int] | None = None) -> dict[str, int]:
    """Episodes per dataset of `DATASETS`: `episodes_per_dataset`, or what `counts` says for those it names."""
    counts = dict(counts or {})
    names = [d.name for d in DATASETS]
    unknown = sorted(set(counts) - set(names))
    if unknown:
        raise ValueError(f"unknown dataset(s) {unknown} in the episode counts; expected some of {names}")
    out = {name: counts.get(name, episodes_per_dataset) for name in names}
    negative = {k: v for k, v in out.items() if v < 0}
    if negative:
        raise ValueError(f"episode counts must be >= 0, got {negative}")
    return out


def collect(spec: DatasetSpec, episodes: int, seed: int, image_size: int) -> tuple[list[Rollout], int]:
    """`episodes` rendered rollouts that `spec.keep`s, and how many candidates were screened."""
    rng = np.random.default_rng([seed, [d.name for d in DATASETS].index(spec.name)])
    candidates = rng.integers(0, 2**31 - 1, size=10 * episodes + 20)
    kept: list[Rollout] = []
    tried = 0
    for ep_seed in candidates:
        if len(kept) == episodes:
            break
        tried += 1
        if spec.keep(rollout(spec.task, spec.style, int(ep_seed), render=False)):
            rendered = rollout(spec.task, spec.style, int(ep_seed), image_size=image_size)
            if not spec.keep(rendered):  # rendering must not change the physics
                raise RuntimeError(f"{spec.name}: seed {ep_seed} changed outcome when rendered")
            kept.append(rendered)
    if len(kept) < episodes:
        raise RuntimeError(f"{spec.name}: only {len(kept)} of {tried} {spec.style} rollouts matched")
    return kept, tried


def write_quietly(root: Path, name: str, episodes: list) -> None:
    """Write simulator `Episode`s as the LeRobot dataset `crab/<name>` at `root`, without the encoders' and
    lerobot's per-episode output."""
    # SVT-AV1 (lerobot's video encoder) prints its banner and settings unless told to log errors only (read
    # when each encoder starts), FFmpeg's muxer logs at info level, and Hugging Face datasets shows a progress
    # bar per saved episode.
    os.environ.setdefault("SVT_LOG", "1")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    import av

    from crab.data.lerobot_writer import write_lerobot_dataset

    av.logging.set_libav_level(av.logging.ERROR)  # lerobot restores FFmpeg's own callback after encoding
    with warnings.catch_warnings():
        # lerobot's statistics histogram converts the bool `next.success` column, and says so.
        warnings.filterwarnings("ignore", "Converting input from bool", RuntimeWarning)
        write_lerobot_dataset(root, f"{REPO_PREFIX}/{name}", FPS, episodes, STATE_NAMES, ACTION_NAMES)


def generate(
    out: Path,
    episodes_per_dataset: int,
    seed: int,
    image_size: int = 32,
    overwrite: bool = False,
    counts: Mapping[str, int] | None = None,
) -> Path:
    """Write the datasets of `DATASETS` under `out` (the data root of crab/training/docs/dataset_manifest*.csv):
    `episodes_per_dataset` episodes each, or `counts[name]` for the datasets `counts` names (0: not written).

    With `overwrite`, existing folders of the datasets written are replaced; otherwise they are an error.
    """
    from crab.data.lerobot_writer import MIN_VIDEO_SIDE, Episode

    if image_size < MIN_VIDEO_SIDE:
        raise ValueError(f"image_size must be at least {MIN_VIDEO_SIDE} for video encoding, got {image_size}")
    out = Path(out)
    n_episodes = episode_counts(episodes_per_dataset, counts)
    specs = [spec for spec in DATASETS if n_episodes[spec.name] > 0]
    for spec in specs:
        if (out / spec.name).exists():
            if not overwrite:
                raise FileExistsError(f"{out / spec.name} exists (pass overwrite=True / --overwrite)")
            shutil.rmtree(out / spec.name)
    summary = {}
    for spec in specs:
        start = time.perf_counter()
        kept, tried = collect(spec, n_episodes[spec.name], seed, image_size)
        episodes = [
            Episode(r.task, r.frames, labels={"success": int(r.success), "damage": int(r.cracked)}) for r in kept
        ]
        write_quietly(out / spec.name, spec.name, episodes)
        frames = sum(r.length for r in kept)
        summary[spec.name] = {"style": spec.style, "episodes": len(kept), "screened": tried, "frames": frames}
        print(
            f"{spec.name}: {len(kept)} episodes ({tried} {spec.style} rollouts screened), {frames} frames, "
            f"{time.perf_counter() - start:.1f}s",
            flush=True,
        )
    (out / "generation_summary.json").write_text(
        json.dumps({"seed": seed, "image_size": image_size, "datasets": summary}, indent=2)
    )
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="data root to write the datasets under")
    parser.add_argument("--episodes-per-dataset", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--overwrite", action="store_true", help="replace existing dataset folders")
    parser.add_argument("--count", action="append", default=[], metavar="NAME=N",
                        help="episodes of one dataset instead of --episodes-per-dataset (0: not written); repeatable")  # fmt: skip
    args = parser.parse_args(argv)
    counts = {}
    for item in args.count:
        name, sep, n = item.partition("=")
        if not sep or not n.strip().lstrip("-").isdigit():
            parser.error(f"--count {item!r}: expected NAME=N, e.g. egg_carton_to_tray=11")
        counts[name.strip()] = int(n)
    try:
        episode_counts(args.episodes_per_dataset, counts)
    except ValueError as e:
        parser.error(str(e))
    start = time.perf_counter()
    out = generate(args.out, args.episodes_per_dataset, args.seed, args.image_size, args.overwrite, counts)
    print(f"datasets under {out} ({time.perf_counter() - start:.1f}s in all); manifests: crab/training/docs/")


if __name__ == "__main__":
    main()
