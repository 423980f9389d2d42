"""Simulated egg-transfer benchmark: RWFM (+ anchor) against imitation learning on mixed-quality data.

    python -m crab.sim.compare [--out REPORT.md] [--seeds 3] [--episodes 50] [--steps 8000] \
        [--batch-size 16] [--episodes-per-dataset 50] [--work-dir outputs/sim_benchmark] [--jobs 2] \
        [--extra-alpha 0.25] [--regimes cycle1 scarce scarce_grasp scarce_carry] [--methods ...] [--scarce-clean 2] \
        [--scarce-damaging 40] [--scarce-failed 10] [--value-expectile 0.5]

Four regimes (`REGIMES`), each with its own data root under the work dir, manifests and rows:

- `cycle1`: today's data (`--episodes-per-dataset` per dataset): clean transfers, rough transfers that
  cracked, carton openings (`dataset_manifest_cycle1_*.csv`); evaluated on both tasks.
- `scarce`: few clean transfers (`--scarce-clean`) against many sloppy ones that cracked the egg at the
  release (`--scarce-damaging`) and failed attempts (`--scarce-failed`), plus the carton openings
  (`dataset_manifest_scarce_*.csv`); evaluated on the egg task. Counts are training episodes: each
  dataset holds one more, its held-out validation episode.
- `scarce_grasp`: the same, with squeezing transfers that cracked the egg at the grasp (their carry and
  release careful) as the damaging ones (`dataset_manifest_scarce_grasp_mixed.csv`).
- `scarce_carry`: the same, with tightening transfers that cracked the egg in the middle of the carry (the
  fingers tight for a few steps; grasp and release careful): a damage the recipe's settings were not
  chosen on (`dataset_manifest_scarce_carry_mixed.csv`).

Per regime: one dataset generation (`crab.sim.generate`), the out-of-episode value model of its mixed
manifest (`crab.training.value_fit`, for the `chunk_advantage` rows), reward statistics of each manifest
and signal, then per seed the same tiny SmolVLA trained with each method and evaluated closed loop
(`crab.sim.policy_eval`) for `--episodes` episodes per task (`--jobs` trainings at a time, each in its own
process). Writes the markdown report (the sections of the regimes run: give a subset its own `--out`), a
PNG per regime next to it and `results.json` under the work dir. Finished trainings with the same training
settings (`config.training_settings`: keys such as `data.cache_items` aside), their evaluations
and a value model fitted with the same data and settings are reused, so an interrupted benchmark continues
where it stopped; hand-written notes below `NOTES_MARKER` in the report are kept.
"""

from __future__ import annotations

import argparse
import dataclasses
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

from crab.sim.egg_env import CRACK_FORCE, CRACK_SPEED, OPEN_CARTON, PUT_EGG
from crab.sim.evaluate import EGG_OUTCOMES, mean_interval, outcome_categories, wilson_interval
from crab.training.rewards import VALUE_SIGNALS

CONFIG_DIR = Path("crab/training/configs")
MANIFEST_DIR = Path("crab/training/docs")
TASKS = (PUT_EGG, OPEN_CARTON)  # the cycle-1 manifests' tasks (the simulator has more)
NOTES_MARKER = "<!-- notes: everything below this line is hand-written and kept when the report is regenerated -->"
IL_CONFIG = "train_cycle1_baseline_il.yaml"
CRACKED_FACTOR_CONFIG = "train_cycle1_rwfm_anchor_cracked_factor.yaml"
# README section 2b: with the value signals, a floor below their scale (docs/reward_weighting.md).
VALUE_SIGNAL_STD_FLOOR = 0.1


@dataclass(frozen=True)
class Method:
    """One benchmark row: a cycle config under crab/training/configs, which of its regime's manifests it
    trains on, and every setting it changes of that config (None / False: the config's own)."""

    name: str
    config: str
    data: str  # "clean" or "mixed"
    label: str  # what the row is for; its settings are `settings()`
    recipes: tuple[str, ...] = ()  # recipe files under crab/training/configs layered on the config, in order
    weighting: bool | None = None  # reward_weighting.enabled
    signal: str | None = None  # reward_weighting.signal (the configs': `outcome`); names its statistics file
    horizon: int | None = None  # reward_weighting.credit_horizon (per-chunk signals; default the chunk)
    alpha: float | None = None  # reward_weighting.alpha
    apply: str | None = None  # reward_weighting.apply (the configs': `loss`)
    uncapped: bool = False  # reward_weighting.clip_max high enough never to bind
    normalize: str | None = None  # reward_weighting.normalize
    drop: bool = False  # reward_weighting.unlocated_failures: drop
    counts: str | None = None  # reward_weighting.normalization_counts (default `frame`)
    anchor: bool | None = None  # anchor.enabled
    conditioned: bool = False  # conditioning.enabled
    rule: str | None = None  # conditioning.label_rule
    # conditioning.positive_share; "null": the draw as the data has it, whatever the recipe file sets
    positive_share: float | str | None = None
    # Rows that evaluate another row's trained runs (same training, other question at evaluation): that
    # row's name, and what a conditioned policy is asked (`policy_eval.SmolVLAActor`: label, guidance). The
    # guidance is always explicit (1: none), never the run's `conditioning.guidance`: a row's name says what
    # it asks, whatever the config's default.
    evaluates: str | None = None
    ask: str | None = "positive"
    guidance: float = 1.0

    def overrides(self) -> list[str]:
        """The `key=value` overrides of the row's config."""
        rw = "reward_weighting."
        keys = [
            (rw + "enabled", self.weighting), (rw + "alpha", self.alpha), (rw + "signal", self.signal),
            (rw + "credit_horizon", self.horizon), (rw + "apply", self.apply),
            (rw + "clip_max", 1000000 if self.uncapped else None), (rw + "normalize", self.normalize),
            (rw + "unlocated_failures", "drop" if self.drop else None), (rw + "normalization_counts", self.counts),
            ("anchor.enabled", self.anchor), ("conditioning.enabled", True if self.conditioned else None),
            ("conditioning.label_rule", self.rule), ("conditioning.positive_share", self.positive_share),
        ]  # fmt: skip
        return [f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in keys if v is not None]

    def settings(self) -> str:
        """The overrides as the report prints them ("the config's" when there are none)."""
        # reward_weighting's keys by their own names (the rows are mostly about them); others in full.
        shown = [o if o.startswith("reward_weighting.enabled") else o.removeprefix("reward_weighting.") for o in self.overrides()]
        changed = [f"`{o.replace('=', ': ')}`" for o in shown]
        recipes = [f"`{r}`" for r in self.recipes]
        asked = [] if self.evaluates is None else [f"asked \"{self.ask}\"" + (f", guidance beta {self.guidance:g}" if self.guidance != 1.0 else "")]
        return ", ".join(recipes + changed + asked) or "the config's"


CF = CRACKED_FACTOR_CONFIG
# The RECAP rule on the conditioned recipe file (whose own rule is `episode` with a balanced draw since
# 2026-12-07): the rows measured before keep what they measured.
RECAP = {"rule": "advantage", "positive_share": "null"}
RECIPE_CHUNK_Q, RECIPE_CONDITIONED = "recipe_chunk_q.yaml", "recipe_conditioned.yaml"
RECIPE_OUTCOME = "recipe_outcome_sampling.yaml"
# The long credit horizon: two action chunks of the tiny policy (chunk 10), reaching back over a sloppy
# release's whole descent.
H = 20
# Every row, its full settings on one line. Why the settings are what they are (measured in
# docs/sim_benchmark_findings.md):
# - `apply: sample` (weights choose each batch's frames): on mostly-bad data the advantage is centred on a low
#   mean, so clip_max 10 binds on the clean transfers and not on the failed attempts (G = 0), which keep 8% of
#   the egg weight as loss weights; drawn without the cap they keep 2.4%.
# - horizon 20 (`credit_horizon`): a sloppy transfer slows its descent to a stop 2-6 cm too high before it
#   lets go; the chunks that start a little more than one chunk before the crack end before it, so at the
#   chunk's horizon they keep their weight. The longer horizon alone does not help; with per-phase draws it does.
# - `normalize: phase` (per task and tenth of the episode): the moment only the clean transfers do well (the
#   careful grasp or release) keeps its imitation-learning share of the draw. `chunk_q` is drawn per phase
#   only (config validation); capped, its chunks above the mean all weigh about the cap, and the sloppy
#   releases kept 6% of the last tenths' draw (15% cracks at the release against 4%).
# - alpha 2 instead of 4: no difference in closed loop.
# - `unlocated_failures: drop`: failed attempts have no damage step and the value model does not see a miss
#   coming; kept, `chunk_q` drew them at their share of the frames and fell from 38% to 22% (scarce regime).
# - `normalization_counts: weight` (issue 33's alternative): each episode counts in the action/state
#   statistics by its share of the draw, not every kept frame once (the default).
# - Conditioning (crab/training/conditioning.py): every frame imitated, its prompt labelled by `chunk_q` at
#   horizon 20, 20% unlabelled; evaluated asking "positive" without guidance (the config's default), with
#   guidance (3 and 5; 10: is more guidance better, as from 1 to 5?), and asked "negative" (a check that the label is
#   used: it should crack more). With the recipe's draw as well: without guidance and at 5.
# - `label_rule: damage` (every chunk positive but those into located damage and the failures nothing
#   locates): in the first half of an episode, where every transfer is careful, the mean rule labelled 2 of 3
#   sloppy chunks positive and 1 of 5 clean ones (the value model's noise); here the label says only what the
#   data shows, the damage. `label_rule: episode`: a damaged episode is negative throughout, since a sloppy
#   transfer's style (its fast, high release) is in its chunks before the one that cracks.
ROWS = (
    Method("il_clean", IL_CONFIG, "clean", "IL, clean only (= filtering)"),
    Method("il_mixed", IL_CONFIG, "mixed", "IL, mixed (naive mixing)"),
    Method("rwfm_anchor_mixed", CF, "mixed", "RWFM + anchor (cracked-factor config)"),
    Method("rwfm_anchor_clean", "train_cycle1_rwfm_anchor.yaml", "clean", "RWFM + anchor, clean"),
    Method("rwfm_clean", "train_cycle1_rwfm.yaml", "clean", "RWFM, clean"),
    Method("rwfm_mixed", CF, "mixed", "RWFM `outcome` (the anchor's ablation)", anchor=False),
    Method("rwfm_chunk_adv_mixed", CF, "mixed", "RWFM `chunk_advantage`", signal="chunk_advantage", anchor=False),
    Method("oracle_mixed", CF, "mixed", "oracle: the chunks into the damage step weigh 0, all others 1",
           signal="oracle", anchor=False),
    Method("rwfm_sample_mixed", CF, "mixed", "RWFM `outcome` as sampling", apply="sample", anchor=False),
    Method("rwfm_chunk_adv_sample_mixed", CF, "mixed", "`chunk_advantage` as sampling", signal="chunk_advantage",
           apply="sample", anchor=False),
    Method("oracle_sample_mixed", CF, "mixed", "oracle as sampling", signal="oracle", apply="sample", anchor=False),
    Method("rwfm_sample_uncapped_mixed", CF, "mixed", "the `outcome` sampling recipe",
           recipes=(RECIPE_OUTCOME,)),
    Method("rwfm_sample_uncapped_weightnorm_mixed", CF, "mixed",
           "the `outcome` sampling recipe, statistics counted by the draw", recipes=(RECIPE_OUTCOME,), counts="weight"),
    Method("rwfm_anchor_sample_uncapped_mixed", CF, "mixed", "RWFM `outcome` as sampling, uncapped, + anchor",
           apply="sample", uncapped=True),
    Method("rwfm_chunk_adv_sample_uncapped_mixed", CF, "mixed", "`chunk_advantage` as sampling, uncapped",
           signal="chunk_advantage", apply="sample", uncapped=True, anchor=False),
    Method("rwfm_chunk_adv_sample_phase_mixed", CF, "mixed", "`chunk_advantage` drawn per phase",
           signal="chunk_advantage", apply="sample", normalize="phase", anchor=False),
    Method("oracle_sample_phase_mixed", CF, "mixed", "oracle drawn per phase", signal="oracle", apply="sample",
           normalize="phase", anchor=False),
    Method("rwfm_sample_uncapped_phase_mixed", CF, "mixed", "RWFM `outcome` drawn per phase, uncapped",
           apply="sample", uncapped=True, normalize="phase", anchor=False),
    Method("rwfm_chunk_adv_sample_h20_mixed", CF, "mixed", "`chunk_advantage` as sampling, horizon 20",
           signal="chunk_advantage", horizon=H, apply="sample", anchor=False),
    Method("oracle_sample_h20_mixed", CF, "mixed", "oracle as sampling, horizon 20", signal="oracle", horizon=H,
           apply="sample", anchor=False),
    Method("rwfm_chunk_adv_sample_h20_phase_mixed", CF, "mixed", "`chunk_advantage` at `chunk_q`'s settings",
           signal="chunk_advantage", horizon=H, apply="sample", normalize="phase", anchor=False),
    Method("oracle_sample_h20_phase_mixed", CF, "mixed", "oracle at `chunk_q`'s settings", signal="oracle",
           horizon=H, apply="sample", normalize="phase", anchor=False),
    Method("rwfm_chunk_q_sample_h20_phase_mixed", CF, "mixed", "`chunk_q` drawn per phase, capped (ablation)",
           signal="chunk_q", horizon=H, apply="sample", normalize="phase", anchor=False),
    Method("rwfm_chunk_q_sample_uncapped_h20_phase_mixed", CF, "mixed", "`chunk_q` drawn per phase",
           signal="chunk_q", horizon=H, apply="sample", uncapped=True, normalize="phase", anchor=False),
    Method("rwfm_chunk_q_sample_uncapped_h20_phase_alpha2_mixed", CF, "mixed", "`chunk_q` drawn per phase, alpha 2",
           signal="chunk_q", horizon=H, alpha=2.0, apply="sample", uncapped=True, normalize="phase", anchor=False),
    # The recipes, from their files (the tiny policy's two chunks as the credit horizon: the files' 100 are
    # smolvla_base's), so what the README recommends is what is measured.
    Method("rwfm_chunk_q_sample_uncapped_h20_phase_drop_mixed", CF, "mixed", "the `chunk_q` recipe",
           recipes=(RECIPE_CHUNK_Q,), signal="chunk_q", horizon=H),
    Method("rwfm_chunk_q_sample_uncapped_h20_phase_drop_weightnorm_mixed", CF, "mixed",
           "the `chunk_q` recipe, statistics counted by the draw", recipes=(RECIPE_CHUNK_Q,), signal="chunk_q",
           horizon=H, counts="weight"),
    Method("cond_chunk_q_h20_mixed", CF, "mixed", "advantage-conditioned, asked \"positive\"",
           recipes=(RECIPE_CONDITIONED,), signal="chunk_q", horizon=H, **RECAP),
    *(
        Method(f"cond_chunk_q_h20_cfg{beta:g}_mixed".replace(".", "p"), CF, "mixed",
               f"advantage-conditioned, guidance beta {beta:g}", recipes=(RECIPE_CONDITIONED,), signal="chunk_q",
               horizon=H, **RECAP, evaluates="cond_chunk_q_h20_mixed", guidance=beta)
        for beta in (1.5, 3.0, 5.0, 10.0)
    ),
    Method("cond_chunk_q_h20_asked_negative_mixed", CF, "mixed", "advantage-conditioned, asked \"negative\" (the "
           "label's check)", recipes=(RECIPE_CONDITIONED,), signal="chunk_q", horizon=H, **RECAP,
           evaluates="cond_chunk_q_h20_mixed", ask="negative"),
    Method("cond_damage_h20_mixed", CF, "mixed", "conditioned on damage alone, asked \"positive\"",
           recipes=(RECIPE_CONDITIONED,), horizon=H, rule="damage", positive_share="null"),
    Method("cond_damage_h20_cfg3_mixed", CF, "mixed", "conditioned on damage alone, guidance beta 3",
           recipes=(RECIPE_CONDITIONED,), horizon=H, rule="damage", positive_share="null",
           evaluates="cond_damage_h20_mixed", guidance=3.0),
    # Labels by episode: a damaged episode is negative throughout (the sloppy style, not only its crack).
    Method("cond_episode_mixed", CF, "mixed", "conditioned on damaged episodes, asked \"positive\"",
           recipes=(RECIPE_CONDITIONED,), rule="episode", positive_share="null"),
    Method("cond_episode_cfg3_mixed", CF, "mixed", "conditioned on damaged episodes, guidance beta 3",
           recipes=(RECIPE_CONDITIONED,), rule="episode", positive_share="null",
           evaluates="cond_episode_mixed", guidance=3.0),
    Method("cond_episode_asked_negative_mixed", CF, "mixed", "conditioned on damaged episodes, asked \"negative\" "
           "(the label's check)", recipes=(RECIPE_CONDITIONED,), rule="episode",
           positive_share="null", evaluates="cond_episode_mixed", ask="negative"),
    # ... with the positives drawn as half of the batch: by episode, 5 clean transfers are a tenth of the
    # frames, so the "positive" policy saw them a tenth as often as filtering does.
    Method("cond_episode_balanced_mixed", CF, "mixed", "conditioned on damaged episodes, positives half the draw",
           recipes=(RECIPE_CONDITIONED,), rule="episode", positive_share=0.5),
    Method("cond_episode_balanced_cfg3_mixed", CF, "mixed", "conditioned on damaged episodes, positives half the "
           "draw, guidance beta 3", recipes=(RECIPE_CONDITIONED,), rule="episode",
           positive_share=0.5, evaluates="cond_episode_balanced_mixed", guidance=3.0),
    # ... with the positives drawn as 80% of the batch: near filtering's draw, the damaged episodes kept as a
    # fifth of it (asked "negative"), which may teach the shared parts (the grasp) without the sloppy release.
    Method("cond_episode_share80_mixed", CF, "mixed", "conditioned on damaged episodes, positives 80% of the draw",
           recipes=(RECIPE_CONDITIONED,), rule="episode", positive_share=0.8),
    Method("cond_rwfm_chunk_q_sample_uncapped_h20_phase_drop_mixed", CF, "mixed",
           "the `chunk_q` recipe, advantage-conditioned as well", recipes=(RECIPE_CHUNK_Q,), signal="chunk_q",
           horizon=H, conditioned=True),
    Method("cond_rwfm_chunk_q_sample_uncapped_h20_phase_drop_cfg5_mixed", CF, "mixed",
           "the `chunk_q` recipe, advantage-conditioned as well, guidance beta 5", recipes=(RECIPE_CHUNK_Q,),
           signal="chunk_q", horizon=H, conditioned=True,
           evaluates="cond_rwfm_chunk_q_sample_uncapped_h20_phase_drop_mixed", guidance=5.0),
)  # fmt: skip
ROW = {m.name: m for m in ROWS}


def named_rows(*names: str) -> tuple[Method, ...]:
    return tuple(ROW[n] for n in names)


CHUNK_Q_RECIPE = ROW["rwfm_chunk_q_sample_uncapped_h20_phase_drop_mixed"]
CONDITIONED_METHODS = tuple(m for m in ROWS if m.conditioned or RECIPE_CONDITIONED in m.recipes)
# Today's regime: the key comparison (IL vs RWFM + anchor on the mixed data) first. Today's data has no
# failure nothing locates, so the recipe draws as the row without `drop` there.
METHODS = named_rows(
    "il_clean", "il_mixed", "rwfm_anchor_mixed", "rwfm_anchor_clean", "rwfm_clean", "rwfm_mixed",
    "rwfm_chunk_adv_mixed", "oracle_mixed", "rwfm_sample_uncapped_mixed", "rwfm_anchor_sample_uncapped_mixed",
    "rwfm_chunk_adv_sample_h20_phase_mixed", "oracle_sample_h20_phase_mixed",
    "rwfm_chunk_q_sample_uncapped_h20_phase_mixed", CHUNK_Q_RECIPE.name,
    "rwfm_chunk_q_sample_uncapped_h20_phase_drop_weightnorm_mixed", *(m.name for m in CONDITIONED_METHODS),
)  # fmt: skip
# The scarce regimes, where most of the data weighs about 0: every row but the clean-data RWFM ones.
SCARCE_METHODS = named_rows(
    "il_clean", "il_mixed", "rwfm_mixed", "rwfm_chunk_adv_mixed", "oracle_mixed", "rwfm_anchor_mixed",
    *(m.name for m in ROWS if (m.apply == "sample" or m.recipes) and m not in CONDITIONED_METHODS),
    *(m.name for m in CONDITIONED_METHODS),
)  # fmt: skip


@dataclass(frozen=True)
class Regime:
    name: str
    title: str
    clean: str  # manifest crab/training/docs/dataset_manifest_<clean>.csv: the filtering data
    mixed: str  # manifest of the same plus the bad data
    bad: str  # the mixed manifest's damaging egg dataset
    methods: tuple[Method, ...]
    tasks: tuple[str, ...]  # evaluated closed loop
    data_dir: str  # data root under the work dir
    runs_dir: str  # training runs under the work dir
    carton: bool = True  # whether both manifests hold the clean carton openings
    failed: bool = True  # whether the mixed manifest holds the failed attempts


REGIMES = {
    "cycle1": Regime(
        "cycle1", "today's data", "cycle1_clean", "cycle1_with_cracked", "egg_carton_to_tray_cracked", METHODS,
        (PUT_EGG, OPEN_CARTON), "data", "runs",
    ),
    "scarce": Regime(
        "scarce", "scarce clean data, damage at the release", "scarce_clean", "scarce_mixed",
        "egg_carton_to_tray_sloppy", SCARCE_METHODS, (PUT_EGG,), "data_scarce", "runs_scarce",
    ),
    # The same clean data (the same generation seeds), damaged at the grasp instead: the carry and the
    # release after the damage are the careful ones.
    "scarce_grasp": Regime(
        "scarce_grasp", "scarce clean data, damage at the grasp", "scarce_clean", "scarce_grasp_mixed",
        "egg_carton_to_tray_squeezed", SCARCE_METHODS, (PUT_EGG,), "data_scarce_grasp", "runs_scarce_grasp",
    ),
    "scarce_carry": Regime(
        "scarce_carry", "scarce clean data, damage in the carry", "scarce_clean", "scarce_carry_mixed",
        "egg_carton_to_tray_tightened", SCARCE_METHODS, (PUT_EGG,), "data_scarce_carry", "runs_scarce_carry",
    ),
}  # fmt: skip


def egg_only(regime: Regime) -> Regime:
    """A scarce regime's data without the carton openings: every row trains on the egg task alone, so
    filtering and the mixed-data rows spend the same number of samples on it. In `scarce` filtering draws
    the egg task at 22% (10 transfers beside 49 openings) and the mixed rows at up to 62%, which alone was
    worth +9 to +24 points (docs/sim_benchmark_findings.md, 2026-12-03)."""
    name = f"{regime.name}_eggonly"
    return dataclasses.replace(
        regime, name=name, title=f"{regime.title}, the egg task alone", clean="scarce_eggonly",
        mixed=f"{name}_mixed", runs_dir=f"runs_{name}", carton=False,
    )  # fmt: skip


def without_failed(regime: Regime) -> Regime:
    """An egg-only regime's mixed data without the failed attempts (misses, weak grips, early releases),
    which no per-chunk signal can locate: they have no damage step, and the value model does not see the
    miss. Their removal was worth 22 points to `chunk_advantage` at 10 clean transfers
    (docs/sim_benchmark_findings.md, 2026-12-03), so this regime measures what the damaged transfers add alone."""
    name = f"{regime.name}_nofailed"
    return dataclasses.replace(
        regime, name=name, title=f"{regime.title}, without the failed attempts", mixed=f"{name}_mixed",
        runs_dir=f"runs_{name}", failed=False,
    )  # fmt: skip


for _name in ("scarce", "scarce_grasp", "scarce_carry"):
    REGIMES[f"{_name}_eggonly"] = egg_only(REGIMES[_name])
for _name in ("scarce_eggonly", "scarce_grasp_eggonly"):
    REGIMES[f"{_name}_nofailed"] = without_failed(REGIMES[_name])
# What `python -m crab.sim.compare` runs without --regimes and --methods: the rows (filtering, naive
# mixing, RWFM `outcome` without and with the anchor as the configs set it, `chunk_advantage`, the oracle)
# and the recommended `chunk_q` with the failures nothing locates left out (in today's regime, which has
# none, the same draw as `chunk_q` alone), in today's regime and the scarce one (at --scarce-clean 2, where
# filtering is data-limited: docs/sim_benchmark.md; egg task alone, so that filtering and the mixed rows draw
# it alike). 42 runs of `--steps` 8000: 131 min measured on a 2-core machine (4.7-7 min a run, 2 at a time,
# data and value models already made). Without the failed attempts (`scarce_eggonly_nofailed`) is one more
# regime, so it is not a default.
TABLE_REGIMES = ("cycle1", "scarce_eggonly")
TABLE_ROWS = (
    *named_rows("il_clean", "il_mixed", "rwfm_mixed", "rwfm_anchor_mixed", "rwfm_chunk_adv_sample_h20_phase_mixed",
          "oracle_sample_h20_phase_mixed"), CHUNK_Q_RECIPE,
)  # fmt: skip
# How each scarce regime's damaging transfers depart from the careful style (`crab.sim.demonstrators`).
DAMAGE = {
    "egg_carton_to_tray_sloppy": "sloppy transfers that cracked the egg at the release (the careful style until "
    "then, then dropped from 2-6 cm)",
    "egg_carton_to_tray_squeezed": "squeezing transfers that cracked the egg at the grasp (the careful style "
    "but for a squeeze over the crack force while the fingers close; the carry and release after it careful)",
    "egg_carton_to_tray_tightened": "tightening transfers that cracked the egg in the middle of the carry (the "
    "careful style but for a few carry steps with the fingers tightened over the crack force)",
}
CLEAN = "egg_carton_to_tray"  # every regime's clean egg transfers


def alpha_method(alpha: float) -> Method:
    """The cracked-factor config with another temperature: an extra, labelled row (regime `cycle1`)."""
    return Method(f"rwfm_anchor_mixed_alpha{alpha:g}", CF, "mixed", "RWFM + anchor (extra)", alpha=alpha)


def select(args: argparse.Namespace) -> list[tuple[Regime, list[Method]]]:
    """The regimes of `--regimes` (in `REGIMES` order; `all`: every one) with the methods of `--methods`
    each has (`all`: every row; `--extra-alpha` rows join `cycle1`); an unknown name is an error listing
    the choices."""
    regimes = list(REGIMES) if args.regimes == ["all"] else args.regimes
    unknown = sorted(set(regimes) - set(REGIMES))
    if unknown:
        raise SystemExit(f"unknown regime(s) {unknown}; choose from {list(REGIMES)} or all")
    plan = [(regime, list(regime.methods)) for name, regime in REGIMES.items() if name in regimes]
    if args.methods != ["all"]:
        every = {m.name for _, methods in plan for m in methods}
        unknown = sorted(set(args.methods) - every)
        if unknown:
            raise SystemExit(f"unknown method(s) {unknown} in regime(s) {regimes}; choose from {sorted(every)} or all")
        plan = [(regime, [m for m in methods if m.name in args.methods]) for regime, methods in plan]
        for _, methods in plan:
            missing = sorted({m.evaluates for m in methods if m.evaluates} - {m.name for m in methods})
            if missing:
                raise SystemExit(f"--methods: rows {missing} train the runs other rows evaluate; add them")
        empty = [regime.name for regime, methods in plan if not methods]
        if empty:
            raise SystemExit(
                f"none of --methods {args.methods} is a row of regime(s) {empty}; leave them out of --regimes"
            )
    extra = [alpha_method(a) for a in args.extra_alpha]
    return [(regime, methods + (extra if regime.name == "cycle1" else [])) for regime, methods in plan]


# --- pure helpers -----------------------------------------------------------------------------------


def pool(per_seed: Sequence[dict]) -> dict:
    """Pool one task's evaluation summaries (one per training seed) into rates with Wilson intervals.

    Returns episodes, success/crack counts, pooled rates and intervals, the per-seed rates, the mean
    return (its interval is a t interval over the seeds' mean returns when there are several seeds, the
    seed-to-seed spread, otherwise that single run's episode-level interval) and the summed outcome
    counts (`evaluate.egg_outcome` for the egg task).
    """
    n = sum(s["episodes"] for s in per_seed)
    k_s, k_c = (sum(counts) for counts in zip(*map(success_crack_counts, per_seed), strict=True))
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
        "outcomes": {k: sum(s["outcomes"][k] for s in per_seed) for k in per_seed[0]["outcomes"]},
    }


def fmt_rate(rate: float, ci: Sequence[float]) -> str:
    return f"{rate:.0%} [{ci[0]:.0%}, {ci[1]:.0%}]"


def fmt_seeds(rates: Sequence[float]) -> str:
    return " / ".join(f"{r:.0%}" for r in rates)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


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


# The per-chunk rows the bar is checked for (each where the regime ran it): the issue's `chunk_advantage`
# rows and the `chunk_q` ones (the recommended one last).
CHUNK_BAR_ROWS = (
    "rwfm_chunk_adv_mixed", "rwfm_chunk_adv_sample_h20_phase_mixed", "rwfm_chunk_q_sample_uncapped_h20_phase_mixed",
    CHUNK_Q_RECIPE.name,
)  # fmt: skip
SCARCE_GAIN = 0.10  # the scarce regime's bar: per-chunk credit beats filtering by this much egg success


def check_chunk_bar(regime: str, pooled: dict[str, dict], row: str) -> list[tuple[str, bool, str]]:
    """The issue's bar for the per-chunk row `row` against filtering (`il_clean`), pooled egg results.

    Scarce regimes: success >= filtering's + 10 points, and a crack rate at most filtering's (point
    estimates). `cycle1`: at least level, i.e. its success inside filtering's Wilson interval or above.
    """
    ca, il = pooled[row], pooled["il_clean"]
    if regime != "cycle1":
        gain = ca["success_rate"] - il["success_rate"]
        return [
            (f"`{row}`, scarce: success >= filtering + {SCARCE_GAIN * 100:.0f} points", gain >= SCARCE_GAIN - 1e-9,
             f"{gain * 100:+.0f} points ({ca['success_rate']:.0%} vs {il['success_rate']:.0%})"),
            (f"`{row}`, scarce: crack rate <= filtering's", ca["crack_rate"] <= il["crack_rate"] + 1e-9,
             f"{ca['crack_rate']:.0%} vs {il['crack_rate']:.0%}"),
        ]  # fmt: skip
    return [
        (
            f"`{row}`, {regime}: success within filtering's interval or above",
            ca["success_rate"] >= il["success_ci95"][0] - 1e-9,
            f"{ca['success_rate']:.0%} vs {fmt_rate(il['success_rate'], il['success_ci95'])}",
        )
    ]


def headline(plan, pooled: dict[str, dict]) -> str:
    """The command's last line: per regime that ran both, the recommended `chunk_q` row's egg success and
    cracks against filtering's (pooled point estimates)."""
    q, il = CHUNK_Q_RECIPE.name, "il_clean"
    parts = []
    for regime, _ in plan:
        egg = pooled[regime.name][PUT_EGG]
        if {q, il} <= set(egg):
            a, b = egg[q], egg[il]
            parts.append(
                f"{regime.name} {a['success_rate']:.0%} vs {b['success_rate']:.0%} "
                f"({(a['success_rate'] - b['success_rate']) * 100:+.0f} points), cracks {a['crack_rate']:.0%} vs "
                f"{b['crack_rate']:.0%}"
            )
    label = "`chunk_q` (failures nothing locates left out)"
    return f"egg success of {label} vs filtering: " + "; ".join(parts) if parts else f"no {label} row ran"


# --- pipeline ---------------------------------------------------------------------------------------


def ensure_data(
    data_root: Path, episodes: int, seed: int, image_size: int, counts: dict[str, int] | None = None
) -> float:
    """Generate the datasets (`episodes` each, or as `counts` says: `generate.episode_counts`) unless a
    complete generation with these settings is there; seconds spent."""
    from crab.sim.generate import episode_counts, generate

    want = episode_counts(episodes, counts)
    summary = data_root / "generation_summary.json"  # written last: its presence means complete
    if summary.is_file():
        s = json.loads(summary.read_text())
        same = s["seed"] == seed and s["image_size"] == image_size
        if same and all(s["datasets"].get(name, {}).get("episodes", 0) == n for name, n in want.items()):
            print(f"reusing datasets under {data_root}")
            return 0.0
    start = time.perf_counter()
    generate(data_root, episodes, seed, image_size, overwrite=True, counts=counts)
    return time.perf_counter() - start


def without_scarce_datasets() -> dict[str, int]:
    """Episode counts (`generate.episode_counts`) that leave out the damaging datasets only the scarce
    regimes use: today's regime and the anchor benchmark generate every other dataset."""
    return {r.bad: 0 for r in REGIMES.values() if r.name != "cycle1"}


def regime_counts(regime: Regime, args: argparse.Namespace, held_out: int) -> dict[str, int]:
    """The episodes per dataset a regime generates (see `generate.DATASETS`); `held_out`: the validation
    episodes per dataset (`data.val_episodes_per_dataset`) added to the scarce regime's training counts."""
    if regime.name == "cycle1":
        return without_scarce_datasets()  # every other dataset at --episodes-per-dataset
    return {
        CLEAN: args.scarce_clean + held_out,
        **without_scarce_datasets(),
        regime.bad: args.scarce_damaging + held_out,
        "egg_carton_to_tray_failed": args.scarce_failed + held_out,
        "egg_carton_to_tray_cracked": 0,
        "close_the_carton": 0,
    }


def manifest_path(stem: str) -> Path:
    return MANIFEST_DIR / f"dataset_manifest_{stem}.csv"


def signal_name(signal: str, horizon: int | None = None) -> str:
    """How files and tables name a return signal: its kind, and the credit horizon when one is set."""
    return signal if horizon is None else f"{signal}_h{horizon}"


def stats_path(data_root: Path, stem: str, signal: str = "outcome", horizon: int | None = None) -> Path:
    suffix = "" if signal == "outcome" else "_" + signal_name(signal, horizon)
    return data_root / f"reward_weighting_stats_{stem}{suffix}.json"


def value_path(data_root: Path, stem: str) -> Path:
    return data_root / f"values_{stem}.parquet"


def run_config(method: Method, seed_index: int, args: argparse.Namespace, regime: Regime, extra: Sequence[str] = ()):
    """The training config of one method and seed: the cycle config plus the benchmark's sizes, then the
    `extra` overrides (`crab.sim.experience`: another manifest, a starting checkpoint)."""
    from crab.training.config import load_config

    steps = args.steps
    data_root = args.work_dir / regime.data_dir
    stem = getattr(regime, method.data)
    overrides = [
        f"run_name={method.evaluates or method.name}_seed{seed_index}",
        f"output_dir={args.work_dir / regime.runs_dir}",
        f"seed={1000 + seed_index}",
        f"data.manifest={manifest_path(stem)}",
        f"data.data_root={data_root}",
        f"data.reward_stats={stats_path(data_root, stem, method.signal or 'outcome', method.horizon)}",
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
    overrides += method.overrides()
    if method.signal in VALUE_SIGNALS:
        overrides += [
            f"reward_weighting.std_floor={VALUE_SIGNAL_STD_FLOOR}",
            f"data.value_file={value_path(data_root, stem)}",
        ]
    return load_config([CONFIG_DIR / method.config, *(CONFIG_DIR / r for r in method.recipes)], [*overrides, *extra])


def cracked_factor_config(args: argparse.Namespace):
    """The mixed RWFM + anchor run's config (seed 0, regime `cycle1`): the settings the report quotes."""
    return run_config(ROW["rwfm_anchor_mixed"], 0, args, REGIMES["cycle1"])


def ensure_values(regime: Regime, args: argparse.Namespace, chunk_size: int) -> tuple[Path, float]:
    """The regime's mixed manifest's value model (`crab.training.value_fit`); (its path, seconds spent)."""
    data_root = args.work_dir / regime.data_dir
    path = value_path(data_root, regime.mixed)
    return path, fit_or_reuse_values(manifest_path(regime.mixed), data_root, path, args.value_expectile, chunk_size)


def fit_or_reuse_values(manifest: Path, data_root: Path, path: Path, expectile: float, chunk_size: int) -> float:
    """Fit a manifest's value model to `path` unless a fresh one with the same settings is there; seconds spent."""
    from dataclasses import asdict

    from crab.training import value_fit
    from crab.training.manifest import ManifestError, load_manifest
    from crab.training.rewards import RewardSpec

    settings = asdict(value_fit.ValueFitSettings(expectile=expectile))
    if path.is_file():
        try:
            if value_fit.read_meta(path)["settings"] == settings:
                rows = load_manifest(manifest, data_root)
                value_fit.load_values(path, rows, RewardSpec(chunk_size=chunk_size), manifest, data_root)
                print(f"reusing {path}")
                return 0.0
        except ManifestError as e:  # not a value file, or a stale one: refit
            print(e)
    start = time.perf_counter()
    value_fit.main(["--manifest", str(manifest), "--data-root", str(data_root), "--out", str(path),
                    "--expectile", str(expectile), "--no-progress"])  # fmt: skip
    return time.perf_counter() - start


def ensure_stats(regime: Regime, methods: Sequence[Method], args: argparse.Namespace, chunk_size: int) -> float:
    """Reward statistics of the regime's manifests: the outcome signal's for both, and each other signal
    its methods use on theirs (after the value model, for `chunk_advantage`). The printed weight shares
    are at each method's reward_weighting settings (the cracked-factor config's for the outcome ones).
    Returns the seconds spent fitting the value model."""
    from crab.training import reward_stats

    data_root = args.work_dir / regime.data_dir
    outcome = cracked_factor_config(args).reward_weighting
    jobs = {(stem, "outcome", None): outcome for stem in (regime.clean, regime.mixed)}
    for m in methods:
        if m.signal is not None:
            jobs[(getattr(regime, m.data), m.signal, m.horizon)] = run_config(m, 0, args, regime).reward_weighting
    fit_s = 0.0
    for (stem, signal, horizon), rw in jobs.items():
        argv = ["--manifest", str(manifest_path(stem)), "--data-root", str(data_root), "--chunk-size",
                str(chunk_size), "--out", str(stats_path(data_root, stem, signal, horizon)), "--signal", signal,
                "--alpha", str(rw.alpha), "--clip-min", str(rw.clip_min), "--clip-max", str(rw.clip_max),
                "--std-floor", str(rw.std_floor)]  # fmt: skip
        if horizon is not None:
            argv += ["--credit-horizon", str(horizon)]
        if signal in VALUE_SIGNALS:
            if stem != regime.mixed:
                raise ValueError(f"{regime.name}: the value model is fitted on the mixed manifest only, not {stem}")
            path, seconds = ensure_values(regime, args, chunk_size)
            argv += ["--value-file", str(path)]
            fit_s += seconds
        reward_stats.main(argv)
    return fit_s


def il_twins(regime: Regime, methods: Sequence[Method], args: argparse.Namespace) -> dict[str, str]:
    """Methods that would repeat an IL run bit for bit, mapped to that run: RWFM without the anchor on
    data of one outcome (reward signal std 0) gives every sample advantage 0 and weight exactly 1
    (`tests/test_train.py` checks that such a run equals IL's). They are reported, not retrained."""
    cfgs = {m.name: run_config(m, 0, args, regime) for m in methods}
    data_root = args.work_dir / regime.data_dir
    plain = [m for m in methods if not (cfgs[m.name].reward_weighting.enabled or cfgs[m.name].anchor.enabled)]
    twins = {}
    for m in methods:
        rw = cfgs[m.name].reward_weighting
        if not rw.enabled or rw.signal != "outcome" or cfgs[m.name].anchor.enabled:
            continue
        stats = json.loads(stats_path(data_root, getattr(regime, m.data)).read_text())
        il = [o.name for o in plain if o.data == m.data]
        if stats["overall"]["signal"]["std"] == 0 and il:
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
    if (
        saved.is_file()
        and timing.is_file()
        and training_settings(yaml.safe_load(saved.read_text())) == training_settings(to_dict(cfg))
    ):
        print(f"reusing {final}")
        return final, json.loads(timing.read_text())["train_s"]
    shutil.rmtree(cfg.run_dir, ignore_errors=True)
    start = time.perf_counter()
    train.train(cfg)
    seconds = time.perf_counter() - start
    timing.write_text(json.dumps({"train_s": seconds}))
    return final, seconds


def eval_path(
    checkpoint: Path, episodes: int, seed: int, n_action_steps: int, ask: str | None = "positive", guidance: float = 1.0
) -> Path:
    """Where the evaluation of a checkpoint is saved: named by what was asked beyond the plain question
    ("positive", no guidance: beta 1)."""
    question = ("" if ask == "positive" else f"_ask{ask}") + ("" if guidance == 1.0 else f"_cfg{guidance:g}")
    return checkpoint.parent / f"eval_{checkpoint.name}_{episodes}ep_seed{seed}_n{n_action_steps}{question}.json"


def answers(saved: dict, ask: str | None, guidance: float) -> bool:
    """Whether a saved evaluation is of the question asked: any is, of an unconditioned checkpoint (its label
    None); of a conditioned one, the same label and guidance (rows once left the guidance to the run's
    default, 5, and saved it under the unguided name)."""
    return saved.get("label") is None or (saved["label"], saved["guidance"]) == (ask, guidance)


def evaluate_or_reuse(
    checkpoint: Path, episodes: int, seed: int, n_action_steps: int, image_size: int, tasks: Sequence[str] = TASKS,
    ask: str | None = "positive", guidance: float = 1.0,
) -> dict:
    """Closed-loop evaluation of `tasks`; a saved one of the same checkpoint and settings is reused.
    `ask`, `guidance`: what a conditioned checkpoint is asked (`policy_eval.SmolVLAActor`)."""
    from crab.sim.policy_eval import evaluate_checkpoint, format_results

    path = eval_path(checkpoint, episodes, seed, n_action_steps, ask, guidance)
    saved = None
    if path.is_file() and path.stat().st_mtime > (checkpoint / "pretrained_model").stat().st_mtime:
        saved = json.loads(path.read_text())
        # An evaluation saved with an older outcome breakdown is redone: it is deterministic given the seeds.
        # So is one that answered another question (`answers`).
        if answers(saved, ask, guidance) and set(tasks) <= set(saved["tasks"]) and all(
            list(saved["tasks"][t].get("outcomes", {})) == list(outcome_categories(t)) for t in tasks
        ):
            return saved
    result = evaluate_checkpoint(checkpoint, episodes, seed, n_action_steps, image_size, tasks=tuple(tasks),
                                 label=ask, guidance=guidance)  # fmt: skip
    print(format_results(result), flush=True)
    for task in set(tasks) & set(saved["tasks"] if saved else ()):
        before, now = (success_crack_counts(r["tasks"][task]) for r in (saved, result))
        if before != now:
            print(f"note: {path} {task!r}: the re-evaluation's (successes, cracks) {now} differ from the "
                  f"saved {before}", flush=True)  # fmt: skip
    path.write_text(json.dumps(result, indent=2))
    return result


def success_crack_counts(summary: dict) -> tuple[int, int]:
    """(successes, cracks) of one task's evaluation summary."""
    return round(summary["success_rate"] * summary["episodes"]), round(summary["crack_rate"] * summary["episodes"])


def train_and_evaluate(
    cfg, episodes: int, seed: int, n_action_steps: int, image_size: int, threads: int, tasks: Sequence[str],
    questions: Sequence[tuple[str, str | None, float | None]],
) -> tuple[dict[str, dict], float, float]:
    """One run of the table, evaluated once per row of `questions` (row name, what it asks, guidance): ({row:
    evaluation summary of `tasks`}, training seconds, evaluation seconds)."""
    import torch

    torch.set_num_threads(threads)
    checkpoint, train_s = train_or_reuse(cfg)
    start = time.perf_counter()
    results = {
        row: evaluate_or_reuse(checkpoint, episodes, seed, n_action_steps, image_size, tasks, ask, guidance)
        for row, ask, guidance in questions
    }
    eval_s = time.perf_counter() - start
    print(f"{cfg.run_name}: trained {train_s / 60:.1f} min, evaluated {eval_s / 60:.1f} min", flush=True)
    return results, train_s, eval_s


def weight_analysis(
    regime: Regime, args: argparse.Namespace, chunk_size: int, alphas: Sequence[float], rw, held_out: int
) -> dict:
    """Per alpha, each dataset's share of the regime's mixed manifest's outcome-signal RWFM weight and of its
    task's (`weighting.dataset_shares` of the training frames, the last `held_out` episodes of each dataset
    held out, as a run of `rw`'s settings at that alpha)."""
    from crab.training.crab_dataset import annotate
    from crab.training.manifest import load_manifest
    from crab.training.reward_stats import training_frames
    from crab.training.rewards import RewardSpec
    from crab.training.weighting import dataset_shares, run_weights

    data_root = args.work_dir / regime.data_dir
    spec = RewardSpec(chunk_size=chunk_size)
    rows = load_manifest(manifest_path(regime.mixed), data_root)
    frames = [training_frames(row, annotate(row, spec), held_out) for row in rows]
    g = json.loads(stats_path(data_root, regime.mixed).read_text())["overall"]["signal"]
    outcome = dataclasses.replace(rw, signal="outcome", credit_horizon=None)
    return {
        f"{a:g}": dataset_shares(run_weights(dataclasses.replace(outcome, alpha=a), frames, g["mean"], g["std"]))
        for a in sorted(set(alphas))
    }


def signal_shares(regime: Regime, methods: Sequence[Method], args: argparse.Namespace, chunk_size: int) -> dict:
    """Where each weighted method's training weight goes (the first method of each signal, drop and
    normalisation), on the mixed manifest's training frames: per dataset its frame share, mean raw weight,
    share of the weight and of its task's (`weighting.dataset_shares`: what the run draws or weighs), and
    `into_damage`, the share of the egg task's weight on the chunks whose steps include the damage (a
    negative reward). Keys: the signal, `_drop` with `unlocated_failures: drop`, `_phase` per phase."""
    from crab.training.crab_dataset import annotate
    from crab.training.manifest import load_manifest
    from crab.training.reward_stats import damage_chunks, training_frames
    from crab.training.rewards import RewardSpec
    from crab.training.value_fit import load_values
    from crab.training.weighting import dataset_shares, run_weights

    data_root = args.work_dir / regime.data_dir
    spec = RewardSpec(chunk_size=chunk_size)
    manifest = manifest_path(regime.mixed)
    rows = load_manifest(manifest, data_root)
    out = {}
    for m in methods:
        cfg = run_config(m, 0, args, regime)
        rw = cfg.reward_weighting
        name = signal_name(rw.signal, rw.credit_horizon) + ("_drop" if rw.unlocated_failures == "drop" else "")
        name += "_phase" if rw.normalize == "phase" else ""
        if not rw.enabled or m.data != "mixed" or name in out:
            continue
        values = None
        if rw.signal in VALUE_SIGNALS:
            values, _ = load_values(cfg.data.value_file, rows, spec, manifest, data_root)
        frames = [
            training_frames(row, annotate(row, spec, rw.signal, None if values is None else values[row.name],
                                          rw.credit_horizon), cfg.data.val_episodes_per_dataset)
            for row in rows
        ]  # fmt: skip
        g = json.loads(stats_path(data_root, regime.mixed, rw.signal, rw.credit_horizon).read_text())["overall"]["signal"]
        weights = run_weights(rw, frames, g["mean"], g["std"])
        egg = [i for i, row in enumerate(rows) if row.task == PUT_EGG]
        slices = weights.slices()
        w = [weights.trained[slices[i]] for i in egg]
        # Into damage within one action chunk, whatever the row's credit horizon: the same measure for all.
        damaged = damage_chunks([frames[i] for i in egg], chunk_size)
        total = sum(float(x.sum()) for x in w)
        out[name] = {
            "alpha": rw.alpha, "clip": [rw.clip_min, rw.clip_max], "std_floor": rw.std_floor, "method": m.name,
            "datasets": dataset_shares(weights),
            "egg": [rows[i].name for i in egg],
            "into_damage": sum(float(x[d].sum()) for x, d in zip(w, damaged, strict=True)) / total if total else 0.0,
            "into_damage_frames": float(np.concatenate(damaged).mean()),
        }  # fmt: skip
    return out


def value_model_error(regime: Regime, methods: Sequence[Method], args: argparse.Namespace) -> dict | None:
    """The held-out error of the regime's value model (`value_fit.heldout_errors`, saved in the value
    file) and its settings; None when no method of the regime uses it."""
    from crab.training.value_fit import read_meta

    if not any(m.signal in VALUE_SIGNALS for m in methods):
        return None
    meta = read_meta(value_path(args.work_dir / regime.data_dir, regime.mixed))
    return {"heldout": meta["heldout"], "settings": meta["settings"], "epochs_kept": meta["epochs_kept"]}


def rate_figure(width: float):
    """A new (figure, axes) of rates, files only (no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(width, 4.2))


def save_rate_figure(fig, ax, path: Path, title: str, ylabel: str, legend_size: int, outside: bool = False) -> None:
    """Rates on 0-1 with their label, title and legend (`outside`: right of the axes, where it hides no
    point), written to `path` (PNG) and closed."""
    import matplotlib.pyplot as plt

    ax.set_ylim(0, 1)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=legend_size, **({"loc": "upper left", "bbox_to_anchor": (1.01, 1)} if outside else {}))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot(pooled: dict[str, dict], methods: Sequence[Method], path: Path, title: str) -> None:
    names = [m.name for m in methods]
    x = np.arange(len(names))
    fig, ax = rate_figure(1.6 * len(names) + 2)
    for offset, key, colour in ((-0.2, "success", "tab:green"), (0.2, "crack", "tab:orange")):
        rates = np.array([pooled[n][f"{key}_rate"] for n in names])
        ci = np.array([pooled[n][f"{key}_ci95"] for n in names])
        ax.bar(x + offset, rates, 0.38, color=colour, label=f"{key} rate",
               yerr=[rates - ci[:, 0], ci[:, 1] - rates], capsize=4)  # fmt: skip
    ax.set_xticks(x, [n.replace("_", "\n", 1) for n in names], fontsize=8)
    save_rate_figure(fig, ax, path, title, "rate (Wilson 95% interval)", 8)


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


def data_line(regime: Regime, args: argparse.Namespace) -> str:
    where = f"`crab.sim.generate`, seed {args.data_seed}, {args.image_size}x{args.image_size} camera, under `{regime.data_dir}/` of the work dir"
    clean, mixed = (f"`{manifest_path(s).name}`" for s in (regime.clean, regime.mixed))
    if regime.name == "cycle1":
        return (
            f"- Data ({where}): {args.episodes_per_dataset} episodes per dataset (clean transfers, cracked rough "
            f"transfers, failed attempts, clean carton openings). `clean` = manifest {clean} (clean transfers + "
            f"carton), `mixed` = {mixed} (those + the cracked transfers); the failed dataset is generated but "
            "neither manifest uses it. One episode per dataset is held out for validation."
        )
    carton = f" and {args.episodes_per_dataset - 1} clean carton openings" if regime.carton else ""
    bad = "the damaging and failed transfers"
    if not regime.failed:
        bad = "the damaging transfers; the failed attempts are generated but left out"
    return (
        f"- Data ({where}): for training, {args.scarce_clean} clean transfers, {args.scarce_damaging} "
        f"{DAMAGE[regime.bad]} (`crab.sim.demonstrators`), {args.scarce_failed} failed attempts{carton}; "
        "each dataset holds one more episode, held out for validation. "
        f"`clean` = manifest {clean} (clean transfers{' + carton' if regime.carton else ' only'}), "
        f"`mixed` = {mixed} (those + {bad}). Evaluated on the egg task only."
    )


def regime_section(
    args: argparse.Namespace, regime: Regime, methods: Sequence[Method], res: dict, plot_path: Path
) -> tuple[list[str], dict]:
    """The report's section of one regime (`res`: its results, `main`'s) and its pooled results."""
    results, train_s, twins = res["per_seed"], res["train_s"], res["twins"]
    pooled = {t: {m.name: pool([r["tasks"][t] for r in results[m.name]]) for m in methods} for t in regime.tasks}
    seeds = len(next(iter(results.values())))
    rw = cracked_factor_config(args).reward_weighting
    lines = [f"## Regime `{regime.name}`: {regime.title}", "", data_line(regime, args)]
    if twins:
        lines.append(
            "- RWFM without the anchor on the clean manifest, where every episode succeeds, gives every sample "
            "the weight 1 and trains bit for bit as IL (`tests/test_train.py`), so it is reported with IL's run, "
            "not retrained: " + ", ".join(f"`{k}` = `{v}`" for k, v in twins.items()) + "."
        )
    lines.append("")
    for task in regime.tasks:
        rows = []
        for m in methods:
            p = pooled[task][m.name]
            rows.append([
                f"`{m.name}`", f"{m.label} ({m.settings()})" + (f": every weight is 1, so it is `{twins[m.name]}`'s run" if m.name in twins else ""), m.data, fmt_rate(p["success_rate"], p["success_ci95"]), fmt_seeds(p["seed_success"]),
                fmt_rate(p["crack_rate"], p["crack_ci95"]), fmt_seeds(p["seed_crack"]),
                f"{p['mean_return']:+.2f} [{p['return_ci95'][0]:+.2f}, {p['return_ci95'][1]:+.2f}]",
                f"{np.mean(train_s[m.name]) / 60:.1f}",
            ])  # fmt: skip
        lines += [
            f"### {task} ({pooled[task][methods[0].name]['episodes']} episodes per row)",
            "",
            markdown_table(
                ["run", "method", "data", "success", "per seed", "crack", "per seed", "mean return",
                 "train min/seed"], rows,
            ),
            "",
        ]  # fmt: skip
    egg = pooled[PUT_EGG]
    lines += [
        f"### Where the egg episodes end ({egg[methods[0].name]['episodes']} episodes per row, pooled)",
        "",
        "Each egg-transfer episode counts once (`crab.sim.evaluate.egg_outcome`): a success; else a crack, by "
        f"the grip (squeezed over {CRACK_FORCE:g} N) or at an impact (hit at over {CRACK_SPEED:g} m/s), over "
        "the tray (the release: a drop or a hard set-down) or elsewhere (the carry: the egg lost on the way); "
        "else, at the step limit, the egg never held by both fingers, let go anywhere but at rest in the tray, "
        "or still held.",
        "",
        markdown_table(
            ["run", *EGG_OUTCOMES],
            [[f"`{m.name}`", *(f"{k} ({k / egg[m.name]['episodes']:.0%})" for k in map(egg[m.name]["outcomes"].get, EGG_OUTCOMES))]
             for m in methods],
        ),
        "",
    ]  # fmt: skip
    lines += [f"![success and crack rates]({plot_path.name})", "", "### The bar (egg transfer, pooled)", ""]
    bars = [(BAR_METHODS, check_bar)] if regime.name == "cycle1" else []
    chunk_rows = [row for row in CHUNK_BAR_ROWS if row in egg] or [CHUNK_BAR_ROWS[0]]  # none ran: say what it needs
    bars += [((row, "il_clean"), lambda p, row=row: check_chunk_bar(regime.name, p, row)) for row in chunk_rows]
    for needed, check in bars:
        if set(needed) <= set(egg):
            lines += [f"- {'PASS' if ok else 'FAIL'}: {name} ({detail})" for name, ok, detail in check(egg)]
        else:
            lines.append(f"- Not checked: it needs the runs {list(needed)}.")
    weights, bad = res["weights"], regime.bad
    first = weights[next(iter(weights))]
    egg_frames = sum(v["frame_share"] for v in first.values() if v["task"] == PUT_EGG)
    lines += [
        "",
        "### RWFM `outcome` weights on the mixed data",
        "",
        f"Per alpha, the mean raw weight `clip(exp(alpha A), {rw.clip_min:g}, {rw.clip_max:g})` (the cycle "
        f"configs' bounds) of a clean and of a damaging (`{bad}`) egg transfer frame, and the damaging transfers' "
        f"share of the egg task's total weight (they are {first[bad]['frame_share'] / egg_frames:.0%} of its "
        "frames). The weights are divided by one constant, so these shares are what the weighted loss imitates; "
        "they are computed from the data before any training:",
        "",
        markdown_table(
            ["alpha", "clean transfer", "damaging transfer", "damaging / clean", "damaging share of egg-task weight"],
            [[a, f"{w[CLEAN]['mean_weight']:.3f}", f"{w[bad]['mean_weight']:.3f}",
              f"{w[bad]['mean_weight'] / w[CLEAN]['mean_weight']:.2f}" if w[CLEAN]["mean_weight"] else "n/a",
              f"{w[bad]['task_share']:.1%}"]
             for a, w in weights.items()],
        ),
        "",
    ]  # fmt: skip
    if res["shares"]:
        names = next(iter(res["shares"].values()))["egg"]
        header = ["signal (row's settings)", *(f"`{n}`" for n in names), "chunks into damage"]
        rows = [
            [f"`{sig}` (`{v['method']}`: alpha {v['alpha']:g}, clip [{v['clip'][0]:g}, {v['clip'][1]:g}], std floor {v['std_floor']:g})",
             *(f"{v['datasets'][n]['task_share']:.1%}" for n in names),
             f"{v['into_damage']:.2%} ({v['into_damage_frames']:.1%} of the frames)"]
            for sig, v in res["shares"].items()
        ]  # fmt: skip
        lines += [
            "### Where the weight goes, per signal (mixed manifest, egg task)",
            "",
            "Each egg dataset's share of the egg task's total RWFM weight under each signal the rows use, and "
            "the share on the chunks into damage (those whose steps include the crack's negative reward):",
            "",
            markdown_table(header, rows),
            "",
        ]
    if res["value_model"] is not None:
        h, st = res["value_model"]["heldout"], res["value_model"]["settings"]
        epochs = ", ".join(map(str, res["value_model"]["epochs_kept"]))
        # `ensure_values` refits any value file of other settings, so every file here stopped early.
        kept = f" with early stopping, patience {st['patience']} (epochs kept per fold: {epochs})"
        lines += [
            f"Value model (`crab.training.value_fit` on the mixed manifest, {st['folds']} folds by episode, at "
            f"most {st['epochs']} epochs{kept}, expectile {st['expectile']:g}): held-out RMSE of "
            f"V {h['rmse']:.3f}, against "
            f"{h['rmse_constant_per_task']:.3f} for the best constant per task (return-to-go std {h['target_std']:.3f}).",
            "",
        ]
    plot(egg, methods, plot_path, f"{regime.name}: {PUT_EGG} ({seeds} seed(s) x {args.episodes} episodes pooled)")
    return lines, pooled


def plot_path_of(out: Path, regime: Regime) -> Path:
    return out.with_suffix(".png") if regime.name == "cycle1" else out.with_name(f"{out.stem}_{regime.name}.png")


def report(args: argparse.Namespace, plan, outcome: dict[str, dict], timings: dict, command: str) -> tuple[str, dict]:
    """The markdown report of the regimes of `plan` (`select`) and their pooled results."""
    cycle = cracked_factor_config(args)
    rw, anchor = cycle.reward_weighting, cycle.anchor
    seeds = args.seeds
    train_min = sum(sum(v) for res in outcome.values() for k, v in res["train_s"].items() if k not in res["twins"]) / 60
    lines = [
        "# Simulated egg-transfer benchmark: RWFM + anchor against imitation learning",
        "",
        f"Generated by `crab/sim/compare.py` on {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC.",
        "",
        f"    {command}",
        "",
        f"- Machine: {machine()}. A shared machine: other jobs ran at the same time, so training and "
        "evaluation times are indicative only.",
        f"- Policy: the tiny offline SmolVLA (`policy.pretrained_path: tiny`, `TINY_SMOLVLA_DEFAULTS`: "
        f"chunk 10, expert width 1.0, lr 5e-4, warmup 200 scaled by lerobot's scheduler), {args.n_action_steps} "
        f"actions executed per chunk; {args.steps} steps at batch {args.batch_size}; anchor warmup/ramp "
        f"{args.steps // 20}/{args.steps // 10} steps (the cycle configs' 1000/2000 of 20000, scaled). Everything "
        f"else is the cycle configs' (alpha {rw.alpha:g}, clip [{rw.clip_min:g}, {rw.clip_max:g}], std floor "
        f"{rw.std_floor:g}, lambda_anchor {anchor.lambda_anchor:g}, weights divided by the training frames' mean "
        f"weight, `G = R_e`), except where a row says otherwise (`chunk_advantage`: std floor "
        f"{VALUE_SIGNAL_STD_FLOOR:g}, README section 2b).",
        f"- Training seeds: {seeds} (1000, 1001, ...); evaluation: {args.episodes} episodes per task per seed, "
        "the same initial scenes for every method of a seed (evaluation seed = seed index). Rates pool all "
        "seeds' episodes (Wilson 95% interval); 'per seed' lists each seed's rate.",
        "- IL on clean data only (the filtering baseline) is the baseline IL config on the clean manifest: "
        "row `il_clean`.",
        f"- Wall time of the command: {timings['wall_s'] / 60:.1f} min with {args.jobs} training(s) at a time "
        f"({args.threads} torch thread(s) each): data {timings['data_s']:.0f} s, value models "
        f"{timings['value_fit_s']:.0f} s; summed over the runs, training {train_min:.1f} min and evaluation "
        f"{timings['eval_s'] / 60:.1f} min. Runs reused from an earlier invocation count the time measured when "
        "they were trained.",
        "",
    ]
    pooled, sections = {}, []
    for regime, methods in plan:
        section, pooled[regime.name] = regime_section(
            args, regime, methods, outcome[regime.name], plot_path_of(args.out, regime)
        )
        sections += section
    lines += [*egg_summary(plan, pooled), *sections]
    return "\n".join(lines), pooled


def egg_summary(plan, pooled: dict[str, dict]) -> list[str]:
    """The report's first table: every row's pooled egg-transfer success and cracks, one column pair per
    regime (the regimes' sections below give the seeds, the carton and where the episodes end)."""
    rows = {m.name: m.label for _, methods in plan for m in methods}  # first regime's order, each row once
    header = ["run", "method"]
    for regime, _ in plan:
        header += [f"`{regime.name}` success", "cracks"]
    table = []
    for name, label in rows.items():
        cells = [f"`{name}`", label]
        for regime, _ in plan:
            p = pooled[regime.name][PUT_EGG].get(name)
            cells += [fmt_rate(p["success_rate"], p["success_ci95"]), f"{p['crack_rate']:.0%}"] if p else ["", ""]
        table.append(cells)
    return [f"## {PUT_EGG} (pooled over the seeds), every regime", "", markdown_table(header, table), ""]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, help="the markdown report (default: report.md in --work-dir); "
                   "docs/sim_benchmark.md puts several work dirs side by side with crab.sim.results")
    p.add_argument("--regimes", nargs="+", default=list(TABLE_REGIMES),
                   help=f"a subset of {list(REGIMES)}, or all (default: the table's, {list(TABLE_REGIMES)})")  # fmt: skip
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--episodes", type=int, default=50, help="evaluation episodes per task per seed")
    p.add_argument("--steps", type=int, default=8000, help="training steps per run")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--n-action-steps", type=int, default=5, help="actions executed per predicted chunk of 10")
    p.add_argument("--episodes-per-dataset", type=int, default=50)
    p.add_argument("--scarce-clean", type=int, default=2, help="scarce regime: clean egg transfers for training")
    p.add_argument(
        "--scarce-damaging", type=int, default=40,
        help="scarce regimes: damaging transfers for training (sloppy: cracked at the release; squeezing: at the grasp)"
    )
    p.add_argument("--scarce-failed", type=int, default=10, help="scarce regime: failed attempts for training")
    p.add_argument("--value-expectile", type=float, default=0.9,
                   help="`value_fit --expectile` of the value models (rows `chunk_advantage`, `chunk_q`)")  # fmt: skip
    p.add_argument("--data-seed", type=int, default=0)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--work-dir", type=Path, default=Path("outputs/sim_benchmark"))
    p.add_argument("--methods", nargs="+", default=[m.name for m in TABLE_ROWS],
                   help="rows to run, in every regime of --regimes that has them, or all (default: the table's, "
                   f"{[m.name for m in TABLE_ROWS]}); cycle1: {[m.name for m in METHODS]}, scarce: "
                   f"{[m.name for m in SCARCE_METHODS]}")  # fmt: skip
    p.add_argument("--extra-alpha", type=float, action="append", default=[],
                   help="also train the mixed RWFM + anchor run of regime cycle1 with this alpha (an extra row)")  # fmt: skip
    p.add_argument("--cache-items", action=argparse.BooleanOptionalAction, default=True,
                   help="keep decoded training items in RAM (`data.cache_items`); the small generated data fit")  # fmt: skip
    p.add_argument("--jobs", type=int, default=2, help="trainings at a time, each in its own process")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads per training")
    args = p.parse_args(argv)
    args.out = args.out or args.work_dir / "report.md"
    return args


def main(argv: list[str] | None = None) -> dict:
    import torch

    start = time.perf_counter()
    args = parse_args(argv)
    plan = select(args)
    torch.set_num_threads(args.threads)
    command = "python -m crab.sim.compare " + shlex.join(sys.argv[1:] if argv is None else argv)
    from crab.training.crab_smolvla_wrapper import policy_config

    # The reward statistics are computed for the policy's chunk (training refuses any other).
    probe = run_config(plan[0][1][0], 0, args, plan[0][0])
    chunk_size, held_out = policy_config(probe.policy).chunk_size, probe.data.val_episodes_per_dataset
    timings = {"data_s": 0.0, "value_fit_s": 0.0}
    for regime, methods in plan:
        data_root = args.work_dir / regime.data_dir
        counts = regime_counts(regime, args, held_out)
        timings["data_s"] += ensure_data(data_root, args.episodes_per_dataset, args.data_seed, args.image_size, counts)
        timings["value_fit_s"] += ensure_stats(regime, methods, args, chunk_size)

    twins = {regime.name: il_twins(regime, methods, args) for regime, methods in plan}
    runs = [(regime, m, seed) for regime, methods in plan for seed in range(args.seeds) for m in methods
            if m.name not in twins[regime.name] and m.evaluates is None]  # fmt: skip
    # Each training is one job, evaluated for its own row and for the rows that evaluate its runs.
    questions = {(r.name, m.name): [(v.name, v.ask, v.guidance) for v in methods if m.name in (v.name, v.evaluates)]
                 for r, methods in plan for m in methods}  # fmt: skip
    jobs = [(run_config(m, seed, args, regime), args.episodes, seed, args.n_action_steps, args.image_size,
             args.threads, regime.tasks, questions[regime.name, m.name]) for regime, m, seed in runs]  # fmt: skip
    if args.jobs > 1:  # spawn: the same on Linux and Windows, and no forked torch thread pools
        with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool_:
            done = list(pool_.map(train_and_evaluate, *zip(*jobs, strict=True)))
    else:
        done = [train_and_evaluate(*job) for job in jobs]
    outcome = {}
    for regime, methods in plan:
        res = {
            "per_seed": {m.name: [] for m in methods},
            "train_s": {m.name: [] for m in methods},
            "twins": twins[regime.name],
        }
        for (r, _, _), (results, seconds, _) in zip(runs, done, strict=True):
            for name, result in results.items() if r.name == regime.name else ():
                res["per_seed"][name].append(result)
                res["train_s"][name].append(seconds)
        for name, il in res["twins"].items():
            res["per_seed"][name], res["train_s"][name] = res["per_seed"][il], res["train_s"][il]
        rw = cracked_factor_config(args).reward_weighting
        alphas = [0.25, 1.0, rw.alpha, *(args.extra_alpha if regime.name == "cycle1" else [])]
        res["weights"] = weight_analysis(regime, args, chunk_size, alphas, rw, held_out)
        res["shares"] = signal_shares(regime, methods, args, chunk_size)
        res["value_model"] = value_model_error(regime, methods, args)
        outcome[regime.name] = res
    timings["eval_s"] = sum(eval_s for _, _, eval_s in done)
    timings["wall_s"] = time.perf_counter() - start

    text, pooled = report(args, plan, outcome, timings, command)
    notes = ""
    if args.out.is_file() and NOTES_MARKER in args.out.read_text():
        notes = args.out.read_text().split(NOTES_MARKER, 1)[1]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n" + NOTES_MARKER + (notes or "\n"))
    summary = {"args": {k: str(v) for k, v in vars(args).items()}, "timings": timings,
               "regimes": {name: {**res, "pooled": pooled[name]} for name, res in outcome.items()}}  # fmt: skip
    (args.work_dir / "results.json").write_text(json.dumps(summary, indent=2))
    print(text)
    plots = ", ".join(str(plot_path_of(args.out, regime)) for regime, _ in plan)
    print(f"\nwrote {args.out}, {plots}, {args.work_dir / 'results.json'}")
    print(f"{headline(plan, pooled)}; wall time {timings['wall_s'] / 60:.1f} min")
    return summary


if __name__ == "__main__":
    main()
