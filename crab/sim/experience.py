"""RECAP's experience loop in the simulator: a trained policy's own attempts, labelled by how they ended, as
data for its next round of training.

    python -m crab.sim.experience --work-dir outputs/sim_c5_16k [--base il_clean] [--base-steps 16000] \
        [--seeds 3] [--rollouts 100] [--steps 4000] [--episodes 50] [--jobs 3] [--threads 1] [--out REPORT.md]

Per training seed s of a finished `crab.sim.compare` work dir of the egg-only scarce regime
(`scarce_eggonly`: its data and its `<base>_seed<s>` runs, by default filtering's):

1. collect: the base run's checkpoint at `--base-steps` acts `--rollouts` episodes of the egg task on scenes of
   its own (`evaluate.episode_seeds` of seed `COLLECT_SEED` + s: no evaluation scene), asked as it was trained,
   recorded as they ran and written under the regime's data root as up to three LeRobot datasets by how they
   ended (`OWN`): its successes (clean), its cracks (cracked) and its other failures (failed);
2. fine-tune the base checkpoint `--steps` steps with each row of `ROWS`, its normalisation kept
   (`policy.normalization: pretrained`: every row sees the inputs as the base did);
3. evaluate each fine-tuned policy, and the base, on the compare's evaluation scenes (`--episodes`, seed s).

The rows separate what the experience adds from what more training adds (`ft_clean`), and what its labels add
from its successes alone (`ft_own_success` against the conditioned rows). Finished collections, trainings and
evaluations with the same settings are reused. Writes the markdown report (default `<work dir>/experience_<base>.md`)
and `results.json` under `<work dir>/experience_<base>/`.
"""

from __future__ import annotations

import argparse
import csv
import json
import multiprocessing
import shlex
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from crab.sim.compare import (
    CF,
    IL_CONFIG,
    RECAP,
    RECIPE_CONDITIONED,
    REGIMES,
    H,
    Method,
    evaluate_or_reuse,
    fit_or_reuse_values,
    fmt_rate,
    fmt_seeds,
    manifest_path,
    markdown_table,
    pool,
    run_config,
    train_and_evaluate,
)
from crab.sim.egg_env import PUT_EGG
from crab.sim.evaluate import EGG_OUTCOMES, EpisodeRun
from crab.training.rewards import VALUE_SIGNALS

REGIME = REGIMES["scarce_eggonly"]
# The collection scenes' seeds are `evaluate.episode_seeds(COLLECT_SEED + s)`: the evaluation's are seed s.
COLLECT_SEED = 1000


@dataclass(frozen=True)
class Own:
    """One dataset of the base policy's attempts: the episodes that ended one way, and their manifest quality."""

    name: str
    quality: str

    def keeps(self, run: EpisodeRun) -> bool:
        success = run.success and not run.cracked
        return {"clean": success, "cracked": run.cracked, "failed": not success and not run.cracked}[self.quality]


OWN = (Own("own_success", "clean"), Own("own_cracked", "cracked"), Own("own_failed", "failed"))
ALL_OWN = tuple(o.name for o in OWN)


@dataclass(frozen=True)
class Row:
    """One fine-tuning of the base checkpoint: the compare row whose config it trains with (its recipes and
    settings), and the data: the regime's clean transfers, plus its damaged and failed demonstrations
    (`demos_bad`), plus which of the base policy's own datasets (`OWN` names)."""

    method: Method
    own: tuple[str, ...]
    demos_bad: bool = False

    @property
    def name(self) -> str:
        return self.method.name


def _conditioned(name: str, label: str, **settings) -> Method:
    return Method(name, CF, "mixed", label, recipes=(RECIPE_CONDITIONED,), **settings)


ROWS = (
    Row(Method("ft_clean", IL_CONFIG, "clean", "more imitation of the clean transfers (no new data: the control)"), ()),
    Row(Method("ft_own_success", IL_CONFIG, "clean", "imitation of the clean transfers and its own successes"),
        ("own_success",)),
    # RECAP's loop: every attempt imitated, its prompt saying how it ended (`episode` rule, positives half the draw).
    Row(_conditioned("ft_cond_own", "conditioned on its own attempts (successes positive, failures negative)"),
        ALL_OWN),
    Row(_conditioned("ft_cond_all", "conditioned on its own attempts and the damaged and failed demonstrations"),
        ALL_OWN, demos_bad=True),
    # Only what the rewards locate: every chunk positive but those leading into a crack (credit horizon two
    # chunks), the draw as the data has it (balanced, the few negative chunks would fill half of it).
    Row(_conditioned("ft_cond_own_damage", "conditioned on its own attempts, the chunks into damage negative",
                     horizon=H, rule="damage", positive_share="null"), ALL_OWN),
    # RECAP's own rule: each chunk positive where its `chunk_q` (a value model fitted on the row's data, credit
    # horizon two chunks) is at least its phase's mean, and it leads into no damage; the draw as the data has it.
    Row(_conditioned("ft_cond_own_advantage", "conditioned on its own attempts, labelled by advantage (RECAP's rule)",
                     signal="chunk_q", horizon=H, **RECAP), ALL_OWN),
)  # fmt: skip
ROW = {r.name: r for r in ROWS}
# The label's check: the conditioned policy asked for "negative" should fail more.
ASKED_NEGATIVE = "ft_cond_own"


def seed_dir(data_root: Path, base: str, seed: int) -> Path:
    """Where one seed's collected datasets are written (a folder of this command's own)."""
    return data_root / f"experience_{base}_seed{seed}"


def collect(checkpoint: Path, seed: int, rollouts: int, n_action_steps: int, image_size: int) -> list[EpisodeRun]:
    """`rollouts` recorded egg-transfer episodes of the checkpoint, on the collection scenes of `seed`."""
    import torch

    from crab.sim.egg_env import EggEnv
    from crab.sim.evaluate import episode_seeds, run_episode
    from crab.sim.policy_eval import SmolVLAActor

    torch.set_num_threads(1)
    actor = SmolVLAActor(checkpoint)
    env = EggEnv(PUT_EGG, image_size=image_size)
    runs = [
        run_episode(actor, env, int(s), n_action_steps) for s in episode_seeds(COLLECT_SEED + seed, PUT_EGG, rollouts)
    ]
    env.close()
    return runs


def ensure_experience(
    checkpoint: Path, folder: Path, seed: int, rollouts: int, n_action_steps: int, image_size: int, min_episodes: int
) -> dict:
    """Collect and write one seed's datasets under `folder`, unless a complete collection of the same
    checkpoint (saved before it) and settings is there; returns its summary (`folder/summary.json`, written
    last), with `fresh` set when it was collected now. A dataset with fewer than `min_episodes` episodes (a
    held-out one and one to train on) is not written."""
    from crab.data.lerobot_writer import Episode
    from crab.sim.generate import write_quietly

    settings = {"checkpoint": str(checkpoint), "seed": seed, "rollouts": rollouts,
                "n_action_steps": n_action_steps, "image_size": image_size, "min_episodes": min_episodes}  # fmt: skip
    summary_path = folder / "summary.json"
    saved = json.loads(summary_path.read_text()) if summary_path.is_file() else None
    if (
        saved is not None
        and saved["settings"] == settings
        and summary_path.stat().st_mtime > (checkpoint / "pretrained_model").stat().st_mtime
    ):
        print(f"reusing {folder}")
        return saved
    start = time.perf_counter()
    runs = collect(checkpoint, seed, rollouts, n_action_steps, image_size)
    shutil.rmtree(folder, ignore_errors=True)  # an interrupted collection of this command's own folder
    folder.mkdir(parents=True)
    written = {}
    for own in OWN:
        kept = [r for r in runs if own.keeps(r)]
        if len(kept) >= min_episodes:
            episodes = [Episode(PUT_EGG, r.frames, {"success": int(r.success), "damage": int(r.cracked)}) for r in kept]
            write_quietly(folder / own.name, f"{own.name}_seed{seed}", episodes)
            written[own.name] = len(kept)
    summary = {
        "settings": settings,
        "outcomes": {c: sum(r.outcome == c for r in runs) for c in EGG_OUTCOMES},
        "datasets": written,
        "collect_s": time.perf_counter() - start,
    }
    summary_path.write_text(json.dumps(summary, indent=2))
    print(f"{folder}: {summary['outcomes']}; written {written}", flush=True)
    return {**summary, "fresh": True}


def write_manifest(path: Path, row: Row, folder: Path, data_root: Path, datasets: dict[str, int]) -> Path:
    """The row's manifest: the regime's clean manifest (with its damaged and failed demonstrations: the mixed
    one), then the row's own datasets that the collection wrote."""
    source = manifest_path(REGIME.mixed if row.demos_bad else REGIME.clean)
    with open(source, newline="") as f:
        reader = csv.DictReader(f)
        header, rows = reader.fieldnames, list(reader)
    task = rows[0]["task"]
    for own in OWN:
        if own.name in row.own and own.name in datasets:
            root = (folder / own.name).relative_to(data_root).as_posix()
            rows.append({"name": own.name, "repo_id": f"crab/{own.name}_{folder.name}", "root": root,
                         "task": task, "quality": own.quality, "cycle": "experience"})  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=header)
        writer.writeheader()
        writer.writerows(rows)
    return path


def fine_tune_config(row: Row, seed: int, args: argparse.Namespace, checkpoint: Path, manifest: Path, out: Path):
    """The compare row's config on `manifest`, starting from `checkpoint` with its normalisation (and the
    manifest's own value file, `value_file`, for a row whose labels or weights read one)."""
    extra = [f"run_name={row.name}_seed{seed}", f"output_dir={out / 'runs'}", f"data.manifest={manifest}",
             f"data.reward_stats={out / f'reward_stats_{row.name}_seed{seed}.json'}",
             f"policy.pretrained_path={checkpoint}", "policy.normalization=pretrained",
             f"train.save_every={args.steps}", "train.keep_last=1"]  # fmt: skip
    if row.method.signal in VALUE_SIGNALS:
        extra.append(f"data.value_file={value_file(row, seed, out)}")
    return run_config(row.method, seed, args, REGIME, extra)


def value_file(row: Row, seed: int, out: Path) -> Path:
    return out / f"values_{row.name}_seed{seed}.parquet"


def report(
    args: argparse.Namespace, collected: list[dict], results: dict[str, list[dict]], command: str, wall_s: float
) -> str:
    """The markdown report: the collections, then the table (pooled over the seeds, Wilson intervals)."""
    base = f"`{args.base}` at {args.base_steps} steps"
    lines = [
        f"# The experience loop: {base}, fine-tuned {args.steps} steps on its own attempts",
        "",
        f"Command: `{command}`  ",
        f"Wall time: {wall_s / 60:.1f} min; {args.seeds} seeds x {args.episodes} evaluation episodes, the compare's "
        "scenes (seed s); collection scenes of their own.",
        "",
        "## What the base policy's attempts were (collection scenes)",
        "",
    ]
    rows = [[str(s), *(str(c["outcomes"][o]) for o in EGG_OUTCOMES), ", ".join(f"{k} {v}" for k, v in c["datasets"].items())]
            for s, c in enumerate(collected)]  # fmt: skip
    lines += [
        markdown_table(["seed", *EGG_OUTCOMES, "datasets written"], rows),
        "",
        "## Egg success after fine-tuning",
        "",
    ]
    labels = {"base": f"the base policy ({base})", **{r.name: r.method.label for r in ROWS},
              f"{ASKED_NEGATIVE}_asked_negative": f"{ROW[ASKED_NEGATIVE].method.label}, asked \"negative\""}  # fmt: skip
    table = []
    for name, per_seed in results.items():
        p = pool(per_seed)
        outcomes = ", ".join(f"{k} {v}" for k, v in p["outcomes"].items() if v and k != "success")
        table.append([f"`{name}`", labels[name], fmt_rate(p["success_rate"], p["success_ci95"]),
                      fmt_seeds(p["seed_success"]), fmt_rate(p["crack_rate"], p["crack_ci95"]), outcomes])  # fmt: skip
    lines += [markdown_table(["row", "what", "egg success", "per seed", "cracks", "failures"], table), ""]
    return "\n".join(lines)


def headline(results: dict[str, list[dict]]) -> str:
    rates = {name: pool(per_seed)["success_rate"] for name, per_seed in results.items()}
    best = max((r.name for r in ROWS if r.name in rates), key=rates.get)
    control = f" and more training alone (ft_clean) {rates['ft_clean']:.0%}" if "ft_clean" in rates else ""
    return f"experience loop: best fine-tune {best} {rates[best]:.0%} against the base {rates['base']:.0%}{control}"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work-dir", type=Path, required=True, help="a finished crab.sim.compare work dir (scarce_eggonly)")
    p.add_argument("--base", default="il_clean", help="the compare row whose runs are the base policies")
    p.add_argument("--base-steps", type=int, default=16000, help="the base runs' checkpoint step")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--rollouts", type=int, default=100, help="the base policy's recorded attempts per seed")
    p.add_argument("--steps", type=int, default=4000, help="fine-tuning steps")
    p.add_argument("--episodes", type=int, default=50, help="evaluation episodes per seed")
    p.add_argument("--rows", nargs="+", default=[r.name for r in ROWS], choices=[r.name for r in ROWS])
    p.add_argument("--value-expectile", type=float, default=0.9, help="`value_fit --expectile` (the advantage row)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--n-action-steps", type=int, default=5)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--jobs", type=int, default=3, help="collections and trainings at a time, each in its own process")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads per training")
    p.add_argument("--out", type=Path, help="the markdown report (default <work dir>/experience_<base>.md)")
    args = p.parse_args(argv)
    args.out = args.out or args.work_dir / f"experience_{args.base}.md"
    args.cache_items = True  # read by compare.run_config
    return args


def main(argv: list[str] | None = None) -> dict:
    start = time.perf_counter()
    args = parse_args(argv)
    command = "python -m crab.sim.experience " + shlex.join(sys.argv[1:] if argv is None else argv)
    data_root = args.work_dir / REGIME.data_dir
    out = args.work_dir / f"experience_{args.base}"
    bases = [
        args.work_dir / REGIME.runs_dir / f"{args.base}_seed{s}" / f"step_{args.base_steps:06d}"
        for s in range(args.seeds)
    ]
    missing = [str(b) for b in bases if not (b / "pretrained_model").is_dir()]
    if missing:
        sys.exit(f"error: no base checkpoint at {missing}: run crab.sim.compare --methods {args.base} --steps "
                 f"{args.base_steps} --work-dir {args.work_dir} first")  # fmt: skip
    rows = [ROW[name] for name in args.rows]
    from crab.training.crab_smolvla_wrapper import policy_config

    probe = run_config(rows[0].method, 0, args, REGIME)
    held_out, chunk = probe.data.val_episodes_per_dataset, policy_config(probe.policy).chunk_size
    spawn = multiprocessing.get_context("spawn")  # the same on Linux and Windows, and no forked torch thread pools
    with ProcessPoolExecutor(args.jobs, mp_context=spawn) as workers:
        collected = list(workers.map(
            ensure_experience, bases, [seed_dir(data_root, args.base, s) for s in range(args.seeds)],
            range(args.seeds), [args.rollouts] * args.seeds, [args.n_action_steps] * args.seeds,
            [args.image_size] * args.seeds, [held_out + 1] * args.seeds,
        ))  # fmt: skip

    from crab.training import reward_stats

    jobs = []
    for s, (base, c) in enumerate(zip(bases, collected, strict=True)):
        if c.pop("fresh", False):  # new data under the same manifests: no finished fine-tuning of the seed is reused
            for row in ROWS:
                shutil.rmtree(out / "runs" / f"{row.name}_seed{s}", ignore_errors=True)
        for row in rows:
            manifest = write_manifest(out / "manifests" / f"{row.name}_seed{s}.csv", row,
                                      seed_dir(data_root, args.base, s), data_root, c["datasets"])  # fmt: skip
            cfg = fine_tune_config(row, s, args, base, manifest, out)
            if cfg.data.value_file is not None:
                fit_or_reuse_values(manifest, data_root, Path(cfg.data.value_file), args.value_expectile, chunk)
            reward_stats.main(reward_stats.run_argv(cfg))
            questions = [(row.name, "positive", 1.0)]
            if row.name == ASKED_NEGATIVE:
                questions.append((f"{row.name}_asked_negative", "negative", 1.0))
            jobs.append(
                (cfg, args.episodes, s, args.n_action_steps, args.image_size, args.threads, (PUT_EGG,), questions)
            )
    results: dict[str, list[dict]] = {"base": []}
    for s, base in enumerate(bases):
        saved = evaluate_or_reuse(base, args.episodes, s, args.n_action_steps, args.image_size, (PUT_EGG,))
        results["base"].append(saved["tasks"][PUT_EGG])
    with ProcessPoolExecutor(args.jobs, mp_context=spawn) as workers:
        done = list(workers.map(train_and_evaluate, *zip(*jobs, strict=True)))
    for evaluations, _, _ in done:
        for name, result in evaluations.items():
            results.setdefault(name, []).append(result["tasks"][PUT_EGG])
    wall_s = time.perf_counter() - start
    text = report(args, collected, results, command, wall_s)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    summary = {"args": {k: str(v) for k, v in vars(args).items()}, "collected": collected,
               "pooled": {name: pool(per_seed) for name, per_seed in results.items()}, "wall_s": wall_s}  # fmt: skip
    (out / "results.json").write_text(json.dumps(summary, indent=2))
    print(text)
    print(f"wrote {args.out}, {out / 'results.json'}")
    print(headline(results))
    return summary


if __name__ == "__main__":
    main()
