"""An on-disk cache of decoded camera frames at the policy's input resolution, built once.

    python -m crab.data.frame_cache --manifest M [--manifest M2 ...] --data-root R --out DIR [--resolution 512x512]

Decoding a random 480p AV1 frame costs ~5 ms of CPU, three cameras ~15 ms an item, in every epoch
(docs/performance.md). This command decodes every frame of every camera (video or image feature) of the
manifests' datasets once, in order, resizes it the way SmolVLA's `resize_with_pad` will (lerobot's own
function, aspect-preserving bilinear, the padding left out), and writes it as uint8: one `.npy` per
dataset and camera, shaped (frames, C, h, w), row i holding the frame of the dataset's frame `index` i.
With `data.frame_cache: DIR` an item reads its frames from there with positioned reads (nothing is held
in RAM) instead of decoding them.

- The policy's own resize of a cached frame is the identity (checked at build time), so the policy sees
  the frame it would have resized itself, up to uint8 rounding (<= 0.5/255 per pixel; measured in
  docs/performance.md). Frames smaller than the resolution (the policy upscales them) are stored as
  decoded, so their items stay bit-identical to lerobot's.
- The size is printed before anything is written; the command refuses when the disk has less free space.
- The cache is written under `DIR.partial` and renamed to DIR when complete. A build only replaces or
  removes folders it wrote: `--out` naming anything else (a data root, a folder of other files) is refused
  before any work.
- `frame_cache.json` records the resolution and, per dataset, a fingerprint of its source files (paths,
  sizes and modification times under meta/, data/ and videos/). Reading refuses a cache whose
  fingerprint or resolution does not match, and prints the command that rebuilds it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import shlex
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from crab.data.lerobot_reader import LeRobotFrames, to_float
from crab.training.manifest import ManifestError, load_datasets

INDEX_FILE = "frame_cache.json"
# Marks a folder as a build of this command in progress (removed once the build is renamed into place).
PARTIAL_MARK = "frame_cache.partial"
FORMAT = 1
DEFAULT_RESOLUTION = (512, 512)  # smolvla_base's resize_imgs_with_padding (width, height)


class FrameCacheError(ManifestError):
    """A frame cache that cannot be built or used (missing, stale, wrong resolution, disk too small): bad
    data input, reported like the manifest's errors."""


def parse_resolution(text: str) -> tuple[int, int]:
    """'512x512' (width x height, the order of SmolVLAConfig.resize_imgs_with_padding) -> (512, 512)."""
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"resolution {text!r} is not WIDTHxHEIGHT, e.g. 512x512") from None
    if width <= 0 or height <= 0:
        raise argparse.ArgumentTypeError(f"resolution {text!r} must be positive")
    return width, height


def cached_size(height: int, width: int, resolution: tuple[int, int]) -> tuple[int, int]:
    """(h, w) a (height, width) frame is stored at: the size SmolVLA's `resize_with_pad(img, *resolution)`
    resizes it to before padding (the same arithmetic), or the frame's own size where that would enlarge it."""
    ratio = max(width / resolution[0], height / resolution[1])
    if ratio <= 1:
        return height, width
    return int(height / ratio), int(width / ratio)


def to_policy_input(frames: torch.Tensor, resolution: tuple[int, int]) -> torch.Tensor:
    """uint8 (n, C, H, W) decoded frames -> uint8 (n, C, h, w) frames of `cached_size`: lerobot's
    `resize_with_pad` of lerobot's float frames, without its padding (top and left), rounded to uint8."""
    from crab.training.smolvla_internals import resize_images

    h, w = cached_size(*frames.shape[2:], resolution)
    if (h, w) == tuple(frames.shape[2:]):
        return frames
    width, height = resolution
    padded = resize_images(to_float(frames), resolution)
    return (padded[:, :, height - h :, width - w :] * 255).round().clamp(0, 255).to(torch.uint8)


def policy_resize_is_identity(frames: torch.Tensor, resolution: tuple[int, int]) -> bool:
    """Whether SmolVLA's `resize_with_pad` leaves cached uint8 frames as they are (apart from padding)."""
    from crab.training.smolvla_internals import resize_images

    width, height = resolution
    h, w = frames.shape[2:]
    padded = resize_images(to_float(frames), resolution)
    return padded.shape[2:] == (height, width) and torch.equal(
        padded[:, :, height - h :, width - w :], to_float(frames)
    )


def source_fingerprint(root: Path) -> str:
    """Identifies a LeRobot dataset's files: relative path, size and modification time of every file under
    meta/, data/ and videos/ (re-recording, re-encoding or editing any of them changes it)."""
    h = hashlib.sha256()
    for sub in ("meta", "data", "videos"):
        for path in sorted(p for p in (root / sub).rglob("*") if p.is_file()):
            st = path.stat()
            h.update(f"{path.relative_to(root).as_posix()}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


@dataclass
class CachedFrames:
    """One dataset's cameras in a frame cache: per camera key the .npy file, the byte offset of its first
    frame and the (C, h, w) of each frame. Holds paths only (pickles into DataLoader workers as is)."""

    files: dict[str, tuple[str, int, tuple[int, int, int]]]

    def read(self, key: str, indices: np.ndarray) -> torch.Tensor:
        """uint8 (n, C, h, w) frames of frame `index` values `indices`: one positioned read per frame, so
        nothing beyond the frames asked for is held in memory (no memory map, no RAM cache)."""
        path, offset, shape = self.files[key]
        size = math.prod(shape)
        out = np.empty((len(indices), size), np.uint8)
        with open(path, "rb", buffering=0) as f:
            for k, i in enumerate(indices.tolist()):
                f.seek(offset + i * size)
                if f.readinto(out[k]) != size:
                    raise FrameCacheError(f"{path}: truncated, frame {i} missing; rebuild the frame cache")
        return torch.from_numpy(out.reshape(len(indices), *shape))


def _command(index: dict) -> str:
    return shlex.join(["python", "-m", "crab.data.frame_cache", *index["arguments"]])


def open_cached_frames(
    cache: str | Path, row, resolution: tuple[int, int] | None, camera_keys: list[str]
) -> CachedFrames:
    """The cached frames of manifest row `row` (its dataset's `camera_keys`) for a policy resizing to
    `resolution`; a clear error naming the file and the rebuild command when the cache does not fit."""
    cache = Path(cache)
    index_file = cache / INDEX_FILE
    if not index_file.is_file():
        raise FrameCacheError(
            f"data.frame_cache: no frame cache at {cache} ({INDEX_FILE} missing); build it with: python -m "
            f"crab.data.frame_cache --manifest <manifest> --data-root <data root> --out {cache}"
        )
    index = json.loads(index_file.read_text(encoding="utf-8"))
    rebuild = f"rebuild it with: {_command(index)}"
    if index.get("format") != FORMAT:
        raise FrameCacheError(f"{index_file}: format {index.get('format')}, this version reads {FORMAT}; {rebuild}")
    if resolution is None:
        raise FrameCacheError(
            f"{index_file}: a frame cache holds frames at the policy's input resolution, but the policy does not "
            "resize its images (resize_imgs_with_padding is null); set data.frame_cache to null"
        )
    if tuple(index["resolution"]) != tuple(resolution):
        raise FrameCacheError(
            f"{index_file}: built for resolution {'x'.join(map(str, index['resolution']))}, but the policy resizes "
            f"to {'x'.join(map(str, resolution))}; build one for it with --resolution {'x'.join(map(str, resolution))} "
            f"(the last build was: {_command(index)})"
        )
    entry = index["datasets"].get(row.name)
    if entry is None:
        raise FrameCacheError(
            f"{index_file}: dataset {row.name!r} ({row.source}) is not in the frame cache (it holds "
            f"{sorted(index['datasets'])}); build one for all the manifests a run reads (--manifest once per "
            f"manifest), e.g. {_command(index)} --manifest {row.source.rsplit(':', 1)[0]}"
        )
    if entry["fingerprint"] != source_fingerprint(row.root) or Path(entry["root"]) != row.root.resolve():
        raise FrameCacheError(
            f"{index_file}: stale for dataset {row.name!r} ({row.root}): its files changed since the cache was "
            f"built (or it now names another folder); {rebuild}"
        )
    if sorted(entry["cameras"]) != sorted(camera_keys):
        raise FrameCacheError(
            f"{index_file}: cameras {sorted(entry['cameras'])} of {row.name!r} are not {sorted(camera_keys)}; {rebuild}"
        )
    files = {}
    for key, cam in entry["cameras"].items():
        path = cache / cam["file"]
        expected = cam["offset"] + entry["frames"] * math.prod(cam["shape"])
        if not path.is_file() or path.stat().st_size != expected:
            raise FrameCacheError(f"{path}: missing or not {expected} bytes long; {rebuild}")
        files[key] = (str(path), cam["offset"], tuple(cam["shape"]))
    return CachedFrames(files)


def _rows(manifests: list[str], data_root: str) -> list:
    rows = {}
    for manifest in manifests:
        for row in load_datasets(manifest, data_root):
            seen = rows.setdefault(row.name, row)
            if seen.root.resolve() != row.root.resolve():
                raise ManifestError(
                    f"{row.source}: dataset name {row.name!r} already names {seen.root} ({seen.source})"
                )
    return list(rows.values())


def build(manifests: list[str], data_root: str, out: str | Path, resolution: tuple[int, int], batch: int = 32) -> dict:
    """Write the frame cache of the manifests' datasets to `out` (see the module's docstring); returns its index."""
    from tqdm import tqdm

    out = Path(out)
    _check_out(out)
    arguments = [a for m in manifests for a in ("--manifest", str(m))]
    arguments += ["--data-root", str(data_root), "--out", str(out), "--resolution", "x".join(map(str, resolution))]
    rows = _rows(manifests, data_root)
    plan = []  # (row, its LeRobotFrames, fingerprint, {camera key: (source shape, cached shape)}), all (C, H, W)
    for row in rows:
        ds = LeRobotFrames(row.repo_id, root=row.root)
        cameras = {}
        for key in [*ds.video_keys, *ds.image_keys]:
            feature = ds.meta.features[key]
            if feature.get("names") not in (["height", "width", "channels"], None):
                raise FrameCacheError(
                    f"{row.root / 'meta' / 'info.json'}: feature `{key}` has axes {feature['names']}, not height, width, channels"
                )
            height, width, channels = feature["shape"]
            h, w = cached_size(height, width, resolution)
            cameras[key] = ((channels, height, width), (channels, h, w))
            probe = torch.randint(
                0, 256, (1, channels, h, w), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
            )
            if (h, w) != (height, width) and not policy_resize_is_identity(probe, resolution):
                raise FrameCacheError(
                    f"resolution {'x'.join(map(str, resolution))}: SmolVLA's resize_with_pad would resize the {h}x{w} "
                    f"(height x width) frames cached for the {height}x{width} `{key}` of {row.name!r} again (rounding "
                    "in its size arithmetic); choose another resolution"
                )
        if not np.array_equal(ds.index, np.arange(len(ds))):  # row i of a cache file is frame `index` i
            raise FrameCacheError(
                f"{row.root / 'data'}: frame `index` is not 0..{len(ds) - 1} in order; cannot cache it"
            )
        plan.append((row, ds, source_fingerprint(row.root), cameras))
    if not any(cameras for *_, cameras in plan):
        raise FrameCacheError(f"the datasets of {manifests} have no camera features (video or image): nothing to cache")

    previous = out / INDEX_FILE
    if previous.is_file():
        old = json.loads(previous.read_text(encoding="utf-8"))
        if (
            old.get("format") == FORMAT
            and tuple(old["resolution"]) == tuple(resolution)
            and all(
                row.name in old["datasets"]
                and old["datasets"][row.name]["fingerprint"] == fp
                and Path(old["datasets"][row.name]["root"]) == row.root.resolve()
                for row, _, fp, _ in plan
            )
        ):
            print(
                f"frame cache {out}: up to date for these datasets at {'x'.join(map(str, resolution))}; nothing to do"
            )
            return old

    frames = sum(len(ds) * len(cameras) for _, ds, _, cameras in plan)
    need = sum(len(ds) * math.prod(shape) for _, ds, _, cameras in plan for _, shape in cameras.values())
    probe = out.parent
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    print(
        f"frame cache {out}: {len(plan)} dataset(s), {frames} frames (frames x cameras) at "
        f"{'x'.join(map(str, resolution))}: {need / 1e9:.2f} GB on disk; {free / 1e9:.2f} GB free there",
        flush=True,
    )
    for row, _, _, cameras in plan:
        for key, (source, shape) in cameras.items():
            print(
                f"  {row.name} {key}: {'x'.join(map(str, source[1:]))} -> {'x'.join(map(str, shape[1:]))}, {math.prod(shape)} bytes a frame"
            )
    if need >= free:
        raise FrameCacheError(
            f"not enough disk space for the frame cache at {out}: it needs {need / 1e9:.2f} GB ({need} bytes), "
            f"{free / 1e9:.2f} GB ({free} bytes) are free on {probe}; nothing was written (free some space or "
            "choose another --out)"
        )

    partial, stale = _siblings(out)
    _remove_own(partial)  # an interrupted earlier build
    partial.mkdir(parents=True)
    (partial / PARTIAL_MARK).touch()
    start = time.perf_counter()
    index = {"format": FORMAT, "resolution": list(resolution), "arguments": arguments, "datasets": {}}
    try:
        with tqdm(total=frames, unit="frame", desc=f"building {out}") as bar:
            for row, ds, fingerprint, cameras in plan:
                entry = {"root": str(row.root.resolve()), "repo_id": row.repo_id, "fingerprint": fingerprint}
                entry |= {"frames": len(ds), "cameras": {}}
                for key, (source, shape) in cameras.items():
                    file = f"{row.name}/{key}.npy"
                    offset = _write(partial / file, ds, key, source, resolution, batch, bar)
                    entry["cameras"][key] = {"file": file, "offset": offset, "shape": list(shape)}
                index["datasets"][row.name] = entry
        index["build_seconds"] = round(time.perf_counter() - start, 1)
        (partial / INDEX_FILE).write_text(json.dumps(index, indent=1), encoding="utf-8")  # last: marks it complete
    except BaseException:  # a decoding error, Ctrl-C: no half-written cache left behind
        _remove_own(partial)
        raise
    # Replace the old cache only now that the new one is complete. A kill between the two renames leaves
    # the old cache under `stale`, and the next build puts it back before anything else.
    if out.exists():
        _remove_own(stale)
        out.rename(stale)
    partial.rename(out)
    (out / PARTIAL_MARK).unlink()
    _remove_own(stale)
    print(f"frame cache {out}: {need / 1e9:.2f} GB written in {index['build_seconds']:.0f} s")
    return index


def _siblings(out: Path) -> tuple[Path, Path]:
    """The folders beside `out` that a build writes: the cache being built, and the previous cache while
    the new one is renamed into place."""
    return out.with_name(out.name + ".partial"), out.with_name(out.name + ".old")


def _foreign(folder: Path) -> str | None:
    """Why `folder` is not a frame cache (or partial build) this command wrote, or None when it is: one
    holds its index or partial mark, and otherwise only `<dataset>/<camera>.npy` files (an empty folder
    holds nothing to lose)."""
    if not any(folder.iterdir()):
        return None
    if not (folder / INDEX_FILE).is_file() and not (folder / PARTIAL_MARK).is_file():
        return f"no {INDEX_FILE}"
    for path in folder.rglob("*"):
        relative = path.relative_to(folder)
        ours = relative.name in (INDEX_FILE, PARTIAL_MARK) if len(relative.parts) == 1 else (
            len(relative.parts) == 2 and relative.suffix == ".npy" and path.is_file()
        )  # fmt: skip
        if not ours and not (len(relative.parts) == 1 and path.is_dir()):
            return f"it holds {relative.as_posix()}, which no frame cache holds"
    return None


def _remove_own(folder: Path) -> None:
    """Remove `folder` if it exists and is a frame cache this command wrote; refuse anything else."""
    if not folder.exists():
        return
    if not folder.is_dir() or (why := _foreign(folder)):
        raise FrameCacheError(
            f"{folder} is in the way of the frame cache and is not one this command wrote "
            f"({'a file' if not folder.is_dir() else why}); move it away, nothing was written"
        )
    shutil.rmtree(folder)


def _check_out(out: Path) -> None:
    """Refuse, before any work, an `--out` this command would have to replace without having written it
    (a data root, a dataset, any folder of other files), and put back a previous cache that a kill left
    beside it."""
    partial, stale = _siblings(out)
    if not out.exists() and stale.is_dir() and (stale / INDEX_FILE).is_file() and not _foreign(stale):
        stale.rename(out)  # killed between the two renames of a rebuild: the previous cache is complete
    if out.exists() and (not out.is_dir() or (why := _foreign(out))):
        example = f", e.g. {out / 'frame_cache'}" if out.is_dir() else ""
        raise FrameCacheError(
            f"--out {out} exists and is not a frame cache ({'a file' if not out.is_dir() else why}); a build "
            "replaces its --out folder whole, so it only writes over a frame cache it built: choose a new "
            f"folder{example}; nothing was written"
        )
    for folder in (partial, stale):
        if folder.exists() and (not folder.is_dir() or _foreign(folder)):
            _remove_own(folder)  # raises, naming it


def _write(path: Path, ds: LeRobotFrames, key: str, source: tuple, resolution: tuple[int, int], batch: int, bar) -> int:
    """Write camera `key` of `ds` (frames of `source` (C, H, W)) to the .npy file `path`, frame after
    frame, resized; returns the byte offset of the first frame."""
    path.parent.mkdir(parents=True, exist_ok=True)
    shape = (source[0], *cached_size(*source[1:], resolution))
    with open(path, "wb") as f:
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)), "fortran_order": False}
        np.lib.format.write_array_header_2_0(f, {**header, "shape": (len(ds), *shape)})
        offset = f.tell()
        for frames in ds.camera_frames(key, batch):
            if tuple(frames.shape[1:]) != source:
                raise FrameCacheError(
                    f"{ds.root}: `{key}` decodes to frames of {tuple(frames.shape[1:])} (C, H, W), info.json says {source}"
                )
            f.write(to_policy_input(frames, resolution).numpy().tobytes())
            bar.update(len(frames))
    return offset


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--manifest", action="append", required=True, help="dataset manifest CSV (repeat for several)")
    p.add_argument("--data-root", default="data", help="relative dataset roots in the manifests resolve against this")
    p.add_argument("--out", required=True, help="the cache folder (data.frame_cache)")
    p.add_argument(
        "--resolution", type=parse_resolution, default=DEFAULT_RESOLUTION,
        help="the policy's resize_imgs_with_padding as WIDTHxHEIGHT (default 512x512, smolvla_base's)",
    )  # fmt: skip
    p.add_argument("--batch", type=int, default=32, help="frames decoded per call")
    args = p.parse_args(argv)
    if args.batch < 1:
        p.error("--batch must be >= 1")
    try:
        build(args.manifest, args.data_root, args.out, args.resolution, args.batch)
    except ManifestError as e:  # bad input, a stale cache, too small a disk: no traceback
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
