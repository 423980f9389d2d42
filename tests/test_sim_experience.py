"""The experience loop: its datasets by outcome, its manifests, and a miniature run from a compare work dir."""

from __future__ import annotations

import csv
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from crab.sim import compare, experience
from crab.sim.egg_env import IMAGE_KEY, PUT_EGG
from crab.sim.evaluate import EpisodeRun

REPO = Path(__file__).resolve().parents[1]


def run(success: bool, cracked: bool) -> EpisodeRun:
    return EpisodeRun(success, cracked, 0.0, "", {"action": np.zeros((3, 4), np.float32)}, np.zeros((32, 32, 3)))


def test_every_attempt_goes_to_one_dataset():
    ends = {(True, False): "own_success", (False, True): "own_cracked", (False, False): "own_failed"}
    for (success, cracked), name in ends.items():
        assert [o.name for o in experience.OWN if o.keeps(run(success, cracked))] == [name]


def read_manifest(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_manifests_add_the_written_own_datasets_to_the_regimes(tmp_path):
    data_root = tmp_path / "data"
    folder = experience.seed_dir(data_root, "il_clean", 2)
    written = {"own_success": 5, "own_failed": 3}  # too few cracks to hold one out: not written
    clean = compare.manifest_path(experience.REGIME.clean)
    mixed = compare.manifest_path(experience.REGIME.mixed)
    for row, source, own in [("ft_clean", clean, []), ("ft_own_success", clean, ["own_success"]),
                             ("ft_cond_own", clean, ["own_success", "own_failed"]),
                             ("ft_cond_all", mixed, ["own_success", "own_failed"])]:  # fmt: skip
        path = experience.write_manifest(tmp_path / f"{row}.csv", experience.ROW[row], folder, data_root, written)
        rows = read_manifest(path)
        assert rows[: len(read_manifest(REPO / source))] == read_manifest(REPO / source)
        added = rows[len(read_manifest(REPO / source)) :]
        assert [r["name"] for r in added] == own
        for r in added:
            assert r["root"] == f"experience_il_clean_seed2/{r['name']}" and r["task"] == PUT_EGG
            assert r["quality"] == {"own_success": "clean", "own_failed": "failed"}[r["name"]]


@pytest.mark.slow
def test_miniature_experience_loop(tmp_path, monkeypatch, capfd):
    """A compare work dir with a base run, then the loop: collect, write, fine-tune from the base, evaluate; rerun
    reuses every part."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    monkeypatch.chdir(REPO)  # the cycle configs and manifests are repository paths
    work = tmp_path / "work"
    compare.main(["--work-dir", str(work), "--seeds", "1", "--episodes", "1", "--steps", "2", "--batch-size", "4",
                  "--scarce-clean", "1", "--scarce-damaging", "2", "--scarce-failed", "1", "--regimes",
                  "scarce_eggonly", "--methods", "il_clean", "--jobs", "1"])  # fmt: skip
    argv = ["--work-dir", str(work), "--base-steps", "2", "--seeds", "1", "--rollouts", "3", "--steps", "2",
            "--episodes", "1", "--batch-size", "4", "--jobs", "1"]  # fmt: skip
    result = experience.main(argv)
    assert capfd.readouterr().out.splitlines()[-1].startswith("experience loop: best fine-tune")
    collected = result["collected"][0]
    # A policy trained 2 steps never delivers the egg: its 3 attempts are one dataset, the failures'.
    assert sum(collected["outcomes"].values()) == 3 and collected["outcomes"]["success"] == 0
    assert sum(collected["datasets"].values()) == 3
    folder = experience.seed_dir(work / "data_scarce", "il_clean", 0)
    for name, episodes in collected["datasets"].items():
        dataset = LeRobotDataset(f"crab/{name}_seed0", root=folder / name)
        assert dataset.meta.total_episodes == episodes
        assert dataset[0][IMAGE_KEY].shape == (3, 32, 32)
    # What was recorded is what the policy does again on the same scene (its noise seeded by the scene): the
    # first attempt is episode 0 of its dataset.
    base = work / "runs_scarce_eggonly" / "il_clean_seed0" / "step_000002"
    again = experience.collect(base, 0, 1, 5, 32)[0]
    (name,) = [o.name for o in experience.OWN if o.keeps(again)]
    dataset = LeRobotDataset(f"crab/{name}_seed0", root=folder / name)
    first = dataset.hf_dataset.filter(lambda r: r["episode_index"] == 0)
    np.testing.assert_allclose(np.stack(first["action"]), again.frames["action"])
    assert set(result["pooled"]) == {"base", *(r.name for r in experience.ROWS), "ft_cond_own_asked_negative"}
    for row in experience.ROWS:
        saved = yaml.safe_load((work / "experience_il_clean" / "runs" / f"{row.name}_seed0" / "step_000002"
                                / "crab_config.yaml").read_text())  # fmt: skip
        assert saved["policy"]["pretrained_path"] == str(base) and saved["policy"]["normalization"] == "pretrained"
        assert saved["conditioning"]["enabled"] == row.name.startswith("ft_cond")
    # The conditioned row's labels: the clean transfer positive, the policy's failures negative.
    stats = json.loads((work / "experience_il_clean" / "reward_stats_ft_cond_own_seed0.json").read_text())
    assert name in stats["per_dataset"] and 0 < stats["advantage_labels"]["positive_share"] < 1
    # RECAP's rule reads a value model fitted on the row's own manifest.
    saved = yaml.safe_load((work / "experience_il_clean" / "runs" / "ft_cond_own_advantage_seed0" / "step_000002"
                            / "crab_config.yaml").read_text())  # fmt: skip
    values = work / "experience_il_clean" / "values_ft_cond_own_advantage_seed0.parquet"
    assert saved["data"]["value_file"] == str(values) and values.is_file()
    text = (work / "experience_il_clean.md").read_text()
    assert "| `ft_cond_own_asked_negative` |" in text and "| `ft_cond_own_advantage` |" in text
    capfd.readouterr()
    again_result = experience.main(argv)
    assert f"reusing {folder}" in capfd.readouterr().out
    assert again_result["pooled"] == result["pooled"]
    # A base saved after its collection (retrained) makes it stale: collected again, and none of the seed's
    # fine-tunings is reused.
    later = time.time() + 60
    os.utime(base / "pretrained_model", (later, later))
    experience.main([*argv, "--rows", "ft_clean"])
    assert f"reusing {folder}" not in capfd.readouterr().out
    assert not (work / "experience_il_clean" / "runs" / "ft_own_success_seed0").exists()
