"""Reward-annotation overhead: items/s of plain LeRobotDataset and of CrabDataset over the same indices.

    python benchmarks/bench_loader.py [--manifest M --data-root D] [--items 400] [--repeats 3]

Without a manifest it writes a small synthetic dataset (two episodes per quality, 32x32 video) to a
temporary folder. Both loaders read the same random indices, back to back per item with alternating order; the median time per repeat is reported and compared.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from crab.training.crab_dataset import CrabDataset
from crab.training.manifest import load_manifest
from crab.training.rewards import RewardSpec


def synthetic_manifest(folder: Path) -> Path:
    from crab.data.lerobot_writer import Episode, write_lerobot_dataset

    rng = np.random.default_rng(0)
    lines = ["name,repo_id,root,task,quality,cycle"]
    for quality in ("clean", "cracked", "failed"):
        episodes = [
            Episode(
                "Put the egg into the tray.",
                {
                    "observation.images.top": rng.integers(0, 255, (60, 32, 32, 3), dtype=np.uint8),
                    "observation.state": rng.normal(size=(60, 6)).astype(np.float32),
                    "action": rng.normal(size=(60, 4)).astype(np.float32),
                },
            )
            for _ in range(2)
        ]
        write_lerobot_dataset(folder / quality, f"bench/{quality}", 10, episodes, list("abcdef"), list("abcd"))
        lines.append(f"{quality},bench/{quality},{quality},Put the egg into the tray.,{quality},bench")
    (folder / "manifest.csv").write_text("\n".join(lines) + "\n")
    return folder / "manifest.csv"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--manifest")
    p.add_argument("--data-root", default="data")
    p.add_argument("--chunk-size", type=int, default=10)
    p.add_argument("--items", type=int, default=400)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        manifest, root = (args.manifest, args.data_root) if args.manifest else (synthetic_manifest(Path(tmp)), tmp)
        crab = CrabDataset(load_manifest(manifest, root), RewardSpec(chunk_size=args.chunk_size))
        indices = np.random.default_rng(0).integers(0, len(crab), args.items).tolist()

        def plain(i: int):  # the same LeRobotDataset item, without the reward annotation
            d, local = crab.locate(i)
            return crab.datasets[d][local]

        for i in indices[:20]:  # warm up decoders and caches
            plain(i), crab[i]
        # Per item, both loaders read the same index back to back (order alternating), so drift in
        # decoder caches or machine load hits both alike.
        times = {"LeRobotDataset": [], "CrabDataset": []}
        loaders = [("LeRobotDataset", plain), ("CrabDataset", crab.__getitem__)]
        for _ in range(args.repeats):
            total = dict.fromkeys(times, 0.0)
            for k, i in enumerate(indices):
                for name, get in loaders if k % 2 == 0 else loaders[::-1]:
                    start = time.perf_counter()
                    get(i)
                    total[name] += time.perf_counter() - start
            for name in times:
                times[name].append(total[name])
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"{args.items} random items, {args.repeats} repeats, median; python {sys.version.split()[0]}, {os.cpu_count()} cpus")
    for name, t in med.items():
        print(f"{name:<15} {args.items / t:8.1f} items/s")
    overhead = med["CrabDataset"] / med["LeRobotDataset"] - 1
    print(f"annotation overhead: {100 * overhead:+.2f}% (goal < 1%)")


if __name__ == "__main__":
    main()
