"""PNG plots of a run (written at checkpoints, at the end and every few minutes) and several runs side by side.

    python -m crab.training.plots outputs/cycle1_baseline_il outputs/cycle1_rwfm_anchor --out compare.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on training machines
import matplotlib.pyplot as plt

from crab.training.monitoring import RETENTION_PREFIX, read_epoch_summaries

LOSSES = ("loss", "loss_unweighted", "loss_weighted", "loss_anchor")
WEIGHT_STATS = ("w_mean", "w_std", "w_p95", "w_max", "clipped_frac", "effective_batch_weight")


def read_step_log(run_dir: Path) -> list[dict]:
    path = run_dir / "train_log.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _series(rows: list[dict], key: str) -> tuple[list[float], list[float]]:
    # A resumed run appends steps it may have logged before the interruption: keep the latest value.
    by_step = {r["step"]: r[key] for r in rows if key in r}
    steps = sorted(by_step)
    return steps, [by_step[s] for s in steps]


def _save(fig, path: Path) -> None:
    for ax in fig.axes:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.tight_layout()
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    tmp.replace(path)


def _val_by_group(summaries: list[dict], x: str = "epoch") -> dict[str, tuple[list[int], list[float]]]:
    """Validation loss per quality group against `x` ("epoch" or "global_step")."""
    groups: dict[str, tuple[list[int], list[float]]] = {}
    for s in summaries:
        for group, value in s["val_loss"].items():
            groups.setdefault(group, ([], []))
            groups[group][0].append(s[x])
            groups[group][1].append(value)
    return groups


def plot_run(run_dir: Path, weights_by_quality: dict[str, list[float]]) -> None:
    """overview.png (what to look at first), losses.png, weights.png, lambda_anchor.png, val_loss.png and
    weight_hist.png under run_dir/plots."""
    rows, summaries = read_step_log(run_dir), read_epoch_summaries(run_dir)
    out = run_dir / "plots"
    fig, (train_ax, val_ax) = plt.subplots(1, 2, figsize=(11, 4))
    for key in LOSSES:
        train_ax.plot(*_series(rows, key), label=key)
    train_ax.set_xlabel("step")
    train_ax.set_title("training losses (each point: mean over its logging interval)")
    for group, (steps, values) in _val_by_group(summaries, "global_step").items():
        val_ax.plot(steps, values, marker="o", label=group)
    val_ax.set_xlabel("step")
    val_ax.set_title("validation flow loss per quality group (held-out episodes)")
    fig.suptitle(run_dir.name)
    _save(fig, out / "overview.png")

    for name, keys in (("losses", LOSSES), ("weights", WEIGHT_STATS), ("lambda_anchor", ("lambda_anchor",))):
        fig, ax = plt.subplots(figsize=(7, 4))
        for key in keys:
            ax.plot(*_series(rows, key), label=key)
        ax.set_xlabel("step")
        ax.set_title(f"{run_dir.name}: {name}")
        _save(fig, out / f"{name}.png")

    fig, ax = plt.subplots(figsize=(7, 4))
    for group, (epochs, values) in _val_by_group(summaries).items():
        # Dashed: tasks the training data lacks (forgetting shows as these rise).
        style = "--" if group.startswith(RETENTION_PREFIX) else "-"
        ax.plot(epochs, values, marker="o", linestyle=style, label=group)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation flow loss (unweighted)")
    ax.set_title(f"{run_dir.name}: validation loss per quality group and retained task")
    _save(fig, out / "val_loss.png")

    fig, ax = plt.subplots(figsize=(7, 4))
    for group, weights in sorted(weights_by_quality.items()):
        ax.hist(weights, bins=30, alpha=0.5, label=f"{group} (n={len(weights)})")
    ax.set_xlabel("RWFM weight (clipped, divided by the training frames' mean weight)")
    ax.set_title(f"{run_dir.name}: weights per quality group, last epoch")
    _save(fig, out / "weight_hist.png")


def compare_runs(run_dirs: list[Path], out: Path) -> None:
    """One figure: training loss, weighted loss, effective batch weight and validation loss per run."""
    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    for run_dir in run_dirs:
        rows = read_step_log(run_dir)
        if not rows:
            raise FileNotFoundError(f"{run_dir}: no train_log.jsonl (is it a Crab run folder?)")
        for ax, key in zip(axes.flat[:3], ("loss_unweighted", "loss_weighted", "effective_batch_weight"), strict=True):
            ax.plot(*_series(rows, key), label=run_dir.name)
            ax.set_title(key)
            ax.set_xlabel("step")
        for group, (epochs, values) in _val_by_group(read_epoch_summaries(run_dir)).items():
            axes[1, 1].plot(epochs, values, marker="o", label=f"{run_dir.name} / {group}")
    axes[1, 1].set_title("validation loss per quality group")
    axes[1, 1].set_xlabel("epoch")
    _save(fig, out)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", type=Path, help="run folders outputs/<run>")
    p.add_argument("--out", type=Path, default=Path("outputs/compare.png"))
    args = p.parse_args(argv)
    compare_runs(args.runs, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
