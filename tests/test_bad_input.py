"""Bad input and faults (issue 30): nothing lost, nothing silent. Each test is one of the issue's items: a
clear one-line error naming the file, column or key, before any long work, and no file removed that the
command did not write."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import ALL_ROWS, OPEN, PLACE, train_until_first_checkpoint, write_manifest
from test_train import CONFIGS, config, setup, step_log  # noqa: F401 (setup: the training data fixture)
from test_value_fit import FIT, fitted, roots  # noqa: F401 (fixtures: value-fit data and its value files)

from crab.data import frame_cache
from crab.training import reward_stats, train, value_fit
from crab.training.config import ConfigError, RewardWeightingConfig, load_config
from crab.training.manifest import ManifestError, load_manifest
from crab.training.rewards import RewardSpec


def _tree(folder):
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))


# --- 1. frame_cache --out never removes a folder it did not write -------------------------------------------


def test_frame_cache_refuses_an_out_folder_it_did_not_write(data_root, tmp_path):
    manifest = write_manifest(tmp_path / "m.csv", [("clean", PLACE, "clean")])
    copy = tmp_path / "data"
    shutil.copytree(data_root / "clean", copy / "clean")
    (copy / "not_in_the_manifest.txt").write_text("keep me")
    before = _tree(copy)
    # --out set to the data root: it holds the datasets, not a frame cache
    args = ["--manifest", str(manifest), "--data-root", str(copy), "--resolution", "24x20"]
    with pytest.raises(SystemExit, match=r"^error: --out .*data exists and is not a frame cache \(no frame_cache.json\)"):
        frame_cache.main([*args, "--out", str(copy)])
    assert _tree(copy) == before
    # a cache it built is replaced; a file someone added to it makes it no longer only its own
    cache = tmp_path / "cache"
    frame_cache.main([*args, "--out", str(cache)])
    (cache / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit, match=r"it holds notes.txt, which no frame cache holds"):
        frame_cache.main([*args, "--out", str(cache)])
    assert (cache / "notes.txt").read_text() == "mine"
    # a folder in the way of the build (DIR.partial) that it did not write is refused, not removed
    (cache / "notes.txt").unlink()
    (tmp_path / "cache.partial").mkdir()
    (tmp_path / "cache.partial" / "precious.csv").write_text("1")
    with pytest.raises(SystemExit, match=r"cache.partial is in the way of the frame cache and is not one this command wrote"):
        frame_cache.main([*args, "--out", str(cache)])
    assert (tmp_path / "cache.partial" / "precious.csv").is_file()


# --- 2. resume compares the files behind the paths ----------------------------------------------------------


@pytest.mark.slow
def test_resume_refuses_inputs_changed_at_the_same_paths(setup, tmp_path, monkeypatch):  # noqa: F811
    stats = tmp_path / "stats.json"
    shutil.copy(setup["stats"], stats)
    base = train.train(config(setup, "ref_base", **{"train.steps": 2, "train.save_every": 2}))
    reference = tmp_path / "reference"
    shutil.copytree(base / "step_000002", reference)
    common = {"train.steps": 4, "train.save_every": 2, "data.reward_stats": stats.as_posix()}
    cfg = config(setup, "changed_inputs", **common, **{"anchor.reference": reference.as_posix()})
    train_until_first_checkpoint(monkeypatch, cfg)
    checkpoint = str(cfg.run_dir / "step_000002")
    # statistics recomputed in place (their data fingerprint still matches: only what training uses changed)
    changed = json.loads(stats.read_text())
    changed["overall"]["signal"]["std"] *= 2
    stats.write_text(json.dumps(changed))
    with pytest.raises(train.TrainingError, match=r"cannot resume .* input\(s\) changed .*: reward_stats \(saved \w+, now \w+\)"):
        train.train(cfg, resume=checkpoint)
    shutil.copy(setup["stats"], stats)
    # the reference folder's contents replaced by another checkpoint
    other = train.train(config(setup, "ref_other", **{"train.steps": 2, "train.save_every": 2, "seed": 7}))
    shutil.rmtree(reference)
    shutil.copytree(other / "step_000002", reference)
    with pytest.raises(train.TrainingError, match=r"input\(s\) changed .*: reference \(saved"):
        train.train(cfg, resume=checkpoint)
    shutil.rmtree(reference)
    shutil.copytree(base / "step_000002", reference)
    assert (train.train(cfg, resume=checkpoint) / "step_000004").is_dir()


# --- 3. a missing dataset folder is named by its manifest row, for every manifest ---------------------------


@pytest.mark.slow
@pytest.mark.parametrize("key", ["data.manifest", "data.retention_manifest", "replay.manifest"])
def test_a_missing_dataset_folder_names_its_manifest_row(setup, tmp_path, key):  # noqa: F811
    missing = write_manifest(tmp_path / "missing.csv", [("stepwise", OPEN, "clean"), ("gone", OPEN, "clean")])
    extra = {key: missing.as_posix()}
    if key == "data.retention_manifest":
        extra |= {"data.manifest": write_manifest(tmp_path / "egg.csv", ALL_ROWS[:2]).as_posix(),
                  "data.val_episodes_per_dataset": 1, "data.reward_stats": "null", "reward_weighting.enabled": "false"}  # fmt: skip
    if key == "data.manifest":
        extra |= {"data.reward_stats": "null", "reward_weighting.enabled": "false"}
    with pytest.raises(ManifestError, match=r"missing.csv:3: dataset 'gone': no LeRobot dataset at .*gone"):
        train.train(config(setup, f"missing_{key}", **{"train.steps": 1, **extra}))


# --- 4. a reference of another action space ------------------------------------------------------------------


@pytest.mark.slow
def test_a_reference_of_another_action_space_is_refused(setup, tmp_path, capsys):  # noqa: F811
    base = train.train(config(setup, "space_base", **{"train.steps": 1, "train.save_every": 1}))
    reference = tmp_path / "three_d"
    shutil.copytree(base / "step_000001" / "pretrained_model", reference)
    saved = json.loads((reference / "config.json").read_text())
    saved["output_features"]["action"]["shape"] = [3]  # trained on 3-D actions: the same padded weight shapes
    (reference / "config.json").write_text(json.dumps(saved))
    with pytest.raises(ConfigError, match=r"anchor.reference .*three_d: trained on `action` of shape \(3,\), this run's data has \(4,\)"):
        train.train(config(setup, "space", **{"train.steps": 1, "anchor.reference": reference.as_posix()}))
    capsys.readouterr()
    # the log says which reference anchors: with a reference of the policy's space, not the starting policy
    train.train(config(setup, "space_ok", **{"train.steps": 1, "anchor.reference": (base / "step_000001").as_posix()}))
    assert "the anchor's frozen reference is the starting policy" not in capsys.readouterr().out


# --- 5. fix commands keep the fit's settings and never write over another manifest's file -------------------


def test_value_file_fix_commands_keep_settings_and_another_manifests_file(roots, fitted, tmp_path):  # noqa: F811
    root, manifest = roots[False]
    table = pq.read_table(root / "values.parquet")
    meta = json.loads(table.schema.metadata[value_fit.METADATA_KEY])
    meta["settings"]["expectile"] = 0.9  # fitted with --expectile 0.9: stale for today's data and settings
    stale = tmp_path / "values.parquet"
    pq.write_table(table.replace_schema_metadata({value_fit.METADATA_KEY: json.dumps(meta).encode()}), stale)
    rows = load_manifest(manifest, root)
    with pytest.raises(ManifestError, match=r"stale value file.*refit it with its settings: .* --expectile 0\.9"):
        value_fit.load_values(stale, rows, RewardSpec(chunk_size=3), manifest, root)
    # the value file of another manifest (other datasets): named so, and the fix writes a file of its own
    other = write_manifest(tmp_path / "other.csv", [("dense", PLACE, "clean")])
    with pytest.raises(ManifestError, match=r"the value file of another manifest .*--out \S*values_other.parquet") as e:
        value_fit.load_values(root / "values.parquet", load_manifest(other, root), RewardSpec(chunk_size=3), other, root)
    assert "stale" not in str(e.value)


# --- 6. reward_stats --unlocated-failures drop on data whose failures are all unlocated -----------------------


def test_reward_stats_drop_of_every_episode_of_a_task_is_refused_before_writing(data_root, tmp_path, capsys):
    failed = write_manifest(tmp_path / "failed.csv", [("clean", PLACE, "failed")])
    out = tmp_path / "stats.json"
    args = ["--data-root", str(data_root), "--chunk-size", "10", "--unlocated-failures", "drop"]
    refusal = r"^error: .*{}: task\(s\) \['Put the egg into the tray.'\]: every training episode failed without a damage step"
    with pytest.raises(SystemExit, match=refusal.format("failed.csv")):
        reward_stats.main(["--manifest", str(failed), "--out", str(out), *args])
    assert not out.exists()
    # a task whose every episode is dropped, beside one that is not: refused too, naming it; nothing written
    mixed = write_manifest(tmp_path / "mixed.csv", [("clean", PLACE, "failed"), ("stepwise", OPEN, "clean")])
    with pytest.raises(SystemExit, match=refusal.format("mixed.csv")):
        reward_stats.main(["--manifest", str(mixed), "--out", str(out), *args, "--phase-bins", "2"])
    assert not out.exists() and "nan" not in capsys.readouterr().out


# --- 7. a truncated value file is named ----------------------------------------------------------------------


def test_a_truncated_value_file_is_named(roots, fitted, tmp_path):  # noqa: F811
    root, manifest = roots[False]
    cut = tmp_path / "values.parquet"
    data = (root / "values.parquet").read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ManifestError, match=r"values.parquet: not a readable parquet file .*copy it again or refit it"):
        value_fit.load_values(cut, load_manifest(manifest, root), RewardSpec(chunk_size=3), manifest, root)
    with pytest.raises(SystemExit, match=r"^error: .*values.parquet: not a readable parquet file"):
        reward_stats.main(["--manifest", str(manifest), "--out", str(tmp_path / "s.json"), "--data-root", str(root),
                           "--signal", "chunk_q", "--value-file", str(cut)])  # fmt: skip


# --- 8. manifests from a spreadsheet: BOM, CRLF ---------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-8"])
@pytest.mark.parametrize("newline", ["\n", "\r\n", "\r"])
def test_manifest_with_bom_and_any_line_ending(data_root, tmp_path, encoding, newline):
    lines = ["name, repo_id ,root,task,quality,cycle", f"clean,crab_test/clean,clean,{PLACE},clean,cycle1"]
    path = tmp_path / "m.csv"
    path.write_bytes(newline.join(lines).encode(encoding) + newline.encode())
    (row,) = load_manifest(path, data_root)
    assert (row.name, row.task, row.cycles) == ("clean", PLACE, ("cycle1",))
    path.write_bytes("name,repo_id\nÉ,x\n".encode("latin-1"))
    with pytest.raises(ManifestError, match=r"m.csv: not UTF-8 text .*save it as CSV UTF-8"):
        load_manifest(path, data_root)


# --- 9. Windows paths in a YAML config and in --set -----------------------------------------------------------


def test_windows_paths_in_yaml_and_overrides_name_the_file_and_key(tmp_path):
    layer = tmp_path / "windows.yaml"
    off = "reward_weighting:\n  enabled: false\n"
    layer.write_text(off + 'run_name: w\ndata:\n  manifest: m.csv\n  value_file: "C:\\data\\values.parquet"\n')
    with pytest.raises(ConfigError, match=r"windows.yaml: not valid YAML \(line 6, column .*\): .*single quotes"):
        load_config(layer)
    layer.write_text(off + "run_name: w\ndata:\n  manifest: m.csv\n  value_file: 'C:\\data\\values.parquet'\n")
    assert load_config(layer).data.value_file == "C:\\data\\values.parquet"
    with pytest.raises(ConfigError, match=r"`data.value_file` holds the control character '\\t' .*forward slashes"):
        load_config(layer, ['data.value_file="C:\\tmp\\values.parquet"'])
    assert load_config(layer, ["data.value_file=C:\\tmp\\values.parquet"]).data.value_file == "C:\\tmp\\values.parquet"
    with pytest.raises(ConfigError, match=r"override 'train.steps=\[1': not valid YAML"):
        load_config(layer, ["train.steps=[1"])


# --- 10. the smaller ones --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flag", "message"),
    [(["--image-size", "0"], "--image-size must be >= 1"), (["--batch-size", "0"], "--batch-size must be >= 1"),
     (["--hidden", "0"], "--hidden must be >= 1"), (["--lr", "nan"], "--lr must be a positive finite number")],
)  # fmt: skip
def test_value_fit_settings_are_checked_before_any_frame_is_decoded(tmp_path, flag, message):
    with pytest.raises(SystemExit, match=message):
        value_fit.main(["--manifest", str(tmp_path / "absent.csv"), "--out", str(tmp_path / "v.parquet"), *flag])


def test_value_fit_out_naming_a_folder_is_refused_before_the_fit(roots, tmp_path, monkeypatch):  # noqa: F811
    root, manifest = roots[False]
    monkeypatch.setattr(value_fit, "read_frames", lambda *a, **k: pytest.fail("decoded frames for a bad --out"))
    with pytest.raises(SystemExit, match=r"^error: --out .* is a folder; name the file to write"):
        value_fit.main(["--manifest", str(manifest), "--data-root", str(root), "--out", str(tmp_path), *FIT])
    assert _tree(tmp_path) == []


def test_outputs_are_written_with_the_umask_and_leave_no_temporary_file(data_root, tmp_path):
    manifest = write_manifest(tmp_path / "m.csv", ALL_ROWS)
    umask = os.umask(0o022)
    try:
        reward_stats.main(["--manifest", str(manifest), "--out", str(tmp_path / "s.json"), "--data-root", str(data_root)])
    finally:
        os.umask(umask)
    assert (tmp_path / "s.json").stat().st_mode & 0o777 == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.csv", "s.json"]


def test_a_fold_whose_validation_loss_is_never_finite_is_named(roots):  # noqa: F811
    frames = value_fit.Frames(
        dataset=np.zeros(8, int), index=np.arange(8), episode_index=np.repeat([0, 1], 4), frame_index=np.arange(8) % 4,
        task=np.zeros(8, int), time_s=np.zeros(8), state=np.zeros((8, 2), np.float32),
        images=np.zeros((8, 0, 4, 4), np.uint8), target=np.full(8, np.nan),
    )  # fmt: skip
    settings = value_fit.ValueFitSettings(epochs=2, hidden=4, batch_size=4)
    half = np.arange(8) < 4
    with pytest.raises(ManifestError, match=r"validation loss was not finite in any epoch"):
        value_fit.fit_fold(frames, half, ~half, ~half, settings, seed=0)


@pytest.mark.slow
def test_resume_refusal_names_the_changed_key_and_the_log_keeps_no_replayed_rows(setup, monkeypatch):  # noqa: F811
    cfg = config(setup, "relog", **{"train.steps": 4, "train.save_every": 2})
    train_until_first_checkpoint(monkeypatch, cfg)
    other = config(setup, "relog", **{"train.steps": 4, "train.save_every": 2, "reward_weighting.alpha": 0.5})
    with pytest.raises(ConfigError, match=r"differs in \['reward_weighting'\]: `reward_weighting.alpha` saved 4.0, now 0.5 \(") as e:
        train.train(other, resume=str(cfg.run_dir / "step_000002"))
    assert "clip_max" not in str(e.value)  # not the whole section
    # killed after steps 3 was logged (and mid-way through a row): the resumed run logs it once
    with open(cfg.run_dir / "train_log.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps({**step_log(cfg.run_dir)[-1], "step": 3}) + '\n{"loss": 0.')
    run = train.train(cfg, resume=str(cfg.run_dir / "step_000002"))
    assert [r["step"] for r in step_log(run)] == [1, 2, 3, 4]


def test_every_frame_left_after_drop_weighing_zero_is_named():
    """The kept frames all weigh 0 (clip_min 0, a large alpha) once `drop` removed the failure: refused, naming
    what to change, instead of a bare ValueError from the sampler."""
    from crab.training.weighting import DatasetFrames, WeightingError, run_weights

    damaged = DatasetFrames("damaged", PLACE, "cracked", np.full(3, -1.0), np.zeros(3, int), np.array([0, -1.0, 0]), np.zeros(3))
    failed = DatasetFrames("failed", PLACE, "failed", np.full(2, 1.0), np.zeros(2, int), np.zeros(2), np.zeros(2))
    rw = RewardWeightingConfig(alpha=1000.0, clip_min=0.0, apply="sample", unlocated_failures="drop")
    with pytest.raises(WeightingError, match=r"every training frame has RWFM weight 0 .*lower reward_weighting.alpha"):
        run_weights(rw, [damaged, failed], 0.0, 1.0)


@pytest.mark.parametrize(
    ("tool", "flag"),
    [(reward_stats, ["--chunk-size", "0"]), (reward_stats, ["--alpha", "nan"]), (reward_stats, ["--clip-min", "-1"]),
     (reward_stats, ["--positive-share", "1"]), (reward_stats, ["--positive-threshold", "1", "--label-rule", "episode"]),
     (frame_cache, ["--batch", "0"])],
)  # fmt: skip
def test_numbers_of_reward_stats_and_frame_cache_are_checked_first(tmp_path, tool, flag, capsys):
    with pytest.raises(SystemExit):
        tool.main(["--manifest", str(tmp_path / "absent.csv"), "--out", str(tmp_path / "out"), *flag])
    assert f"{flag[0]}" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_reward_stats_names_a_config_policy_checkpoint_that_does_not_exist(tmp_path):
    # A local checkpoint folder not written yet reaches the Hub client as a repo id; named, not a traceback.
    missing = (tmp_path / "runs" / "base_seed0" / "step_000010").as_posix()
    argv = ["--config", "crab/training/configs/train_cycle1_baseline_il.yaml", "--set", f"policy.pretrained_path={missing}",
            "--set", f"data.reward_stats={(tmp_path / 'stats.json').as_posix()}"]  # fmt: skip
    with pytest.raises(SystemExit, match=f"the chunk size of policy '{missing}' could not be read"):
        reward_stats.main(argv)
    assert not (tmp_path / "stats.json").exists()
