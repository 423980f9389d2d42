"""End-to-end training with the tiny offline SmolVLA on real LeRobot datasets: summaries, checkpoints
loadable by lerobot, bit-identical resume, NaN stop, and bad input before any step."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ALL_ROWS, PLACE, train_until_first_checkpoint, write_manifest

from crab.training import loaders, reward_stats, train
from crab.training.checkpoint import CheckpointError, list_checkpoints
from crab.training.config import ConfigError, load_config
from crab.training.plots import compare_runs

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "crab" / "training" / "configs"


@pytest.fixture(scope="module")
def setup(data_root, tmp_path_factory):
    folder = tmp_path_factory.mktemp("train")
    manifest = write_manifest(folder / "manifest.csv", ALL_ROWS)
    stats = folder / "stats.json"
    reward_stats.main(["--manifest", str(manifest), "--out", str(stats), "--data-root", str(data_root), "--chunk-size", "10"])
    return {"manifest": manifest, "stats": stats, "data_root": data_root, "out": folder / "outputs"}


def overrides(setup, run_name, **extra):
    values = {
        "run_name": run_name,
        "output_dir": setup["out"].as_posix(),
        "data.manifest": setup["manifest"].as_posix(),
        "data.reward_stats": setup["stats"].as_posix(),
        "data.data_root": setup["data_root"].as_posix(),
        "data.num_workers": 0,
        "data.batch_size": 4,
        "data.val_episodes_per_dataset": 0,
        "task_masks": "{}",
        "train.log_every": 1,
        "train.progress_bar": "false",
        "anchor.warmup_steps": 2,
        "anchor.ramp_steps": 2,
        **extra,
    }
    return [f"{k}={v}" for k, v in values.items()]


def config(setup, run_name, **extra):
    layers = [CONFIGS / "train_cycle1_rwfm_anchor_cracked_factor.yaml", CONFIGS / "demo_overrides.yaml"]
    return load_config(layers, overrides(setup, run_name, **extra))


def step_log(run_dir):
    return [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text().splitlines()]


def test_run_writes_agreeing_summaries_plots_and_lerobot_checkpoints(setup):
    from lerobot.policies.smolvla.modeling_smolvla import SmolVLAPolicy

    cfg = config(setup, "full", **{"train.steps": 12, "train.save_every": 6, "train.tensorboard": "true",
                                   "reward_weighting.normalization_counts": "weight"})  # fmt: skip
    run_dir = train.train(cfg)
    assert [p.name for p in list_checkpoints(run_dir)] == ["step_000006", "step_000012"]
    logged = step_log(run_dir)
    assert [r["step"] for r in logged] == list(range(1, 13))
    assert [r["lambda_anchor"] for r in logged[:6]] == pytest.approx([0.0, 0.0, 0.0, 0.05, 0.1, 0.1])
    assert all(r["loss_anchor"] == 0.0 for r in logged[:2]) and logged[5]["loss_anchor"] > 0
    assert all(r["alpha"] == cfg.reward_weighting.alpha for r in logged)

    summaries = json.loads((run_dir / "epoch_summary.json").read_text())
    # Weights are divided by the training frames' mean weight: over a whole epoch they average 1.
    groups = summaries[0]["weights"].values()
    assert summaries[0]["complete"] and sum(g["samples"] for g in groups) == 40
    assert sum(g["samples"] * g["mean"] for g in groups) / 40 == pytest.approx(1.0)
    jsonl = [json.loads(line) for line in (run_dir / "epoch_summary.jsonl").read_text().splitlines()]
    rows = list(csv.DictReader((run_dir / "epoch_summary.csv").read_text().splitlines()))
    assert summaries == jsonl and len(rows) == len(summaries) >= 1
    for s, row in zip(summaries, rows, strict=True):
        assert float(row["loss_weighted_mean"]) == s["metrics"]["loss_weighted"]["mean"]
    first_epoch = [r["loss"] for r in logged[: summaries[0]["steps"]]]
    assert summaries[0]["metrics"]["loss"]["mean"] == pytest.approx(sum(first_epoch) / len(first_epoch))
    for name in ("overview", "losses", "weights", "lambda_anchor", "val_loss", "weight_hist"):
        assert (run_dir / "plots" / f"{name}.png").stat().st_size > 0

    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))

    # With `normalization_counts: weight` (the default counts every kept frame once) the statistics pool the
    # episodes by their training weight (with `apply: loss` each frame's clipped raw weight over the
    # constant): the counts add up to the frames,
    # the mean is the weighted one, not lerobot's plain pooling.
    from safetensors.torch import load_file

    from crab.training.crab_dataset import CrabDataset
    from crab.training.manifest import load_manifest
    from crab.training.rewards import RewardSpec, frame_weights

    saved = load_file(next((run_dir / "step_000012" / "pretrained_model").glob("*normalizer_processor.safetensors")))
    stats = json.loads(setup["stats"].read_text())
    g, rw = stats["overall"]["signal"], cfg.reward_weighting
    ds = CrabDataset(load_manifest(setup["manifest"], setup["data_root"]), RewardSpec(chunk_size=10))
    raw = frame_weights(np.concatenate(list(ds.signals().values())), g["mean"], g["std"], rw.alpha,
                        (rw.clip_min, rw.clip_max), rw.std_floor)  # fmt: skip
    weighted, plain = ds.normalization_stats(raw / raw.mean()), ds.normalization_stats()
    assert saved["action.count"].item() == pytest.approx(stats["overall"]["frames"]) == weighted["action"]["count"].item()
    np.testing.assert_allclose(saved["action.mean"].numpy(), weighted["action"]["mean"], rtol=1e-5)
    assert not np.allclose(weighted["action"]["mean"], plain["action"]["mean"])
    compare_runs([run_dir, run_dir], setup["out"] / "compare.png")
    assert (setup["out"] / "compare.png").stat().st_size > 0

    policy = SmolVLAPolicy.from_pretrained(run_dir / "step_000012" / "pretrained_model")
    assert policy.config.chunk_size == 10
    assert (run_dir / "step_000012" / "reward_stats.json").is_file()


@pytest.mark.parametrize("batch_size", [1, 2, 8])
def test_each_quality_gets_the_printed_share_of_the_weight_at_any_batch_size(setup, batch_size):
    """Over an epoch the cracked data's share of the summed weight is what reward_stats prints, at batch 1
    as at batch 8 (a batch-mean normaliser gives every sample weight 1 at batch 1)."""
    from crab.training.rewards import weight_shares

    steps = 40 // batch_size  # one epoch of the fixture's 40 frames
    cfg = config(setup, f"share_b{batch_size}", **{"train.steps": steps, "train.save_every": steps,
                 "data.batch_size": batch_size, "anchor.enabled": "false", "train.log_every": steps})  # fmt: skip
    run_dir = train.train(cfg)
    stats = json.loads(setup["stats"].read_text())
    g, rw = stats["overall"]["signal"], cfg.reward_weighting
    assert all(d["signal"]["std"] == 0 for d in stats["per_dataset"].values())  # one G per dataset here
    signals = {name: [d["signal"]["mean"]] * d["frames"] for name, d in stats["per_dataset"].items()}
    printed = weight_shares(signals, g["mean"], g["std"], rw.alpha, (rw.clip_min, rw.clip_max), rw.std_floor)
    (summary,) = json.loads((run_dir / "epoch_summary.json").read_text())
    assert summary["weights"]["cracked"]["samples"] == stats["per_dataset"]["labelled"]["frames"]
    assert summary["weights"]["cracked"]["share"] == pytest.approx(printed["labelled"]["weight_share"], rel=1e-5)
    assert summary["weights"]["cracked"]["share"] < 0.5 * (stats["per_dataset"]["labelled"]["frames"] / 40)


def test_weights_as_sampling_draw_each_quality_in_its_printed_share(setup):
    """`apply: sample`: the loss is unweighted, and the cracked data is drawn as often as its share of the
    summed weight says (what `apply: loss` gives it in expectation). At alpha 4 a sampler drawing in
    proportion to sqrt(w), or ignoring the weights, falls outside the tolerance (checked below)."""
    from crab.training.rewards import frame_weights

    rw_settings = {"reward_weighting.alpha": 4.0, "reward_weighting.clip_min": 0.001}
    cfg = config(setup, "sample_shares", **{"train.steps": 50, "train.save_every": 50, "data.batch_size": 8,
                 "anchor.enabled": "false", "reward_weighting.apply": "sample", **rw_settings})  # fmt: skip
    run_dir = train.train(cfg)
    rows = step_log(run_dir)
    assert all(r["loss_weighted"] == r["loss_unweighted"] and r["w_max"] == 1.0 for r in rows)
    stats = json.loads(setup["stats"].read_text())
    g, rw = stats["overall"]["signal"], cfg.reward_weighting
    w = {name: frame_weights(np.full(d["frames"], d["signal"]["mean"]), g["mean"], g["std"], rw.alpha,
                             (rw.clip_min, rw.clip_max), rw.std_floor) for name, d in stats["per_dataset"].items()}  # fmt: skip
    epochs = json.loads((run_dir / "epoch_summary.json").read_text())
    drawn = sum(e["weights"].get("cracked", {}).get("samples", 0) for e in epochs)
    total = sum(e["samples"] for e in epochs)

    def share(f):
        return f(w["labelled"]).sum() / sum(f(x).sum() for x in w.values())

    expected = share(lambda x: x)
    tolerance = 4 * math.sqrt(expected * (1 - expected) / total)
    assert total == 400 and abs(drawn / total - expected) < tolerance
    for wrong in (np.sqrt, np.ones_like):  # samplers this test tells apart: their draws land 3 sigma outside
        other = share(wrong)
        assert abs(other - expected) > tolerance + 3 * math.sqrt(other * (1 - other) / total)


@pytest.mark.parametrize("apply", ["loss", "sample"])
def test_resume_is_bit_identical(setup, monkeypatch, apply):
    common = {"train.steps": 8, "train.save_every": 4, "reward_weighting.apply": apply}
    straight = train.train(config(setup, f"straight_{apply}", **common))
    cfg = config(setup, f"interrupted_{apply}", **common)
    train_until_first_checkpoint(monkeypatch, cfg)
    # Speed-only settings may change on resume, and the item cache changes nothing.
    faster = config(setup, f"interrupted_{apply}", **common, **{"data.cache_items": "true"})
    resumed = train.train(faster, resume=str(cfg.run_dir / "step_000004"))
    a, b = step_log(straight), step_log(resumed)
    assert [r["step"] for r in b] == list(range(1, 9))
    for key in ("loss", "loss_weighted", "loss_anchor", "grad_norm", "w_max", "lr"):
        assert [r[key] for r in a] == [r[key] for r in b], key
    sd_a = torch.load(straight / "step_000008" / "training_state.pt", weights_only=False)["optimizer"]
    sd_b = torch.load(resumed / "step_000008" / "training_state.pt", weights_only=False)["optimizer"]
    for k, state in sd_a["state"].items():
        assert torch.equal(state["exp_avg"], sd_b["state"][k]["exp_avg"])


def test_log_rows_summarise_their_interval(setup):
    """A row logged every 4 steps summarises those steps as monitoring.interval_row says (the training
    is the same whatever log_every is)."""
    from crab.training.monitoring import STEP_METRICS, interval_row

    common = {"train.steps": 8, "train.save_every": 8}
    per_step = step_log(train.train(config(setup, "log_every_1", **common)))
    grouped = step_log(train.train(config(setup, "log_every_4", **common, **{"train.log_every": 4})))
    assert [r["step"] for r in grouped] == [4, 8] and [r["steps"] for r in grouped] == [4, 4]
    for row, steps in zip(grouped, (per_step[:4], per_step[4:]), strict=True):
        expected = interval_row([[r[k] for k in STEP_METRICS] for r in steps])
        assert {k: row[k] for k in expected} == pytest.approx(expected, rel=1e-12), row["step"]
    assert grouped[0]["loss"] == pytest.approx(sum(r["loss"] for r in per_step[:4]) / 4)
    assert grouped[1]["w_max"] == max(r["w_max"] for r in per_step[4:]) and grouped[1]["lr"] == per_step[7]["lr"]


def test_extending_a_run_keeps_its_learning_rate_schedule(setup):
    """Extending a finished 8-step run to 12 continues at the schedule's final rate; rebuilding lerobot's
    schedule for 12 steps would jump the rate back up."""
    done = train.train(config(setup, "extend", **{"train.steps": 8, "train.save_every": 8}))
    first = step_log(done)
    train.train(config(setup, "extend", **{"train.steps": 12, "train.save_every": 4}), resume=str(done / "step_000008"))
    rows = step_log(done)
    assert [r["step"] for r in rows] == list(range(1, 13)) and rows[:8] == first
    final_lr = train.policy_config(config(setup, "extend").policy).scheduler_decay_lr
    assert [r["lr"] for r in rows[8:]] == pytest.approx([final_lr] * 4)
    assert all(r["lr"] >= final_lr for r in rows[:8])
    with pytest.raises(ConfigError, match=r"at step 12, `train.steps` is 12"):
        train.train(config(setup, "extend", **{"train.steps": 12}), resume=str(done / "step_000012"))


def test_batches_of_weight_zero_train_on(setup):
    """With clip_min 0 a batch of cracked frames only has weight 0 (exp(-200) underflows): the metrics stay
    defined (effective_batch_weight 0) and training goes on."""
    cfg = config(setup, "zero_weight", **{"train.steps": 40, "train.save_every": 40, "data.batch_size": 1,
                                         "reward_weighting.alpha": 400, "reward_weighting.clip_min": 0})  # fmt: skip
    rows = step_log(train.train(cfg))
    zero = [r for r in rows if r["w_max"] == 0.0]
    assert len(rows) == 40 and len(zero) >= 10  # 15 cracked frames and the stepwise G = 0 frames
    assert all(r["effective_batch_weight"] == 0.0 and r["loss_weighted"] == 0.0 for r in zero)


def test_last_summary_of_a_run_ending_mid_epoch_carries_validation(setup, tmp_path):
    manifest = write_manifest(tmp_path / "two.csv", ALL_ROWS[:2])  # 20 training frames: 5 batches of 4
    stats = tmp_path / "two.json"
    reward_stats.main(["--manifest", str(manifest), "--out", str(stats), "--data-root", str(setup["data_root"]),
                       "--chunk-size", "10"])  # fmt: skip
    cfg = config(setup, "mid_epoch", **{"data.manifest": manifest.as_posix(), "data.reward_stats": stats.as_posix(),
                 "data.val_episodes_per_dataset": 1, "train.steps": 7, "train.save_every": 7,
                 "train.val_every_epochs": 1})  # fmt: skip
    summaries = json.loads((train.train(cfg) / "epoch_summary.json").read_text())
    assert [(s["epoch"], s["complete"]) for s in summaries] == [(0, True), (1, False)]
    assert all(set(s["val_loss"]) == {"clean", "cracked"} for s in summaries)


def test_validation_interval_keeps_validation_proportionate(setup):
    """Hand-checked: 80 held-out frames at batch 32 are 3 validation batches, worth 30 training steps."""
    auto = config(setup, "interval", **{"data.batch_size": 32, "train.val_max_batches": 20})
    assert loaders.validation_interval(auto, 80, batches_per_epoch=10) == 3  # 30 steps / 10 per epoch
    assert loaders.validation_interval(auto, 80, batches_per_epoch=1000) == 1  # a long epoch: every epoch
    assert loaders.validation_interval(auto, 10_000, batches_per_epoch=7) == 29  # capped at 20 batches: 200 / 7
    fixed = config(setup, "interval", **{"train.val_every_epochs": 1})
    assert loaders.validation_interval(fixed, 80, batches_per_epoch=10) == 1  # set explicitly: as set


def test_loader_workers_under_spawn(setup):
    """The seed user's Windows starts DataLoader workers with spawn: dataset, collate and item cache pickle."""
    code = "import multiprocessing, sys; multiprocessing.set_start_method('spawn'); " \
           "from crab.training.train import main; main(sys.argv[1:])"  # fmt: skip
    args = [sys.executable, "-c", code, "--config", str(CONFIGS / "train_cycle1_rwfm_anchor_cracked_factor.yaml"),
            "--config", str(CONFIGS / "demo_overrides.yaml")]  # fmt: skip
    for o in overrides(setup, "spawn", **{"train.steps": 3, "train.save_every": 3, "data.num_workers": 2,
                                          "data.cache_items": "true"}):  # fmt: skip
        args += ["--set", o]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert [r["step"] for r in step_log(setup["out"] / "spawn")] == [1, 2, 3]


def test_bf16_autocast_on_the_cpu_trains_close_to_fp32(setup):
    common = {"train.steps": 4, "train.save_every": 4}
    fp32 = step_log(train.train(config(setup, "fp32", **common)))
    bf16 = step_log(train.train(config(setup, "bf16", **common, **{"train.mixed_precision": "bf16"})))
    assert all(math.isfinite(r["loss"]) for r in bf16)
    # Measured here: bf16's unweighted loss within 0.06% of fp32's at each of these 4 steps; 10x that margin.
    for a, b in zip(fp32, bf16, strict=True):
        assert b["loss_unweighted"] == pytest.approx(a["loss_unweighted"], rel=0.006)
    assert [a["loss"] for a in fp32] != [b["loss"] for b in bf16]  # autocast really ran
    with pytest.raises(ConfigError, match="fp16` needs a GPU"):
        train.train(config(setup, "fp16", **common, **{"train.mixed_precision": "fp16"}))


def test_rwfm_on_data_of_one_outcome_trains_exactly_like_il(setup, tmp_path):
    """Every advantage is 0 and every weight exactly 1, so the run is IL's bit for bit (crab.sim.compare
    relies on it to report such a run without retraining it)."""
    manifest = write_manifest(tmp_path / "clean.csv", [ALL_ROWS[0]])
    stats = tmp_path / "stats.json"
    reward_stats.main(["--manifest", str(manifest), "--out", str(stats), "--data-root", str(setup["data_root"]),
                       "--chunk-size", "10"])  # fmt: skip
    common = {"data.manifest": manifest.as_posix(), "data.reward_stats": stats.as_posix(), "anchor.enabled": "false",
              "train.steps": 4, "train.save_every": 4}  # fmt: skip
    il = train.train(config(setup, "one_outcome_il", **common, **{"reward_weighting.enabled": "false"}))
    rwfm = train.train(config(setup, "one_outcome_rwfm", **common))
    a, b = step_log(il), step_log(rwfm)
    assert [r["loss"] for r in a] == [r["loss"] for r in b] and [r["grad_norm"] for r in a] == [r["grad_norm"] for r in b]
    assert all(r["w_max"] == 1.0 for r in b)
    from safetensors.torch import load_file

    weights = [load_file(run / "step_000004" / "pretrained_model" / "model.safetensors") for run in (il, rwfm)]
    assert weights[0].keys() == weights[1].keys() and all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_nonfinite_loss_stops_with_last_good_checkpoint(setup, monkeypatch):
    cfg = config(setup, "nan", **{"train.steps": 10, "train.save_every": 3, "train.log_every": 2})
    original = train.CrabSmolVLA.forward
    calls = {"n": 0}

    def poisoned(self, batch, lambda_anchor, *args, **kwargs):
        loss, metrics = original(self, batch, lambda_anchor, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 5:
            loss = loss * float("nan")
            metrics["loss"] = loss.detach()
        return loss, metrics

    monkeypatch.setattr(train.CrabSmolVLA, "forward", poisoned)
    with pytest.raises(train.TrainingError, match=r"non-finite \['loss'.*at step 5.*Last good checkpoint: .*step_000003"):
        train.train(cfg)
    assert [p.name for p in list_checkpoints(cfg.run_dir)] == ["step_000003"]


def test_bad_input_fails_before_training(setup, tmp_path):
    with pytest.raises(SystemExit, match=r"^error: .*unknown key\(s\) `train.stepz`"):
        train.main(["--config", str(CONFIGS / "train_cycle1_rwfm.yaml"), "--set", "train.stepz=4"])
    cfg = config(setup, "bad", **{"train.steps": 2})
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        train.train(cfg, resume=str(tmp_path / "step_000123"))
    with pytest.raises(ValueError, match="has no entry in task_masks|task_masks"):
        train.train(config(setup, "masks", **{"task_masks": '{"Open the carton.": [0]}'}))
    assert not (setup["out"] / "masks").exists() or not list_checkpoints(setup["out"] / "masks")
    il = config(setup, "il", **{"train.steps": 2, "reward_weighting.enabled": "false", "data.reward_stats": "null"})
    assert (train.train(il) / "step_000002" / "reward_stats.json").read_text() == "{}"
    done = train.train(config(setup, "again", **{"train.steps": 2, "train.save_every": 2}))
    with pytest.raises(train.TrainingError, match="already holds checkpoints"):
        train.train(config(setup, "again", **{"train.steps": 2}))
    other = config(setup, "again", **{"train.steps": 4, "reward_weighting.alpha": 0.5})
    with pytest.raises(ConfigError, match=r"cannot resume .* differs in \['reward_weighting'\]"):
        train.train(other, resume=str(done / "step_000002"))


def torchrun(setup, script: str, run_name: str, *extra_args: str, **settings) -> subprocess.CompletedProcess:
    """The trainer in 2 processes on the CPU (gloo), as `torchrun --nproc_per_node 2` launches it."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    args = [
        "--config", "crab/training/configs/train_cycle1_rwfm_anchor_cracked_factor.yaml",
        "--config", "crab/training/configs/demo_overrides.yaml", *extra_args,
    ]  # fmt: skip
    for o in overrides(setup, run_name, **settings):
        args += ["--set", o]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    return subprocess.run([*launcher, script, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def test_two_processes_train_resume_bit_identically_and_weigh_like_one(setup, tmp_path):
    """Two real processes (asserted inside the run): an interrupted run resumed after an epoch end with
    validation logs every loss and saves weights bit for bit as the uninterrupted one, and each quality's
    weight over an epoch is what one process with twice the batch gives it."""
    manifest = write_manifest(tmp_path / "two.csv", ALL_ROWS[:2])  # 20 training frames, 16 held out
    stats = tmp_path / "two.json"
    reward_stats.main(["--manifest", str(manifest), "--out", str(stats), "--data-root", str(setup["data_root"]),
                       "--chunk-size", "10"])  # fmt: skip
    settings = {"data.manifest": manifest.as_posix(), "data.reward_stats": stats.as_posix(),
                "data.val_episodes_per_dataset": 1, "data.batch_size": 2,
                "train.steps": 8, "train.save_every": 6, "train.val_max_batches": 2, "train.val_every_epochs": 1}  # fmt: skip
    straight = torchrun(setup, "crab/training/train.py", "ddp_straight", **settings)
    assert straight.returncode == 0, straight.stderr[-3000:]
    assert "2 process(es), batch 2 each" in straight.stdout
    killed = torchrun(setup, "tests/train_until_first_checkpoint.py", "ddp_resumed", **settings)
    assert killed.returncode != 0 and "killed after" in killed.stderr
    resumed_dir = setup["out"] / "ddp_resumed"
    assert [p.name for p in list_checkpoints(resumed_dir)] == ["step_000006"]
    state = torch.load(resumed_dir / "step_000006" / "training_state.pt", weights_only=False)
    assert state["world_size"] == 2 and len(state["rng"]) == 2 and state["epoch"] == 1  # past the epoch end
    resumed = torchrun(setup, "crab/training/train.py", "ddp_resumed", "--resume", str(resumed_dir / "step_000006"),
                       **settings)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    a = step_log(setup["out"] / "ddp_straight")
    b = {r["step"]: r for r in step_log(resumed_dir)}  # the resumed run rewrites steps 7 and 8
    assert [r["step"] for r in a] == list(range(1, 9)) == sorted(b)
    for key in ("loss", "loss_weighted", "loss_unweighted", "loss_anchor", "grad_norm", "w_max", "lr"):
        assert [r[key] for r in a] == [b[r["step"]][key] for r in a], key
    from safetensors.torch import load_file

    weights = [load_file(d / "step_000008" / "pretrained_model" / "model.safetensors")
               for d in (setup["out"] / "ddp_straight", resumed_dir)]  # fmt: skip
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    summaries = json.loads((setup["out"] / "ddp_straight" / "epoch_summary.json").read_text())
    assert summaries[0]["complete"] and set(summaries[0]["val_loss"]) == {"clean", "cracked"}

    one = train.train(config(setup, "ddp_as_one", **{**settings, "data.batch_size": 4, "train.steps": 5}))
    (one_epoch,) = json.loads((one / "epoch_summary.json").read_text())
    assert summaries[0]["samples"] == one_epoch["samples"] == 20
    for quality, w in one_epoch["weights"].items():
        assert summaries[0]["weights"][quality] == pytest.approx(w, rel=1e-6), quality



def record_draws(monkeypatch) -> list:
    """The draw weights (None: uniform) of every loader the trainer builds from now on, in order."""
    seen, batch_loader = [], train.batch_loader

    def recording(*args):
        seen.append(args[-1])
        return batch_loader(*args)

    monkeypatch.setattr(train, "batch_loader", recording)
    return seen


def test_weights_normalised_per_phase_choose_the_draw(setup, monkeypatch):
    """`normalize: phase`: the sampler draws with the clipped raw weights divided by their (task, part of the
    episode) group's mean, `per_group_normalised`, not with the globally normalised ones."""
    from crab.training.crab_dataset import CrabDataset
    from crab.training.manifest import load_manifest
    from crab.training.rewards import RewardSpec, frame_weights, per_group_normalised
    from crab.training.weighting import phase_groups

    seen = record_draws(monkeypatch)
    cfg = config(setup, "phase_draw", **{"train.steps": 2, "train.save_every": 2, "anchor.enabled": "false",
                 "reward_weighting.apply": "sample", "reward_weighting.normalize": "phase",
                 "reward_weighting.phase_bins": 2})  # fmt: skip
    train.train(cfg)
    ds = CrabDataset(load_manifest(setup["manifest"], setup["data_root"]), RewardSpec(chunk_size=10))
    g, rw = json.loads(setup["stats"].read_text())["overall"]["signal"], cfg.reward_weighting
    v = frame_weights(np.concatenate(list(ds.signals().values())), g["mean"], g["std"], rw.alpha,
                      (rw.clip_min, rw.clip_max), rw.std_floor)  # fmt: skip
    expected = per_group_normalised(v, phase_groups(ds.weight_frames(), 2))
    np.testing.assert_allclose(seen[-1], expected / expected.mean())
    # Globally the carton (G = 0, below the mean) is drawn less than its frame share; per phase it is not.
    assert not np.allclose(expected / expected.sum(), v / v.sum(), rtol=0.05)


def test_dropped_unlocated_failures_are_never_drawn(setup, monkeypatch, tmp_path):
    """`unlocated_failures: drop`: the frames of the failed episode nothing locates (the labelled dataset's
    second, success 0 and damage 0) weigh 0 in the draw, the others as `keep` weighs them; a manifest of
    nothing else is refused before any step."""
    seen = record_draws(monkeypatch)
    rw = {"anchor.enabled": "false", "reward_weighting.apply": "sample", "train.steps": 2, "train.save_every": 2}
    train.train(config(setup, "keep_failures", **rw))
    train.train(config(setup, "drop_failures", **rw, **{"reward_weighting.unlocated_failures": "drop"}))
    keep, drop = seen
    assert (drop == 0).sum() == 7 and (keep == 0).sum() == 0  # the failed episode's 7 frames
    kept = np.where(drop == 0, 0.0, keep)
    np.testing.assert_allclose(drop, kept / kept.mean())  # the others as `keep` weighs them (the draw has mean 1)

    manifest = write_manifest(tmp_path / "failed.csv", [("clean", PLACE, "failed")])
    stats = tmp_path / "failed_stats.json"
    reward_stats.main(["--manifest", str(manifest), "--out", str(stats), "--data-root", str(setup["data_root"]),
                       "--chunk-size", "10"])  # fmt: skip
    only_failed = {**rw, "data.manifest": manifest.as_posix(), "data.reward_stats": stats.as_posix(),
                   "reward_weighting.unlocated_failures": "drop"}  # fmt: skip
    with pytest.raises(train.TrainingError, match=r"failed\.csv.*unlocated_failures: drop"):
        train.train(config(setup, "only_failed", **only_failed))


def test_lerobot_weights_are_the_training_draw(setup, monkeypatch, tmp_path):
    """`reward_stats --lerobot-weights DIR` writes, per dataset keyed by frame `index`, the weights a run with
    the same settings draws its frames with (`apply: sample`, drop, per phase), up to one constant."""
    seen = record_draws(monkeypatch)
    train.train(config(setup, "lerobot_weights", **{
        "anchor.enabled": "false", "train.steps": 1, "train.save_every": 1, "reward_weighting.apply": "sample",
        "reward_weighting.normalize": "phase", "reward_weighting.phase_bins": 2,
        "reward_weighting.unlocated_failures": "drop",
    }))  # fmt: skip
    rw = load_config([CONFIGS / "train_cycle1_rwfm_anchor_cracked_factor.yaml"]).reward_weighting
    out = tmp_path / "weights"
    reward_stats.main(["--manifest", str(setup["manifest"]), "--out", str(tmp_path / "stats.json"),
                       "--data-root", str(setup["data_root"]), "--chunk-size", "10", "--alpha", str(rw.alpha),
                       "--clip-min", str(rw.clip_min), "--clip-max", str(rw.clip_max), "--std-floor", str(rw.std_floor),
                       "--phase-bins", "2", "--unlocated-failures", "drop", "--lerobot-weights", str(out)])  # fmt: skip
    import pyarrow.parquet as pq

    tables = [pq.read_table(out / f"{name}.parquet").to_pydict() for name, _, _ in ALL_ROWS]
    exported = np.concatenate([t["weight"] for t in tables])
    assert all(t["index"] == sorted(t["index"]) == list(range(len(t["index"]))) for t in tables)
    assert exported.mean() == pytest.approx(1.0) and (exported == 0).sum() == 7  # the dropped failure
    np.testing.assert_allclose(exported, seen[0] / seen[0].mean(), rtol=1e-9)


def test_recipe_table_is_the_same_before_training_and_in_reward_stats(setup, tmp_path, capsys):
    """A recipe layered on the run's config: `reward_stats --config` writes the run's statistics and prints
    the pre-flight table training prints before step 1, the failed episode named as dropped."""
    layers = [CONFIGS / "train_cycle1_rwfm_anchor_cracked_factor.yaml", CONFIGS / "demo_overrides.yaml",
              CONFIGS / "recipe_outcome_sampling.yaml"]  # fmt: skip
    sets = overrides(setup, "recipe", **{"data.reward_stats": (tmp_path / "stats.json").as_posix(), "train.steps": 1,
                                         "train.save_every": 1, "reward_weighting.unlocated_failures": "drop"})  # fmt: skip
    reward_stats.main([*(a for layer in layers for a in ("--config", str(layer))), *(a for s in sets for a in ("--set", s))])
    printed = capsys.readouterr().out
    train.train(load_config(layers, sets))
    logged = capsys.readouterr().out

    def table(text):
        lines = text.splitlines()
        start = next(i for i, line in enumerate(lines) if line.strip().startswith("dataset  "))
        return lines[start : start + 1 + len(ALL_ROWS)]

    assert table(printed) == table(logged)
    labelled = next(line for line in table(printed) if line.strip().startswith("labelled"))
    assert " 2/0/1 " in labelled  # two episodes for training, none held out, the failure dropped
