"""Simulated egg-transfer benchmark: RWFM (+ anchor) against imitation learning on mixed-quality data.

    python -m crab.sim.compare --out docs/sim_benchmark.md [--seeds 3] [--episodes 50] [--steps 2000] \
        [--batch-size 16] [--episodes-per-dataset 50] [--work-dir outputs/sim_benchmark] [--jobs 2] \
        [--extra-alpha 0.25]

One dataset generation (`crab.sim.generate`), reward statistics for the two manifests, then per seed the
same tiny SmolVLA trained with each method of `METHODS` and evaluated closed loop (`crab.sim.policy_eval`)
for `--episodes` episodes per task (`--jobs` trainings at a time, each in its own process). Writes the
markdown report, a PNG next to it and `results.json` under the work dir. Finished trainings with the same
training settings (`config.training_settings`: speed-only keys such as `data.cache_items` aside) and their
evaluations are reused, so an interrupted benchmark continues where it stopped; hand-written notes below
`NOTES_MARKER` in the report are kept.
"""

from __future__ import annotations

import argparse
import datetime
import json
import multiprocessing
import os
import platform
import shlex
import shutil
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from crab.sim.egg_env import OPEN_CARTON, PUT_EGG
from crab.sim.evaluate import mean_interval, wilson_interval

CONFIG_DIR = Path("crab/training/configs")
MANIFEST_DIR = Path("crab/training/docs")
MANIFESTS = {"clean": "cycle1_clean", "mixed": "cycle1_with_cracked"}
TASKS = (PUT_EGG, OPEN_CARTON)  # the cycle-1 manifests' tasks (the simulator has more)
NOTES_MARKER = "<!-- notes: everything below this line is hand-written and kept when the report is regenerated -->"


@dataclass(frozen=True)
class Method:
    name: str
    config: str  # cycle config under crab/training/configs
    data: str  # key of MANIFESTS
    label: str
    alpha: float | None = None  # reward_weighting.alpha override
    anchor: bool | None = None  # anchor.enabled override


# Ordered so that the key comparison (IL vs RWFM + anchor on the mixed data) comes first.
METHODS = (
    Method("il_clean", "train_cycle1_baseline_il.yaml", "clean", "IL, clean only (baseline IL config = filtering)"),
    Method("il_mixed", "train_cycle1_baseline_il.yaml", "mixed", "IL, mixed (naive mixing)"),
    Method(
        "rwfm_anchor_mixed",
        "train_cycle1_rwfm_anchor_cracked_factor.yaml",
        "mixed",
        "RWFM + anchor, mixed (cracked-factor config)",
    ),
    Method("rwfm_anchor_clean", "train_cycle1_rwfm_anchor.yaml", "clean", "RWFM + anchor, clean"),
    Method("rwfm_clean", "train_cycle1_rwfm.yaml", "clean", "RWFM, clean"),
    Method(
        "rwfm_mixed",
        "train_cycle1_rwfm_anchor_cracked_factor.yaml",
        "mixed",
        "RWFM, mixed (cracked-factor config, anchor off: the anchor's ablation)",
        anchor=False,
    ),
)


def alpha_method(alpha: float) -> Method:
    """The cracked-factor config with another temperature: an extra, labelled row."""
    return Method(
        f"rwfm_anchor_mixed_alpha{alpha:g}",
        "train_cycle1_rwfm_anchor_cracked_factor.yaml",
        "mixed",
        f"RWFM + anchor, mixed, alpha={alpha:g} (extra)",
        alpha,
    )


# --- pure helpers -----------------------------------------------------------------------------------


def pool(per_seed: Sequence[dict]) -> dict:
    """Pool one task's evaluation summaries (one per training seed) into rates with Wilson intervals.

    Returns episodes, success/crack counts, pooled rates and intervals, the per-seed rates, and the mean
    return: its interval is a t interval over the seeds' mean returns when there are several seeds (the
    seed-to-seed spread), otherwise that single run's episode-level interval.
    """
    n = sum(s["episodes"] for s in per_seed)
    k_s = sum(round(s["success_rate"] * s["episodes"]) for s in per_seed)
    k_c = sum(round(s["crack_rate"] * s["episodes"]) for s in per_seed)
    returns = [s["mean_return"] for s in per_seed]
    if len(per_seed) > 1:
        ret, lo, hi = mean_interval(returns)
    else:
        ret, (lo, hi) = returns[0], per_seed[0]["return_ci95"]
    return {
        "episodes": n,
        "successes": k_s,
        "cracks": k_c,
        "success_rate": k_s / n,
        "success_ci95": wilson_interval(k_s, n),
        "crack_rate": k_c / n,
        "crack_ci95": wilson_interval(k_c, n),
        "seed_success": [s["success_rate"] for s in per_seed],
        "seed_crack": [s["crack_rate"] for s in per_seed],
        "mean_return": ret,
        "return_ci95": (lo, hi),
    }


def fmt_rate(rate: float, ci: Sequence[float]) -> str:
    return f"{rate:.0%} [{ci[0]:.0%}, {ci[1]:.0%}]"


def fmt_seeds(rates: Sequence[float]) -> str:
    return " / ".join(f"{r:.0%}" for r in rates)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


CLEAN, CRACKED = "egg_carton_to_tray", "egg_carton_to_tray_cracked"  # the mixed manifest's egg-task datasets
BAR_METHODS = ("il_mixed", "rwfm_anchor_mixed", "il_clean", "rwfm_anchor_clean")


def check_bar(pooled: dict[str, dict]) -> list[tuple[str, bool, str]]:
    """The issue's bar on pooled egg-transfer results: (criterion, passed, numbers) per criterion.

    Mixed data: RWFM + anchor beats IL on the same data by >= 15 points of success, at most half its
    crack rate, and a success at least IL-on-clean's (point estimates). Clean data: RWFM + anchor's
    success inside IL's Wilson interval (or above it).
    """
    il_m, rw_m, il_c, rw_c = (pooled[k] for k in BAR_METHODS)
    gain = rw_m["success_rate"] - il_m["success_rate"]
    return [
        ("mixed: success >= IL(mixed) + 15 points", gain >= 0.15 - 1e-9, f"{gain * 100:+.0f} points"),
        (
            "mixed: crack rate <= half of IL(mixed)",
            rw_m["crack_rate"] <= 0.5 * il_m["crack_rate"] + 1e-9,
            f"{rw_m['crack_rate']:.0%} vs {il_m['crack_rate']:.0%}",
        ),
        (
            "mixed: success >= IL(clean only)",
            rw_m["success_rate"] >= il_c["success_rate"] - 1e-9,
            f"{rw_m['success_rate']:.0%} vs {il_c['success_rate']:.0%}",
        ),
        (
            "clean: success within IL(clean)'s interval or above",
            rw_c["success_rate"] >= il_c["success_ci95"][0] - 1e-9,
            f"{rw_c['success_rate']:.0%} vs {fmt_rate(il_c['success_rate'], il_c['success_ci95'])}",
        ),
    ]


# --- pipeline ---------------------------------------------------------------------------------------


def ensure_data(data_root: Path, episodes: int, seed: int, image_size: int) -> float:
    """Generate the datasets unless a complete generation with these settings is there; seconds spent."""
    from crab.sim.generate import DATASETS, generate

    summary = data_root / "generation_summary.json"  # written last: its presence means complete
    if summary.is_file():
        s = json.loads(summary.read_text())
        same = s["seed"] == seed and s["image_size"] == image_size
        if same and all(s["datasets"].get(d.name, {}).get("episodes") == episodes for d in DATASETS):
            print(f"reusing datasets under {data_root}")
            return 0.0
    start = time.perf_counter()
    generate(data_root, episodes, seed, image_size, overwrite=True)
    return time.perf_counter() - start


def stats_path(data_root: Path, data: str) -> Path:
    return data_root / f"reward_weighting_stats_{MANIFESTS[data]}.json"


def manifest_path(data: str) -> Path:
    return MANIFEST_DIR / f"dataset_manifest_{MANIFESTS[data]}.csv"


def ensure_stats(data_root: Path, chunk_size: int, rw) -> None:
    """Reward statistics of both manifests; the printed weight shares are at `rw`'s alpha and clip floor
    (the RWFM runs' reward_weighting config)."""
    from crab.training import reward_stats

    for data in MANIFESTS:
        reward_stats.main(
            ["--manifest", str(manifest_path(data)), "--data-root", str(data_root), "--chunk-size", str(chunk_size),
             "--out", str(stats_path(data_root, data)), "--alpha", str(rw.alpha), "--clip-min", str(rw.clip_min)]
        )  # fmt: skip


def run_config(method: Method, seed_index: int, args: argparse.Namespace, data_root: Path):
    """The training config of one method and seed: the cycle config plus the benchmark's sizes."""
    from crab.training.config import load_config

    steps = args.steps
    overrides = [
        f"run_name={method.name}_seed{seed_index}",
        f"output_dir={args.work_dir / 'runs'}",
        f"seed={1000 + seed_index}",
        f"data.manifest={manifest_path(method.data)}",
        f"data.data_root={data_root}",
        f"data.reward_stats={stats_path(data_root, method.data)}",
        f"data.batch_size={args.batch_size}",
        "data.num_workers=1",
        f"data.cache_items={str(args.cache_items).lower()}",
        "policy.pretrained_path=tiny",
        f"policy.overrides={{n_action_steps: {args.n_action_steps}}}",
        # The cycle configs' anchor schedule (warmup 1000, ramp 2000 of 20000 steps), scaled to the run.
        f"anchor.warmup_steps={steps // 20}",
        f"anchor.ramp_steps={steps // 10}",
        f"train.steps={steps}",
        "train.log_every=50",
        f"train.save_every={max(steps // 2, 1)}",
        "train.keep_last=2",
        "train.val_max_batches=4",
        "train.progress_bar=false",
    ]
    if method.alpha is not None:
        overrides.append(f"reward_weighting.alpha={method.alpha}")
    if method.anchor is not None:
        overrides.append(f"anchor.enabled={str(method.anchor).lower()}")
    return load_config([CONFIG_DIR / method.config], overrides)


def cracked_factor_config(args: argparse.Namespace):
    """The mixed RWFM + anchor run's config (seed 0): the settings the report quotes."""
    method = next(m for m in METHODS if m.name == "rwfm_anchor_mixed")
    return run_config(method, 0, args, args.work_dir / "data")


def il_twins(methods: Sequence[Method], args: argparse.Namespace, data_root: Path) -> dict[str, str]:
    """Methods that would repeat an IL run bit for bit, mapped to that run: RWFM without the anchor on
    data of one outcome (reward signal std 0) gives every sample advantage 0 and weight exactly 1
    (`tests/test_train.py` checks that such a run equals IL's). They are reported, not retrained."""
    cfgs = {m.name: run_config(m, 0, args, data_root) for m in methods}
    twins = {}
    for m in methods:
        cfg = cfgs[m.name]
        if not cfg.reward_weighting.enabled or cfg.anchor.enabled:
            continue
        if json.loads(stats_path(data_root, m.data).read_text())["overall"]["signal"]["std"] != 0:
            continue
        il = [o.name for o in methods if o.data == m.data and not (cfgs[o.name].reward_weighting.enabled or cfgs[o.name].anchor.enabled)]
        if il:
            twins[m.name] = il[0]
    return twins


def train_or_reuse(cfg) -> tuple[Path, float]:
    """(final checkpoint, training seconds); a finished run with the same training settings is reused."""
    from crab.training import train
    from crab.training.checkpoint import step_dir
    from crab.training.config import to_dict, training_settings

    final = step_dir(cfg.run_dir, cfg.train.steps)
    timing = cfg.run_dir / "benchmark_timing.json"
    saved = final / "crab_config.yaml"
    if saved.is_file() and timing.is_file() and training_settings(yaml.safe_load(saved.read_text())) == training_settings(to_dict(cfg)):
        print(f"reusing {final}")
        return final, json.loads(timing.read_text())["train_s"]
    shutil.rmtree(cfg.run_dir, ignore_errors=True)
    start = time.perf_counter()
    train.train(cfg)
    seconds = time.perf_counter() - start
    timing.write_text(json.dumps({"train_s": seconds}))
    return final, seconds


def evaluate_or_reuse(
    checkpoint: Path, episodes: int, seed: int, n_action_steps: int, image_size: int, tasks: Sequence[str] = TASKS
) -> dict:
    """Closed-loop evaluation of `tasks`; a saved one of the same checkpoint and settings is reused."""
    from crab.sim.policy_eval import evaluate_checkpoint, format_results

    path = checkpoint.parent / f"eval_{checkpoint.name}_{episodes}ep_seed{seed}_n{n_action_steps}.json"
    if path.is_file() and path.stat().st_mtime > (checkpoint / "pretrained_model").stat().st_mtime:
        saved = json.loads(path.read_text())
        if set(tasks) <= set(saved["tasks"]):
            return saved
    result = evaluate_checkpoint(checkpoint, episodes, seed, n_action_steps, image_size, tasks=tuple(tasks))
    print(format_results(result), flush=True)
    path.write_text(json.dumps(result, indent=2))
    return result


def train_and_evaluate(
    cfg, episodes: int, seed: int, n_action_steps: int, image_size: int, threads: int
) -> tuple[dict, float, float]:
    """One run of the table: (evaluation summary, training seconds, evaluation seconds)."""
    import torch

    torch.set_num_threads(threads)
    checkpoint, train_s = train_or_reuse(cfg)
    start = time.perf_counter()
    result = evaluate_or_reuse(checkpoint, episodes, seed, n_action_steps, image_size)
    eval_s = time.perf_counter() - start
    print(f"{cfg.run_name}: trained {train_s / 60:.1f} min, evaluated {eval_s / 60:.1f} min", flush=True)
    return result, train_s, eval_s


def weight_analysis(data_root: Path, chunk_size: int, alphas: Sequence[float], rw) -> dict:
    """Per alpha, each dataset's share of the mixed manifest's RWFM weight (`rewards.weight_shares`) and of
    its task's weight (`task_share`); `rw`: the runs' reward_weighting config, for the clip bounds and the
    std floor."""
    from crab.training.crab_dataset import annotate
    from crab.training.manifest import load_manifest
    from crab.training.rewards import RewardSpec, task_shares, weight_shares

    spec = RewardSpec(chunk_size=chunk_size)
    rows = load_manifest(manifest_path("mixed"), data_root)
    signal = {row.name: annotate(row, spec).signal for row in rows}
    g = json.loads(stats_path(data_root, "mixed").read_text())["overall"]["signal"]
    out = {}
    for a in sorted(set(alphas)):
        shares = weight_shares(signal, g["mean"], g["std"], a, (rw.clip_min, rw.clip_max), rw.std_floor)
        of_task = task_shares(shares, {row.name: row.task for row in rows})
        out[f"{a:g}"] = {k: {**s, "task_share": of_task[k]} for k, s in shares.items()}
    return out


def plot(pooled: dict[str, dict], methods: Sequence[Method], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [m.name for m in methods]
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(1.6 * len(names) + 2, 4.2))
    for offset, key, colour in ((-0.2, "success", "tab:green"), (0.2, "crack", "tab:orange")):
        rates = np.array([pooled[n][f"{key}_rate"] for n in names])
        ci = np.array([pooled[n][f"{key}_ci95"] for n in names])
        ax.bar(x + offset, rates, 0.38, color=colour, label=f"{key} rate",
               yerr=[rates - ci[:, 0], ci[:, 1] - rates], capsize=4)  # fmt: skip
    ax.set_xticks(x, [n.replace("_", "\n", 1) for n in names], fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("rate (Wilson 95% interval)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def machine() -> str:
    import lerobot
    import torch

    cpu = platform.processor() or platform.machine()
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU only ({cpu})"
    return (
        f"{device}, {os.cpu_count()} CPU cores, {platform.system()} {platform.release()}, Python "
        f"{platform.python_version()}, torch {torch.__version__}, lerobot {lerobot.__version__}; torch threads "
        f"{torch.get_num_threads()}"
    )


def report(
    args: argparse.Namespace,
    methods: Sequence[Method],
    results: dict[str, list[dict]],
    train_s: dict[str, list[float]],
    weights: dict,
    timings: dict,
    plot_path: Path,
    command: str,
    twins: dict[str, str],
) -> tuple[str, dict]:
    first = weights[next(iter(weights))]
    egg_frames = first[CLEAN]["frame_share"] + first[CRACKED]["frame_share"]
    pooled = {task: {m.name: pool([r["tasks"][task] for r in results[m.name]]) for m in methods} for task in TASKS}
    seeds = len(next(iter(results.values())))
    cycle = cracked_factor_config(args)
    rw, anchor = cycle.reward_weighting, cycle.anchor
    lines = [
        "# Simulated egg-transfer benchmark: RWFM + anchor against imitation learning",
        "",
        f"Generated by `crab/sim/compare.py` on {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC.",
        "",
        f"    {command}",
        "",
        f"- Machine: {machine()}. A shared machine: other jobs ran at the same time, so training and "
        "evaluation times are indicative only.",
        f"- Data (`crab.sim.generate`, seed {args.data_seed}, {args.image_size}x{args.image_size} camera): "
        f"{args.episodes_per_dataset} episodes per dataset (clean transfers, cracked rough transfers, failed "
        "attempts, clean carton openings). `clean` = manifest `dataset_manifest_cycle1_clean.csv` (clean "
        "transfers + carton), `mixed` = `dataset_manifest_cycle1_with_cracked.csv` (those + the cracked "
        "transfers); the failed dataset is generated but neither manifest uses it. One episode per dataset is "
        "held out for validation.",
        f"- Policy: the tiny offline SmolVLA (`policy.pretrained_path: tiny`, `TINY_SMOLVLA_DEFAULTS`: "
        f"chunk 10, expert width 1.0, lr 5e-4, warmup 200 scaled by lerobot's scheduler), {args.n_action_steps} "
        f"actions executed per chunk; {args.steps} steps at batch {args.batch_size}; anchor warmup/ramp "
        f"{args.steps // 20}/{args.steps // 10} steps (the cycle configs' 1000/2000 of 20000, scaled). Everything "
        f"else is the cycle configs' (alpha {rw.alpha:g}, clip [{rw.clip_min:g}, {rw.clip_max:g}], std floor "
        f"{rw.std_floor:g}, lambda_anchor {anchor.lambda_anchor:g}, weights divided by the training frames' mean weight, `G = R_e`).",
        f"- Training seeds: {seeds} (1000, 1001, ...); evaluation: {args.episodes} episodes per task per seed, "
        "the same initial scenes for every method of a seed (evaluation seed = seed index). Rates pool all "
        "seeds' episodes (Wilson 95% interval); 'per seed' lists each seed's rate.",
        "- IL on clean data only (the filtering baseline) is the baseline IL config on the clean manifest, "
        "so it is trained once: row `il_clean`. RWFM without the anchor on the clean manifest, where every "
        "episode succeeds, gives every sample the weight 1 and trains bit for bit as IL "
        "(`tests/test_train.py`), so it is reported with IL's run, not retrained: "
        + (", ".join(f"`{k}` = `{v}`" for k, v in twins.items()) or "none here") + ".",
        f"- Wall time of the command: {timings['wall_s'] / 60:.1f} min with {args.jobs} training(s) at a time "
        f"({args.threads} torch thread(s) each): data {timings['data_s']:.0f} s; summed over the runs, training "
        f"{sum(sum(v) for k, v in train_s.items() if k not in twins) / 60:.1f} min and evaluation {timings['eval_s'] / 60:.1f} min. "
        "Runs reused from an earlier invocation count the time measured when they were trained.",
        "",
    ]
    for task in TASKS:
        rows = []
        for m in methods:
            p = pooled[task][m.name]
            rows.append([
                f"`{m.name}`", m.label + (f": every weight is 1, so it is `{twins[m.name]}`'s run" if m.name in twins else ""), m.data, fmt_rate(p["success_rate"], p["success_ci95"]), fmt_seeds(p["seed_success"]),
                fmt_rate(p["crack_rate"], p["crack_ci95"]), fmt_seeds(p["seed_crack"]),
                f"{p['mean_return']:+.2f} [{p['return_ci95'][0]:+.2f}, {p['return_ci95'][1]:+.2f}]",
                f"{np.mean(train_s[m.name]) / 60:.1f}",
            ])  # fmt: skip
        lines += [
            f"## {task} ({pooled[task][methods[0].name]['episodes']} episodes per row)",
            "",
            markdown_table(
                ["run", "method", "data", "success", "per seed", "crack", "per seed", "mean return",
                 "train min/seed"], rows,
            ),
            "",
        ]
    lines += [f"![success and crack rates]({plot_path.name})", "", "## The bar (egg transfer, pooled)", ""]
    if set(BAR_METHODS) <= set(pooled[PUT_EGG]):
        bar = check_bar(pooled[PUT_EGG])
        lines += [f"- {'PASS' if ok else 'FAIL'}: {name} ({detail})" for name, ok, detail in bar]
    else:
        lines.append(f"Not checked: it needs the runs {list(BAR_METHODS)}.")
    lines += [
        "",
        "## RWFM weights on the mixed data",
        "",
        f"Per alpha, the mean raw weight `clip(exp(alpha A), {rw.clip_min:g}, {rw.clip_max:g})` (the cycle "
        "configs' bounds) of a clean and of a cracked egg transfer frame, "
        "and the cracked transfers' share of the egg task's total weight (they are "
        f"{first[CRACKED]['frame_share'] / egg_frames:.0%} of its "
        "frames). Batch normalisation rescales all weights of a batch alike, so these shares are what the "
        "weighted loss imitates; they are computed from the data before any training:",
        "",
        markdown_table(
            ["alpha", "clean transfer", "cracked transfer", "cracked / clean", "cracked share of egg-task weight"],
            [[a, f"{w[CLEAN]['mean_weight']:.3f}", f"{w[CRACKED]['mean_weight']:.3f}",
              f"{w[CRACKED]['mean_weight'] / w[CLEAN]['mean_weight']:.2f}",
              f"{w[CRACKED]['task_share']:.1%}"]
             for a, w in weights.items()],
        ),
        "",
    ]
    plot(pooled[PUT_EGG], methods, plot_path, f"{PUT_EGG} ({seeds} seed(s) x {args.episodes} episodes pooled)")
    return "\n".join(lines), pooled


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("docs/sim_benchmark.md"))
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--episodes", type=int, default=50, help="evaluation episodes per task per seed")
    p.add_argument("--steps", type=int, default=2000, help="training steps per run")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--n-action-steps", type=int, default=5, help="actions executed per predicted chunk of 10")
    p.add_argument("--episodes-per-dataset", type=int, default=50)
    p.add_argument("--data-seed", type=int, default=0)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--work-dir", type=Path, default=Path("outputs/sim_benchmark"))
    p.add_argument("--methods", nargs="+", help=f"a subset of {[m.name for m in METHODS]} (default: all)")
    p.add_argument("--extra-alpha", type=float, action="append", default=[],
                   help="also train the mixed RWFM + anchor run with this alpha (an extra row)")  # fmt: skip
    p.add_argument("--cache-items", action=argparse.BooleanOptionalAction, default=True,
                   help="keep decoded training items in RAM (`data.cache_items`); the small generated data fit")  # fmt: skip
    p.add_argument("--jobs", type=int, default=1, help="trainings at a time, each in its own process")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads per training")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    import torch

    start = time.perf_counter()
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    command = "python -m crab.sim.compare " + shlex.join(sys.argv[1:] if argv is None else argv)
    methods = [*METHODS, *(alpha_method(a) for a in args.extra_alpha)]
    if args.methods:
        unknown = sorted(set(args.methods) - {m.name for m in methods})
        if unknown:
            raise SystemExit(f"unknown method(s) {unknown}; choose from {[m.name for m in methods]}")
        methods = [m for m in methods if m.name in args.methods]
    data_root = args.work_dir / "data"
    timings = {"data_s": ensure_data(data_root, args.episodes_per_dataset, args.data_seed, args.image_size)}
    from crab.training.crab_smolvla_wrapper import policy_config

    # The reward statistics are computed for the policy's chunk (training refuses any other).
    chunk_size = policy_config(run_config(methods[0], 0, args, data_root).policy).chunk_size
    rw = cracked_factor_config(args).reward_weighting
    ensure_stats(data_root, chunk_size, rw)

    twins = il_twins(methods, args, data_root)
    runs = [(m, seed) for seed in range(args.seeds) for m in methods if m.name not in twins]
    jobs = [(run_config(m, seed, args, data_root), args.episodes, seed, args.n_action_steps, args.image_size,
             args.threads) for m, seed in runs]  # fmt: skip
    if args.jobs > 1:  # spawn: the same on Linux and Windows, and no forked torch thread pools
        with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool_:
            done = list(pool_.map(train_and_evaluate, *zip(*jobs, strict=True)))
    else:
        done = [train_and_evaluate(*job) for job in jobs]
    results: dict[str, list[dict]] = {m.name: [] for m in methods}
    train_s: dict[str, list[float]] = {m.name: [] for m in methods}
    for (m, _), (result, seconds, _) in zip(runs, done, strict=True):
        results[m.name].append(result)
        train_s[m.name].append(seconds)
    for name, il in twins.items():
        results[name], train_s[name] = results[il], train_s[il]
    timings["eval_s"] = sum(eval_s for _, _, eval_s in done)
    timings["wall_s"] = time.perf_counter() - start

    weights = weight_analysis(data_root, chunk_size, [0.25, 1.0, rw.alpha, *args.extra_alpha], rw)
    plot_path = args.out.with_suffix(".png")
    text, pooled = report(args, methods, results, train_s, weights, timings, plot_path, command, twins)
    notes = ""
    if args.out.is_file() and NOTES_MARKER in args.out.read_text():
        notes = args.out.read_text().split(NOTES_MARKER, 1)[1]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n" + NOTES_MARKER + (notes or "\n"))
    summary = {"args": {k: str(v) for k, v in vars(args).items()}, "pooled": pooled, "train_s": train_s,
               "timings": timings, "weights": weights, "per_seed": results}  # fmt: skip
    (args.work_dir / "results.json").write_text(json.dumps(summary, indent=2))
    print(text)
    print(f"\nwrote {args.out}, {plot_path}, {args.work_dir / 'results.json'}")
    return summary


if __name__ == "__main__":
    main()
