"""Smoke test: the train-step benchmark runs end to end and prints its ratios (timings never asserted)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_bench_train_step_tiny_prints_ratios():
    # The per-variant memory subprocesses (one interpreter start each) are left out to stay fast.
    cmd = [sys.executable, "benchmarks/bench_train_step.py", "--size", "tiny", "--steps", "1", "--repeats", "1"]
    cmd += ["--warmup", "1", "--threads", "1", "--no-memory"]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    for line in ("(a) lerobot update_policy", "IL / lerobot", "RWFM / IL", "RWFM+shared / RWFM", "RWFM+naive / RWFM"):
        assert line in done.stdout, done.stdout
    header = [line for line in done.stdout.splitlines() if line.startswith("train step, size tiny: SmolVLA")]
    assert header and ", lerobot " in header[0] and ", transformers " in header[0], done.stdout  # names the stack
    last = done.stdout.strip().splitlines()[-1]  # the headline ratios
    assert last.startswith("train step, size tiny: IL/lerobot ") and "RWFM+shared/RWFM " in last, done.stdout


@pytest.mark.slow
def test_bench_loader_real_shaped_prints_its_ratio(tmp_path):
    # One tiny real-shaped dataset (3 cameras at 480x640, 10 frames) and its frame cache, one repeat, in-process
    # loading only: each measurement is a fresh interpreter, three loaders per worker count (the items in
    # spawned workers are tested in test_crab_dataset.py and test_frame_cache.py).
    cmd = [sys.executable, "benchmarks/bench_loader.py", "--parts", "real", "--real-root", str(tmp_path), "--repeats", "1"]
    cmd += ["--real-episodes", "1", "--real-length", "10", "--real-workers", "0", "--real-batch", "2"]
    cmd += ["--real-batches", "2", "--real-warmup", "1"]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "items equal to LeRobotDataset's" in done.stdout, done.stdout
    assert "frame cache" in done.stdout and "max |difference|" in done.stdout, done.stdout
    last = done.stdout.strip().splitlines()[-1]
    assert last.startswith("real-shaped loader: crab/lerobot items/s, each at its best worker count: "), done.stdout
    assert "(decoded; goal >= 1.00x: " in last and last.endswith("(frame cache)"), done.stdout
