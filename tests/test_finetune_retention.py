"""Fine-tuning from a checkpoint with it as the anchor's reference: the retention validation loss of tasks
the data lacks, the checkpoint's normalisation kept, and a bit-identical resume."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import ALL_ROWS, PLACE, train_until_first_checkpoint, write_manifest
from safetensors.torch import load_file
from test_train import config, setup, step_log  # noqa: F401 (setup is a fixture)

from crab.training import reward_stats, train
from crab.training.config import ConfigError

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def base(setup):  # noqa: F811
    """A base run on every dataset (both tasks), IL; and the manifests of a fine-tuning on the egg task
    with the carton task held out for retention."""
    run = train.train(config(setup, "base", **{"train.steps": 4, "train.save_every": 4,
                                               "reward_weighting.enabled": "false", "anchor.enabled": "false"}))  # fmt: skip
    folder = setup["out"].parent
    egg = write_manifest(folder / "egg.csv", [r for r in ALL_ROWS if r[1] != "Open the carton."])
    carton = write_manifest(folder / "carton.csv", [r for r in ALL_ROWS if r[1] == "Open the carton."])
    stats = folder / "egg_stats.json"
    reward_stats.main(["--manifest", str(egg), "--out", str(stats), "--data-root", str(setup["data_root"]),
                       "--chunk-size", "10"])  # fmt: skip
    return {"checkpoint": run / "step_000004", "egg": egg, "carton": carton, "stats": stats}


def finetune_config(setup, base, name, **extra):  # noqa: F811
    checkpoint = base["checkpoint"].as_posix()
    return config(setup, name, **{
        "data.manifest": base["egg"].as_posix(),
        "data.reward_stats": base["stats"].as_posix(),
        "data.retention_manifest": base["carton"].as_posix(),
        "data.val_episodes_per_dataset": 1,
        "policy.pretrained_path": checkpoint,
        "policy.normalization": "pretrained",
        "anchor.reference": checkpoint,
        "train.steps": 6,
        "train.save_every": 3,
        **extra,
    })  # fmt: skip


def test_finetuning_logs_retention_keeps_normalisation_and_pulls_to_the_checkpoint(setup, base):  # noqa: F811
    run = train.train(finetune_config(setup, base, "finetune", **{"anchor.warmup_steps": 0, "anchor.ramp_steps": 0}))
    summaries = json.loads((run / "epoch_summary.json").read_text())
    val = [s["val_loss"] for s in summaries if s["val_loss"]]
    assert val, "no validation ran"
    assert set(val[0]) == {"clean", "cracked", "retention: Open the carton."}
    assert all(v > 0 for v in val[0].values())
    assert "val_loss_retention: Open the carton." in (run / "epoch_summary.csv").read_text().splitlines()[0]
    assert (run / "plots" / "val_loss.png").stat().st_size > 0

    def normalizer(step):
        return load_file(next((step / "pretrained_model").glob("*preprocessor*normalizer_processor.safetensors")))

    ours, theirs = normalizer(run / "step_000006"), normalizer(base["checkpoint"])
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)

    logged = step_log(run)
    # The policy starts as the reference: no anchor loss at the first step, then it grows.
    assert logged[0]["lambda_anchor"] > 0 and logged[0]["loss_anchor"] == 0.0 and logged[-1]["loss_anchor"] > 0


def test_resume_with_a_checkpoint_reference_and_replay_is_bit_identical(setup, base, monkeypatch):  # noqa: F811
    """Anchored to the base on the egg batches and on replayed frames of another dataset (image-encoded;
    its training split holds 2 replay batches, so their epochs turn over), interrupted and resumed."""
    images = write_manifest(setup["out"].parent / "replay.csv", [("images", PLACE, "clean")])
    replay = {"anchor.replay_manifest": images.as_posix(), "anchor.replay_batch_size": 3}
    straight = train.train(finetune_config(setup, base, "ft_straight", **replay))
    cfg = finetune_config(setup, base, "ft_interrupted", **replay)
    train_until_first_checkpoint(monkeypatch, cfg)
    other = finetune_config(setup, base, "ft_interrupted", **{**replay, "anchor.reference": "null"})
    with pytest.raises(ConfigError, match=r"cannot resume .* differs in \['anchor'\]"):
        train.train(other, resume=str(cfg.run_dir / "step_000003"))
    resumed = train.train(cfg, resume=str(cfg.run_dir / "step_000003"))
    a, b = step_log(straight), step_log(resumed)
    for key in ("loss", "loss_anchor", "grad_norm"):
        assert [r[key] for r in a] == [r[key] for r in b], key
    assert a[-1]["loss_anchor"] > 0
    weights = [load_file(run / "step_000006" / "pretrained_model" / "model.safetensors") for run in (straight, resumed)]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_retention_manifest_must_hold_other_tasks(setup, base):  # noqa: F811
    cfg = finetune_config(setup, base, "overlap", **{"data.retention_manifest": base["egg"].as_posix()})
    with pytest.raises(ConfigError, match="also in the training manifest"):
        train.train(cfg)
    with pytest.raises(ConfigError, match="no policy at"):
        train.train(finetune_config(setup, base, "noref", **{"anchor.reference": "outputs/nowhere/step_000001"}))
