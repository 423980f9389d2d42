"""Metric accumulation, per-epoch summaries (json, jsonl, csv: the same numbers) and plots."""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from pathlib import Path

import numpy as np

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


def write_text_atomic(path: Path, text: str) -> None:
    """Write via a temporary file in the same folder and rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
        f.write(text)
    os.replace(tmp, path)


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
            "val_loss": val_loss,
        }


def _flatten(summary: dict) -> dict[str, object]:
    flat = {k: v for k, v in summary.items() if k not in ("metrics", "val_loss")}
    for name, stats in summary["metrics"].items():
        flat.update({f"{name}_{k}": v for k, v in stats.items()})
    flat.update({f"val_loss_{group}": v for group, v in summary["val_loss"].items()})
    return flat


def write_epoch_summaries(run_dir: Path, summaries: list[dict]) -> None:
    """Rewrite the three summary files from the same list, so they always agree."""
    write_text_atomic(run_dir / "epoch_summary.json", json.dumps(summaries, indent=2) + "\n")
    write_text_atomic(run_dir / "epoch_summary.jsonl", "".join(json.dumps(s) + "\n" for s in summaries))
    rows = [_flatten(s) for s in summaries]
    columns = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(run_dir / "epoch_summary.csv", buf.getvalue())


def read_epoch_summaries(run_dir: Path) -> list[dict]:
    path = run_dir / "epoch_summary.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
