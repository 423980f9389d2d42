"""The anchor's job, measured: fine-tune a multi-task policy on egg transfer and see what it keeps of the others.

    python -m crab.sim.anchor_benchmark --out docs/anchor.md [--seeds 3] [--episodes 50] [--base-steps 10000] \
        [--steps 2000] [--lambdas 0 0.1] [--replay-lambdas 0.1 1 10] [--replay-batches 1 4 32] \
        [--share-lambda 10] [--mixes 0.5 0.75] [--sampled-lambda 1] [--base-egg-episodes 3] [--batch-size 32] \
        [--work-dir outputs/anchor_benchmark] [--jobs 2] [--threads 1] [--bases-only]

Per training seed: a **base** policy, imitation learning on clean data of every simulated task
(`dataset_manifest_anchor_base.csv`: egg transfer, carton opening, carton closing) under a data root of its
own where egg transfer has only `--base-egg-episodes` training episodes, so the base is weak at it and the
fine-tuning has something to gain; then **fine-tuned from it** (`policy.pretrained_path` = the base
checkpoint, its normalisation kept: `policy.normalization: pretrained`) on the egg transfers the way the
README recommends at `--episodes-per-dataset` clean ones: filtering, imitation of the clean transfers alone
(`dataset_manifest_anchor_egg_clean.csv`, the baseline IL config; no damaged ones are generated), with the
base as the anchor's frozen reference (`anchor.reference`), once per `--lambdas` value with the anchor on the
fine-tuning batches only (0 = anchor off), and once per `--replay-lambdas` value with the anchor also on replayed
frames of the carton tasks (`replay.manifest`: their training episodes). The question the anchor must
answer against the standard remedy, rehearsal (imitating the same frames, `replay.imitate`): per
`--replay-batches` size, the anchor on the replayed frames (at `--share-lambda`), rehearsal with the anchor
off, and both; and against weight interpolation between the base and the anchor-off fine-tuning (`--mixes`,
`crab.training.interpolate`; evaluated, not trained). Which states the anchor should see when the weights
choose the batch (`reward_weighting.apply: sample`), with `--sampled-lambda`: fine-tuned instead on every egg
transfer (clean, cracked and failed: `dataset_manifest_anchor_egg_mixed.csv`) with the README's recipe for
such data, `recipe_outcome_sampling.yaml`, anchor off, the anchor on the drawn batch, and the anchor on the
drawn batch plus as many frames drawn uniformly from the training episodes (the training manifest replayed
into the anchor, the docs' way to anchor the frames the draw leaves out). The carton tasks'
held-out episodes give the retention validation loss while fine-tuning (`data.retention_manifest`). Every
checkpoint is evaluated closed loop on every task (`--episodes` seeded episodes per task, the same scenes
for every run of a seed). Writes the markdown report (`--out`) and `results.json` under the work dir; the
report's tables give success and crack rates with Wilson intervals and each non-target task's retention =
fine-tuned success / base success, then check the issue's bar. Finished trainings with the same settings
and their evaluations are reused (`compare.train_or_reuse`), so an interrupted run continues.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import multiprocessing
import shlex
import shutil
import sys
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

from crab.sim.compare import (
    CONFIG_DIR,
    MANIFEST_DIR,
    NOTES_MARKER,
    ensure_data,
    evaluate_or_reuse,
    fmt_rate,
    fmt_seeds,
    machine,
    markdown_table,
    pool,
    train_or_reuse,
)
from crab.sim.egg_env import PUT_EGG, TASK_ACTION_DIMS, TASKS

CONFIG = "train_cycle1_baseline_il.yaml"  # base and fine-tunings: imitation learning (filtering)
SAMPLED_RECIPE = "recipe_outcome_sampling.yaml"  # layered on CONFIG for the `sampled` fine-tunings
MANIFESTS = {
    "base": MANIFEST_DIR / "dataset_manifest_anchor_base.csv",
    "egg_clean": MANIFEST_DIR / "dataset_manifest_anchor_egg_clean.csv",
    "egg_mixed": MANIFEST_DIR / "dataset_manifest_anchor_egg_mixed.csv",
    "retention": MANIFEST_DIR / "dataset_manifest_anchor_retention.csv",
}
TARGET = PUT_EGG
OTHERS = tuple(t for t in TASKS if t != TARGET)
FORGETTING_POINTS = 0.15  # the bar: without the anchor, each other task loses at least this much success
RETENTION_BAR = 0.9  # with the anchor, each other task keeps at least this share of the base's success


@dataclass(frozen=True)
class Finetune:
    """One fine-tuning of a seed's base: the anchor's weight (0: off) and the carton frames replayed beside
    each egg batch (`replay.batch_size`; 0: none), which feed the anchor when it is on (`replay.anchor`) and
    are imitated too with `imitate` (rehearsal, `replay.imitate`). `sampled`: on every egg transfer with
    the outcome-sampling recipe instead of the clean ones alone, the replayed frames then drawn uniformly
    from its training episodes (into the anchor only)."""

    lambda_anchor: float
    replay_batch: int = 0
    imitate: bool = False
    sampled: bool = False

    @property
    def name(self) -> str:
        anchor = f"lambda{self.lambda_anchor:g}"
        if self.sampled:
            return f"sampled_{anchor}" + (f"_uniform{self.replay_batch}" if self.replay_batch else "")
        if not self.replay_batch:
            return anchor
        kind = "rehearsal" if self.imitate else "replay"
        return f"{kind}{self.replay_batch}" + (f"_{anchor}" if self.lambda_anchor > 0 else "")

    def describe(self) -> str:
        anchor = f"lambda {self.lambda_anchor:g}" if self.lambda_anchor > 0 else "anchor off"
        if self.sampled:
            where = " on the drawn batch" + (
                f" + {self.replay_batch} training frames a step drawn uniformly" if self.replay_batch else "")
            return "outcome sampling on every egg transfer, " + anchor + (where if self.lambda_anchor > 0 else "")
        if not self.replay_batch:
            return anchor
        frames = f"{self.replay_batch} carton frames a step"
        if self.imitate:
            return f"rehearsal ({frames} imitated)" + (f" + {anchor} on both batches" if self.lambda_anchor > 0 else ", anchor off")
        return f"{anchor} + {frames} replayed into the anchor"


@dataclass(frozen=True)
class Run:
    name: str  # "base" or the fine-tuning's name
    seed: int
    finetune: Finetune | None = None  # None: the base


ANCHOR_OFF = Finetune(0.0)  # the bar's reference: fine-tuning without the anchor or replay


# --- pure helpers -----------------------------------------------------------------------------------


def retention(finetuned: dict, base: dict) -> float:
    """Fine-tuned success / base success (pooled rates); nan when the base never succeeds."""
    return finetuned["success_rate"] / base["success_rate"] if base["success_rate"] > 0 else float("nan")


def fmt_gain(finetuned: dict, base: dict) -> str:
    """Success over the base's (pooled), in points."""
    return f"{(finetuned['success_rate'] - base['success_rate']) * 100:+.0f} points"


def fmt_retention(kept: float) -> str:
    return "n/a (base 0%)" if math.isnan(kept) else f"{kept:.0%}"


def check_bar(
    pooled: dict[str, dict[str, dict]], finetunes: list[Finetune]
) -> tuple[list[tuple[str, bool, str]], Finetune | None]:
    """The bar on pooled results `pooled[task][run name]`: (criterion, passed, numbers) per criterion, and
    the recommended fine-tuning (None when no tested one meets the retention criterion).

    Both count the non-target tasks the base can lose 15 points on (base success >= 15%); the others are
    named in the first criterion's numbers ("not learned by the base"), and with none left both fail.

    1. Without the anchor (lambda 0) every such task loses >= 15 points of the base's success.
    2. Per other fine-tuning (the anchor, replay, rehearsal or both): every such task keeps >= 90% of the
       base's success while egg-transfer success stays inside lambda 0's Wilson interval (or above it).
       The recommendation is the passing one with the highest egg success (on ties the smallest lambda,
       then the fewest replayed frames, then no imitation: the cheapest).
    """
    base, free = pooled[TARGET]["base"], pooled[TARGET][ANCHOR_OFF.name]
    measurable = [t for t in OTHERS if pooled[t]["base"]["success_rate"] >= FORGETTING_POINTS - 1e-9]
    drops = {t: pooled[t]["base"]["success_rate"] - pooled[t][ANCHOR_OFF.name]["success_rate"] for t in measurable}
    unlearned = [f"{t} not learned by the base ({pooled[t]['base']['success_rate']:.0%})" for t in OTHERS if t not in measurable]
    results = [
        (
            f"lambda 0: every non-target task loses >= {FORGETTING_POINTS * 100:.0f} points of the base's success",
            bool(measurable) and all(d >= FORGETTING_POINTS - 1e-9 for d in drops.values()),
            ", ".join([*(f"{t} {-d * 100:+.0f} points" for t, d in drops.items()), *unlearned]),
        )
    ]
    passing = []
    for ft in (f for f in finetunes if f != ANCHOR_OFF and not f.sampled):  # the sampled ones train on other data
        name = ft.name
        kept = {t: retention(pooled[t][name], pooled[t]["base"]) for t in measurable}
        egg = pooled[TARGET][name]
        egg_ok = egg["success_rate"] >= free["success_ci95"][0] - 1e-9
        ok = bool(measurable) and egg_ok and all(k >= RETENTION_BAR - 1e-9 for k in kept.values())
        if ok:
            passing.append((egg["success_rate"], -ft.lambda_anchor, -ft.replay_batch, not ft.imitate, ft))
        results.append((
            f"{ft.describe()}: every non-target task keeps >= {RETENTION_BAR:.0%} of the base's success, egg "
            "success inside lambda 0's interval or above",
            ok,
            ", ".join(f"{t} {k:.0%}" for t, k in kept.items())
            + f"; egg {egg['success_rate']:.0%} vs {fmt_rate(free['success_rate'], free['success_ci95'])}"
            + f" (base {base['success_rate']:.0%})",
        ))  # fmt: skip
    return results, (max(passing, key=lambda x: x[:4])[4] if passing else None)


# --- pipeline ---------------------------------------------------------------------------------------


def base_data_root(args: argparse.Namespace) -> Path:
    """The bases' data: every task's clean datasets, egg transfer with `--base-egg-episodes` training
    episodes (and the held-out one)."""
    return args.work_dir / f"data_base_egg{args.base_egg_episodes}"


def data_counts(args: argparse.Namespace, egg_episodes: int, damaged: bool) -> dict[str, int]:
    """Episodes per dataset (`generate.episode_counts`) of a data root holding the three tasks' clean
    datasets: the carton tasks' at `--episodes-per-dataset`, egg transfer's at `egg_episodes` (held-out
    episode included); with `damaged`, the cracked and failed egg transfers too (the `sampled` rows')."""
    from crab.sim.generate import DATASETS

    n = args.episodes_per_dataset
    carton = {"open_the_carton": n, "close_the_carton": n}
    bad = {"egg_carton_to_tray_cracked": n, "egg_carton_to_tray_failed": n} if damaged else {}
    return {d.name: 0 for d in DATASETS} | carton | {"egg_carton_to_tray": egg_episodes} | bad


def sampled_stats_path(args: argparse.Namespace) -> Path:
    """The reward statistics of the `sampled` fine-tunings' manifest (`crab.training.reward_stats`)."""
    return args.work_dir / "data" / f"reward_weighting_stats_{MANIFESTS['egg_mixed'].stem}.json"


def task_masks_override() -> str:
    return "task_masks=" + json.dumps(TASK_ACTION_DIMS)


def common_overrides(run: Run, args: argparse.Namespace, steps: int) -> list[str]:
    return [
        f"run_name={run.name}_seed{run.seed}",
        f"output_dir={args.work_dir / 'runs'}",
        f"seed={1000 + run.seed}",
        f"data.data_root={args.work_dir / 'data'}",
        f"data.batch_size={args.batch_size}",
        "data.num_workers=1",
        f"data.cache_items={str(args.cache_items).lower()}",
        task_masks_override(),
        f"train.steps={steps}",
        "train.log_every=50",
        f"train.save_every={steps}",
        "train.keep_last=1",
        "train.val_max_batches=4",
        "train.progress_bar=false",
    ]


def base_checkpoint(seed: int, args: argparse.Namespace) -> Path:
    from crab.training.checkpoint import step_dir

    return step_dir(args.work_dir / "runs" / f"base_seed{seed}", args.base_steps)


def run_config(run: Run, args: argparse.Namespace):
    """The training config of one run (`config_layers`)."""
    from crab.training.config import load_config

    return load_config(*config_layers(run, args))


def config_layers(run: Run, args: argparse.Namespace) -> tuple[list[Path], list[str]]:
    """(config files, overrides) of one run: the base (IL config on clean data of every task, the tiny
    policy) or a fine-tuning from that seed's base (the same config on the clean egg transfers, or the
    outcome-sampling recipe on every egg transfer; the base as the reference)."""
    if run.finetune is None:
        overrides = [
            *common_overrides(run, args, args.base_steps),
            f"data.data_root={base_data_root(args)}",
            f"data.manifest={MANIFESTS['base']}",
            "data.reward_stats=null",  # imitation learning: no weighting
            "policy.pretrained_path=tiny",
            f"policy.overrides={{n_action_steps: {args.n_action_steps}}}",
        ]
        return [CONFIG_DIR / CONFIG], overrides
    base, ft = base_checkpoint(run.seed, args), run.finetune
    steps = args.steps
    # Filtering imitates the clean transfers; the recipe draws from every egg transfer by its outcome.
    data = (
        [f"data.manifest={MANIFESTS['egg_mixed']}", f"data.reward_stats={sampled_stats_path(args)}"]
        if ft.sampled
        else [f"data.manifest={MANIFESTS['egg_clean']}", "data.reward_stats=null"]
    )
    replayed = MANIFESTS["egg_mixed" if ft.sampled else "retention"]
    overrides = [
        *common_overrides(run, args, steps),
        *data,
        f"data.retention_manifest={MANIFESTS['retention']}",
        f"policy.pretrained_path={base}",
        "policy.normalization=pretrained",
        f"anchor.enabled={str(ft.lambda_anchor > 0).lower()}",
        *([f"anchor.lambda_anchor={ft.lambda_anchor}"] if ft.lambda_anchor > 0 else []),
        # The carton tasks' training episodes (the retention manifest's held-out ones stay unseen), or the
        # `sampled` fine-tuning's own, drawn uniformly.
        *([f"replay.manifest={replayed}", f"replay.batch_size={ft.replay_batch}",
           f"replay.anchor={str(ft.lambda_anchor > 0).lower()}", f"replay.imitate={str(ft.imitate).lower()}"]
          if ft.replay_batch else []),
        f"anchor.reference={base}",
        # The cycle configs' anchor schedule (warmup 1000, ramp 2000 of 20000 steps), scaled to the run.
        f"anchor.warmup_steps={steps // 20}",
        f"anchor.ramp_steps={steps // 10}",
    ]
    return [CONFIG_DIR / CONFIG, *([CONFIG_DIR / SAMPLED_RECIPE] if ft.sampled else [])], overrides


def ensure_sampled_stats(args: argparse.Namespace) -> None:
    """The `sampled` fine-tunings' reward statistics, written by `reward_stats` from their config (as the
    recipe's header says to run it), which also prints the pre-flight table of the draw."""
    from crab.training import reward_stats

    paths, overrides = config_layers(Run("stats", 0, sampled_finetunes(args.sampled_lambda, args.batch_size)[0]), args)
    # Written before any base is trained: the chunk size is read from the tiny policy, the bases' own
    # architecture, not from a base checkpoint that may not exist yet (the policy's normalisation does not
    # enter the statistics).
    overrides += ["policy.pretrained_path=tiny", "policy.normalization=data"]
    reward_stats.main([*(f"--config={p}" for p in paths), *(f"--set={o}" for o in overrides)])


def train_job(cfg, threads: int) -> float:
    """Train (or reuse) one run in this worker; its training seconds."""
    import torch

    torch.set_num_threads(threads)
    _, seconds = train_or_reuse(cfg)
    return seconds


def eval_job(checkpoint: Path, episodes: int, seed: int, n_action_steps: int, image_size: int, threads: int) -> dict:
    """Evaluate (or reuse the evaluation of) one checkpoint on every task in this worker."""
    import torch

    torch.set_num_threads(threads)
    return evaluate_or_reuse(checkpoint, episodes, seed, n_action_steps, image_size, TASKS)


def final_retention_val(run_dir: Path) -> dict[str, float]:
    """The last epoch's retention validation losses of a fine-tuning run."""
    from crab.training.monitoring import RETENTION_PREFIX, read_epoch_summaries

    summaries = [s for s in read_epoch_summaries(run_dir) if s["val_loss"]]
    if not summaries:
        return {}
    return {k[len(RETENTION_PREFIX):]: v for k, v in summaries[-1]["val_loss"].items() if k.startswith(RETENTION_PREFIX)}


def mix_name(mix: float) -> str:
    return f"mix{mix:g}"


def mix_checkpoint(tuned: Path, seed: int, mix: float, args: argparse.Namespace) -> Path:
    """The policy interpolated between a seed's base and `tuned`, its fine-tuning without the anchor
    (`crab.training.interpolate`), rebuilt unless newer than that fine-tuning."""
    from crab.training.interpolate import write_interpolated

    out = args.work_dir / "runs" / f"{mix_name(mix)}_seed{seed}" / tuned.name
    weights = "pretrained_model/model.safetensors"
    if (out / weights).is_file() and (out / weights).stat().st_mtime > (tuned / weights).stat().st_mtime:
        return out
    shutil.rmtree(out, ignore_errors=True)
    return write_interpolated(base_checkpoint(seed, args), tuned, mix, out)


def execute(args: argparse.Namespace) -> tuple[dict, dict, dict]:
    """Train and evaluate every run, `--jobs` at a time: a seed's fine-tunings start when its base is
    trained, its weight interpolations (`--mixes`) are built when its fine-tuning without the anchor is.
    Returns (evaluations, training seconds), each keyed by (name, seed)."""
    runs = [Run("base", s) for s in range(args.seeds)]
    finetunes = [] if args.bases_only else [Run(ft.name, s, ft) for s in range(args.seeds) for ft in settings(args)]
    results, train_s = {}, {}
    ctx = multiprocessing.get_context("spawn")  # the same on Linux and Windows; no forked torch thread pools
    with ProcessPoolExecutor(args.jobs, mp_context=ctx) as executor:
        pending: dict[Future, tuple[str, Run]] = {}

        def submit_train(run: Run) -> None:
            pending[executor.submit(train_job, run_config(run, args), args.threads)] = ("train", run)

        for run in runs:
            submit_train(run)
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                kind, run = pending.pop(future)
                key = (run.name, run.seed)
                if kind == "train":
                    train_s[key] = future.result()
                    cfg = run_config(run, args)
                    from crab.training.checkpoint import step_dir

                    checkpoint = step_dir(cfg.run_dir, cfg.train.steps)
                    job = (checkpoint, args.episodes, run.seed, args.n_action_steps, args.image_size, args.threads)
                    pending[executor.submit(eval_job, *job)] = ("eval", run)
                    if run.finetune is None:
                        for ft in (f for f in finetunes if f.seed == run.seed):
                            submit_train(ft)
                    if run.finetune == ANCHOR_OFF:
                        for mix in args.mixes:
                            job = (mix_checkpoint(checkpoint, run.seed, mix, args), *job[1:])
                            pending[executor.submit(eval_job, *job)] = ("eval", Run(mix_name(mix), run.seed))
                else:
                    results[key] = future.result()
                    print(f"{run.name} seed {run.seed}: evaluated", flush=True)
    return results, train_s


def report(args, names: list[str], results: dict, train_s: dict, timings: dict, command: str, val: dict) -> tuple[str, dict]:
    seeds = range(args.seeds)
    pooled = {t: {n: pool([results[(n, s)]["tasks"][t] for s in seeds]) for n in names} for t in TASKS}
    labels = {"base": f"base: IL on clean data of all three tasks, {args.base_egg_episodes} egg transfers"}
    labels.update({ft.name: f"fine-tuned, {ft.describe()}" for ft in settings(args)})
    labels.update({mix_name(m): f"weights: base + {m:g} x (fine-tuned, anchor off - base)" for m in args.mixes})
    ms_per_step = {n: 1000 * sum(train_s[(n, s)] for s in seeds) / (args.seeds * args.steps)
                   for n in names if all((n, s) in train_s for s in seeds) and n != "base"}  # fmt: skip
    lines = [
        "# The anchor's job: fine-tune on egg transfer, keep the other tasks",
        "",
        f"Generated by `crab/sim/anchor_benchmark.py` on {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC.",
        "",
        f"    {command}",
        "",
        f"- Machine: {machine()}. Shared with other jobs while it ran: times are indicative only.",
        f"- Data (`crab.sim.generate`, seed {args.data_seed}, {args.image_size}x{args.image_size} camera, "
        f"{args.episodes_per_dataset} episodes per dataset). Base: `{MANIFESTS['base'].name}` (clean: carton "
        f"openings, carton closings and only {args.base_egg_episodes} egg transfers, so the base is weak at the "
        f"target). Fine-tuning: `{MANIFESTS['egg_clean'].name}`: the clean egg transfers, no carton task (with "
        "that many clean transfers the README recommends filtering, imitating the clean ones alone)"
        + (f"; the outcome-sampling rows: `{MANIFESTS['egg_mixed'].name}`, the clean, cracked and failed egg "
           "transfers" if args.sampled_lambda is not None else "")
        + ". One episode per dataset held out for validation; the carton "
        "datasets' held-out episodes give the retention validation loss "
        f"(`data.retention_manifest: {MANIFESTS['retention'].name}`).",
        f"- Base: the tiny offline SmolVLA (`TINY_SMOLVLA_DEFAULTS`), baseline IL config, {args.base_steps} steps "
        f"at batch {args.batch_size}, {args.n_action_steps} actions executed per chunk of 10.",
        f"- Fine-tuning: from the base (`policy.pretrained_path` = its checkpoint, `policy.normalization: "
        "pretrained`), imitation learning (the baseline IL config), the base as the frozen reference "
        f"(`anchor.reference`), {args.steps} steps at batch "
        f"{args.batch_size}, anchor warmup/ramp {args.steps // 20}/{args.steps // 10} steps (the cycle configs' "
        f"1000/2000 of 20000, scaled), lambda_anchor in {{{', '.join(f'{x:g}' for x in args.lambdas)}}} with the "
        "anchor on the fine-tuning batches only (lambda 0 = anchor off), and in "
        f"{{{', '.join(f'{x:g}' for x in args.replay_lambdas)}}} with it also on replayed carton frames "
        f"(`replay.manifest: {MANIFESTS['retention'].name}`: each step a batch of {args.batch_size} frames "
        "from the carton datasets' training episodes beside the egg batch; only their observations and noisy "
        "actions enter, through the anchor; nothing of them is imitated)"
        + (f"; per replayed batch size in {{{', '.join(map(str, args.replay_batches))}}}: the anchor at lambda "
           f"{args.share_lambda:g} on them, rehearsal (`replay.imitate`: imitated beside the egg batch, anchor "
           "off) and both" if args.replay_batches else "")
        + (f"; the base's and the anchor-off fine-tuning's weights interpolated (`crab.training.interpolate`) at "
           f"{', '.join(f'{m:g}' for m in args.mixes)}" if args.mixes else "")
        + ". The learning rate and its schedule are the base's (lerobot's presets).",
        f"- Training seeds: {args.seeds} (1000, 1001, ...); evaluation: {args.episodes} closed-loop episodes per "
        "task per seed, the same scenes for every run of a seed. Rates pool the seeds' episodes (Wilson 95% "
        "interval); 'per seed' lists each seed's rate. Retention = fine-tuned success / base success (pooled).",
        f"- Wall time of the command: {timings['wall_s'] / 60:.1f} min with {args.jobs} job(s) at a time "
        f"({args.threads} torch thread(s) each): data {timings['data_s']:.0f} s; summed over the runs, training "
        f"{sum(train_s.values()) / 60:.1f} min and evaluation {timings['eval_s'] / 60:.1f} min (reused runs and "
        "evaluations count the time measured when they ran).",
        "",
    ]
    for task in TASKS:
        rows = []
        for n in names:
            p = pooled[task][n]
            if task == TARGET:  # the fine-tuning's gain over the base
                keep = "" if n == "base" else fmt_gain(p, pooled[task]["base"])
            else:
                keep = "" if n == "base" else fmt_retention(retention(p, pooled[task]["base"]))
            rows.append([
                labels[n], fmt_rate(p["success_rate"], p["success_ci95"]), fmt_seeds(p["seed_success"]),
                fmt_rate(p["crack_rate"], p["crack_ci95"]), fmt_seeds(p["seed_crack"]), keep,
                f"{ms_per_step[n]:.0f}" if n in ms_per_step else "",
            ])  # fmt: skip
        role = "target task" if task == TARGET else "not in the fine-tuning data"
        last = "gain over the base" if task == TARGET else "retention"
        lines += [
            f"## {task} ({role}; {pooled[task]['base']['episodes']} episodes per row)",
            "",
            markdown_table(["run", "success", "per seed", "crack", "per seed", last, "ms/step"], rows),
            "",
        ]
    if args.replay_batches:
        rows = []
        for b in args.replay_batches:
            for ft in share_finetunes(b, args.share_lambda):
                egg = pooled[TARGET][ft.name]
                rows.append([
                    ft.describe(), f"{b / (args.batch_size + b):.0%}",
                    fmt_gain(egg, pooled[TARGET]["base"]),
                    *(fmt_retention(retention(pooled[t][ft.name], pooled[t]["base"])) for t in OTHERS),
                    f"{ms_per_step[ft.name]:.0f}" if ft.name in ms_per_step else "",
                ])  # fmt: skip
        lines += [
            "## The anchor against rehearsal, at matched shares of replayed frames",
            "",
            "Share: the replayed frames' part of each step's frames. Gain: egg success over the base's (pooled); "
            "retention: each other task's success over the base's.",
            "",
            markdown_table(["fine-tuning", "replayed share", "egg gain", *(f"retention: {t}" for t in OTHERS), "ms/step"], rows),
            "",
        ]
    if args.sampled_lambda is not None:
        lines += sampled_section(args, pooled, ms_per_step)
    if val:
        lines += [
            "## Retention validation loss at the end of fine-tuning (mean over seeds)",
            "",
            "The unweighted flow loss on the carton tasks' held-out episodes, logged in the epoch summaries "
            "(`val_loss`, keys `retention: <task>`) and plotted in each run's `plots/val_loss.png`:",
            "",
            markdown_table(["run", *OTHERS], [[labels[n], *(f"{val[n][t]:.3f}" for t in OTHERS)] for n in val]),
            "",
        ]
    bar, recommended = check_bar(pooled, settings(args))
    lines += ["## The bar (pooled)", ""]
    lines += [f"- {'PASS' if ok else 'FAIL'}: {name} ({detail})" for name, ok, detail in bar]
    lines += [
        "",
        "Recommended setting: "
        + (f"**{recommended.describe()}**" if recommended is not None else "none of the tested settings meets the bar")
        + ".",
        "",
    ]
    return "\n".join(lines), {"pooled": pooled, "bar": bar, "recommended": recommended}


def sampled_section(args, pooled: dict, ms_per_step: dict) -> list[str]:
    """The report's section on the anchor's states under `apply: sample` (`--sampled-lambda`)."""
    finetunes = sampled_finetunes(args.sampled_lambda, args.batch_size)
    off = finetunes[0]
    rows = []
    for ft in finetunes:
        egg = pooled[TARGET][ft.name]
        rows.append([
            ft.describe(), fmt_rate(egg["success_rate"], egg["success_ci95"]),
            fmt_rate(egg["crack_rate"], egg["crack_ci95"]), fmt_gain(egg, pooled[TARGET][off.name]),
            *(fmt_retention(retention(pooled[t][ft.name], pooled[t]["base"])) for t in OTHERS),
            f"{ms_per_step[ft.name]:.0f}" if ft.name in ms_per_step else "",
        ])  # fmt: skip
    return [
        "## The anchor's states when the weights choose the batch (`apply: sample`)",
        "",
        f"Fine-tuned on `{MANIFESTS['egg_mixed'].name}` with `{SAMPLED_RECIPE}` (the draw follows each episode's "
        "outcome, so it holds almost only clean transfers); the anchor at lambda "
        f"{args.sampled_lambda:g} on the drawn batch, or on it plus {args.batch_size} frames a step drawn "
        "uniformly from the same training episodes (`replay.manifest` = the training manifest, "
        "`replay.anchor: true`): the cracked and failed transfers' states too. Egg success against the "
        "same recipe with the anchor off; retention: each other task's success over the base's.",
        "",
        markdown_table(
            ["fine-tuning", "egg success", "egg cracks", "against anchor off", *(f"retention: {t}" for t in OTHERS), "ms/step"],
            rows,
        ),
        "",
    ]


def share_finetunes(replay_batch: int, share_lambda: float) -> list[Finetune]:
    """At one replayed batch size: the anchor on the replayed frames, rehearsal alone, and both."""
    return [Finetune(share_lambda, replay_batch), Finetune(0.0, replay_batch, True), Finetune(share_lambda, replay_batch, True)]


def sampled_finetunes(lambda_anchor: float, replay_batch: int) -> list[Finetune]:
    """The outcome-sampling recipe on every egg transfer: anchor off, the anchor on the drawn batch, and on
    it plus `replay_batch` training frames drawn uniformly."""
    return [Finetune(0.0, sampled=True), Finetune(lambda_anchor, sampled=True), Finetune(lambda_anchor, replay_batch, sampled=True)]


def settings(args: argparse.Namespace) -> list[Finetune]:
    """Every fine-tuning, in the report's order (each once)."""
    every = [Finetune(lam) for lam in args.lambdas] + [Finetune(lam, args.batch_size) for lam in args.replay_lambdas]
    every += [ft for b in args.replay_batches for ft in share_finetunes(b, args.share_lambda)]
    every += sampled_finetunes(args.sampled_lambda, args.batch_size) if args.sampled_lambda is not None else []
    return list(dict.fromkeys(every))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("docs/anchor.md"))
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--episodes", type=int, default=50, help="evaluation episodes per task per seed")
    p.add_argument("--base-steps", type=int, default=10000, help="training steps of each base")
    p.add_argument("--steps", type=int, default=2000, help="fine-tuning steps of each run")
    p.add_argument("--lambdas", type=float, nargs="+", default=[0.0, 0.1],
                   help="lambda_anchor values with the anchor on the fine-tuning batches only; 0 = off")  # fmt: skip
    p.add_argument("--replay-lambdas", type=float, nargs="*", default=[0.1, 1.0, 10.0],
                   help="lambda_anchor values with the anchor also on replayed carton frames (all > 0)")  # fmt: skip
    p.add_argument("--replay-batches", type=int, nargs="*", default=[],
                   help="replayed carton frames per step at which the anchor (at --share-lambda), rehearsal and both "
                   "are compared, e.g. 1 4 32 (about 2%%, 10%% and 50%% of a step's frames at batch 32)")
    p.add_argument("--share-lambda", type=float, default=10.0, help="lambda_anchor of the --replay-batches rows")
    p.add_argument("--mixes", type=float, nargs="*", default=[],
                   help="weight interpolations base + m x (anchor-off fine-tuning - base) to evaluate, m in (0, 1)")
    p.add_argument("--sampled-lambda", type=float,
                   help="also fine-tune on every egg transfer with the outcome-sampling recipe: anchor off, and at "
                   "this lambda_anchor on the drawn batch, and on it plus a uniform batch of the training frames")
    p.add_argument("--base-egg-episodes", type=int, default=3,
                   help="egg transfers the bases train on (the carton tasks get --episodes-per-dataset)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--n-action-steps", type=int, default=5, help="actions executed per predicted chunk of 10")
    p.add_argument("--episodes-per-dataset", type=int, default=50)
    p.add_argument("--data-seed", type=int, default=0)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--work-dir", type=Path, default=Path("outputs/anchor_benchmark"))
    p.add_argument("--cache-items", action=argparse.BooleanOptionalAction, default=True,
                   help="keep decoded training items in RAM (`data.cache_items`)")  # fmt: skip
    p.add_argument("--jobs", type=int, default=1, help="trainings/evaluations at a time, each in its own process")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads per job")
    p.add_argument("--bases-only", action="store_true", help="train and evaluate the bases only (no report)")
    args = p.parse_args(argv)
    if 0.0 not in args.lambdas or len(set(args.lambdas)) < 2:
        p.error("--lambdas needs 0 (the anchor off, the bar's reference) and at least one value > 0")
    if any(x <= 0 for x in args.replay_lambdas):
        p.error("--replay-lambdas must be > 0 (replay feeds the anchor only)")
    if any(b < 1 for b in args.replay_batches) or args.share_lambda <= 0:
        p.error("--replay-batches must be >= 1 and --share-lambda > 0")
    if args.sampled_lambda is not None and args.sampled_lambda <= 0:
        p.error("--sampled-lambda must be > 0 (its rows compare where the anchor is on)")
    if args.base_egg_episodes < 0:
        p.error("--base-egg-episodes must be >= 0")
    if any(not 0 < m < 1 for m in args.mixes):
        p.error("--mixes must be in (0, 1) (0 is the base, 1 the fine-tuned policy: both are rows already)")
    args.lambdas, args.replay_lambdas = sorted(set(args.lambdas)), sorted(set(args.replay_lambdas))
    args.replay_batches, args.mixes = sorted(set(args.replay_batches)), sorted(set(args.mixes))
    return args


def main(argv: list[str] | None = None) -> dict | None:
    import torch

    start = time.perf_counter()
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    command = "python -m crab.sim.anchor_benchmark " + shlex.join(sys.argv[1:] if argv is None else argv)
    # The fine-tunings' data root has the damaged egg transfers too (only the `sampled` rows read them), with
    # or without those rows, so that adding them later does not regenerate the root under finished runs.
    roots = {
        args.work_dir / "data": data_counts(args, args.episodes_per_dataset, damaged=True),
        base_data_root(args): data_counts(args, args.base_egg_episodes + 1, damaged=False),
    }
    timings = {
        "data_s": sum(
            ensure_data(root, args.episodes_per_dataset, args.data_seed, args.image_size, counts)
            for root, counts in roots.items()
        )
    }
    if args.sampled_lambda is not None and not args.bases_only:
        ensure_sampled_stats(args)
    results, train_s = execute(args)
    timings["eval_s"] = sum(r["wall_s"] for r in results.values())  # as measured when evaluated (reuse too)
    timings["wall_s"] = time.perf_counter() - start
    print(f"wall time {timings['wall_s'] / 60:.1f} min", flush=True)
    if args.bases_only:
        return None
    names = ["base", *(ft.name for ft in settings(args)), *map(mix_name, args.mixes)]
    val = {}
    for ft in settings(args):
        per_seed = [final_retention_val(run_config(Run(ft.name, s, ft), args).run_dir) for s in range(args.seeds)]
        if all(per_seed):
            val[ft.name] = {t: sum(v[t] for v in per_seed) / len(per_seed) for t in OTHERS}
    text, summary = report(args, names, results, train_s, timings, command, val)
    notes = ""
    if args.out.is_file() and NOTES_MARKER in args.out.read_text():
        notes = args.out.read_text().split(NOTES_MARKER, 1)[1]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n" + NOTES_MARKER + (notes or "\n"))
    recommended = summary["recommended"]
    out = {"args": {k: str(v) for k, v in vars(args).items()}, **summary, "timings": timings,
           "recommended": recommended.name if recommended else None,
           "train_s": {f"{n}_seed{s}": v for (n, s), v in train_s.items()},
           "per_seed": {f"{n}_seed{s}": v for (n, s), v in results.items()}, "retention_val_loss": val}  # fmt: skip
    (args.work_dir / "results.json").write_text(json.dumps(out, indent=2))
    print(text)
    print(f"\nwrote {args.out}, {args.work_dir / 'results.json'}")
    pooled = summary["pooled"]
    short = {ft.name: ft.describe() for ft in settings(args)} | {mix_name(m): f"weights mixed at {m:g}" for m in args.mixes}
    kept = {
        short[n]: ", ".join(fmt_retention(retention(pooled[t][n], pooled[t]["base"])) for t in OTHERS) for n in names[1:]
    }
    print(
        f"headline: share of the base's success kept on {' / '.join(OTHERS)}: "
        + "; ".join(f"{name}: {k}" for name, k in kept.items())
        + f"; recommended: {recommended.describe() if recommended else 'none'}"
    )
    return out


if __name__ == "__main__":
    main()
