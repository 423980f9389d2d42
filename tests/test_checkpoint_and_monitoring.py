"""Atomic checkpoints, resumable batch order, and the three epoch-summary files agreeing."""

import csv
import json
import random

import numpy as np
import pytest
import torch

from crab.training import checkpoint as ckpt
from crab.training.monitoring import (
    STEP_METRICS,
    EpochAccumulator,
    append_epoch_summary,
    combine_ranks,
    interval_row,
    read_epoch_summaries,
    write_epoch_summaries,
)
from crab.training.sampling import EpochBatchSampler, sampling_probabilities


def write_model(folder):
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"weights")


def test_save_keeps_last_n_and_round_trips(tmp_path):
    for step in (10, 20, 30):
        ckpt.save_checkpoint(tmp_path, step, write_model, {"step": step}, {"run_name": "r"}, {"alpha": 0.25}, keep_last=2)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step_000020", "step_000030"]
    model_dir, state, config = ckpt.load_checkpoint(tmp_path / "step_000030")
    assert state == {"step": 30} and config == {"run_name": "r"}
    assert (model_dir / "model.safetensors").read_bytes() == b"weights"
    assert json.loads((tmp_path / "step_000030" / "reward_stats.json").read_text()) == {"alpha": 0.25}


def test_kill_mid_write_leaves_previous_checkpoint_whole(tmp_path):
    ckpt.save_checkpoint(tmp_path, 10, write_model, {"step": 10}, {}, {}, keep_last=3)

    def dies_half_way(folder):
        write_model(folder)
        raise KeyboardInterrupt("killed while writing")

    with pytest.raises(KeyboardInterrupt):
        ckpt.save_checkpoint(tmp_path, 20, dies_half_way, {"step": 20}, {}, {}, keep_last=3)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step_000010"]
    assert ckpt.load_checkpoint(tmp_path / "step_000010")[1] == {"step": 10}
    # A hard kill leaves its temporary folder behind: never listed, removed by the next save.
    (tmp_path / ".tmp_step_000020_999").mkdir()
    ckpt.save_checkpoint(tmp_path, 20, write_model, {"step": 20}, {}, {}, keep_last=3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_000010", "step_000020"]


def test_resave_same_step_replaces_it(tmp_path):
    ckpt.save_checkpoint(tmp_path, 10, write_model, {"v": 1}, {}, {}, keep_last=3)
    ckpt.save_checkpoint(tmp_path, 10, write_model, {"v": 2}, {}, {}, keep_last=3)
    assert ckpt.load_checkpoint(tmp_path / "step_000010")[1] == {"v": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_000010"]


def test_missing_or_incomplete_checkpoint(tmp_path):
    with pytest.raises(ckpt.CheckpointError, match="checkpoint not found"):
        ckpt.load_checkpoint(tmp_path / "step_000100")
    (tmp_path / "step_000100").mkdir()
    with pytest.raises(ckpt.CheckpointError, match=r"not a complete Crab checkpoint: missing \['pretrained_model'"):
        ckpt.load_checkpoint(tmp_path / "step_000100")


def test_rng_state_round_trip():
    state = ckpt.rng_state()
    a = (random.random(), np.random.rand(), torch.rand(1).item())
    ckpt.set_rng_state(state)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == a


def test_batch_order_is_resumable_and_sharded():
    sampler = EpochBatchSampler(23, batch_size=4, seed=7)
    sampler.set_epoch(2)
    full = list(sampler)
    assert len(full) == len(sampler) == 5 and all(len(b) == 4 for b in full)
    sampler.set_epoch(2, start=3)
    assert list(sampler) == full[3:]
    sampler.set_epoch(3)
    assert list(sampler) != full
    shards = [EpochBatchSampler(23, 4, 7, rank=r, world_size=2) for r in (0, 1)]
    for s in shards:
        s.set_epoch(2)
    assert [list(s) for s in shards] == [full[0::2][:2], full[1::2][:2]]


def test_weighted_batch_order_draws_in_proportion_to_the_weights():
    """`apply: sample`: each epoch draws n items with replacement, item i with probability w_i / sum(w),
    resumable and sharded like the permutation; weight-0 items are never drawn."""
    weights = np.array([0.0, 1.0, 3.0, 0.0, 6.0] * 4)  # 20 items; shares 0.1, 0.3, 0.6 per block of five
    sampler = EpochBatchSampler(20, batch_size=4, seed=7, weights=weights)
    sampler.set_epoch(1)
    full = list(sampler)
    assert len(full) == 5 and all(len(b) == 4 for b in full)
    sampler.set_epoch(1, start=2)
    assert list(sampler) == full[2:]
    shards = [EpochBatchSampler(20, 4, 7, rank=r, world_size=2, weights=weights) for r in (0, 1)]
    for s in shards:
        s.set_epoch(1)
    assert [list(s) for s in shards] == [full[0::2][:2], full[1::2][:2]]
    drawn = []
    for epoch in range(500):
        sampler.set_epoch(epoch)
        drawn += [i for batch in sampler for i in batch]
    counts = np.bincount(np.array(drawn) % 5, minlength=5) / len(drawn)
    assert counts[0] == counts[3] == 0
    assert counts[[1, 2, 4]] == pytest.approx([0.1, 0.3, 0.6], abs=0.01)  # 10,000 draws: 3 sigma < 0.01
    # docs/reward_weighting.md's worked example: weights (0, 1, 3) draw with probabilities (0, 1/4, 3/4).
    assert sampling_probabilities([0.0, 1.0, 3.0], 3).tolist() == [0.0, 0.25, 0.75]
    for bad in (np.zeros(20), -weights, weights[:5], np.full(20, np.nan)):
        with pytest.raises(ValueError, match="20 finite, non-negative numbers, not all 0"):
            EpochBatchSampler(20, 4, 7, weights=bad)


def test_three_summary_files_agree(tmp_path):
    acc = EpochAccumulator()
    for k in range(4):
        acc.add([float(k + i) for i in range(len(STEP_METRICS))], batch_size=8)
    acc.add_weights(["clean", "cracked"], [1.2, 0.8])
    summaries = [acc.summary(0, 4, 1.5, {"clean": 0.3, "cracked": 0.9}, complete=True)]
    write_epoch_summaries(tmp_path, summaries)
    as_json = json.loads((tmp_path / "epoch_summary.json").read_text())
    assert as_json == read_epoch_summaries(tmp_path) == summaries
    (row,) = list(csv.DictReader((tmp_path / "epoch_summary.csv").read_text().splitlines()))
    loss = summaries[0]["metrics"]["loss"]
    # "loss" is the 12th metric: values 11, 12, 13, 14 over the four steps
    assert loss == {"mean": 12.5, "min": 11.0, "max": 14.0, "p95": pytest.approx(13.85)}
    assert float(row["loss_mean"]) == loss["mean"] and float(row["loss_p95"]) == loss["p95"]
    assert float(row["val_loss_cracked"]) == 0.9 and int(row["samples"]) == 32 and int(row["steps"]) == 4

    weights = summaries[0]["weights"]
    assert weights == {"clean": {"samples": 1, "mean": 1.2, "share": 0.6}, "cracked": {"samples": 1, "mean": 0.8, "share": 0.4}}
    assert float(row["weight_share_cracked"]) == 0.4


def test_appended_summaries_equal_rewritten_ones(tmp_path):
    """The trainer appends each epoch to the JSONL and CSV files; they must read as a full rewrite does,
    including a column that first appears later (validation)."""
    summaries = []
    (tmp_path / "appended").mkdir()
    for epoch, val in enumerate([{}, {"clean": 0.5}, {}]):
        acc = EpochAccumulator()
        acc.add([float(epoch + i) for i in range(len(STEP_METRICS))], batch_size=4)
        acc.add_weights(["clean"], [1.0])
        summaries.append(acc.summary(epoch, epoch + 1, 0.1, val, complete=True))
        append_epoch_summary(tmp_path / "appended", summaries)
    write_epoch_summaries(tmp_path / "rewritten", summaries)
    for name in ("epoch_summary.jsonl", "epoch_summary.csv"):
        assert (tmp_path / "appended" / name).read_text() == (tmp_path / "rewritten" / name).read_text(), name


def test_interval_row_summarises_its_steps():
    """Hand-checked: two steps; means, except the maximum of w_max and the last lr / lambda_anchor / alpha."""
    first = {name: 1.0 for name in STEP_METRICS} | {"w_max": 5.0, "lr": 1e-4, "lambda_anchor": 0.0, "loss": 2.0}
    second = {name: 3.0 for name in STEP_METRICS} | {"w_max": 4.0, "lr": 2e-4, "lambda_anchor": 0.1, "loss": 1.0}
    row = interval_row([[first[k] for k in STEP_METRICS], [second[k] for k in STEP_METRICS]])
    assert row["loss"] == 1.5 and row["loss_weighted"] == 2.0 and row["w_mean"] == 2.0 and row["grad_norm"] == 2.0
    assert row["w_max"] == 5.0 and row["lr"] == 2e-4 and row["lambda_anchor"] == 0.1 and row["alpha"] == 3.0
    assert row["steps"] == 2


def test_ranks_combine_by_mean_and_max_of_w_max():
    per_rank = torch.zeros(2, 1, len(STEP_METRICS))
    per_rank[0, 0], per_rank[1, 0] = 1.0, 3.0
    per_rank[0, 0, STEP_METRICS.index("w_max")] = 7.0
    combined = combine_ranks(per_rank)
    assert combined.shape == (1, len(STEP_METRICS))
    assert combined[0, STEP_METRICS.index("loss")] == 2.0 and combined[0, STEP_METRICS.index("w_max")] == 7.0
