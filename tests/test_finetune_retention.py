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
    """Anchored to the base on the egg batches and on replayed frames of another dataset, which it also
    imitates (rehearsal; image-encoded; its training split holds 2 replay batches, so their epochs turn
    over), interrupted and resumed."""
    images = write_manifest(setup["out"].parent / "replay.csv", [("images", PLACE, "clean")])
    replay = {"replay.manifest": images.as_posix(), "replay.batch_size": 3, "replay.imitate": True}
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


def test_interpolated_policy_mixes_the_weights_and_loads_in_lerobot(setup, base, tmp_path):  # noqa: F811
    """`crab.training.interpolate`: base + mix x (fine-tuned - base) per tensor, a checkpoint lerobot loads
    (through Crab's evaluation actor); refused onto an existing folder or across normalisations."""
    from safetensors.torch import save_file

    from crab.sim.policy_eval import SmolVLAActor
    from crab.training import interpolate

    tuned = train.train(finetune_config(setup, base, "to_mix", **{"train.steps": 3, "train.save_every": 3})) / "step_000003"
    out = tmp_path / "mixed"
    args = ["--base", str(base["checkpoint"]), "--finetuned", str(tuned), "--mix", "0.25", "--out", str(out)]
    assert interpolate.main(args) == out
    a, b, mixed = (load_file(p / "pretrained_model" / "model.safetensors") for p in (base["checkpoint"], tuned, out))
    assert any(not torch.equal(a[k], b[k]) for k in a)  # fine-tuning moved some weights
    for k in a:
        torch.testing.assert_close(mixed[k], a[k] + 0.25 * (b[k] - a[k]))
    assert (out / "crab_config.yaml").is_file() and not (out / "training_state.pt").exists()
    loaded = SmolVLAActor(out, device="cpu").policy.state_dict()
    assert all(torch.equal(loaded[k].cpu(), mixed[k]) for k in mixed if k in loaded)

    with pytest.raises(SystemExit, match="exists"):
        interpolate.main(args)
    other = tmp_path / "other_stats"
    (other / "pretrained_model").mkdir(parents=True)
    for f in (tuned / "pretrained_model").iterdir():
        (other / "pretrained_model" / f.name).write_bytes(f.read_bytes())
    (stats_file,) = (other / "pretrained_model").glob("*preprocessor*normalizer_processor.safetensors")
    stats = load_file(stats_file)
    save_file({k: v * 2 if v.is_floating_point() else v for k, v in stats.items()}, stats_file)
    with pytest.raises(SystemExit, match="normalise their inputs differently"):
        interpolate.main(["--base", str(base["checkpoint"]), "--finetuned", str(other), "--mix", "0.5", "--out", str(tmp_path / "x")])
    assert not (tmp_path / "x").exists()
