"""Recompute the reward statistics JSON of a manifest; check statistics against their data.

    python -m crab.training.reward_stats --config <run config> [--config <recipe>] [--set key=value]
    python -m crab.training.reward_stats --manifest crab/training/docs/dataset_manifest_cycle1_clean.csv \
        --out crab/training/docs/reward_weighting_stats_cycle1_clean.json [--data-root data] [--chunk-size 50] \
        [--signal chunk_advantage --value-file data/values.parquet [--credit-horizon 20]] [--plot signal.png] \
        [--lerobot-weights DIR]

With `--config` the run's config fills every flag (its manifest, `data.reward_stats` as the output, value
file, the policy's chunk size and `reward_weighting`); flags given as well win. The JSON holds counts, mean,
std and percentiles per dataset and overall of the return signal G of kind `--signal` (and of the other
reward fields), alpha, the reward spec, the signal's kind (with the value file's fingerprint for the value
signals, and the credit horizon of the per-chunk signals) and a fingerprint of the manifest and the data.
Training refuses statistics whose fingerprint, spec, signal or credit horizon does not match what it loads.
It also prints the pre-flight table training prints before step 1 (`weighting.preflight_table`: per dataset,
episodes for training / held out / dropped, share of the draw or loss weight, of its task's, of the
normalisation), the share of the weight on chunks that lead into damage, and with `--phase-bins` each
part's draw; `--plot` draws the normalised signal over time for a few episodes of each dataset.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np

from crab.training.conditioning import LABEL_RULES, advantage_labels, balanced_with_report, label_table, rule_text
from crab.training.config import HORIZON_RULES, DataConfig, RewardWeightingConfig, horizon_read, signal_read
from crab.training.crab_dataset import RewardTable, annotate, fingerprint
from crab.training.files import check_output_file, write_atomically, write_text_atomic
from crab.training.inputs import labels_digest
from crab.training.manifest import ManifestError, ManifestRow, load_datasets
from crab.training.rewards import SIGNALS, VALUE_SIGNALS, RewardSpec, damage_free_chunks, normaliser
from crab.training.value_fit import load_values
from crab.training.weighting import (
    DatasetFrames,
    WeightingError,
    dataset_frames,
    phase_groups,
    preflight_table,
    run_weights,
)

PERCENTILES = (5, 25, 50, 75, 95)


def describe(x: np.ndarray) -> dict[str, float]:
    """Count, mean, (population) std, min, percentiles and max of a 1-D array."""
    x = np.asarray(x, dtype=np.float64)
    out = {"count": int(x.size), "mean": float(x.mean()), "std": float(x.std()), "min": float(x.min())}
    out.update({f"p{p}": float(v) for p, v in zip(PERCENTILES, np.percentile(x, PERCENTILES), strict=True)})
    out["max"] = float(x.max())
    return out


def _summary(tables: list[RewardTable]) -> dict:
    cat = {k: np.concatenate([getattr(t, k) for t in tables]) for k in ("step_reward", "chunk_return")}
    first = [np.r_[True, t.episode_index[1:] != t.episode_index[:-1]] for t in tables]
    per_episode = {
        k: np.concatenate([getattr(t, k)[f] for t, f in zip(tables, first, strict=True)])
        for k in ("episode_reward", "episode_success", "episode_damage")
    }
    return {
        "frames": int(sum(len(t.index) for t in tables)),
        "episodes": int(per_episode["episode_reward"].size),
        "success_rate": float(per_episode["episode_success"].mean()),
        "damage_rate": float(per_episode["episode_damage"].mean()),
        "signal": describe(np.concatenate([t.signal for t in tables])),
        "step_reward": describe(cat["step_reward"]),
        "chunk_return": describe(cat["chunk_return"]),
        "episode_reward": describe(per_episode["episode_reward"]),
    }


def compute_stats(
    manifest: str | Path,
    rows: list[ManifestRow],
    tables: list[RewardTable],
    spec: RewardSpec,
    alpha: float,
    signal: str = "outcome",
    value_meta: dict | None = None,
    credit_horizon: int | None = None,
) -> dict:
    """The statistics JSON; `value_meta` is the value file's metadata (`value_fit.load_values`) when the
    signal is `chunk_advantage`. The per-chunk signals record their credit horizon (`outcome` has none)."""
    stats = {
        "manifest": Path(manifest).as_posix(),
        "fingerprint": fingerprint(rows, tables, spec, signal),
        "spec": asdict(spec),
        "signal_type": signal,
        **({} if signal == "outcome" else {"credit_horizon": spec.horizon(credit_horizon)}),
        "alpha": alpha,
        "overall": _summary(tables),
        "per_dataset": {row.name: _summary([t]) for row, t in zip(rows, tables, strict=True)},
    }
    if value_meta is not None:
        stats["value_file"] = {k: value_meta[k] for k in ("path", "fingerprint", "settings", "heldout")}
    return stats


def write_lerobot_weights(
    folder: Path, rows: list[ManifestRow], tables: list[RewardTable], weights: np.ndarray
) -> list[Path]:
    """Per dataset, `folder/<name>.parquet` with columns `index` (the dataset's frame index, the batch key
    lerobot matches) and `weight` (this frame's weight, divided by the mean over the manifest's frames): the
    file of lerobot's proposed static sample weighter (lerobot PR #4222), one per dataset because lerobot
    trains on one dataset at a time. Each file is written under a temporary name, then renamed.

    lerobot divides each batch's weighted loss by the batch's sum of weights (and draws frames uniformly);
    Crab divides by one constant for the whole run (or, with `apply: sample`, draws frames in proportion to
    the weights). So in lerobot a batch of bad frames still moves the policy as much as a batch of good ones;
    only the frames' shares within a batch follow the weights.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    mean = float(weights.mean()) if weights.size and weights.mean() > 0 else 1.0
    paths, start = [], 0
    for row, table in zip(rows, tables, strict=True):
        w, start = weights[start : start + len(table.index)] / mean, start + len(table.index)
        columns = pa.table({"index": table.index.astype(np.int64), "weight": w.astype(np.float64)})
        write_atomically(folder / f"{row.name}.parquet", lambda tmp, columns=columns: pq.write_table(columns, tmp))
        paths.append(folder / f"{row.name}.parquet")
    return paths


def recompute_command(
    manifest: str | Path,
    out: str | Path,
    data_root: str | Path,
    spec: RewardSpec,
    signal: str = "outcome",
    value_file: str | Path | None = None,
    credit_horizon: int | None = None,
) -> str:
    """The command line that (re)writes `out` for `manifest` with the data under `data_root`, quoted so it
    runs verbatim in a POSIX shell."""
    args = ["--manifest", manifest, "--out", out, "--data-root", data_root, "--chunk-size", spec.chunk_size]
    if signal != "outcome":
        args += ["--signal", signal] + (["--value-file", value_file] if value_file is not None else [])
        args += ["--credit-horizon", credit_horizon] if credit_horizon is not None else []
    return "python -m crab.training.reward_stats " + " ".join(shlex.quote(str(a)) for a in args)


def load_checked(
    path: str | Path,
    manifest: str | Path,
    expected_fingerprint: str,
    spec: RewardSpec,
    data_root: str | Path,
    signal: str = "outcome",
    value_file: str | Path | None = None,
    credit_horizon: int | None = None,
) -> dict:
    """Load a statistics JSON and refuse it, with the command to fix it, if it is stale."""
    path = Path(path)
    fix = f"recompute with: {recompute_command(manifest, path, data_root, spec, signal, value_file, credit_horizon)}"
    if not path.is_file():
        raise ManifestError(f"reward statistics not found: {path}; {fix}")
    stats = json.loads(path.read_text(encoding="utf-8"))
    written_for = stats.get("signal_type", "outcome")  # statistics from before signal kinds were outcome's
    if written_for != signal:
        raise ManifestError(f"{path}: computed for signal {written_for!r}, training uses {signal!r}; {fix}")
    horizon = None if signal == "outcome" else spec.horizon(credit_horizon)
    if stats.get("credit_horizon") != horizon:
        raise ManifestError(
            f"{path}: computed with credit horizon {stats.get('credit_horizon')}, training uses {horizon}; {fix}"
        )
    if stats.get("spec") != asdict(spec):
        raise ManifestError(f"{path}: computed for reward spec {stats.get('spec')}, training uses {asdict(spec)}; {fix}")
    if stats.get("fingerprint") != expected_fingerprint:
        raise ManifestError(
            f"{path}: stale statistics (fingerprint {stats.get('fingerprint')} != {expected_fingerprint} of "
            f"manifest {manifest} and its data); {fix}"
        )
    return stats


def training_frames(row: ManifestRow, table: RewardTable, held_out: int) -> DatasetFrames:
    """The frames of `table` a run trains on when it holds out the last `held_out` episodes of each dataset
    for validation (`sampling.split_episodes`)."""
    episodes = np.unique(table.episode_index)
    kept = np.flatnonzero(np.isin(table.episode_index, episodes[: len(episodes) - held_out]))
    return dataset_frames(row, table, kept, held_out)


def damage_chunks(tables: list[RewardTable] | list[DatasetFrames], horizon: int) -> list[np.ndarray]:
    """Per table: which frames start a chunk whose `horizon` steps include a damage step (a negative reward)."""
    return [damage_free_chunks(t.step_reward, t.episode_index, horizon) == 0 for t in tables]


def plot_signal(
    rows: list[ManifestRow],
    tables: list[RewardTable],
    signal: str,
    overall: dict,
    std_floor: float,
    path: Path,
    horizon: int,
    episodes_per_dataset: int = 3,
) -> None:
    """One panel per dataset: the normalised signal (the advantage A or value Q, or the oracle's 0/1 weight) over
    each of its first episodes, damage steps and the chunks whose credit `horizon` reaches them marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if signal == "oracle":
        centre, scale, label = 0.0, 1.0, "oracle weight"
    else:
        centre, scale = normaliser(signal, overall["mean"], overall["std"])
        scale = max(scale, std_floor)
        label = "chunk value Q (normalised)" if signal == "chunk_q" else "advantage A (normalised)"
    fig, axes = plt.subplots(len(rows), 1, figsize=(8, 2.2 * len(rows)), sharex=True, squeeze=False)
    for ax, row, t, damaged in zip(axes[:, 0], rows, tables, damage_chunks(tables, horizon), strict=True):
        for e in np.unique(t.episode_index)[:episodes_per_dataset]:
            of = t.episode_index == e
            y = (t.signal[of] - centre) / scale
            (line,) = ax.plot(y, label=f"episode {e}")
            crack = np.flatnonzero(t.step_reward[of] < 0)
            ax.plot(crack, y[crack], "x", color=line.get_color(), markersize=9)
            ax.fill_between(np.arange(len(y)), y.min(), y.max(), where=damaged[of], color=line.get_color(), alpha=0.08)
        ax.axhline(0.0, color="grey", linewidth=0.5)
        ax.set_title(f"{row.name} ({row.quality}); x: damage step, shaded: chunks leading into it", fontsize=8)
        ax.set_ylabel(label, fontsize=7)
        ax.legend(fontsize=6)
    axes[-1, 0].set_xlabel("frame of the episode")
    fig.suptitle(f"return signal {signal!r} (credit horizon H = {horizon})", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def config_argv(paths: list[str], overrides: list[str]) -> list[str]:
    """The flags a training config (layers + `--set` overrides, as train.py takes them) sets (`run_argv`)."""
    from crab.training.config import ConfigError, load_config

    try:
        cfg = load_config(paths, overrides)
    except ConfigError as e:
        sys.exit(f"error: {e}")
    return run_argv(cfg)


def run_argv(cfg) -> list[str]:
    """The flags a loaded training config sets: its manifest, statistics path, data root, value file, chunk
    size and `reward_weighting`, so that the statistics and the printed table are those of the run."""
    from crab.training.config import ConfigError
    from crab.training.crab_smolvla_wrapper import policy_config

    try:
        chunk = policy_config(cfg.policy).chunk_size
    except ConfigError as e:
        sys.exit(f"error: {e}")
    # A Hub id not in the local cache, offline (OSError), or a checkpoint folder that does not exist, which the
    # Hub client then rejects as a repo id (HFValidationError, a ValueError).
    except (OSError, ValueError) as e:
        sys.exit(f"error: the chunk size of policy {cfg.policy.pretrained_path!r} could not be read ({e}); pass --chunk-size")
    if cfg.data.reward_stats is None:
        sys.exit("error: the config sets no data.reward_stats: nowhere to write the statistics (--set data.reward_stats=PATH)")
    rw, signal = cfg.reward_weighting, signal_read(cfg)
    argv = ["--manifest", cfg.data.manifest, "--out", cfg.data.reward_stats, "--data-root", cfg.data.data_root,
            "--chunk-size", chunk, "--signal", signal, "--alpha", rw.alpha, "--clip-min", rw.clip_min,
            "--clip-max", rw.clip_max, "--std-floor", rw.std_floor, "--apply", rw.apply,
            "--unlocated-failures", rw.unlocated_failures, "--normalization-counts", rw.normalization_counts,
            "--val-episodes-per-dataset", cfg.data.val_episodes_per_dataset]  # fmt: skip
    cond = cfg.conditioning
    read = horizon_read(signal, cond.label_rule if cond.enabled else None)
    argv += ["--credit-horizon", rw.credit_horizon] if rw.credit_horizon is not None and read else []
    argv += ["--value-file", cfg.data.value_file] if signal in VALUE_SIGNALS else []
    argv += ["--phase-bins", rw.phase_bins] if rw.normalize == "phase" else []
    argv += ["--label-rule", cond.label_rule, "--positive-threshold", cond.positive_threshold,
             "--label-phase-bins", rw.phase_bins] if cond.enabled else []  # fmt: skip
    argv += ["--positive-share", cond.positive_share] if cond.enabled and cond.positive_share is not None else []
    return [str(a) for a in argv]


def main(argv: list[str] | None = None) -> None:
    # `--config` (repeatable) and `--set`: a run's config fills the flags below; flags given as well win.
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", action="append", default=[])
    pre.add_argument("--set", action="append", default=[])
    configs, argv = pre.parse_known_args(sys.argv[1:] if argv is None else argv)
    if configs.config:
        argv = config_argv(configs.config, configs.set) + argv
    elif configs.set:
        sys.exit("error: --set goes with --config (a run's config to override)")
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", action="append", help="a training config (repeat to layer, as train.py): its "
                   "manifest, data.reward_stats (the output), value file, chunk size and reward_weighting")  # fmt: skip
    p.add_argument("--set", action="append", help="KEY=VALUE override of the --config (as train.py)")
    p.add_argument("--manifest", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--data-root", default="data")
    p.add_argument("--chunk-size", type=int, default=RewardSpec.chunk_size)
    p.add_argument("--signal", choices=SIGNALS, default="outcome", help="the return signal G (reward_weighting.signal)")
    p.add_argument("--credit-horizon", type=int, help="steps the per-chunk signals look ahead "
                   "(reward_weighting.credit_horizon; default: --chunk-size)")  # fmt: skip
    p.add_argument("--value-file", help="the manifest's value file (crab.training.value_fit), for chunk_advantage and chunk_q")
    p.add_argument("--plot", type=Path, help="PNG to draw the signal over time of a few episodes of each dataset")
    p.add_argument("--alpha", type=float, default=RewardWeightingConfig.alpha)
    p.add_argument("--clip-min", type=float, default=RewardWeightingConfig.clip_min, help="for the printed shares")
    p.add_argument("--clip-max", type=float, default=RewardWeightingConfig.clip_max, help="for the printed shares")
    p.add_argument("--std-floor", type=float, default=RewardWeightingConfig.std_floor, help="for the printed shares")
    p.add_argument("--phase-bins", type=int, help="also print the shares normalised per phase with this many "
                   "parts of each episode (reward_weighting.normalize: phase, phase_bins)")  # fmt: skip
    p.add_argument("--unlocated-failures", choices=("keep", "drop"), default="keep",
                   help="drop: the failures nothing locates weigh 0 in the printed shares "
                   "(reward_weighting.unlocated_failures)")  # fmt: skip
    p.add_argument("--apply", choices=("loss", "sample"), help="reward_weighting.apply (default: sample with "
                   "--phase-bins or --unlocated-failures drop, else loss)")  # fmt: skip
    p.add_argument("--normalization-counts", choices=("weight", "frame"),
                   default=RewardWeightingConfig.normalization_counts, help="reward_weighting.normalization_counts")
    p.add_argument("--val-episodes-per-dataset", type=int, default=DataConfig.val_episodes_per_dataset,
                   help="data.val_episodes_per_dataset: the episodes the printed table leaves out, as training does")
    p.add_argument("--label-rule", choices=LABEL_RULES, help="also label each training frame's chunk positive or "
                   "negative as advantage conditioning does (conditioning.label_rule), print the positive shares "
                   "and record the labels in the statistics")  # fmt: skip
    p.add_argument("--positive-threshold", type=float, help="conditioning.positive_threshold (label rule "
                   "`advantage`; giving it alone labels by that rule)")  # fmt: skip
    p.add_argument("--positive-share", type=float, help="conditioning.positive_share: also print each task's "
                   "positive share of the draw before and after the balanced draw training makes")  # fmt: skip
    p.add_argument("--label-phase-bins", type=int, default=RewardWeightingConfig.phase_bins,
                   help="parts of each episode the labels compare chunks within (reward_weighting.phase_bins)")
    p.add_argument("--lerobot-weights", type=Path, metavar="DIR",
                   help="write each dataset's per-frame weights (those printed: after --unlocated-failures and "
                   "--phase-bins) to DIR/<dataset>.parquet, columns `index` and `weight`, for lerobot's "
                   "static sample weighter")  # fmt: skip
    args = p.parse_args(argv)
    if args.chunk_size < 1:
        p.error("--chunk-size must be >= 1 (the policy's chunk_size)")
    if args.positive_threshold and args.label_rule not in (None, "advantage"):
        p.error(f"--positive-threshold is read by --label-rule advantage only, not {args.label_rule}")
    if args.positive_share is not None and not 0 < args.positive_share < 1:  # also refuses nan
        p.error("--positive-share must be in (0, 1) (conditioning.positive_share)")
    if not (args.alpha >= 0 and args.std_floor > 0 and 0 <= args.clip_min < args.clip_max):  # also refuses nan
        p.error("need --alpha >= 0, --std-floor > 0 and 0 <= --clip-min < --clip-max (as reward_weighting's keys)")
    if (args.phase_bins is not None and args.phase_bins < 1) or args.label_phase_bins < 1:
        p.error("--phase-bins and --label-phase-bins must be >= 1")
    if args.val_episodes_per_dataset < 0:
        p.error("--val-episodes-per-dataset must be >= 0")
    if args.apply == "loss" and (args.phase_bins is not None or args.unlocated_failures == "drop"):
        p.error("--phase-bins and --unlocated-failures drop go with --apply sample (as in training)")
    if args.credit_horizon is not None and (args.credit_horizon < 1 or not horizon_read(args.signal, args.label_rule)):
        p.error("--credit-horizon must be >= 1 and goes with a per-chunk --signal (chunk_advantage, chunk_q, oracle) "
                f"or --label-rule {' or '.join(HORIZON_RULES)}")
    spec = RewardSpec(chunk_size=args.chunk_size)
    horizon = spec.horizon(args.credit_horizon)
    try:
        check_output_file(args.out, "--out")
        if args.plot is not None:
            check_output_file(args.plot, "--plot")
        rows = load_datasets(args.manifest, args.data_root)
        values, value_meta = None, None
        if args.signal in VALUE_SIGNALS:
            values, value_meta = load_values(args.value_file, rows, spec, args.manifest, args.data_root)
        tables = [
            annotate(row, spec, args.signal, None if values is None else values[row.name], args.credit_horizon)
            for row in rows
        ]
    except ManifestError as e:  # bad input: the message names the file, row and column
        sys.exit(f"error: {e}")
    stats = compute_stats(args.manifest, rows, tables, spec, args.alpha, args.signal, value_meta, args.credit_horizon)
    drop, phase = args.unlocated_failures == "drop", args.phase_bins is not None
    rw = RewardWeightingConfig(
        signal=args.signal, alpha=args.alpha, clip_min=args.clip_min, clip_max=args.clip_max, std_floor=args.std_floor,
        apply=args.apply or ("sample" if drop or phase else "loss"), normalize="phase" if phase else "global",
        phase_bins=args.phase_bins or RewardWeightingConfig.phase_bins, unlocated_failures=args.unlocated_failures,
    )  # fmt: skip
    mean, std = stats["overall"]["signal"]["mean"], stats["overall"]["signal"]["std"]
    held_out = args.val_episodes_per_dataset
    if any(len(np.unique(t.episode_index)) <= held_out for t in tables):
        held_out = 0  # the table says so; training would need data.val_episodes_per_dataset lower too
    try:
        # The table: the training split of `data.val_episodes_per_dataset`, as training prints it.
        weights = run_weights(rw, [training_frames(row, t, held_out) for row, t in zip(rows, tables, strict=True)], mean, std)
        # lerobot has no held-out split: every frame gets its weight (the table's own weights when none is held out).
        everything = weights
        if args.lerobot_weights is not None and held_out > 0:
            everything = run_weights(rw, [training_frames(row, t, 0) for row, t in zip(rows, tables, strict=True)], mean, std)
    except WeightingError as e:
        sys.exit(f"error: {args.manifest}: {e}")
    positive = None
    rule, k = args.label_rule or "advantage", args.positive_threshold or 0.0
    if args.label_rule is not None or args.positive_threshold is not None or args.positive_share is not None:
        # the frames' labels, as the run computes them
        positive = advantage_labels(weights.datasets, horizon, args.label_phase_bins, k, rule)
        stats["advantage_labels"] = {
            "label_rule": rule, "positive_threshold": k,
            "phase_bins": args.label_phase_bins,
            "held_out": held_out, "positive_share": float(positive.mean()), "digest": labels_digest(positive),
        }  # fmt: skip
    # Written once nothing above refused the data: a refusal leaves the previous statistics in place.
    write_text_atomic(args.out, json.dumps(stats, indent=2) + "\n")
    o = stats["overall"]
    print(
        f"{args.out}: {o['frames']} frames, {o['episodes']} episodes, success {o['success_rate']:.2f}, "
        f"damage {o['damage_rate']:.2f}, signal {args.signal!r} mean {o['signal']['mean']:.3f} "
        f"std {o['signal']['std']:.3f}, fingerprint {stats['fingerprint']}"
    )
    if value_meta is not None:
        h = value_meta["heldout"]
        print(f"value file {args.value_file}: held-out RMSE {h['rmse']:.4f} (a constant per task: "
              f"{h['rmse_constant_per_task']:.4f}), fingerprint {value_meta['fingerprint']}")  # fmt: skip
    print(
        f"RWFM weight, signal {args.signal!r}, alpha {args.alpha:g} (clip [{rw.clip_min:g}, {rw.clip_max:g}], "
        f"std floor {rw.std_floor:g}), apply {rw.apply!r}, normalize {rw.normalize!r}"
        + (f" ({rw.phase_bins} parts of each episode)" if phase else "")
        + f", unlocated failures {rw.unlocated_failures!r}; training frames ({held_out} episode(s) of each dataset "
        f"held out):\n{preflight_table(weights, args.normalization_counts)}"
    )
    trained, total = weights.trained, weights.trained.sum()
    train_tables = list(weights.datasets)
    for d, s, damaged in zip(train_tables, weights.slices(), damage_chunks(train_tables, horizon), strict=True):
        if damaged.any():
            print(f"  {d.name}: chunks into damage (their {horizon} steps hold a negative reward): "
                  f"{damaged.mean():.1%} of its frames, {trained[s][damaged].sum() / total:.2%} of the weight")  # fmt: skip
    if phase:  # per part: where a moment that only the good episodes do well gets its draw from
        groups = phase_groups(weights.datasets, rw.phase_bins)
        part_total = {g: trained[groups == g].sum() for g in np.unique(groups)}
        for d, s in zip(weights.datasets, weights.slices(), strict=True):
            mine, group = trained[s], groups[s]
            parts = [f"{mine[group == g].sum() / part_total[g]:.0%}" if part_total[g] > 0 else "-" for g in np.unique(group)]
            print(f"  {d.name}: share of each part's draw, first to last: " + " ".join(parts))
    if positive is not None:
        print(f"advantage labels (positive: {rule_text(rule, k)}; {args.label_phase_bins} parts of each episode):\n"
              f"{label_table(weights.datasets, positive, args.label_phase_bins)}")  # fmt: skip
        if args.positive_share is not None:
            print(balanced_with_report(weights.datasets, weights.draw, positive, args.positive_share)[1])
    if args.lerobot_weights is not None:
        for path in write_lerobot_weights(args.lerobot_weights, rows, tables, everything.trained):
            print(f"lerobot sample weights: {path}")
    if args.plot is not None:
        plot_signal(rows, tables, args.signal, o["signal"], rw.std_floor, args.plot, horizon)
        print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
