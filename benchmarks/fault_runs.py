"""Fault runs (issue 30): kill -9 at random moments, then resume or rerun; nothing lost, nothing partial.

    python benchmarks/fault_runs.py [--work /tmp/crab_fault_runs] [--kills 6] [--steps 120] [--seed 0]

1. Training with `apply: sample`, anchor replay and a frame cache (tiny policy, synthetic data): one
   uninterrupted run, and one killed with SIGKILL at `--kills` random moments (a run killed before its first
   checkpoint starts again, later ones `--resume` from the newest checkpoint), then run to the end. The
   final weights (model.safetensors) and optimizer state must be bit-identical, and train_log.jsonl must
   hold each step once.
2. `reward_stats` writing over an existing statistics file, killed at random moments: the file must
   afterwards be the previous one or the complete new one, byte for byte.
3. `frame_cache` rebuilding an existing cache at another resolution, killed at random moments: the
   folder must afterwards be the previous cache or the complete new one (its index and every file
   present), and the next build must complete.

Prints one line per kill and a summary; exits 1 if any check fails. POSIX only (SIGKILL).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the tests' synthetic LeRobot datasets
from conftest import OPEN, PLACE, synthetic_episode, write, write_manifest  # noqa: E402

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def make_data(work: Path) -> dict:
    rng = np.random.default_rng(0)
    data = work / "data"
    write(data, "clean", [synthetic_episode(rng, PLACE, n) for n in (30, 24, 28)])
    write(data, "cracked", [synthetic_episode(rng, PLACE, 20, labels={"success": 1, "damage": 1}) for _ in range(3)])
    write(data, "carton", [synthetic_episode(rng, OPEN, 25, rewards=[0] * 24 + [1]) for _ in range(3)])
    train = write_manifest(work / "train.csv", [("clean", PLACE, "clean"), ("cracked", PLACE, "cracked")])
    replay = write_manifest(work / "replay.csv", [("carton", OPEN, "clean")])
    return {"data": data, "train": train, "replay": replay}


def module(*args: str) -> list[str]:
    return [sys.executable, "-m", *args]


def run(cmd: list[str]) -> None:
    subprocess.run(cmd, check=True, env=ENV, cwd=REPO, stdout=subprocess.DEVNULL)


def killed(cmd: list[str], delay: float) -> bool:
    """Start `cmd`, SIGKILL it after `delay` seconds; whether it was still running (False: it finished)."""
    proc = subprocess.Popen(cmd, env=ENV, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        proc.wait(delay)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        return True
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd} failed: {proc.stderr.read().decode()[-2000:]}")
    return False


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def training(d: dict, work: Path, kills: int, steps: int, rng: random.Random) -> list[str]:
    failures = []
    cache = work / "frames"
    run(module("crab.data.frame_cache", "--manifest", str(d["train"]), "--manifest", str(d["replay"]),
               "--data-root", str(d["data"]), "--out", str(cache), "--resolution", "32x32"))  # fmt: skip
    stats = work / "stats.json"
    run(module("crab.training.reward_stats", "--manifest", str(d["train"]), "--out", str(stats), "--data-root",
               str(d["data"]), "--chunk-size", "10", "--clip-min", "0", "--alpha", "4"))  # fmt: skip
    configs = REPO / "crab" / "training" / "configs"
    base = [sys.executable, str(REPO / "crab" / "training" / "train.py"),
            "--config", str(configs / "train_cycle1_rwfm_anchor_cracked_factor.yaml"),
            "--config", str(configs / "demo_overrides.yaml")]  # fmt: skip
    sets = {
        "output_dir": (work / "outputs").as_posix(), "data.manifest": d["train"].as_posix(),
        "data.reward_stats": stats.as_posix(), "data.data_root": d["data"].as_posix(),
        "data.frame_cache": cache.as_posix(), "data.cache_items": "false", "data.batch_size": 4,
        "data.val_episodes_per_dataset": 1, "task_masks": "{}", "reward_weighting.apply": "sample",
        "replay.manifest": d["replay"].as_posix(), "replay.batch_size": 2,
        "anchor.warmup_steps": 2, "anchor.ramp_steps": 4, "train.steps": steps, "train.save_every": 3,
        "train.log_every": 2, "train.keep_last": 2, "train.progress_bar": "false",
    }  # fmt: skip

    def command(name: str, resume: Path | None = None) -> list[str]:
        args = [a for k, v in {**sets, "run_name": name}.items() for a in ("--set", f"{k}={v}")]
        return base + args + (["--resume", str(resume)] if resume else [])

    start = time.perf_counter()
    run(command("straight"))
    wall = time.perf_counter() - start
    print(f"training: uninterrupted run {wall:.1f} s ({steps} steps)")
    run_dir = work / "outputs" / "interrupted"
    final = f"step_{steps:06d}"
    done, k = False, 0
    while not done:
        checkpoints = sorted(run_dir.glob("step_*"))
        resume = checkpoints[-1] if checkpoints else None
        if resume is not None and resume.name == final:  # killed after its last checkpoint, in the end work
            break
        # Most of a short run is start-up; early enough that most kills land between checkpoints.
        delay = rng.uniform(0.1, 0.35) * wall if k < kills else 1e9
        done = not killed(command("interrupted", resume), delay)
        if not done:
            k += 1
            now = sorted(p.name for p in run_dir.glob("step_*"))
            print(f"  kill {k}: after {delay:.1f} s, resumed from {resume.name if resume else 'the start'}; checkpoints now {now}")
    for name in ("pretrained_model/model.safetensors", "training_state.pt"):
        a, b = work / "outputs" / "straight" / final / name, run_dir / final / name
        same = name.endswith(".safetensors") and digest(a) == digest(b)
        if name.endswith(".pt"):
            import torch

            sa, sb = (torch.load(p, weights_only=False)["optimizer"]["state"] for p in (a, b))
            same = all(torch.equal(sa[i][t], sb[i][t]) for i in sa for t in ("exp_avg", "exp_avg_sq"))
        print(f"  {name}: {'bit-identical' if same else 'DIFFERENT'}")
        if not same:
            failures.append(f"training {name} differs after {k} kills")
    logged = [json.loads(line)["step"] for line in (run_dir / "train_log.jsonl").read_text().splitlines()]
    straight = [json.loads(line)["step"] for line in (work / "outputs" / "straight" / "train_log.jsonl").read_text().splitlines()]
    print(f"  train_log steps: {'as the uninterrupted run' if logged == straight else f'DIFFERENT {logged}'}")
    if logged != straight:
        failures.append("train_log.jsonl differs")
    if k < kills:
        failures.append(f"only {k} kills landed before the run ended")
    return failures


def reward_stats_kills(d: dict, work: Path, kills: int, rng: random.Random) -> list[str]:
    failures = []
    out = work / "stats_kill.json"
    cmd = module("crab.training.reward_stats", "--manifest", str(d["train"]), "--data-root", str(d["data"]),
                 "--chunk-size", "10", "--out", str(out))  # fmt: skip
    run([*cmd, "--alpha", "1"])
    previous = out.read_bytes()
    run([*cmd, "--alpha", "2"])
    new = out.read_bytes()
    start = time.perf_counter()
    run([*cmd, "--alpha", "1"])
    wall = time.perf_counter() - start
    for k in range(kills):
        delay = rng.uniform(0.1, 0.8) * wall
        was_killed = killed([*cmd, "--alpha", "2"], delay)
        now = out.read_bytes()
        state = "previous" if now == previous else "new" if now == new else "CORRUPT"
        print(f"  reward_stats kill {k + 1}: after {delay:.2f} s ({'killed' if was_killed else 'finished'}): file is the {state} one")
        if state == "CORRUPT":
            failures.append(f"reward_stats kill {k + 1}: {out} is neither the previous nor the new file")
        out.write_bytes(previous)
    return failures


def frame_cache_kills(d: dict, work: Path, kills: int, rng: random.Random) -> list[str]:
    failures = []
    out = work / "frames_kill"
    cmd = module("crab.data.frame_cache", "--manifest", str(d["train"]), "--data-root", str(d["data"]), "--out", str(out))

    def state() -> str:
        index = out / "frame_cache.json"
        if not index.is_file():
            return "MISSING"
        meta = json.loads(index.read_text())
        complete = all((out / c["file"]).is_file() for e in meta["datasets"].values() for c in e["cameras"].values())
        return f"{'x'.join(map(str, meta['resolution']))}{'' if complete else ' INCOMPLETE'}"

    start = time.perf_counter()
    run([*cmd, "--resolution", "32x32"])
    wall = time.perf_counter() - start
    for k in range(kills):
        delay = rng.uniform(0.2, 1.1) * wall
        was_killed = killed([*cmd, "--resolution", "24x24"], delay)
        found = state()
        print(f"  frame_cache kill {k + 1}: after {delay:.2f} s ({'killed' if was_killed else 'finished'}): cache holds {found}")
        if found not in ("32x32", "24x24"):
            failures.append(f"frame_cache kill {k + 1}: {out} holds {found}")
        run([*cmd, "--resolution", "32x32"])  # the next build completes (and puts the previous cache back first)
        if state() != "32x32":
            failures.append(f"frame_cache kill {k + 1}: the next build left {state()}")
    return failures


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, default=Path("/tmp/crab_fault_runs"))
    p.add_argument("--kills", type=int, default=6)
    p.add_argument("--steps", type=int, default=120)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    rng = random.Random(args.seed)
    d = make_data(args.work)
    failures = training(d, args.work, args.kills, args.steps, rng)
    failures += reward_stats_kills(d, args.work, args.kills, rng)
    failures += frame_cache_kills(d, args.work, args.kills, rng)
    print("fault runs: " + ("all checks passed" if not failures else "FAILED: " + "; ".join(failures)))
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
