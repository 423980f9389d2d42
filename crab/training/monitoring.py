"""Metric accumulation, per-epoch summaries (json, jsonl, csv: the same numbers) and plots."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np

from crab.training.files import write_text_atomic

# The guide's eleven stability metrics, in its order.
GUIDE_METRICS = (
    "w_mean",
    "w_std",
    "w_p95",
    "w_max",
    "clipped_frac",
    "effective_batch_weight",
    "loss_unweighted",
    "loss_weighted",
    "loss_anchor",
    "alpha",
    "lambda_anchor",
)
STEP_METRICS = (*GUIDE_METRICS, "loss", "lr", "grad_norm")
SUMMARY_FILES = ("epoch_summary.json", "epoch_summary.jsonl", "epoch_summary.csv")
# Validation-loss keys of the retention manifest's tasks (tasks the training data lacks) start with this.
RETENTION_PREFIX = "retention: "
# How one logged row summarises the steps of its interval: the maximum of w_max, the last step's value of
# the schedules (lr, lambda_anchor) and of alpha, the mean of everything else.
INTERVAL_MAX = ("w_max",)
INTERVAL_LAST = ("lr", "lambda_anchor", "alpha")


def interval_row(rows: list[list[float]]) -> dict[str, float]:
    """One logged row from the per-step STEP_METRICS rows of a logging interval, plus `steps`, its length."""
    table = np.asarray(rows, dtype=np.float64).reshape(-1, len(STEP_METRICS))
    out: dict[str, float] = {}
    for i, name in enumerate(STEP_METRICS):
        column = table[:, i]
        out[name] = float(column.max() if name in INTERVAL_MAX else column[-1] if name in INTERVAL_LAST else column.mean())
    out["steps"] = len(table)
    return out


def combine_ranks(per_rank):
    """(processes, steps, len(STEP_METRICS)) per-process step rows -> (steps, len(STEP_METRICS)): the mean
    over processes of each one's batch statistics, except w_max, their maximum. Works on torch tensors."""
    combined = per_rank.mean(dim=0)
    i = STEP_METRICS.index("w_max")
    combined[:, i] = per_rank[:, :, i].amax(dim=0)
    return combined


def summarize(values: np.ndarray) -> dict[str, float]:
    """mean, min, max and p95 (linear interpolation) of one metric over an epoch's steps."""
    return {
        "mean": float(values.mean()),
        "min": float(values.min()),
        "max": float(values.max()),
        "p95": float(np.percentile(values, 95)),
    }


class EpochAccumulator:
    """Per-step metric rows of the current epoch, plus per-sample weights by quality group.

    Holds plain floats (the trainer converts device tensors once per logging interval), so its state
    is small, picklable and saved in checkpoints for an exact resume.
    """

    def __init__(self) -> None:
        self.rows: list[list[float]] = []
        self.weights: dict[str, list[float]] = {}
        self.samples = 0

    def add(self, row: list[float], batch_size: int) -> None:
        self.rows.append(row)
        self.samples += batch_size

    def add_weights(self, quality: list[str], weights: list[float]) -> None:
        for q, w in zip(quality, weights, strict=True):
            self.weights.setdefault(q, []).append(w)

    def state_dict(self) -> dict:
        return {"rows": self.rows, "weights": self.weights, "samples": self.samples}

    def load_state_dict(self, state: dict) -> None:
        self.rows, self.weights, self.samples = state["rows"], state["weights"], state["samples"]

    def summary(self, epoch: int, step: int, wall_time_s: float, val_loss: dict[str, float], complete: bool) -> dict:
        table = np.asarray(self.rows, dtype=np.float64).reshape(-1, len(STEP_METRICS))
        return {
            "epoch": epoch,
            "complete": complete,
            "global_step": step,
            "steps": len(self.rows),
            "samples": self.samples,
            "wall_time_s": wall_time_s,
            "metrics": {name: summarize(table[:, i]) for i, name in enumerate(STEP_METRICS)} if self.rows else {},
            "weights": weights_by_group(self.weights),
            "val_loss": val_loss,
        }


def weights_by_group(weights: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    """Per quality group: how many samples, their mean weight, and their share of the summed weight (the
    share of the gradient the group had; `reward_stats` prints what it should be in expectation)."""
    total = sum(sum(w) for w in weights.values())
    return {
        group: {"samples": len(w), "mean": float(np.mean(w)), "share": sum(w) / total if total else 0.0}
        for group, w in sorted(weights.items())
    }


def _flatten(summary: dict) -> dict[str, object]:
    flat = {k: v for k, v in summary.items() if k not in ("metrics", "weights", "val_loss")}
    for name, stats in summary["metrics"].items():
        flat.update({f"{name}_{k}": v for k, v in stats.items()})
    for group, stats in summary.get("weights", {}).items():
        flat.update({f"weight_{k}_{group}": v for k, v in stats.items()})
    flat.update({f"val_loss_{group}": v for group, v in summary["val_loss"].items()})
    return flat


def _csv(rows: list[dict], columns: list[str], header: bool) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    if header:
        writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def write_epoch_summaries(run_dir: Path, summaries: list[dict]) -> None:
    """Rewrite the three summary files from the same list, so they agree."""
    write_text_atomic(run_dir / "epoch_summary.json", json.dumps(summaries, indent=2) + "\n")
    write_text_atomic(run_dir / "epoch_summary.jsonl", "".join(json.dumps(s) + "\n" for s in summaries))
    rows = [_flatten(s) for s in summaries]
    write_text_atomic(run_dir / "epoch_summary.csv", _csv(rows, list(dict.fromkeys(k for r in rows for k in r)), True))


def append_epoch_summary(run_dir: Path, summaries: list[dict]) -> None:
    """Append the last of `summaries` to the JSONL and CSV files (the CSV is rewritten only when the row
    brings a new column, e.g. the first validation). epoch_summary.json, one JSON list, is rewritten by
    `write_epoch_summaries`, which the trainer calls at checkpoints, at the end and every few minutes:
    rewriting it at every epoch end would cost time that grows with the run."""
    with open(run_dir / "epoch_summary.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps(summaries[-1]) + "\n")
    path = run_dir / "epoch_summary.csv"
    row = _flatten(summaries[-1])
    header = None
    if path.is_file():
        with open(path, encoding="utf-8", newline="") as f:
            header = next(csv.reader([f.readline()]), None)
    if header is not None and set(row) <= set(header):
        with open(path, "a", encoding="utf-8", newline="") as f:
            f.write(_csv([row], header, False))
    else:
        rows = [_flatten(s) for s in summaries]
        write_text_atomic(path, _csv(rows, list(dict.fromkeys(k for r in rows for k in r)), True))


def _jsonl_rows(path: Path) -> list[dict]:
    """The rows of a JSON-lines file the trainer appends to; a last line cut short by a kill is left out."""
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def read_epoch_summaries(run_dir: Path) -> list[dict]:
    return _jsonl_rows(run_dir / "epoch_summary.jsonl")


def truncate_step_log(run_dir: Path, last_step: int) -> None:
    """Keep the rows of `train_log.jsonl` up to step `last_step`: a run resumed from that step logs the
    later ones again, and duplicates would double them in the plots."""
    path = run_dir / "train_log.jsonl"
    if path.is_file():
        kept = [row for row in _jsonl_rows(path) if row["step"] <= last_step]
        write_text_atomic(path, "".join(json.dumps(row) + "\n" for row in kept))
