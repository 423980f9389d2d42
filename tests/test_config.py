"""Strict YAML configs: the four cycle configs load; bad keys and values are errors naming key and file."""

from pathlib import Path

import pytest

from crab.training.config import ConfigError, load_config, signal_read, to_dict, training_settings

CONFIGS = Path(__file__).resolve().parents[1] / "crab" / "training" / "configs"
CYCLE = sorted(CONFIGS.glob("train_cycle1_*.yaml"))


def test_the_four_cycle_configs_load_with_the_guide_run_names():
    runs = {p.stem: load_config(p) for p in CYCLE}
    assert {k: v.run_name for k, v in runs.items()} == {
        "train_cycle1_baseline_il": "cycle1_baseline_il",
        "train_cycle1_rwfm": "cycle1_rwfm",
        "train_cycle1_rwfm_anchor": "cycle1_rwfm_anchor",
        "train_cycle1_rwfm_anchor_cracked_factor": "cycle1_rwfm_anchor_with_cracked",
    }
    il, rwfm, anchor, cracked = (runs[p.stem] for p in CYCLE)
    assert not il.reward_weighting.enabled and not il.anchor.enabled
    assert rwfm.reward_weighting.enabled and not rwfm.anchor.enabled and rwfm.reward_weighting == anchor.reward_weighting == cracked.reward_weighting
    assert (cracked.reward_weighting.alpha, cracked.reward_weighting.clip_min) == (4.0, 0.0)
    assert anchor.anchor.enabled and cracked.anchor.enabled
    assert cracked.data.manifest.endswith("dataset_manifest_cycle1_with_cracked.csv")
    for cfg in runs.values():
        assert any(task.startswith("Open the carton") for task in cfg.task_masks)
        assert cfg.policy.pretrained_path == "lerobot/smolvla_base"


def test_layered_configs_and_overrides():
    cfg = load_config(
        [CYCLE[0], CONFIGS / "demo_overrides.yaml"],
        ["train.steps=7", "policy.overrides.chunk_size=5", "anchor.lambda_anchor=1"],
    )
    assert cfg.policy.pretrained_path == "tiny" and cfg.train.steps == 7
    assert cfg.policy.overrides == {"chunk_size": 5}
    assert cfg.anchor.lambda_anchor == 1.0 and isinstance(cfg.anchor.lambda_anchor, float)
    assert cfg.task_masks == load_config(CYCLE[0]).task_masks  # a layer replaces task_masks, never merges


def write(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_unknown_key_names_key_and_file(tmp_path):
    path = write(tmp_path, "run_name: x\ndata: {manifest: m.csv, reward_stats: s.json, batchsize: 3}\n")
    with pytest.raises(ConfigError, match=r"c.yaml: unknown key\(s\) `data.batchsize`"):
        load_config(path)
    with pytest.raises(ConfigError, match=r"c.yaml .*unknown key\(s\) `trian`"):
        load_config(write(tmp_path, "run_name: x\ndata: {manifest: m.csv}\n"), ["trian.steps=3"])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("data: {manifest: m.csv}\n", "missing required key `run_name`"),
        ("run_name: x\ndata: {manifest: m.csv, batch_size: eight}\n", "`data.batch_size` must be int, got 'eight'"),
        ("run_name: x\ndata: {manifest: m.csv}\nanchor: {mode: fast}\n", "`anchor.mode` must be one of"),
        ("run_name: x\ndata: {manifest: m.csv}\nreward_weighting: {enabled: yes}\n", "`data.reward_stats` is required"),
        ("run_name: x\ndata: {manifest: m.csv}\ntask_masks: {a: [0, x]}\n", r"`task_masks.a\[1\]` must be int"),
        ("run_name: x\ndata: {manifest: m.csv}\nanchor: {enabled: 1}\n", "`anchor.enabled` must be bool"),
        ("run_name: x\ndata: {manifest: m.csv}\nreward_weighting: {enabled: false, clip_min: 2, clip_max: 1}\n",
         "clip_min"),
        ("run_name: x\ndata: {manifest: m.csv}\nreward_weighting: {enabled: false, clip_min: -0.1}\n", "clip_min"),
        ("run_name: x\ndata: {manifest: m.csv}\nreward_weighting: {enabled: false, normalize: phase}\n",
         "`reward_weighting.normalize: phase` needs `reward_weighting.apply: sample`"),
        ("run_name: x\ndata: {manifest: m.csv}\nreward_weighting: {enabled: false, phase_bins: 0}\n",
         "`reward_weighting.phase_bins` must be >= 1"),
        ("run_name: x\ndata: {manifest: m.csv}\nreward_weighting: {enabled: false, unlocated_failures: drop}\n",
         "`reward_weighting.unlocated_failures: drop` needs `reward_weighting.apply: sample`"),
        ("run_name: x\ndata: {manifest: m.csv}\nreward_weighting: {enabled: false, signal: oracle, credit_horizon: 0}\n",
         "`reward_weighting.credit_horizon` must be >= 1"),
        ("run_name: x\ndata: {manifest: m.csv}\nreward_weighting: {enabled: false, credit_horizon: 20}\n",
         r"`reward_weighting.credit_horizon` applies to the per-chunk signals \(`chunk_advantage`, `chunk_q`, `oracle`\)"),
        ("run_name: x\ndata: {manifest: m.csv, reward_stats: s.json, value_file: v.parquet}\n"
         "reward_weighting: {signal: chunk_q, apply: sample}\n",
         "`reward_weighting.signal: chunk_q` needs `reward_weighting.normalize: phase`"),
        ("run_name: x\ndata: {manifest: m.csv, reward_stats: s.json}\n"
         "reward_weighting: {signal: chunk_q, apply: sample, normalize: phase}\n",
         "`data.value_file` is required by `reward_weighting.signal: chunk_q`"),
        ("run_name: x\ndata: {manifest: m.csv}\nreward_weighting: {enabled: false}\ntrain: {val_every_epochs: 0}\n",
         "`train.val_every_epochs` must be >= 1"),
        ("run_name: x\ndata: {manifest: m.csv}\nreward_weighting: {enabled: false}\nreplay: {manifest: r.csv}\n",
         "`replay.anchor` needs the anchor on"),
        ("run_name: x\ndata: {manifest: m.csv}\nreward_weighting: {enabled: false}\n"
         "replay: {manifest: r.csv, anchor: false}\n", "neither `replay.anchor` nor `replay.imitate`"),
        ("run_name: x\ndata: {manifest: m.csv}\nreward_weighting: {enabled: false}\n"
         "replay: {batch_size: 0}\n", "`replay.batch_size` must be >= 1"),
        ("run_name: x\ndata: {manifest: m.csv}\nreward_weighting: {enabled: false}\n"
         "conditioning: {label_rule: episode, positive_threshold: 1}\n",
         "`conditioning.positive_threshold` is read by `label_rule: advantage` only, not `episode`"),
        ("run_name: x\ndata: {manifest: m.csv}\nconditioning: {label_rule: mean}\n", "`conditioning.label_rule` must be one of"),
        ("run_name: x\ndata: {manifest: m.csv}\nreward_weighting: {enabled: false, signal: chunk_q}\n"
         "conditioning: {enabled: true, label_rule: advantage}\n",
         "`data.value_file` is required by `reward_weighting.signal: chunk_q`"),
        ("run_name: x\ndata: {manifest: m.csv}\nreward_weighting: {enabled: false, credit_horizon: 20}\n"
         "conditioning: {enabled: true, label_rule: episode}\n",
         r"`reward_weighting.credit_horizon` applies to .* and to `conditioning.label_rule` advantage and damage"),
        ("run_name: x\ndata: {manifest: m.csv}\nanchor: {enabled: true, replay_manifest: r.csv}\n",
         "`anchor.replay_manifest` is now `replay.manifest`"),
    ],
)
def test_bad_values(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, text))


def test_the_conditioned_recipe_needs_no_value_model_until_a_rule_reads_the_signal():
    """recipe_conditioned.yaml labels by episode: it loads without a value file and its run reads the
    outcome statistics; RECAP's rule (or weighting) reads the per-chunk signal, so then the file is required."""
    layers = [CONFIGS / "train_cycle1_rwfm_anchor_cracked_factor.yaml", CONFIGS / "recipe_conditioned.yaml"]
    recipe = load_config(layers)
    assert (recipe.data.value_file, recipe.reward_weighting.signal, signal_read(recipe)) == (None, "chunk_q", "outcome")
    assert signal_read(load_config(layers, ["conditioning.label_rule=damage"])) == "outcome"
    with pytest.raises(ConfigError, match="`data.value_file` is required by `reward_weighting.signal: chunk_q`"):
        load_config(layers, ["conditioning.label_rule=advantage", "conditioning.positive_share=null"])
    recap = load_config(layers, ["conditioning.label_rule=advantage", "data.value_file=v.parquet"])
    assert signal_read(recap) == "chunk_q"


def test_missing_file_and_bad_override(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not of the form key=value"):
        load_config(write(tmp_path, "run_name: x\ndata: {manifest: m.csv}\n"), ["train.steps"])


def test_training_settings_drop_only_speed_keys():
    cfg = to_dict(load_config([CONFIGS / "train_cycle1_baseline_il.yaml"]))
    faster = {**cfg, "data": {**cfg["data"], "num_workers": 7, "cache_items": True}}
    assert training_settings(faster) == training_settings(cfg)
    assert "cache_items" not in training_settings(cfg)["data"] and training_settings(cfg)["data"]["batch_size"] == 8
    older = {**cfg, "data": {k: v for k, v in cfg["data"].items() if k != "cache_items"}}  # saved before the key
    assert training_settings(older) == training_settings(cfg)
    assert training_settings({**cfg, "seed": 1}) != training_settings(cfg)


def test_training_settings_ignore_normalization_counts_only_while_weighting_is_off():
    """With weighting off every frame weighs 1, so both counts give the same statistics; with it on they differ."""
    il = to_dict(load_config([CONFIGS / "train_cycle1_baseline_il.yaml"]))
    assert not il["reward_weighting"]["enabled"]
    by_weight = {**il, "reward_weighting": {**il["reward_weighting"], "normalization_counts": "weight"}}
    assert training_settings(by_weight) == training_settings(il)
    on = {**il, "reward_weighting": {**il["reward_weighting"], "enabled": True}}
    on_by_weight = {**on, "reward_weighting": {**on["reward_weighting"], "normalization_counts": "weight"}}
    assert training_settings(on_by_weight) != training_settings(on)
