"""crab.sim.anchor_benchmark: the bar and the recommendation (hand-checked), the runs' configs."""

from __future__ import annotations

import math

import pytest

from crab.sim import anchor_benchmark as ab
from crab.sim.egg_env import CLOSE_CARTON, OPEN_CARTON, PUT_EGG
from crab.sim.evaluate import wilson_interval


def rate(k: int, n: int = 100) -> dict:
    return {"success_rate": k / n, "success_ci95": wilson_interval(k, n)}


def pooled(egg: dict[str, int], open_: dict[str, int], close: dict[str, int]) -> dict:
    return {task: {name: rate(k) for name, k in rows.items()}
            for task, rows in ((PUT_EGG, egg), (OPEN_CARTON, open_), (CLOSE_CARTON, close))}  # fmt: skip


BATCH_ONLY = [ab.Finetune(0.0), ab.Finetune(0.1), ab.Finetune(1.0)]  # the anchor on the fine-tuning batches only


def test_bar_and_recommendation_hand_checked():
    # Base 60% / 50% on the carton tasks; lambda 0 drops them to 30% / 20% (-30 points each: forgetting).
    # lambda 0.1 keeps 55/60 = 92% and 46/50 = 92% with egg 38%, inside lambda 0's [31%, 50%]: passes.
    # lambda 1 keeps everything but egg 20% is below that interval: fails.
    p = pooled(
        {"base": 30, "lambda0": 40, "lambda0.1": 38, "lambda1": 20},
        {"base": 60, "lambda0": 30, "lambda0.1": 55, "lambda1": 60},
        {"base": 50, "lambda0": 20, "lambda0.1": 46, "lambda1": 50},
    )
    assert wilson_interval(40, 100)[0] == pytest.approx(0.309, abs=1e-3)
    bar, recommended = ab.check_bar(p, BATCH_ONLY)
    assert [ok for _, ok, _ in bar] == [True, True, False]
    assert recommended == ab.Finetune(0.1)
    assert "-30 points" in bar[0][2] and "92%" in bar[1][2]

    # One carton task forgets only 10 points: no forgetting bar; 89% retention misses the 90% bar.
    p = pooled(
        {"base": 30, "lambda0": 40, "lambda0.1": 40, "lambda1": 40},
        {"base": 60, "lambda0": 30, "lambda0.1": 60, "lambda1": 60},
        {"base": 100, "lambda0": 90, "lambda0.1": 89, "lambda1": 95},
    )
    bar, recommended = ab.check_bar(p, BATCH_ONLY)
    assert [ok for _, ok, _ in bar] == [False, False, True] and recommended == ab.Finetune(1.0)
    assert math.isnan(ab.retention(rate(10), rate(0)))

    # A task the base succeeds at less than 15% of the time cannot lose 15 points: left out, and named.
    p = pooled(
        {"base": 30, "lambda0": 40, "lambda0.1": 40, "lambda1": 40},
        {"base": 60, "lambda0": 30, "lambda0.1": 58, "lambda1": 60},
        {"base": 10, "lambda0": 0, "lambda0.1": 0, "lambda1": 0},
    )
    bar, recommended = ab.check_bar(p, BATCH_ONLY)
    assert [ok for _, ok, _ in bar] == [True, True, True] and recommended == ab.Finetune(0.1)
    assert "Close the carton. not learned by the base (10%)" in bar[0][2] and "Close" not in bar[1][2].split(";")[0]
    # With replay at the same lambda and egg success tied, no replay is preferred; higher egg success wins.
    replayed, rehearsal = ab.Finetune(0.1, 32), ab.Finetune(0.0, 4, imitate=True)
    for task, k in ((PUT_EGG, 40), (OPEN_CARTON, 60), (CLOSE_CARTON, 0)):
        p[task][replayed.name] = p[task][rehearsal.name] = rate(k)
    assert replayed.name == "replay32_lambda0.1" and rehearsal.name == "rehearsal4"
    assert ab.check_bar(p, [ab.Finetune(0.0), ab.Finetune(0.1), replayed])[1] == ab.Finetune(0.1)
    p[PUT_EGG][replayed.name] = rate(45)
    bar, recommended = ab.check_bar(p, [ab.Finetune(0.0), ab.Finetune(0.1), replayed])
    assert recommended == replayed and bar[2][0].startswith("lambda 0.1 + 32 carton frames a step replayed into the anchor")
    # Rehearsal (anchor off) is a candidate too: at egg success tied with the anchor, lambda 0 is preferred.
    p[PUT_EGG][rehearsal.name] = rate(45)
    bar, recommended = ab.check_bar(p, [ab.Finetune(0.0), replayed, rehearsal])
    assert recommended == rehearsal and bar[2][0].startswith("rehearsal (4 carton frames a step imitated), anchor off")
    p[OPEN_CARTON] = {k: rate(10) for k in p[OPEN_CARTON]}
    assert [ok for _, ok, _ in ab.check_bar(p, BATCH_ONLY)[0]] == [False, False, False]


def test_runs_configs(tmp_path):
    args = ab.parse_args(["--work-dir", str(tmp_path), "--base-steps", "40", "--steps", "20", "--lambdas", "1", "0"])
    assert args.lambdas == [0.0, 1.0]
    base = ab.run_config(ab.Run("base", 1), args)
    assert not base.reward_weighting.enabled and not base.anchor.enabled and base.policy.pretrained_path == "tiny"
    assert base.data.manifest.endswith("dataset_manifest_anchor_base.csv") and base.train.steps == 40
    assert set(base.task_masks) == {PUT_EGG, OPEN_CARTON, CLOSE_CARTON} and base.seed == 1001
    # The bases' own data root, weak at the target: 3 egg transfers (+1 held out), the carton tasks in full.
    assert base.data.data_root == str(tmp_path / "data_base_egg3")
    counts = ab.data_counts(args, args.base_egg_episodes + 1, damaged=False)
    assert counts["egg_carton_to_tray"] == 4 and counts["open_the_carton"] == counts["close_the_carton"] == 50
    assert sum(counts.values()) == 104
    counts = ab.data_counts(args, 50, damaged=True)  # the fine-tunings' root: the damaged transfers too
    assert counts["egg_carton_to_tray_cracked"] == counts["egg_carton_to_tray_failed"] == 50 and sum(counts.values()) == 250
    checkpoint = str(tmp_path / "runs" / "base_seed1" / "step_000040")
    free, anchored = (ab.run_config(ab.Run(ft.name, 1, ft), args) for ft in (ab.Finetune(0.0), ab.Finetune(1.0)))
    for cfg in (free, anchored):
        assert cfg.policy.pretrained_path == checkpoint and cfg.policy.normalization == "pretrained"
        assert cfg.data.manifest.endswith("anchor_egg_clean.csv") and cfg.data.retention_manifest.endswith("retention.csv")
        assert not cfg.reward_weighting.enabled and cfg.train.steps == 20  # filtering: the clean ones, imitated
        assert cfg.data.data_root == str(tmp_path / "data")
    assert not free.anchor.enabled
    assert anchored.anchor.enabled and anchored.anchor.lambda_anchor == 1.0 and anchored.anchor.reference == checkpoint
    assert (anchored.anchor.warmup_steps, anchored.anchor.ramp_steps) == (1, 2)
    assert anchored.replay.manifest is None
    ft = ab.Finetune(1.0, 32)
    replayed = ab.run_config(ab.Run(ft.name, 1, ft), args)
    assert replayed.run_name == "replay32_lambda1_seed1" and replayed.replay.manifest.endswith("retention.csv")
    assert (replayed.replay.batch_size, replayed.replay.anchor, replayed.replay.imitate) == (32, True, False)
    ft = ab.Finetune(0.0, 4, imitate=True)
    rehearsal = ab.run_config(ab.Run(ft.name, 1, ft), args)
    assert not rehearsal.anchor.enabled and rehearsal.run_name == "rehearsal4_seed1"
    assert (rehearsal.replay.batch_size, rehearsal.replay.anchor, rehearsal.replay.imitate) == (4, False, True)
    assert ab.settings(args) == [ab.Finetune(0.0), ab.Finetune(1.0), *(ab.Finetune(x, 32) for x in (0.1, 1.0, 10.0))]
    shares = ab.parse_args(["--work-dir", str(tmp_path), "--replay-batches", "4", "1", "--share-lambda", "1", "--mixes", "0.5"])
    assert [ft.name for ft in ab.settings(shares)][-6:] == [
        "replay1_lambda1", "rehearsal1", "rehearsal1_lambda1", "replay4_lambda1", "rehearsal4", "rehearsal4_lambda1"]
    assert len(ab.settings(shares)) == 11 and shares.mixes == [0.5]
    # Which states the anchor sees under `apply: sample`: the recipe on every egg transfer, anchor off, on the
    # drawn batch, and on it plus a uniform batch of the same training manifest (into the anchor only).
    sampled = ab.parse_args(["--work-dir", str(tmp_path), "--sampled-lambda", "1"])
    off, drawn, uniform = ab.settings(sampled)[-3:]
    assert [ft.name for ft in (off, drawn, uniform)] == ["sampled_lambda0", "sampled_lambda1", "sampled_lambda1_uniform32"]
    cfgs = [ab.run_config(ab.Run(ft.name, 1, ft), sampled) for ft in (off, drawn, uniform)]
    for cfg in cfgs:
        rw = cfg.reward_weighting
        assert (rw.enabled, rw.signal, rw.apply) == (True, "outcome", "sample")  # the recipe file's settings
        assert cfg.data.manifest.endswith("anchor_egg_mixed.csv") and cfg.anchor.reference == str(ab.base_checkpoint(1, sampled))
        assert cfg.data.reward_stats == str(ab.sampled_stats_path(sampled))
    assert not cfgs[0].anchor.enabled and cfgs[1].anchor.enabled and cfgs[1].replay.manifest is None
    assert cfgs[2].replay.manifest == cfgs[2].data.manifest
    assert (cfgs[2].replay.batch_size, cfgs[2].replay.anchor, cfgs[2].replay.imitate) == (32, True, False)
    p = pooled(*({"base": 30, "lambda0": 20} | {ft.name: 25 for ft in (off, drawn, uniform)} for _ in range(3)))
    assert len(ab.check_bar(p, [ab.Finetune(0.0), off, drawn, uniform])[0]) == 1  # other data: not rows of the bar
    with pytest.raises(SystemExit):
        ab.parse_args(["--sampled-lambda", "0"])
    with pytest.raises(SystemExit):
        ab.parse_args(["--lambdas", "0.1", "1"])  # lambda 0 is the bar's reference
    with pytest.raises(SystemExit):
        ab.parse_args(["--replay-lambdas", "0"])
