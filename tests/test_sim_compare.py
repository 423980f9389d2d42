"""The simulated benchmark: pooling, the bar, table formatting, checkpoint errors, and a miniature run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from crab.sim import compare, open_loop, policy_eval
from crab.sim.demonstrators import rollout
from crab.sim.egg_env import IMAGE_KEY, PUT_EGG, STATE_KEY
from crab.sim.evaluate import wilson_interval

REPO = Path(__file__).resolve().parents[1]


def summary(n: int, k_s: int, k_c: int, ret: float = 0.0, ci=(0.0, 0.0)) -> dict:
    return {
        "episodes": n,
        "success_rate": k_s / n,
        "crack_rate": k_c / n,
        "mean_return": ret,
        "return_ci95": ci,
    }


def test_pool_sums_episodes_over_seeds():
    p = compare.pool([summary(10, 3, 1, 0.2), summary(20, 10, 0, 0.5)])
    assert (p["episodes"], p["successes"], p["cracks"]) == (30, 13, 1)
    assert p["success_rate"] == pytest.approx(13 / 30)
    assert p["success_ci95"] == wilson_interval(13, 30)
    assert p["crack_ci95"] == wilson_interval(1, 30)
    assert p["seed_success"] == [0.3, 0.5]
    # Several seeds: the return interval is a t interval over the seeds' means (t_1 = 12.706).
    assert p["mean_return"] == pytest.approx(0.35)
    half = 12.706 * np.std([0.2, 0.5], ddof=1) / math.sqrt(2)
    assert p["return_ci95"] == pytest.approx((0.35 - half, 0.35 + half))


def test_pool_single_seed_keeps_the_episode_interval():
    p = compare.pool([summary(7, 7, 0, 1.0, (0.8, 1.0))])
    assert p["success_rate"] == 1.0 and p["return_ci95"] == (0.8, 1.0)


def test_formatting():
    assert compare.fmt_rate(0.5, (0.25, 0.75)) == "50% [25%, 75%]"
    assert compare.fmt_seeds([0.1, 0.25]) == "10% / 25%"
    assert compare.markdown_table(["a", "b"], [["1", "2"]]).splitlines() == ["| a | b |", "|---|---|", "| 1 | 2 |"]


def pooled(il_m, rw_m, il_c, rw_c) -> dict:
    """(successes, cracks) out of 50 per bar method -> pooled results."""
    return {k: compare.pool([summary(50, *v)]) for k, v in zip(compare.BAR_METHODS, (il_m, rw_m, il_c, rw_c), strict=True)}


def test_check_bar_passes_and_fails():
    ok = compare.check_bar(pooled(il_m=(20, 20), rw_m=(30, 5), il_c=(30, 0), rw_c=(28, 0)))
    assert [passed for _, passed, _ in ok] == [True, True, True, True]
    bad = compare.check_bar(pooled(il_m=(20, 20), rw_m=(25, 12), il_c=(30, 0), rw_c=(10, 0)))
    assert [passed for _, passed, _ in bad] == [False, False, False, False]
    assert bad[0][2] == "+10 points"


def test_missing_checkpoint_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match="no policy checkpoint at .*nope"):
        policy_eval.pretrained_dir(tmp_path / "nope")
    with pytest.raises(SystemExit) as exit_info:
        policy_eval.main(["--checkpoint", str(tmp_path / "nope"), "--episodes", "1"])
    assert exit_info.value.code == 2
    assert str(tmp_path / "nope") in capsys.readouterr().err


@pytest.mark.slow
def test_miniature_benchmark_end_to_end(tmp_path, monkeypatch):
    """Generate, compute statistics, train two methods a few steps, evaluate, report; then reuse."""
    monkeypatch.chdir(REPO)  # the cycle configs and manifests are repository paths
    monkeypatch.setenv("MUJOCO_GL", "egl")
    out = tmp_path / "report.md"
    argv = ["--out", str(out), "--work-dir", str(tmp_path / "work"), "--seeds", "1", "--episodes", "1",
            "--steps", "2", "--batch-size", "4", "--episodes-per-dataset", "2",
            "--methods", "il_clean", "rwfm_anchor_mixed", "rwfm_clean", "--jobs", "2"]  # fmt: skip
    result = compare.main(argv)
    assert set(result["pooled"]["Put the egg into the tray."]) == {"il_clean", "rwfm_anchor_mixed", "rwfm_clean"}
    # RWFM without anchor on the clean manifest is IL's run, reported and not retrained.
    assert result["per_seed"]["rwfm_clean"] == result["per_seed"]["il_clean"]
    assert not (tmp_path / "work" / "runs" / "rwfm_clean_seed0").exists()
    text = out.read_text()
    assert "`rwfm_clean` = `il_clean`" in text
    assert "| `rwfm_anchor_mixed` |" in text and "Not checked" in text and compare.NOTES_MARKER in text
    assert out.with_suffix(".png").stat().st_size > 0
    weights = json.loads((tmp_path / "work" / "results.json").read_text())["weights"]["1"]
    assert weights["egg_carton_to_tray_cracked"]["mean_weight"] < weights["egg_carton_to_tray"]["mean_weight"]
    egg = weights["egg_carton_to_tray"]["task_share"] + weights["egg_carton_to_tray_cracked"]["task_share"]
    assert egg == pytest.approx(1.0) and weights["open_the_carton"]["task_share"] == pytest.approx(1.0)
    checkpoint = tmp_path / "work" / "runs" / "il_clean_seed0" / "step_000002"
    actor, demo = policy_eval.SmolVLAActor(checkpoint), rollout(PUT_EGG, "careful", 7)
    r = open_loop.open_loop_error(actor, [demo], PUT_EGG)
    assert len(r["abs_error"]) == 4 and all(np.isfinite(r["abs_error"])) and np.isfinite(r["grip_mean"])
    # The flow noise comes from the episode seed, not from whatever the process drew before.
    obs = {IMAGE_KEY: demo.frames[IMAGE_KEY][0], STATE_KEY: demo.frames[STATE_KEY][0], "task": PUT_EGG}
    chunks = []
    for drawn_before in (0, 1):
        torch.manual_seed(drawn_before)
        actor.reset(seed=3)
        chunks.append(actor(obs))
    actor.reset(seed=4)
    assert np.array_equal(chunks[0], chunks[1]) and not np.array_equal(actor(obs), chunks[0])
    # Hand-written notes survive a rerun, which reuses the finished trainings and evaluations (the item
    # cache, a speed-only setting, does not count).
    out.write_text(text + "my notes\n")
    again = compare.main([*argv, "--no-cache-items"])
    assert again["train_s"] == result["train_s"]
    assert out.read_text().endswith(compare.NOTES_MARKER + "\nmy notes\n")
