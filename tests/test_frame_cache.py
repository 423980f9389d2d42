"""The on-disk decoded-frame cache: built from real LeRobot datasets, read by CrabDataset (also in spawned
workers), equal to lerobot's frames after the policy's resize, and refused when stale or too large."""

from __future__ import annotations

import os
import shlex
import shutil
from collections import namedtuple

import numpy as np
import pytest
import torch
from conftest import ALL_ROWS, PLACE, write_manifest
from lerobot.policies.smolvla.modeling_smolvla import resize_with_pad
from test_crab_dataset import SPEC, assert_same_item, boundary_and_random_indices
from test_train import config, setup, step_log  # noqa: F401 (setup: the training data fixture)

from crab.data import frame_cache
from crab.data.frame_cache import FrameCacheError, cached_size, policy_resize_is_identity, to_policy_input
from crab.data.lerobot_reader import float_frames
from crab.training import train
from crab.training.crab_dataset import CrabDataset
from crab.training.manifest import load_manifest

RESIZED = (24, 20)  # width x height the policy resizes to: the 32x32 test frames are stored at 20x20
# uint8 rounding of a resized frame: at most half a level, plus float32 error in the policy's resize.
TOLERANCE = 0.5 / 255 + 1e-6


@pytest.fixture(scope="module")
def manifests(data_root, tmp_path_factory):
    """Two manifests (one manifest cannot mix video and image cameras): three video datasets, one of PNGs."""
    folder = tmp_path_factory.mktemp("m")
    return {
        "video": write_manifest(folder / "video.csv", ALL_ROWS),
        "image": write_manifest(folder / "image.csv", [("images", PLACE, "clean")]),
    }


@pytest.fixture(scope="module")
def cache(manifests, data_root, tmp_path_factory):
    """One cache for both manifests, the 32x32 frames stored at 20x20."""
    out = tmp_path_factory.mktemp("cache") / "frames"
    args = ["--manifest", str(manifests["video"]), "--manifest", str(manifests["image"])]
    frame_cache.main([*args, "--data-root", str(data_root), "--out", str(out), "--resolution", "24x20"])
    return out


def policy_view(frames: torch.Tensor) -> torch.Tensor:
    """What SmolVLA's prepare_images makes of an item's (C, H, W) frame at RESIZED (before *2-1): lerobot's
    own resize, which takes (height, width)."""
    width, height = RESIZED
    return resize_with_pad(frames[None], height, width, pad_value=0)[0]


def test_sizes_follow_smolvla_resize():
    # Hand-checked: 480x640 into 512x512 scales by 1/1.25 to 384x512; frames smaller than the target are kept.
    assert cached_size(480, 640, (512, 512)) == (384, 512)
    assert cached_size(32, 32, (24, 20)) == (20, 20)
    assert cached_size(32, 48, (64, 64)) == (32, 48)
    frames = torch.randint(0, 256, (2, 3, 480, 640), dtype=torch.uint8)
    small = to_policy_input(frames, (512, 512))
    assert small.dtype == torch.uint8 and small.shape == (2, 3, 384, 512)
    assert policy_resize_is_identity(small, (512, 512))
    # At 29x29, lerobot's int() arithmetic makes the 640 px side 28 px, which its next resize makes 29.
    odd = to_policy_input(frames, (29, 29))
    assert odd.shape[2:] == (21, 28) and not policy_resize_is_identity(odd, (29, 29))


@pytest.mark.parametrize("kind", ["video", "image"])
def test_cached_items_equal_lerobot_items_after_the_policy_resize(kind, cache, manifests, data_root):
    rows = load_manifest(manifests[kind], data_root)
    ds, decoded = CrabDataset(rows, SPEC, frame_cache=cache, resolution=RESIZED), CrabDataset(rows, SPEC)
    reference = [ds.lerobot_dataset(d) for d in range(len(ds.datasets))]
    worst, padded = 0.0, 0
    for i in boundary_and_random_indices(ds, 20, seed=7):
        d, local = ds.locate(i)
        theirs, ours = reference[d][local], ds[i]
        assert ours.keys() == decoded[i].keys(), i
        for key, value in theirs.items():
            if key not in ours:
                continue
            if key == "observation.images.top":
                assert ours[key].dtype == torch.float32 and ours[key].shape == (3, 20, 20), i
                assert torch.equal(
                    policy_view(ours[key]), torch.nn.functional.pad(ours[key], (4, 0, 0, 0))
                )  # identity + pad
                worst = max(worst, (policy_view(ours[key]) - policy_view(value)).abs().max().item())
            elif isinstance(value, torch.Tensor):
                assert torch.equal(ours[key], value), f"{i} {key}"
            else:
                assert ours[key] == value, f"{i} {key}"
        padded += bool(theirs["action_is_pad"].any())
    assert padded >= 1
    assert 0 < worst <= TOLERANCE  # rounded, but by at most half a uint8 level
    # As the trainer reads it: cached video frames stay uint8 until after collate, then the same floats.
    uint8 = CrabDataset(rows, SPEC, frame_cache=cache, resolution=RESIZED, return_uint8=True)
    for i in boundary_and_random_indices(ds, 5, seed=8):
        item = uint8[i]
        assert item["observation.images.top"].dtype == (torch.uint8 if kind == "video" else torch.float32)
        for key, value in float_frames(item, uint8.video_keys).items():
            assert torch.equal(value, ds[i][key]) if isinstance(value, torch.Tensor) else value == ds[i][key], key


def test_frames_smaller_than_the_resolution_are_stored_as_decoded(manifests, data_root, tmp_path):
    out = tmp_path / "native"
    frame_cache.build([str(manifests["video"]), str(manifests["image"])], str(data_root), out, (64, 64))
    for manifest in manifests.values():  # bit-identical items, video and images
        ds = CrabDataset(load_manifest(manifest, data_root), SPEC, frame_cache=out, resolution=(64, 64))
        plain = CrabDataset(load_manifest(manifest, data_root), SPEC)
        for i in boundary_and_random_indices(ds, 5, seed=8):
            assert_same_item(ds[i], plain[i], f"item {i}")


@pytest.mark.parametrize("workers", [1, 2])
def test_cached_items_in_spawned_workers(workers, cache, manifests, data_root):
    for manifest in manifests.values():
        ds = CrabDataset(load_manifest(manifest, data_root), SPEC, frame_cache=cache, resolution=RESIZED)
        indices = boundary_and_random_indices(ds, 6, seed=workers)
        loader = torch.utils.data.DataLoader(
            ds, sampler=indices, batch_size=None, num_workers=workers, multiprocessing_context="spawn"
        )
        for i, item in zip(indices, loader, strict=True):
            assert_same_item(item, ds[i], f"item {i}")


def test_stale_or_mismatched_cache_is_refused_with_the_rebuild_command(data_root, tmp_path, capsys):
    root = tmp_path / "data"
    shutil.copytree(data_root / "clean", root / "clean")
    manifest = write_manifest(tmp_path / "m.csv", [("clean", PLACE, "clean")])
    out = tmp_path / "cache"
    args = ["--manifest", str(manifest), "--data-root", str(root), "--out", str(out), "--resolution", "24x20"]
    frame_cache.main(args)
    frame_cache.main(args)
    assert "up to date" in capsys.readouterr().out
    rows = load_manifest(manifest, root)
    with pytest.raises(FrameCacheError, match=r"built for resolution 24x20, but the policy resizes to 512x512"):
        CrabDataset(rows, SPEC, frame_cache=out, resolution=(512, 512))
    with pytest.raises(FrameCacheError, match=r"no frame cache at .*frame_cache.json missing"):
        CrabDataset(rows, SPEC, frame_cache=tmp_path / "nowhere", resolution=RESIZED)
    other = write_manifest(tmp_path / "other.csv", [("labelled", PLACE, "clean")])
    shutil.copytree(data_root / "labelled", root / "labelled")
    with pytest.raises(FrameCacheError, match=r"dataset 'labelled' .* is not in the frame cache"):
        CrabDataset(load_manifest(other, root), SPEC, frame_cache=out, resolution=RESIZED)

    video = next((root / "clean" / "videos").rglob("*.mp4"))
    os.utime(video, ns=(video.stat().st_atime_ns, video.stat().st_mtime_ns + 10**9))  # re-encoded, say
    with pytest.raises(
        FrameCacheError,
        match=r"frame_cache.json: stale for dataset 'clean'.*rebuild it with: python -m crab.data.frame_cache",
    ) as e:
        CrabDataset(rows, SPEC, frame_cache=out, resolution=RESIZED)
    command = shlex.split(str(e.value).split("rebuild it with: ")[1])  # works as printed
    assert command[:3] == ["python", "-m", "crab.data.frame_cache"]
    frame_cache.main(command[3:])
    assert "up to date" not in capsys.readouterr().out
    CrabDataset(rows, SPEC, frame_cache=out, resolution=RESIZED)[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "data", "m.csv", "other.csv"]  # no leftovers


def test_too_small_a_disk_is_refused_before_anything_is_written(data_root, tmp_path, monkeypatch, capsys):
    manifest = write_manifest(tmp_path / "m.csv", [("clean", PLACE, "clean")])
    usage = namedtuple("usage", "total used free")
    # clean: 21 frames of one 32x32 camera stored at 20x20x3 = 1200 bytes each
    monkeypatch.setattr(frame_cache.shutil, "disk_usage", lambda path: usage(10**6, 10**6 - 25_000, 25_000))
    out = tmp_path / "cache"
    with pytest.raises(
        SystemExit,
        match=r"error: not enough disk space .* needs .*25200 bytes.*25000 bytes.* are free.*nothing was written",
    ):
        frame_cache.main(
            ["--manifest", str(manifest), "--data-root", str(data_root), "--out", str(out), "--resolution", "24x20"]
        )
    assert "21 frames (frames x cameras)" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.csv"]
    monkeypatch.setattr(frame_cache.shutil, "disk_usage", lambda path: usage(10**6, 0, 26_000))
    frame_cache.build([str(manifest)], str(data_root), out, (24, 20))
    assert np.load(out / "clean" / "observation.images.top.npy").shape == (21, 3, 20, 20)


@pytest.mark.slow
def test_training_reads_its_frames_from_the_cache(setup, tmp_path):  # noqa: F811 (the imported fixture)
    """`data.frame_cache` in train.py: at the tiny policy's 32x32 the test frames are stored as decoded, so
    the run is the decoding run, step for step; a cache for another resolution stops it before any step."""
    steps = {"train.steps": 4, "train.save_every": 4}
    out = tmp_path / "frames"
    frame_cache.build([str(setup["manifest"])], str(setup["data_root"]), out, (32, 32))
    decoded = train.train(config(setup, "decoded", **steps))
    cached = train.train(config(setup, "cached", **steps, **{"data.frame_cache": out.as_posix()}))
    for key in ("loss", "loss_weighted", "loss_anchor", "grad_norm"):
        assert [r[key] for r in step_log(decoded)] == [r[key] for r in step_log(cached)], key
    other = tmp_path / "other"
    frame_cache.build([str(setup["manifest"])], str(setup["data_root"]), other, (24, 20))
    with pytest.raises(FrameCacheError, match=r"built for resolution 24x20, but the policy resizes to 32x32"):
        train.train(config(setup, "wrong", **steps, **{"data.frame_cache": other.as_posix()}))
    assert not (setup["out"] / "wrong").exists()


def test_a_resolution_the_policy_would_resize_again_is_refused_before_writing(data_root, tmp_path, monkeypatch):
    manifest = write_manifest(tmp_path / "m.csv", [("clean", PLACE, "clean")])
    # A stored size one row short of lerobot's arithmetic (as 21x28 is for 480x640 at 29x29, above).
    monkeypatch.setattr(frame_cache, "cached_size", lambda height, width, resolution: (19, 20))
    with pytest.raises(
        FrameCacheError,
        match=r"resolution 24x20: SmolVLA's resize_with_pad would resize the 19x20 \(height x width\) frames cached for the 32x32",
    ):
        frame_cache.build([str(manifest)], str(data_root), tmp_path / "cache", (24, 20))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.csv"]
