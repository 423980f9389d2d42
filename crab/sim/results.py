"""Egg-transfer success of benchmark rows across several benchmark work dirs, in one table and one figure:
the clean-count sweep (the same regime generated at several `--scarce-clean` counts, each in its own work
dir) or the recipe on each kind of damage (one regime each).

    python -m crab.sim.results --point "2 clean=outputs/sim_norm:scarce_eggonly" \
        --point "5 clean=outputs/sim_c5:scarce_eggonly" --point "10 clean=outputs/sim_c10:scarce_eggonly" \
        --rows il_clean rwfm_chunk_q_sample_uncapped_h20_phase_drop_mixed cond_chunk_q_h20_cfg5_mixed \
        [--seeds 3] [--figure docs/sim_clean_sweep.png]

It trains and evaluates nothing: it reads the evaluations `crab.sim.compare` saved (run compare first, with
the same --steps, --episodes, --batch-size and --n-action-steps). Per row and point: egg success pooled over
the seeds evaluated (Wilson 95% interval), the per-seed rates and the crack rate; "not run" where no seed
was. With --outcomes, per point also where the episodes ended (`evaluate.egg_outcome`: never grasped,
cracked by the grip, at impact over the tray, ...). The last line gives, per point, each row's egg success
minus the first row's.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from crab.sim import compare
from crab.sim.egg_env import PUT_EGG
from crab.sim.evaluate import outcome_categories


def parse_point(text: str) -> tuple[str, Path, str]:
    """"LABEL=WORK_DIR:REGIME" -> (label, work dir, regime name)."""
    label, sep, rest = text.partition("=")
    work_dir, sep2, regime = rest.rpartition(":")
    if not (sep and sep2 and label and work_dir) or regime not in compare.REGIMES:
        raise argparse.ArgumentTypeError(
            f"--point {text!r}: expected LABEL=WORK_DIR:REGIME with REGIME one of {list(compare.REGIMES)}"
        )
    return label, Path(work_dir), regime


def bench_args(work_dir: Path, args: argparse.Namespace) -> argparse.Namespace:
    """The `crab.sim.compare` arguments whose runs one point's work dir holds."""
    return compare.parse_args(
        ["--work-dir", str(work_dir), "--steps", str(args.steps), "--episodes", str(args.episodes),
         "--batch-size", str(args.batch_size), "--n-action-steps", str(args.n_action_steps)]
    )  # fmt: skip


def cell(row: compare.Method, bench: argparse.Namespace, regime: str, args: argparse.Namespace) -> dict | None:
    """The row's egg-task evaluations at one point (`bench`: its compare arguments), pooled over the seeds
    found (None: none)."""
    from crab.training.checkpoint import step_dir

    found = []
    for seed in range(args.seeds):
        cfg = compare.run_config(row, seed, bench, compare.REGIMES[regime])
        path = compare.eval_path(
            step_dir(cfg.run_dir, cfg.train.steps), args.episodes, seed, args.n_action_steps, row.ask, row.guidance
        )
        if path.is_file() and compare.answers(saved := json.loads(path.read_text()), row.ask, row.guidance):
            found.append(saved["tasks"][PUT_EGG])
    return compare.pool(found) if found else None


def table(points: list[tuple[str, Path, str]], rows: list[compare.Method], args) -> tuple[str, dict]:
    """The markdown table (a row per benchmark row, a column pair per point) and the pooled cells."""
    benches = {label: bench_args(work_dir, args) for label, work_dir, _ in points}
    cells = {(r.name, label): cell(r, benches[label], regime, args) for r in rows for label, _, regime in points}
    lines = []
    for r in rows:
        out = [f"`{r.name}`", f"{r.label}"]
        for label, *_ in points:
            c = cells[(r.name, label)]
            out += (
                ["not run", ""] if c is None else
                [f"{compare.fmt_rate(c['success_rate'], c['success_ci95'])} ({compare.fmt_seeds(c['seed_success'])})",
                 f"{c['crack_rate']:.0%}"]
            )  # fmt: skip
        lines.append(out)
    header = ["run", "method", *(h for label, *_ in points for h in (f"{label}: egg success (per seed)", "cracks"))]
    return compare.markdown_table(header, lines), cells


def outcome_tables(points, rows: list[compare.Method], cells: dict) -> str:
    """Per point: each row's episodes by where they ended, pooled over the seeds."""
    categories = list(outcome_categories(PUT_EGG))
    parts = []
    for label, *_ in points:
        lines = [[f"`{r.name}`", str(c["episodes"]), *(str(c["outcomes"][k]) for k in categories)]
                 for r in rows if (c := cells[(r.name, label)])]  # fmt: skip
        parts += [f"{label}: where the egg episodes ended", "", compare.markdown_table(["run", "episodes", *categories], lines), ""]
    return "\n".join(parts)


def figure(points, rows, cells, path: Path, title: str) -> None:
    fig, ax = compare.rate_figure(1.4 * len(points) + 7)
    for i, r in enumerate(rows):
        xs = [j + 0.06 * (i - (len(rows) - 1) / 2) for j, p in enumerate(points) if cells[(r.name, p[0])]]
        got = [cells[(r.name, p[0])] for p in points if cells[(r.name, p[0])]]
        if not got:
            continue
        y = [c["success_rate"] for c in got]
        err = [[c["success_rate"] - c["success_ci95"][0] for c in got], [c["success_ci95"][1] - c["success_rate"] for c in got]]
        # The colour cycle has 10 colours: each further ten rows get their own marker and line style.
        style = {"marker": "os^D"[i // 10 % 4], "linestyle": ("-", "--", ":", "-.")[i // 10 % 4]}
        ax.errorbar(xs, y, yerr=err, capsize=3, label=r.label, **style)
    ax.set_xticks(range(len(points)), [p[0] for p in points])
    compare.save_rate_figure(fig, ax, path, title, "egg success (Wilson 95% interval)", 7, outside=True)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--point", type=parse_point, action="append", required=True, help="LABEL=WORK_DIR:REGIME")
    p.add_argument("--rows", nargs="+", required=True, help=f"rows of crab.sim.compare, e.g. {compare.CHUNK_Q_RECIPE.name}")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--episodes", type=int, default=50)
    p.add_argument("--steps", type=int, default=8000)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--n-action-steps", type=int, default=5)
    p.add_argument("--figure", type=Path, help="write the figure here (PNG)")
    p.add_argument("--title", default="egg success")
    p.add_argument("--outcomes", action="store_true", help="also where the episodes ended, per point")
    args = p.parse_args(argv)
    unknown = sorted(set(args.rows) - set(compare.ROW))
    if unknown:
        p.error(f"unknown row(s) {unknown}; choose from {list(compare.ROW)}")
    rows = [compare.ROW[n] for n in args.rows]
    text, cells = table(args.point, rows, args)
    print(text)
    if args.outcomes:
        print("\n" + outcome_tables(args.point, rows, cells))
    if args.figure:
        figure(args.point, rows, cells, args.figure, args.title)
        print(f"wrote {args.figure}")
    first = rows[0].name
    leads = []
    for label, *_ in args.point:
        base = cells[(first, label)]
        diffs = [f"{r.name} {(cells[(r.name, label)]['success_rate'] - base['success_rate']) * 100:+.0f}"
                 for r in rows[1:] if base and cells[(r.name, label)]]  # fmt: skip
        leads.append(f"{label}: {', '.join(diffs) or 'n/a'}")
    print(f"egg success minus {first}'s, points: " + "; ".join(leads))
    return {f"{r} @ {label}": c for (r, label), c in cells.items()}


if __name__ == "__main__":
    main()
