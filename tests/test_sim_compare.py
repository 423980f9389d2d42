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
from crab.sim.evaluate import EGG_OUTCOMES, wilson_interval
from crab.training.config import to_dict

REPO = Path(__file__).resolve().parents[1]


def summary(n: int, k_s: int, k_c: int, ret: float = 0.0, ci=(0.0, 0.0)) -> dict:
    """An evaluation summary whose failures all crack at impact over the tray or are never grasped."""
    outcomes = dict.fromkeys(EGG_OUTCOMES, 0) | {
        "success": k_s, "cracked at impact over the tray": k_c, "never grasped": n - k_s - k_c
    }  # fmt: skip
    return {
        "episodes": n,
        "success_rate": k_s / n,
        "crack_rate": k_c / n,
        "mean_return": ret,
        "return_ci95": ci,
        "outcomes": outcomes,
    }


def test_pool_sums_episodes_over_seeds():
    p = compare.pool([summary(10, 3, 1, 0.2), summary(20, 10, 0, 0.5)])
    assert (p["episodes"], p["successes"], p["cracks"]) == (30, 13, 1)
    outcomes = {"success": 13, "cracked at impact over the tray": 1, "never grasped": 16}
    assert p["outcomes"] == dict.fromkeys(EGG_OUTCOMES, 0) | outcomes
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
    return {
        k: compare.pool([summary(50, *v)]) for k, v in zip(compare.BAR_METHODS, (il_m, rw_m, il_c, rw_c), strict=True)
    }


def test_check_bar_passes_and_fails():
    ok = compare.check_bar(pooled(il_m=(20, 20), rw_m=(30, 5), il_c=(30, 0), rw_c=(28, 0)))
    assert [passed for _, passed, _ in ok] == [True, True, True, True]
    bad = compare.check_bar(pooled(il_m=(20, 20), rw_m=(25, 12), il_c=(30, 0), rw_c=(10, 0)))
    assert [passed for _, passed, _ in bad] == [False, False, False, False]
    assert bad[0][2] == "+10 points"


def test_check_chunk_bar_per_regime():
    row = compare.CHUNK_BAR_ROWS[-1]  # chunk_q's row; each per-chunk row is checked alike

    def pooled_chunk(ca, il):  # (successes, cracks) out of 50
        return {k: compare.pool([summary(50, *v)]) for k, v in zip((row, "il_clean"), (ca, il), strict=True)}

    # Scarce: +10 points of success over filtering, and no more cracks.
    ok = compare.check_chunk_bar("scarce", pooled_chunk(ca=(20, 5), il=(15, 5)), row)
    assert [passed for _, passed, _ in ok] == [True, True] and ok[0][2] == "+10 points (40% vs 30%)"
    assert ok[0][0] == f"`{row}`, scarce: success >= filtering + 10 points"
    bad = compare.check_chunk_bar("scarce", pooled_chunk(ca=(19, 6), il=(15, 5)), row)
    assert [passed for _, passed, _ in bad] == [False, False]
    # Today's data: level with filtering = inside its Wilson interval (15/50: [19%, 44%]) or above.
    level = compare.check_chunk_bar("cycle1", pooled_chunk(ca=(10, 0), il=(15, 5)), row)
    assert [passed for _, passed, _ in level] == [True]
    below = compare.check_chunk_bar("cycle1", pooled_chunk(ca=(9, 0), il=(15, 5)), row)
    assert [passed for _, passed, _ in below] == [False]


def args_of(*argv: str):
    return compare.parse_args(["--work-dir", "work", *argv])


def test_regime_and_method_selection():
    # The report goes into the work dir unless --out says otherwise (the results page is crab.sim.results').
    assert args_of().out == Path("work") / "report.md" and args_of("--out", "r.md").out == Path("r.md")
    # The default: the table's rows in its regimes, in every one of them.
    plan = compare.select(args_of())
    assert [r.name for r, _ in plan] == ["cycle1", "scarce_eggonly"]
    assert [{m.name for m in ms} for _, ms in plan] == [{m.name for m in compare.TABLE_ROWS}] * 2
    plan = compare.select(args_of("--regimes", "all", "--methods", "all"))
    assert [r.name for r, _ in plan] == [
        "cycle1", "scarce", "scarce_grasp", "scarce_carry", "scarce_eggonly", "scarce_grasp_eggonly",
        "scarce_carry_eggonly", "scarce_eggonly_nofailed", "scarce_grasp_eggonly_nofailed",
    ]  # fmt: skip
    assert [m.name for m in plan[1][1]] == [
        "il_clean", "il_mixed", "rwfm_mixed", "rwfm_chunk_adv_mixed", "oracle_mixed", "rwfm_anchor_mixed",
        "rwfm_sample_mixed", "rwfm_chunk_adv_sample_mixed", "oracle_sample_mixed", "rwfm_sample_uncapped_mixed",
        "rwfm_sample_uncapped_weightnorm_mixed",
        "rwfm_anchor_sample_uncapped_mixed", "rwfm_chunk_adv_sample_uncapped_mixed",
        "rwfm_chunk_adv_sample_phase_mixed", "oracle_sample_phase_mixed", "rwfm_sample_uncapped_phase_mixed",
        "rwfm_chunk_adv_sample_h20_mixed", "oracle_sample_h20_mixed", "rwfm_chunk_adv_sample_h20_phase_mixed",
        "oracle_sample_h20_phase_mixed", "rwfm_chunk_q_sample_h20_phase_mixed",
        "rwfm_chunk_q_sample_uncapped_h20_phase_mixed", "rwfm_chunk_q_sample_uncapped_h20_phase_alpha2_mixed",
        "rwfm_chunk_q_sample_uncapped_h20_phase_drop_mixed", "rwfm_chunk_q_sample_uncapped_h20_phase_drop_weightnorm_mixed",
        "cond_chunk_q_h20_mixed", "cond_chunk_q_h20_cfg1p5_mixed", "cond_chunk_q_h20_cfg3_mixed", "cond_chunk_q_h20_cfg5_mixed",
        "cond_chunk_q_h20_cfg10_mixed", "cond_chunk_q_h20_asked_negative_mixed",
        "cond_damage_h20_mixed", "cond_damage_h20_cfg3_mixed", "cond_episode_mixed", "cond_episode_cfg3_mixed",
        "cond_episode_asked_negative_mixed", "cond_episode_balanced_mixed", "cond_episode_balanced_cfg3_mixed",
        "cond_episode_share80_mixed",
        "cond_rwfm_chunk_q_sample_uncapped_h20_phase_drop_mixed", "cond_rwfm_chunk_q_sample_uncapped_h20_phase_drop_cfg5_mixed",
    ]  # fmt: skip
    rows = {m.name: m for m in plan[1][1]}

    def settings(name):
        return compare.run_config(rows[name], 0, args_of(), plan[1][0])

    assert settings("rwfm_chunk_q_sample_h20_phase_mixed").reward_weighting.clip_max == 10.0
    assert settings("rwfm_chunk_q_sample_uncapped_h20_phase_alpha2_mixed").reward_weighting.alpha == 2.0
    drop = settings("rwfm_chunk_q_sample_uncapped_h20_phase_drop_mixed").reward_weighting
    assert (drop.unlocated_failures, drop.alpha, drop.signal, drop.normalization_counts) == ("drop", 4.0, "chunk_q", "frame")
    weightnorm = settings("rwfm_chunk_q_sample_uncapped_h20_phase_drop_weightnorm_mixed").reward_weighting
    assert (weightnorm.unlocated_failures, weightnorm.normalization_counts) == ("drop", "weight")
    # The conditioned rows: every frame imitated with its label; the guided and negative rows evaluate the
    # same runs (one run directory), asking other questions.
    conditioned = settings("cond_chunk_q_h20_mixed")
    assert conditioned.conditioning.enabled and not conditioned.reward_weighting.enabled
    assert (conditioned.reward_weighting.signal, conditioned.reward_weighting.credit_horizon) == ("chunk_q", 20)
    for name in ("cond_chunk_q_h20_cfg1p5_mixed", "cond_chunk_q_h20_cfg3_mixed", "cond_chunk_q_h20_asked_negative_mixed"):
        assert to_dict(settings(name)) == to_dict(conditioned)
    assert (rows["cond_chunk_q_h20_cfg1p5_mixed"].guidance, rows["cond_chunk_q_h20_asked_negative_mixed"].ask) == (1.5, "negative")
    both = settings("cond_rwfm_chunk_q_sample_uncapped_h20_phase_drop_mixed")
    guided = "cond_rwfm_chunk_q_sample_uncapped_h20_phase_drop_cfg5_mixed"
    assert to_dict(settings(guided)) == to_dict(both) and rows[guided].guidance == 5.0
    assert both.conditioning.enabled and both.reward_weighting == drop
    for name in ("rwfm_sample_uncapped_phase_mixed", "rwfm_chunk_q_sample_uncapped_h20_phase_mixed"):
        cfg = settings(name)
        phase = cfg.reward_weighting
        assert (phase.normalize, phase.apply, phase.clip_max) == ("phase", "sample", 1000000)
    assert (phase.signal, phase.credit_horizon, phase.std_floor) == ("chunk_q", 20, 0.1)
    assert cfg.data.value_file.endswith("values_scarce_mixed.parquet")
    assert {"rwfm_chunk_adv_mixed", "oracle_mixed", "rwfm_clean", "rwfm_anchor_sample_uncapped_mixed"} <= {m.name for m in plan[0][1]}
    plan = compare.select(args_of("--regimes", "scarce", "--methods", "il_clean", "rwfm_chunk_adv_mixed"))
    assert [(r.name, [m.name for m in ms]) for r, ms in plan] == [("scarce", ["il_clean", "rwfm_chunk_adv_mixed"])]
    # A row of one regime only runs where it is; extra alphas join today's regime.
    plan = compare.select(args_of("--regimes", "all", "--methods", "il_clean", "rwfm_clean", "--extra-alpha", "1"))
    assert [[m.name for m in ms] for _, ms in plan] == [
        ["il_clean", "rwfm_clean", "rwfm_anchor_mixed_alpha1"], *[["il_clean"]] * 8
    ]
    for argv, message in [
        (("--regimes", "sparse"), "unknown regime.*sparse"),
        (("--methods", "il_typo"), "unknown method.*il_typo"),
        (("--regimes", "scarce", "--methods", "rwfm_clean"), "unknown method.*rwfm_clean"),
        (("--regimes", "all", "--methods", "rwfm_clean"), "regime.*scarce.*leave them out"),
    ]:
        with pytest.raises(SystemExit, match=message):
            compare.select(args_of(*argv))


def test_regime_configs_and_counts():
    args = args_of("--steps", "100")
    cycle1, scarce = compare.REGIMES["cycle1"], compare.REGIMES["scarce"]
    work = Path("work")
    # Today's regime keeps its paths (finished runs of earlier invocations are reused).
    cfg = compare.run_config(compare.ROW["rwfm_anchor_mixed"], 2, args, cycle1)
    assert (cfg.run_name, cfg.output_dir, cfg.seed) == ("rwfm_anchor_mixed_seed2", str(work / "runs"), 1002)
    assert cfg.data.manifest == "crab/training/docs/dataset_manifest_cycle1_with_cracked.csv"
    assert cfg.data.reward_stats == str(work / "data" / "reward_weighting_stats_cycle1_with_cracked.json")
    assert cfg.anchor.enabled and cfg.reward_weighting.signal == "outcome" and cfg.data.value_file is None
    # The scarce regime: its own data root, runs folder and manifests; one statistics file per signal.
    il = compare.run_config(compare.ROW["il_clean"], 0, args, scarce)
    assert il.data.manifest == "crab/training/docs/dataset_manifest_scarce_clean.csv"
    assert (il.data.data_root, il.output_dir) == (str(work / "data_scarce"), str(work / "runs_scarce"))
    assert not il.reward_weighting.enabled and not il.anchor.enabled
    ca = compare.run_config(compare.ROW["rwfm_chunk_adv_mixed"], 0, args, scarce)
    assert ca.data.manifest == "crab/training/docs/dataset_manifest_scarce_mixed.csv"
    assert ca.reward_weighting.signal == "chunk_advantage" and ca.reward_weighting.std_floor == 0.1
    assert (ca.reward_weighting.alpha, ca.reward_weighting.clip_min, ca.anchor.enabled) == (4.0, 0.0, False)
    assert ca.data.value_file == str(work / "data_scarce" / "values_scarce_mixed.parquet")
    assert ca.data.reward_stats == str(
        work / "data_scarce" / "reward_weighting_stats_scarce_mixed_chunk_advantage.json"
    )
    oracle = compare.run_config(compare.ROW["oracle_mixed"], 0, args, scarce)
    assert oracle.reward_weighting.signal == "oracle" and oracle.data.value_file is None
    assert oracle.data.reward_stats.endswith("reward_weighting_stats_scarce_mixed_oracle.json")
    assert oracle.reward_weighting.std_floor == 1.0 and not oracle.anchor.enabled
    assert (oracle.reward_weighting.apply, ca.reward_weighting.apply) == ("loss", "loss")
    drawn = compare.run_config(compare.ROW["rwfm_chunk_adv_sample_mixed"], 0, args, scarce)
    assert drawn.reward_weighting.apply == "sample" and drawn.data.reward_stats == ca.data.reward_stats
    uncapped = compare.run_config(compare.ROW["rwfm_sample_uncapped_mixed"], 0, args, scarce)
    # RWFM `outcome` as sampling is the README's recipe file, drawn without a cap and without the anchor.
    assert (uncapped.reward_weighting.clip_max, uncapped.reward_weighting.apply) == (1e6, "sample")
    assert not uncapped.anchor.enabled and compare.ROW["rwfm_sample_uncapped_mixed"].recipes == (compare.RECIPE_OUTCOME,)
    assert uncapped.data.reward_stats.endswith("reward_weighting_stats_scarce_mixed.json")
    # A longer credit horizon: its own statistics file; the value model is the same.
    longer = compare.run_config(compare.ROW["rwfm_chunk_adv_sample_h20_mixed"], 0, args, scarce)
    assert (longer.run_name, longer.reward_weighting.credit_horizon) == ("rwfm_chunk_adv_sample_h20_mixed_seed0", 20)
    assert longer.data.reward_stats.endswith("reward_weighting_stats_scarce_mixed_chunk_advantage_h20.json")
    assert longer.data.value_file == ca.data.value_file and drawn.reward_weighting.credit_horizon is None
    # Each row's full settings in one place, printed by the report beside its label.
    # The recipe row is the README's recipe file on the cycle config, with the tiny policy's two chunks as
    # its horizon (the file's 100 are smolvla_base's): what is recommended is what is measured.
    recipe = compare.CHUNK_Q_RECIPE
    assert recipe.overrides() == ["reward_weighting.signal=chunk_q", "reward_weighting.credit_horizon=20"]
    assert recipe.settings() == "`recipe_chunk_q.yaml`, `signal: chunk_q`, `credit_horizon: 20`"
    from crab.training.config import load_config

    from_file = load_config([compare.CONFIG_DIR / compare.CF, compare.CONFIG_DIR / "recipe_chunk_q.yaml"],
                            ["reward_weighting.credit_horizon=20"]).reward_weighting  # fmt: skip
    assert compare.run_config(recipe, 0, args, compare.REGIMES["scarce_eggonly"]).reward_weighting == from_file
    assert (from_file.apply, from_file.clip_max, from_file.unlocated_failures) == ("sample", 1e6, "drop")
    assert compare.ROW["il_clean"].settings() == "the config's"
    asked = compare.ROW["cond_chunk_q_h20_asked_negative_mixed"].settings()
    assert asked == ('`recipe_conditioned.yaml`, `signal: chunk_q`, `credit_horizon: 20`, `conditioning.label_rule: '
                     'advantage`, `conditioning.positive_share: null`, asked "negative"')
    # The recipe file labels by episode with a balanced draw; the rows measured with RECAP's rule keep it.
    recap = compare.run_config(compare.ROW["cond_chunk_q_h20_mixed"], 0, args, scarce).conditioning
    assert (recap.label_rule, recap.positive_share) == ("advantage", None)
    recipe_file = load_config([compare.CONFIG_DIR / compare.CF, compare.CONFIG_DIR / "recipe_conditioned.yaml"]).conditioning
    assert (recipe_file.label_rule, recipe_file.positive_share) == ("episode", 0.5)
    damage = compare.run_config(compare.ROW["cond_damage_h20_mixed"], 0, args, scarce)
    assert (damage.conditioning.enabled, damage.conditioning.label_rule) == (True, "damage")
    # Rules that read no value model train without one, on the outcome statistics compare computes anyway.
    assert damage.data.value_file is None and damage.reward_weighting.credit_horizon == 20
    assert damage.data.reward_stats == str(compare.stats_path(work / "data_scarce", "scarce_mixed"))
    episode = compare.run_config(compare.ROW["cond_episode_asked_negative_mixed"], 0, args, scarce)
    assert (episode.conditioning.label_rule, compare.ROW["cond_episode_asked_negative_mixed"].ask) == ("episode", "negative")
    balanced = compare.run_config(compare.ROW["cond_episode_balanced_cfg3_mixed"], 0, args, scarce).conditioning
    assert (balanced.label_rule, balanced.positive_share) == ("episode", 0.5)
    # Dataset counts: the training episodes plus the held-out one; today's regime skips the sloppy data.
    counts = compare.regime_counts(scarce, args_of("--scarce-clean", "5"), held_out=1)
    assert counts == {
        "egg_carton_to_tray": 6, "egg_carton_to_tray_sloppy": 41, "egg_carton_to_tray_failed": 11,
        "egg_carton_to_tray_cracked": 0, "close_the_carton": 0, "egg_carton_to_tray_squeezed": 0,
        "egg_carton_to_tray_tightened": 0,
    }  # fmt: skip
    grasp = compare.regime_counts(compare.REGIMES["scarce_grasp"], args_of("--scarce-clean", "5"), held_out=1)
    assert grasp == {**counts, "egg_carton_to_tray_sloppy": 0, "egg_carton_to_tray_squeezed": 41}
    carry = compare.regime_counts(compare.REGIMES["scarce_carry_eggonly"], args_of("--scarce-clean", "5"), held_out=1)
    assert carry == {**counts, "egg_carton_to_tray_sloppy": 0, "egg_carton_to_tray_tightened": 41}
    assert compare.regime_counts(cycle1, args, held_out=1) == {
        "egg_carton_to_tray_sloppy": 0, "egg_carton_to_tray_squeezed": 0, "egg_carton_to_tray_tightened": 0}
    # The egg-only regime: the scarce regime's data (the same root and counts), its own runs and manifests.
    eggonly = compare.REGIMES["scarce_eggonly"]
    assert compare.regime_counts(eggonly, args_of("--scarce-clean", "5"), held_out=1) == counts
    il = compare.run_config(compare.ROW["il_clean"], 0, args, eggonly)
    assert il.data.manifest == "crab/training/docs/dataset_manifest_scarce_eggonly.csv"
    assert (il.data.data_root, il.output_dir) == (str(work / "data_scarce"), str(work / "runs_scarce_eggonly"))
    assert "carton" not in compare.data_line(eggonly, args) and "carton" in compare.data_line(scarce, args)
    # Without the failed attempts: the same data, its own runs; the data line says they are left out.
    nofailed = compare.REGIMES["scarce_eggonly_nofailed"]
    assert compare.regime_counts(nofailed, args_of("--scarce-clean", "5"), held_out=1) == counts
    assert compare.run_config(compare.ROW["il_clean"], 0, args, nofailed).output_dir == str(work / "runs_scarce_eggonly_nofailed")
    assert "failed attempts are generated but left out" in compare.data_line(nofailed, args)
    assert "left out" not in compare.data_line(eggonly, args)


def test_scarce_manifests_name_generated_datasets():
    from crab.sim.generate import DATASETS
    from crab.training.manifest import load_manifest

    spec = {d.name: d for d in DATASETS}
    for name in ("scarce", "scarce_eggonly", "scarce_grasp", "scarce_grasp_eggonly", "scarce_eggonly_nofailed",
                 "scarce_grasp_eggonly_nofailed"):
        regime = compare.REGIMES[name]
        clean = load_manifest(compare.manifest_path(regime.clean), "data")
        mixed = load_manifest(compare.manifest_path(regime.mixed), "data")
        carton = ["open_the_carton"] if regime.carton else []
        assert [r.name for r in clean] == ["egg_carton_to_tray", *carton]
        failed = ["egg_carton_to_tray_failed"] if regime.failed else []
        assert [r.name for r in mixed] == ["egg_carton_to_tray", regime.bad, *failed, *carton]
        for row in mixed:  # names, tasks and qualities as generate writes them
            assert (row.task, row.quality) == (spec[row.name].task, spec[row.name].quality)
            assert row.root == Path("data") / row.name
        assert regime.bad in compare.DAMAGE and compare.CLEAN in {r.name for r in clean}


def test_an_evaluation_saved_without_outcomes_is_redone(tmp_path, monkeypatch, capsys):
    checkpoint = tmp_path / "step_000002"
    (checkpoint / "pretrained_model").mkdir(parents=True)
    calls = []

    def fake_evaluate(checkpoint, episodes, seed, n_action_steps, image_size, tasks, label, guidance):
        calls.append(tasks)
        return {"tasks": {PUT_EGG: {"task": PUT_EGG, **summary(4, 1, 2)}}}

    monkeypatch.setattr(policy_eval, "evaluate_checkpoint", fake_evaluate)
    monkeypatch.setattr(policy_eval, "format_results", lambda result: "")
    saved = tmp_path / "eval_step_000002_4ep_seed0_n5.json"
    old = summary(4, 1, 3)
    del old["outcomes"]
    saved.write_text(json.dumps({"tasks": {PUT_EGG: old}}))
    result = compare.evaluate_or_reuse(checkpoint, 4, 0, 5, 32, (PUT_EGG,))
    assert calls == [(PUT_EGG,)] and result["tasks"][PUT_EGG]["outcomes"]["cracked at impact over the tray"] == 2
    assert "(1, 2) differ from the saved (1, 3)" in capsys.readouterr().out
    # Saved with its outcomes: reused as it is.
    reused = compare.evaluate_or_reuse(checkpoint, 4, 0, 5, 32, (PUT_EGG,))
    assert reused == json.loads(json.dumps(result)) and len(calls) == 1
    # Saved with an older breakdown (impacts not yet split into the release's and the carry's): redone.
    old = summary(4, 1, 2)
    old["outcomes"] = {k.removesuffix(" over the tray"): v for k, v in old["outcomes"].items() if k != "cracked at impact elsewhere"}
    saved.write_text(json.dumps({"tasks": {PUT_EGG: old}}))
    compare.evaluate_or_reuse(checkpoint, 4, 0, 5, 32, (PUT_EGG,))
    assert len(calls) == 2
    # A conditioned checkpoint's evaluation at guidance 5 saved under the unguided name: redone when the
    # row asks without guidance, reused when it asks the same.
    fresh = {"tasks": {PUT_EGG: {"task": PUT_EGG, **summary(4, 1, 2)}}}
    saved.write_text(json.dumps({**fresh, "label": "positive", "guidance": 5.0}))
    compare.evaluate_or_reuse(checkpoint, 4, 0, 5, 32, (PUT_EGG,), "positive", 1.0)
    assert len(calls) == 3
    saved.write_text(json.dumps({**fresh, "label": "positive", "guidance": 1.0}))
    compare.evaluate_or_reuse(checkpoint, 4, 0, 5, 32, (PUT_EGG,), "positive", 1.0)
    assert len(calls) == 3


def test_missing_checkpoint_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match="no policy checkpoint at .*nope"):
        policy_eval.pretrained_dir(tmp_path / "nope")
    with pytest.raises(SystemExit) as exit_info:
        policy_eval.main(["--checkpoint", str(tmp_path / "nope"), "--episodes", "1"])
    assert exit_info.value.code == 2
    assert str(tmp_path / "nope") in capsys.readouterr().err


@pytest.mark.slow
def test_miniature_benchmark_end_to_end(tmp_path, monkeypatch):
    """Generate both regimes' data, fit the value models, compute statistics, train a few steps per method,
    evaluate, report; then reuse."""
    monkeypatch.chdir(REPO)  # the cycle configs and manifests are repository paths
    monkeypatch.setenv("MUJOCO_GL", "egl")
    out = tmp_path / "report.md"
    argv = ["--out", str(out), "--work-dir", str(tmp_path / "work"), "--seeds", "1", "--episodes", "1",
            "--steps", "2", "--batch-size", "4", "--episodes-per-dataset", "2", "--scarce-clean", "1",
            "--scarce-damaging", "2", "--scarce-failed", "1", "--regimes", "cycle1", "scarce",
            "--methods", "il_clean", "rwfm_clean", "rwfm_chunk_adv_mixed", "oracle_sample_h20_mixed", "--jobs", "2"]  # fmt: skip
    result = compare.main(argv)
    cycle1, scarce = result["regimes"]["cycle1"], result["regimes"]["scarce"]
    assert set(cycle1["pooled"][PUT_EGG]) == {"il_clean", "rwfm_clean", "rwfm_chunk_adv_mixed"}
    assert set(scarce["pooled"]) == {PUT_EGG}
    assert set(scarce["pooled"][PUT_EGG]) == {"il_clean", "rwfm_chunk_adv_mixed", "oracle_sample_h20_mixed"}
    # RWFM without anchor on the clean manifest is IL's run, reported and not retrained.
    assert cycle1["per_seed"]["rwfm_clean"] == cycle1["per_seed"]["il_clean"]
    assert not (tmp_path / "work" / "runs" / "rwfm_clean_seed0").exists()
    assert (tmp_path / "work" / "runs_scarce" / "rwfm_chunk_adv_mixed_seed0" / "step_000002").is_dir()
    summary = json.loads((tmp_path / "work" / "data_scarce" / "generation_summary.json").read_text())["datasets"]
    assert {k: v["episodes"] for k, v in summary.items()} == {
        "egg_carton_to_tray": 2, "egg_carton_to_tray_failed": 2, "open_the_carton": 2, "egg_carton_to_tray_sloppy": 3
    }  # fmt: skip
    text = out.read_text()
    assert "`rwfm_clean` = `il_clean`" in text and "## Regime `scarce`" in text
    assert "| `rwfm_chunk_adv_mixed` |" in text and "Not checked" in text and compare.NOTES_MARKER in text
    assert "Value model" in text and "Where the weight goes" in text
    assert "### Where the egg episodes end (1 episodes per row, pooled)" in text
    assert sum(scarce["pooled"][PUT_EGG]["il_clean"]["outcomes"].values()) == 1
    assert out.with_suffix(".png").stat().st_size > 0 and (tmp_path / "report_scarce.png").stat().st_size > 0
    # Under chunk_advantage the sloppy transfers keep weight (their careful approach and carry) but the
    # chunks into the crack lose theirs; the value model's held-out error is reported.
    shares = scarce["shares"]["chunk_advantage"]
    assert set(shares["datasets"]) == {"egg_carton_to_tray", "egg_carton_to_tray_sloppy", "egg_carton_to_tray_failed",
                                       "open_the_carton"}  # fmt: skip
    assert 0 <= shares["into_damage"] < shares["into_damage_frames"]
    # The oracle with a credit horizon of two chunks: its own statistics, and no weight into the damage.
    assert scarce["shares"]["oracle_h20"]["into_damage"] == 0.0
    assert json.loads((tmp_path / "work" / "data_scarce" / "reward_weighting_stats_scarce_mixed_oracle_h20.json")
                      .read_text())["credit_horizon"] == 20  # fmt: skip
    assert scarce["value_model"]["heldout"]["rmse"] > 0
    assert len(scarce["value_model"]["epochs_kept"]) == scarce["value_model"]["settings"]["folds"]
    weights = json.loads((tmp_path / "work" / "results.json").read_text())["regimes"]["cycle1"]["weights"]["1"]
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
    assert all(again["regimes"][r]["train_s"] == result["regimes"][r]["train_s"] for r in ("cycle1", "scarce"))
    assert out.read_text().endswith(compare.NOTES_MARKER + "\nmy notes\n")
