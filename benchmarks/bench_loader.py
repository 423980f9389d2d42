"""Data loading: reward-annotation overhead, loader throughput against the trainer's, and CrabDataset
against lerobot's LeRobotDataset on real-shaped multi-camera 480p video.

    python benchmarks/bench_loader.py [--manifest M --data-root D] [--items 400] [--repeats 3]
    python benchmarks/bench_loader.py --config <cycle yaml> --config <overrides yaml> [--batches 40]
    python benchmarks/bench_loader.py --parts real [--real-episodes 20 --real-length 300]  (+ its frame cache)

Data: `--manifest`/`--data-root` when given; else the config's manifest under its data_root when those
datasets exist (the demo config: data/demo, made by scripts/demo.sh); else a small synthetic dataset
(two episodes per quality, 32x32 video) written to a temporary folder.

1. Annotation overhead: lerobot's LeRobotDataset, CrabDataset's fast path without the annotation
   (LeRobotFrames) and CrabDataset read the same random indices, back to back per item in rotating
   order; the median time per repeat is reported. The annotation's cost (CrabDataset - LeRobotFrames)
   is compared with a LeRobotDataset item (goal < 1%) and with a fast-path item.
2. Item cache (`data.cache_items`): the same random items read from CrabDataset without the cache and,
   after one priming pass, from one with it (every later epoch of training); items/s and their ratio.
3. Loader vs trainer (goal: loader >= 2x trainer), at the config's batch size (default: the demo
   configuration, cycle-1 cracked-factor config + demo overrides): samples/s of train.py's
   DataLoader over CrabDataset (its sampler, `data.num_workers` workers) against samples/s of
   train.py's step (preprocessor, RWFM + anchor forward at the post-ramp lambda, backward, clip,
   optimiser, scheduler) on batches loaded beforehand. The two take turns per repeat; the ratio is
   the median of the per-repeat ratios. Each is measured alone: in training they share the CPU.
4. Real-shaped loader (`--parts real`; goal: CrabDataset decoding >= 1.0x lerobot 0.6.1's loader at its
   best settings): a dataset the benchmark writes once under `--real-root` (3 cameras at 480x640,
   lerobot's default AV1 encoding, 30 fps, 6-D state and action; synthetic scenes with moving objects
   and sensor noise), read with smolvla_base's delta timestamps (the current frame of each camera, an
   action chunk of 50). Per repeat and worker count (default 0, 1, 2, 4), each loader runs a DataLoader
   over the same random indices in a fresh subprocess (which goes first alternates); items/s after
   warm-up batches and the peak resident memory of the subprocess and its workers. Three loaders:
   - lerobot: lerobot 0.6.1's loader as `lerobot-train` builds it: `LeRobotDataset(..., return_uint8=True)`
     (as `lerobot.datasets.factory.make_dataset`), so uint8 frames cross the worker boundary, and the
     float conversion its training loop does after each batch (`batch[cam].to(torch.float32) / 255.0`),
     timed with the loader;
   - crab: CrabDataset decoding video as the trainer reads it (`return_uint8=True`, and `float_frames`
     after each batch, timed with the loader: lerobot's float item, bit for bit);
   - cached: the same, reading the frame cache (`data.frame_cache`; built once by `crab.data.frame_cache`
     at smolvla_base's 512x512 next to the dataset and reused, its pages evicted from the OS page cache
     before each run so frames come from the disk).
   Every loader gets lerobot-train's worker settings (`TrainPipelineConfig` defaults through
   `lerobot_train._dataloader_worker_kwargs`: prefetch_factor 4, persistent workers, `spawn` workers;
   none of them with 0 workers). Ratios are medians of per-repeat ratios: per worker count, and for the
   last line each CrabDataset loader at its best worker count against lerobot at its best worker count
   (best: highest median items/s). A few items are first checked equal (decoded frames bit-identical to
   lerobot's float item, and lerobot's uint8 item / 255 equal to it; cached frames within a printed
   maximum difference after SmolVLA's resize and padding).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from crab.data.lerobot_reader import float_frames
from crab.training.config import CrabConfig, load_config
from crab.training.crab_dataset import CrabDataset
from crab.training.manifest import ManifestRow, load_manifest
from crab.training.rewards import RewardSpec
from crab.training.sampling import EpochBatchSampler, split_episodes

REPO = Path(__file__).resolve().parents[1]
DEMO_CONFIGS = [
    str(REPO / "crab/training/configs/train_cycle1_rwfm_anchor_cracked_factor.yaml"),
    str(REPO / "crab/training/configs/demo_overrides.yaml"),
]


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


REAL_SHAPE = (480, 640)  # height, width of each camera
REAL_CAMERAS = ("top", "wrist", "side")
REAL_FPS = 30
REAL_TASK = "Put the egg into the tray."


def real_shaped_frames(rng: np.random.Generator, camera: int, length: int) -> np.ndarray:
    """(length, 480, 640, 3) uint8 frames that compress like a camera's: a fixed textured scene, four
    objects moving smoothly across it, and a little sensor noise per frame (so AV1 cannot skip frames)."""
    h, w = REAL_SHAPE
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    shade = 80 + 60 * np.sin(xx / (37 + 5 * camera)) * np.cos(yy / (53 - 4 * camera)) + 0.1 * yy
    texture = rng.normal(0, 12, (h, w)).astype(np.float32)
    scene = np.stack([shade + texture, 0.8 * shade + texture + 20, 0.6 * shade + texture + 40], axis=-1)
    phase = rng.uniform(0, 2 * np.pi, 4)
    out = np.empty((length, h, w, 3), np.uint8)
    for t in range(length):
        frame = scene + rng.normal(0, 3, (h, w, 1)).astype(np.float32)
        for k in range(4):
            cx = w / 2 + 200 * np.sin(0.02 * t * (k + 1) + phase[k])
            cy = h / 2 + 150 * np.cos(0.015 * t * (k + 2) + phase[k])
            frame[(xx - cx) ** 2 + (yy - cy) ** 2 < (30 + 10 * k) ** 2] = (60 * k, 200 - 40 * k, 120)
        out[t] = np.clip(frame, 0, 255)
    return out


def real_shaped_manifest(folder: Path, episodes: int, length: int) -> Path:
    """A manifest over one real-shaped dataset (3 cameras at 480x640, lerobot's default AV1 encoding,
    30 fps, 6-D state and action), written once under `folder` and reused by later runs."""
    from tqdm import tqdm

    from crab.data.lerobot_writer import Episode, write_lerobot_dataset

    name = f"real_{episodes}x{length}"
    manifest = folder / f"{name}.csv"
    if manifest.is_file():
        return manifest
    root = folder / name
    shutil.rmtree(root, ignore_errors=True)  # an interrupted earlier build
    rng = np.random.default_rng(0)

    def generate():
        for _ in tqdm(range(episodes), desc=f"writing {root} ({episodes} episodes x {length} frames, once)"):
            state = np.cumsum(rng.normal(0, 0.01, (length, 6)), axis=0).astype(np.float32)
            frames = {f"observation.images.{cam}": real_shaped_frames(rng, c, length) for c, cam in enumerate(REAL_CAMERAS)}
            yield Episode(REAL_TASK, {**frames, "observation.state": state, "action": np.roll(state, -1, axis=0)})

    write_lerobot_dataset(root, f"bench/{name}", REAL_FPS, generate(), [f"s{i}" for i in range(6)], [f"a{i}" for i in range(6)])
    # The manifest is written last: its presence marks a complete dataset.
    manifest.write_text(f"name,repo_id,root,task,quality,cycle\n{name},bench/{name},{name},{REAL_TASK},clean,bench\n")
    return manifest


def annotation_overhead(rows: list[ManifestRow], args: argparse.Namespace) -> None:
    crab = CrabDataset(rows, RewardSpec(chunk_size=args.chunk_size))
    lerobot = [crab.lerobot_dataset(d) for d in range(len(crab.datasets))]
    indices = np.random.default_rng(0).integers(0, len(crab), args.items).tolist()

    def plain(i: int):  # lerobot's item, read by lerobot
        d, local = crab.locate(i)
        return lerobot[d][local]

    def fast(i: int):  # the same item from CrabDataset's fast path, without the reward annotation
        d, local = crab.locate(i)
        return crab.datasets[d][local]

    loaders = [("LeRobotDataset", plain), ("LeRobotFrames", fast), ("CrabDataset", crab.__getitem__)]
    for i in indices[:20]:  # warm up decoders and caches
        for _, get in loaders:
            get(i)
    # Per item, the loaders read the same index back to back (order rotating), so drift in decoder
    # caches or machine load hits all alike.
    times = {name: [] for name, _ in loaders}
    for _ in range(args.repeats):
        total = dict.fromkeys(times, 0.0)
        for k, i in enumerate(indices):
            for name, get in loaders[k % 3 :] + loaders[: k % 3]:
                start = time.perf_counter()
                get(i)
                total[name] += time.perf_counter() - start
        for name in times:
            times[name].append(total[name] / args.items)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"annotation overhead: {args.items} random items, {args.repeats} repeats, median")
    for name, t in med.items():
        print(f"  {name:<15} {1 / t:8.1f} items/s")
    print(f"  fast path / LeRobotDataset: {med['LeRobotDataset'] / med['LeRobotFrames']:.2f}x items/s")
    extra = med["CrabDataset"] - med["LeRobotFrames"]
    share = extra / med["LeRobotDataset"]
    print(
        f"  annotation overhead: {1e6 * extra:+.1f} us per item, {100 * share:+.2f}% of a LeRobotDataset item "
        f"(goal < 1%: {'met' if share < 0.01 else 'MISSED'}), {100 * extra / med['LeRobotFrames']:+.2f}% of a fast-path item"
    )


def item_cache(rows: list[ManifestRow], args: argparse.Namespace) -> None:
    spec = RewardSpec(chunk_size=args.chunk_size)
    plain, cached = CrabDataset(rows, spec), CrabDataset(rows, spec, cache=True)
    indices = np.random.default_rng(1).integers(0, len(plain), args.items).tolist()
    for i in indices:  # priming: the first epoch decodes every item once
        cached[i]
    rates = {"decoded": [], "cached": []}
    for _ in range(args.repeats):
        for name, ds in (("decoded", plain), ("cached", cached)):
            start = time.perf_counter()
            for i in indices:
                ds[i]
            rates[name].append(args.items / (time.perf_counter() - start))
    med = {k: statistics.median(v) for k, v in rates.items()}
    print(f"item cache: {args.items} random items, {args.repeats} repeats, median")
    for name, r in med.items():
        print(f"  {name:<8} {r:10.1f} items/s")
    print(f"  cached / decoded: {med['cached'] / med['decoded']:.0f}x")


PARTS = ("annotation", "cache", "trainer", "real")
# lerobot 0.6.1's loader (LeRobotDataset, uint8 frames); CrabDataset decoding video (the default); CrabDataset
# with the frame cache. Both CrabDataset loaders as the trainer reads them: uint8 frames, converted after collate.
REAL_LOADERS = ("lerobot", "crab", "cached")
REAL_RESOLUTION = (512, 512)  # smolvla_base's resize_imgs_with_padding: the frame cache's resolution


def real_frame_cache(manifest: Path) -> tuple[Path, dict]:
    """The frame cache of the real-shaped dataset at smolvla_base's resolution, built once and reused."""
    from crab.data import frame_cache

    out = manifest.with_name(f"{manifest.stem}_frames_{'x'.join(map(str, REAL_RESOLUTION))}")
    return out, frame_cache.build([str(manifest)], str(manifest.parent), out, REAL_RESOLUTION)


def evict_from_page_cache(folder: Path) -> None:
    """Drop the files' pages from the OS page cache (Linux), so reads come from the disk, as they do from a
    cache many times the RAM; elsewhere, nothing."""
    if not hasattr(os, "posix_fadvise"):
        return
    for path in folder.rglob("*.npy"):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def lerobot_uint8_dataset(crab: CrabDataset, d: int = 0):
    """Dataset `d` of `crab` as lerobot 0.6.1's `make_dataset` opens it for training: `LeRobotDataset` with
    `return_uint8=True` (uint8 CHW frames; `lerobot-train` converts them to float after collating)."""
    return crab.lerobot_dataset(d, return_uint8=True)


def lerobot_worker_kwargs(workers: int) -> dict:
    """`lerobot-train`'s DataLoader worker options at `workers` workers: its `TrainPipelineConfig` defaults
    (prefetch_factor 4, persistent workers, `spawn`) through its own `_dataloader_worker_kwargs`."""
    import dataclasses
    import types

    from lerobot.configs.train import TrainPipelineConfig
    from lerobot.scripts.lerobot_train import _dataloader_worker_kwargs

    defaults = {f.name: f.default for f in dataclasses.fields(TrainPipelineConfig)}
    keys = ("prefetch_factor", "persistent_workers", "dataloader_multiprocessing_context")
    return _dataloader_worker_kwargs(types.SimpleNamespace(num_workers=workers, **{k: defaults[k] for k in keys}))


def real_shaped_loader(manifest: Path, loader: str, workers: int, args: argparse.Namespace) -> dict:
    """Items/s of one loader over the real-shaped dataset, the CPU time it spent per item (this process
    and its DataLoader workers: unlike items/s, independent of other jobs' load), and the peak resident
    memory of that process tree (sampled every 20 ms). Run in a fresh subprocess."""
    import json
    import threading

    import psutil

    # One intra-op thread, as in DataLoader workers: with torch's default of one per core, lerobot's
    # float conversion at 0 workers spun against the other jobs on this machine (4.8 items/s instead of ~17).
    torch.set_num_threads(1)
    rows = load_manifest(manifest, manifest.parent)
    cache = None
    if loader == "cached":
        cache = real_frame_cache(manifest)[0]
        evict_from_page_cache(cache)
    spec = RewardSpec(chunk_size=args.real_chunk)
    crab = CrabDataset(rows, spec, frame_cache=cache, resolution=REAL_RESOLUTION, return_uint8=True)
    ds = lerobot_uint8_dataset(crab) if loader == "lerobot" else crab
    cams = crab.meta.camera_keys
    # Every worker delivers a batch before the timing starts: spawned workers import torch, lerobot and Crab
    # first, and a worker still starting would put that into the timed batches.
    warmup = max(args.real_warmup, workers)
    indices = np.random.default_rng(2).integers(0, len(ds), (warmup + args.real_batches) * args.real_batch)
    peak, done = [0], threading.Event()

    def sample_rss() -> None:
        me = psutil.Process()
        while not done.wait(0.02):
            total = 0
            for proc in [me, *me.children(recursive=True)]:
                with contextlib.suppress(psutil.NoSuchProcess):  # a worker that just exited
                    total += proc.memory_info().rss
            peak[0] = max(peak[0], total)

    def cpu_seconds() -> float:  # user + system time of this process and its workers so far
        me = psutil.Process()
        return sum(sum(proc.cpu_times()[:2]) for proc in [me, *me.children(recursive=True)])

    sampler = threading.Thread(target=sample_rss, daemon=True)
    sampler.start()
    loader_ = torch.utils.data.DataLoader(
        ds,
        batch_size=args.real_batch,
        sampler=indices.tolist(),
        num_workers=workers,
        **lerobot_worker_kwargs(workers),
    )
    batches = iter(loader_)

    def next_batch() -> dict:
        batch = next(batches)
        if loader != "lerobot":  # Crab's trainer, before its preprocessor (`prepare` in train.py)
            return float_frames(batch, crab.video_keys)
        for key in cams:  # lerobot-train's loop, before its preprocessor
            if key in batch and batch[key].dtype == torch.uint8:
                batch[key] = batch[key].to(dtype=torch.float32) / 255.0
        return batch

    for _ in range(warmup):  # starts the workers, opens the decoders
        next_batch()
    start, cpu = time.perf_counter(), cpu_seconds()
    for _ in range(args.real_batches):
        next_batch()
    items = args.real_batches * args.real_batch
    rate, cpu_ms = items / (time.perf_counter() - start), 1e3 * (cpu_seconds() - cpu) / items
    done.set()
    sampler.join()
    result = {"items_per_s": rate, "cpu_ms_per_item": cpu_ms, "peak_rss_mb": peak[0] / 2**20}
    print(json.dumps(result))
    return result


def real_shaped(args: argparse.Namespace) -> None:
    """CrabDataset against lerobot's LeRobotDataset on the real-shaped dataset, side by side: per repeat,
    per worker count, one fresh subprocess per loader (alternating which goes first), same indices."""
    import json
    import subprocess

    from crab.training.smolvla_internals import resize_images

    manifest = real_shaped_manifest(args.real_root, args.real_episodes, args.real_length)
    rows = load_manifest(manifest, manifest.parent)
    cache_dir, index = real_frame_cache(manifest)
    cache_bytes = sum(p.stat().st_size for p in cache_dir.rglob("*.npy"))
    spec = RewardSpec(chunk_size=args.real_chunk)
    crab = CrabDataset(rows, spec)
    cached = CrabDataset(rows, spec, frame_cache=cache_dir, resolution=REAL_RESOLUTION)
    lerobot, lerobot_u8 = crab.lerobot_dataset(0), lerobot_uint8_dataset(crab)
    checked = [*np.random.default_rng(3).integers(0, len(crab), 8).tolist(), len(crab) - 1]
    cams = crab.meta.video_keys
    worst = 0.0  # largest difference between a cached and a decoded frame, as the policy sees them
    for i in checked:  # the same items: every key lerobot returns, decoded frames bit-identical
        ours, theirs, from_cache, u8 = crab[i], lerobot[i], cached[i], lerobot_u8[i]
        for key in cams:  # lerobot-train's conversion of its uint8 frames gives lerobot's float item
            if u8[key].dtype != torch.uint8 or not torch.equal(u8[key].to(dtype=torch.float32) / 255.0, theirs[key]):
                raise SystemExit(f"real-shaped item {i}: `{key}` from return_uint8=True, / 255, differs from the float item")
        for key, value in theirs.items():
            same = torch.equal(ours[key], value) if isinstance(value, torch.Tensor) else ours[key] == value
            if key not in cams:
                same = same and (torch.equal(from_cache[key], value) if isinstance(value, torch.Tensor) else from_cache[key] == value)
            if not same:
                raise SystemExit(f"real-shaped item {i}: `{key}` differs between CrabDataset and LeRobotDataset")
        for key in cams:  # SmolVLA's resize + pad of both
            seen = [resize_images(f[key][None], REAL_RESOLUTION) for f in (from_cache, theirs)]
            worst = max(worst, (seen[0] - seen[1]).abs().max().item())
    features = crab.meta.features
    source, stored = features[cams[0]]["shape"][:2], cached[0][cams[0]].shape[1:]
    print(
        f"real-shaped loader: {manifest.parent / rows[0].name}: {crab.meta.total_episodes} episodes, {len(crab)} frames, "
        f"{len(cams)} cameras {'x'.join(map(str, source))} "
        f"({features[cams[0]]['info']['video.codec']}, {crab.fps} fps), chunk {args.real_chunk}, batch {args.real_batch}; "
        f"{len(checked)} random items equal to LeRobotDataset's (frames bit-identical, and to its return_uint8 frames / 255; "
        f"from the frame cache, after "
        f"SmolVLA's resize to {'x'.join(map(str, REAL_RESOLUTION))}: max |difference| {worst * 255:.3f}/255); "
        f"{args.repeats} repeats x {args.real_batches} batches after {args.real_warmup} warm-up (at least one per worker), median"
    )
    print(
        f"  frame cache {cache_dir}: {'x'.join(map(str, stored))} uint8 frames, {cache_bytes / 1e9:.2f} GB "
        f"({cache_bytes / (len(crab) * len(cams)) / 1e3:.0f} kB a frame and camera), built once in "
        f"{index['build_seconds']:.0f} s; read from the disk (evicted from the page cache before each run)"
    )
    del crab, cached, lerobot, lerobot_u8
    runs = {(loader, w): [] for w in args.real_workers for loader in REAL_LOADERS}
    for r in range(args.repeats):
        for w in args.real_workers:
            for loader in REAL_LOADERS if (r + w) % 2 == 0 else REAL_LOADERS[::-1]:
                cmd = [sys.executable, __file__, "--real-measure", f"{loader},{w}", *sys.argv[1:]]
                done = subprocess.run(cmd, capture_output=True, text=True, check=False)
                if done.returncode != 0:
                    raise SystemExit(f"{loader} with {w} worker(s) failed:\n{done.stderr[-3000:]}")
                runs[loader, w].append(json.loads(done.stdout.strip().splitlines()[-1]))
    print(
        f"  {'workers':>7} {'items/s: lerobot':>17} {'crab':>6} {'cached':>7}   {'crab/lerobot':>12} {'cached/lerobot':>14}   "
        f"{'peak RSS: lerobot':>17} {'crab':>8} {'cached':>8}   {'CPU ms/item: lerobot':>20} {'crab':>5} {'cached':>6}"
    )
    ratios = {"crab": {}, "cached": {}}
    for w in args.real_workers:
        med = {
            loader: {k: statistics.median(run[k] for run in runs[loader, w]) for k in runs[loader, w][0]}
            for loader in REAL_LOADERS
        }
        per_repeat = {}
        for name in ratios:
            pairs = zip(runs[name, w], runs["lerobot", w], strict=True)
            per_repeat[name] = [c["items_per_s"] / b["items_per_s"] for c, b in pairs]
            ratios[name][w] = statistics.median(per_repeat[name])
        rate, rss, cpu = ({n: med[n][k] for n in REAL_LOADERS} for k in ("items_per_s", "peak_rss_mb", "cpu_ms_per_item"))
        print(
            f"  {w:>7} {rate['lerobot']:>17.1f} {rate['crab']:>6.1f} {rate['cached']:>7.1f}   {ratios['crab'][w]:>11.2f}x "
            f"{ratios['cached'][w]:>13.2f}x   {rss['lerobot']:>14.0f} MB {rss['crab']:>5.0f} MB {rss['cached']:>5.0f} MB   "
            f"{cpu['lerobot']:>20.1f} {cpu['crab']:>5.1f} {cpu['cached']:>6.1f}"
            f"   (ratios per repeat: crab {', '.join(f'{r:.2f}' for r in per_repeat['crab'])}; "
            f"cached {', '.join(f'{r:.2f}' for r in per_repeat['cached'])})"
        )
    def median_rate(name: str, w: int) -> float:
        return statistics.median(run["items_per_s"] for run in runs[name, w])


    best = {name: max(args.real_workers, key=lambda w, n=name: median_rate(n, w)) for name in REAL_LOADERS}
    # Each CrabDataset loader at its best worker count against lerobot at its best: per repeat, median.
    best_ratio = {
        name: statistics.median(
            c["items_per_s"] / b["items_per_s"]
            for c, b in zip(runs[name, best[name]], runs["lerobot", best["lerobot"]], strict=True)
        )
        for name in ratios
    }
    print(
        f"  best worker count: lerobot {best['lerobot']} ({median_rate('lerobot', best['lerobot']):.1f} items/s), "
        f"crab decoding (the default) {best['crab']} ({median_rate('crab', best['crab']):.1f} items/s), "
        f"crab with the frame cache (data.frame_cache) {best['cached']} ({median_rate('cached', best['cached']):.1f} items/s)"
    )
    goal = best_ratio["crab"] >= 1.0
    print(
        f"real-shaped loader: crab/lerobot items/s, each at its best worker count: {best_ratio['crab']:.2f}x "
        f"(decoded; goal >= 1.00x: {'met' if goal else 'MISSED'}), {best_ratio['cached']:.2f}x (frame cache)"
    )


def loader_vs_trainer(rows: list[ManifestRow], cfg: CrabConfig, args: argparse.Namespace) -> None:
    from bench_train_step import crab_step
    from lerobot.datasets.compute_stats import aggregate_stats

    from crab.training.crab_smolvla_wrapper import make_policy, policy_config

    smolvla_cfg = policy_config(cfg.policy)
    train_eps, _ = split_episodes(rows, cfg.data.val_episodes_per_dataset)
    ds = CrabDataset(rows, RewardSpec(chunk_size=smolvla_cfg.chunk_size), train_eps, cfg.data.video_backend, cfg.data.cache_items)
    bs, workers = cfg.data.batch_size, cfg.data.num_workers
    sampler = EpochBatchSampler(len(ds), bs, cfg.seed)
    loader = torch.utils.data.DataLoader(
        ds,
        batch_sampler=sampler,
        num_workers=workers,
        persistent_workers=workers > 0,
        generator=torch.Generator().manual_seed(cfg.seed),
    )

    def batches():  # endless, epoch after epoch, as the training loop reads them
        for epoch in itertools.count():
            sampler.set_epoch(epoch)
            yield from loader

    stream = batches()
    preloaded = [next(stream) for _ in range(min(8, len(sampler)))]  # also starts the workers

    torch.manual_seed(cfg.seed)
    policy, preprocessor, _ = make_policy(
        smolvla_cfg, cfg.policy, ds.meta.features, aggregate_stats([d.meta.stats for d in ds.datasets])
    )
    signal = np.concatenate([t.signal for t in ds.tables])
    step = crab_step(
        policy, smolvla_cfg, cfg.reward_weighting, cfg.anchor, cfg.task_masks, float(signal.mean()), float(signal.std())
    )
    for batch in preloaded:  # warm-up
        step(preprocessor(batch))

    def load() -> None:
        next(stream)

    def train(k: int) -> None:
        step(preprocessor(preloaded[k % len(preloaded)]))

    rates = {"loader": [], "trainer": []}
    runs = [("loader", lambda k: load()), ("trainer", train)]
    for r in range(args.repeats):
        for name, run in runs if r % 2 == 0 else runs[::-1]:
            start = time.perf_counter()
            for k in range(args.batches):
                run(k)
            rates[name].append(args.batches * bs / (time.perf_counter() - start))
    ratio = statistics.median(a / b for a, b in zip(rates["loader"], rates["trainer"], strict=True))
    print(
        f"loader vs trainer: batch {bs}, {workers} loader worker(s), {len(ds)} training frames, "
        f"policy {cfg.policy.pretrained_path}, weighting {'on' if cfg.reward_weighting.enabled else 'off'}, "
        f"anchor {cfg.anchor.mode if cfg.anchor.enabled else 'off'} (lambda {cfg.anchor.lambda_anchor}); "
        f"{args.repeats} repeats x {args.batches} batches, median; trainer on {torch.get_num_threads()} thread(s)"
    )
    for name, r in rates.items():
        print(f"  {name:<8} {statistics.median(r):8.1f} samples/s  (min {min(r):.1f}, max {max(r):.1f})")
    print(f"  loader / trainer: {ratio:.2f}x (goal >= 2x: {'met' if ratio >= 2 else 'MISSED'})")


def demo_parts(args: argparse.Namespace) -> None:
    """Parts 1-3, on the demo data (or the given manifest, or a small synthetic dataset)."""
    cfg = load_config(args.config or DEMO_CONFIGS)
    with tempfile.TemporaryDirectory() as tmp:
        if args.manifest:
            manifest, root = args.manifest, args.data_root
        elif Path(cfg.data.data_root).is_dir():
            manifest, root = cfg.data.manifest, cfg.data.data_root
        else:
            manifest, root = synthetic_manifest(Path(tmp)), tmp
        rows = load_manifest(manifest, root)
        print(f"data: {manifest} under {root}; python {sys.version.split()[0]}, {os.cpu_count()} cpus")
        if "annotation" in args.parts:
            annotation_overhead(rows, args)
        if "cache" in args.parts:
            item_cache(rows, args)
        if "trainer" in args.parts:
            loader_vs_trainer(rows, cfg, args)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--manifest")
    p.add_argument("--data-root", default="data")
    p.add_argument("--config", action="append", help="training config YAML(s), layered (default: the demo's)")
    p.add_argument("--chunk-size", type=int, default=10, help="for the annotation comparison")
    p.add_argument("--items", type=int, default=400)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batches", type=int, default=40, help="batches per repeat, loader vs trainer")
    p.add_argument("--threads", type=int, help="torch intra-op threads of the trainer (default: torch's choice)")
    p.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS), help="what to measure (default: all)")
    real = p.add_argument_group("real-shaped comparison (CrabDataset against LeRobotDataset)")
    real.add_argument("--real-root", type=Path, default=REPO / "outputs" / "bench_loader", help="its data folder")
    real.add_argument("--real-episodes", type=int, default=20)
    real.add_argument("--real-length", type=int, default=300, help="frames per episode")
    real.add_argument(
        "--real-workers", type=int, nargs="+", default=[0, 1, 2, 4], help="DataLoader worker counts (lerobot-train's: 4)"
    )
    real.add_argument("--real-batch", type=int, default=8)
    real.add_argument("--real-batches", type=int, default=30, help="timed batches per run")
    real.add_argument(
        "--real-warmup", type=int, default=3, help="untimed batches per run (starts workers; at least one per worker)"
    )
    real.add_argument("--real-chunk", type=int, default=50, help="action chunk (smolvla_base: 50)")
    real.add_argument("--real-measure", help=argparse.SUPPRESS)  # internal: one measurement subprocess
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.real_measure:
        loader, workers = args.real_measure.split(",")
        manifest = real_shaped_manifest(args.real_root, args.real_episodes, args.real_length)
        real_shaped_loader(manifest, loader, int(workers), args)
        return
    if set(args.parts) - {"real"}:
        demo_parts(args)
    if "real" in args.parts:
        real_shaped(args)


if __name__ == "__main__":
    main()
