"""crab.sim.results: saved evaluations of several work dirs pooled into one table (hand-checked)."""

from __future__ import annotations

import json

import pytest

from crab.sim import compare, results
from crab.sim.egg_env import PUT_EGG
from crab.sim.evaluate import outcome_categories
from crab.training.checkpoint import step_dir


def save_eval(work_dir, row: str, seed: int, successes: int, cracks: int) -> None:
    """An evaluation of 10 episodes where compare saves it (`compare.eval_path`)."""
    method = compare.ROW[row]
    args = compare.parse_args(["--work-dir", str(work_dir)])
    cfg = compare.run_config(method, seed, args, compare.REGIMES["scarce_eggonly"])
    path = compare.eval_path(step_dir(cfg.run_dir, cfg.train.steps), 50, seed, 5, method.ask, method.guidance)
    path.parent.mkdir(parents=True, exist_ok=True)
    summary = {"episodes": 10, "success_rate": successes / 10, "crack_rate": cracks / 10, "mean_return": 0.0,
               "return_ci95": [0.0, 0.0], "outcomes": dict.fromkeys(outcome_categories(PUT_EGG), 0)}  # fmt: skip
    path.write_text(json.dumps({"tasks": {PUT_EGG: summary}}))


def test_points_pool_their_seeds_and_say_what_was_not_run(tmp_path, capsys):
    two, five = tmp_path / "two", tmp_path / "five"
    save_eval(two, "il_clean", 0, 2, 3)
    save_eval(two, "il_clean", 2, 4, 1)  # seed 1 missing: pooled over the two found
    save_eval(two, "cond_chunk_q_h20_cfg5_mixed", 0, 7, 0)  # guided: its own file beside the trained run's
    save_eval(five, "il_clean", 0, 5, 0)
    out = results.main([
        "--point", f"2 clean={two}:scarce_eggonly", "--point", f"5 clean={five}:scarce_eggonly",
        "--rows", "il_clean", "cond_chunk_q_h20_cfg5_mixed",
    ])  # fmt: skip
    printed = capsys.readouterr().out.splitlines()
    # 6 of 20 pooled: 30%, Wilson [14.5%, 51.9%]; per seed 20% / 40%; cracks 4 of 20.
    assert out["il_clean @ 2 clean"]["success_rate"] == pytest.approx(0.3)
    row = next(line for line in printed if line.startswith("| `il_clean`"))
    assert "30% [15%, 52%] (20% / 40%) | 20% |" in row and "50% [24%, 76%] (50%) | 0% |" in row
    guided = next(line for line in printed if line.startswith("| `cond_chunk_q_h20_cfg5_mixed`"))
    assert "70% [40%, 89%] (70%)" in guided and guided.endswith("| not run |  |")
    assert printed[-1] == "egg success minus il_clean's, points: 2 clean: cond_chunk_q_h20_cfg5_mixed +40; 5 clean: n/a"
    results.main(["--point", f"2 clean={two}:scarce_eggonly", "--rows", "il_clean", "--outcomes"])
    printed = capsys.readouterr().out
    assert "2 clean: where the egg episodes ended" in printed and "| `il_clean` | 20 | 0 |" in printed
    with pytest.raises(SystemExit):
        results.main(["--point", f"x={two}:no_such_regime", "--rows", "il_clean"])
