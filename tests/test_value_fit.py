"""The out-of-episode value model, the value file's staleness checks and the chunk-advantage signal end to end."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shlex
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from conftest import PLACE, synthetic_episode, write, write_manifest

from crab.training import reward_stats, rewards, train, value_fit
from crab.training.config import ConfigError, load_config
from crab.training.crab_dataset import CrabDataset, annotate, fingerprint
from crab.training.manifest import ManifestError, load_manifest
from crab.training.rewards import RewardSpec

CONFIGS = Path(__file__).resolve().parents[1] / "crab" / "training" / "configs"
SPEC = RewardSpec(chunk_size=3)
FIT = ["--folds", "3", "--epochs", "3", "--hidden", "16", "--image-size", "8", "--batch-size", "8", "--no-progress"]
# Dense rewards per episode; episode 2 is the one whose outcome the tests flip.
REWARDS = [[0, 0, 0, 0, 1], [0, 0, -1, 0, 0], [0, 0, 0, 0, 1], [0, -1, 0, 0, 0]]
FLIPPED = 2


def _write_root(root, flip: bool):
    """Identical frames in every root (same seed); only episode FLIPPED's rewards differ when `flip`."""
    rng = np.random.default_rng(0)
    episodes = []
    for e, r in enumerate(REWARDS):
        r = [-x for x in r] if flip and e == FLIPPED else r
        episodes.append(synthetic_episode(rng, PLACE, len(r), rewards=r))
    write(root, "dense", episodes)
    rng = np.random.default_rng(1)
    write(root, "sparse", [synthetic_episode(rng, PLACE, 4, labels={"success": s, "damage": 1 - s}) for s in (1, 0)])
    return write_manifest(root / "m.csv", [("dense", PLACE, "clean"), ("sparse", PLACE, "cracked")])


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    base = tmp_path_factory.mktemp("value_fit")
    return {flip: (base / str(flip), _write_root(base / str(flip), flip)) for flip in (False, True)}


@pytest.fixture(scope="module")
def fitted(roots):
    """The value file of each root, fitted by the command."""
    out = {}
    for flip, (root, manifest) in roots.items():
        path = root / "values.parquet"
        value_fit.main(["--manifest", str(manifest), "--data-root", str(root), "--out", str(path), *FIT])
        out[flip] = pq.read_table(path).to_pandas()
    return out


def test_value_file_columns_and_fingerprint(roots, fitted, capsys):
    root, manifest = roots[False]
    table = fitted[False]
    assert list(table.columns) == ["dataset_name", "index", "episode_index", "frame_index", "fold", "return_to_go", "value"]
    assert len(table) == sum(map(len, REWARDS)) + 8 and set(table["fold"]) == {0, 1, 2}
    # every episode lies in one fold; targets are the discounted returns-to-go of the step rewards
    assert (table.groupby(["dataset_name", "episode_index"])["fold"].nunique() == 1).all()
    dense = table[table.dataset_name == "dense"]
    assert dense["return_to_go"].tolist() == [1, 1, 1, 1, 1, -1, -1, -1, 0, 0, 1, 1, 1, 1, 1, -1, -1, 0, 0, 0]
    assert table[table.dataset_name == "sparse"]["return_to_go"].tolist() == [1] * 4 + [-1] * 4  # R_e at the end
    meta = value_fit.read_meta(root / "values.parquet")
    assert meta["settings"]["folds"] == 3 and set(meta["heldout"]) == {"rmse", "rmse_constant_per_task", "target_std"}
    values, loaded = value_fit.load_values(root / "values.parquet", load_manifest(manifest, root), SPEC, manifest, root)
    assert loaded["fingerprint"] == meta["fingerprint"]
    np.testing.assert_array_equal(values["dense"][1], dense["value"].to_numpy())


def test_an_episodes_values_never_see_its_own_outcome(fitted):
    """Flip one episode's outcome: its own values stay bit-identical (they come from the model of the other
    fold), while the episodes of the other fold, whose model trained on it, change."""
    same, flipped = fitted[False], fitted[True]
    own = (same.dataset_name == "dense") & (same.episode_index == FLIPPED)
    assert not np.array_equal(same.loc[own, "return_to_go"], flipped.loc[own, "return_to_go"])
    np.testing.assert_array_equal(same.loc[own, "value"].to_numpy(), flipped.loc[own, "value"].to_numpy())
    other_fold = same.fold != same.loc[own, "fold"].iloc[0]
    assert not np.array_equal(same.loc[other_fold, "value"].to_numpy(), flipped.loc[other_fold, "value"].to_numpy())


def test_missing_and_stale_value_files_are_refused_with_the_fix(roots, fitted, tmp_path):
    root, manifest = roots[True]
    rows = load_manifest(manifest, root)
    with pytest.raises(ManifestError, match=r"value file not found: .*nope.parquet.*python -m crab.training.value_fit"):
        value_fit.load_values(tmp_path / "nope.parquet", rows, SPEC, manifest, root)
    stale = roots[False][0] / "values.parquet"  # fitted on the other outcome of episode 2
    with pytest.raises(ManifestError, match="stale value file") as e:
        value_fit.load_values(stale, rows, SPEC, manifest, root)
    with pytest.raises(ManifestError, match="fitted with gamma 1.0, training uses 0.9"):
        value_fit.load_values(stale, rows, RewardSpec(chunk_size=3, gamma=0.9), manifest, root)
    # the printed command fixes it
    command = shlex.split(str(e.value).split("refit it with its settings: ")[1])
    assert command[:3] == ["python", "-m", "crab.training.value_fit"]
    fixed = tmp_path / "fixed.parquet"
    value_fit.main([*[str(fixed) if a == str(stale) else a for a in command[3:]], *FIT])
    assert value_fit.load_values(fixed, rows, SPEC, manifest, root)[1]["path"] == fixed.as_posix()


def test_items_carry_the_chosen_signal(roots, fitted):
    root, manifest = roots[False]
    rows = load_manifest(manifest, root)
    values, _ = value_fit.load_values(root / "values.parquet", rows, SPEC, manifest, root)
    outcome = CrabDataset(rows, SPEC)
    chunk = CrabDataset(rows, SPEC, signal="chunk_advantage", state_values=values)
    oracle = CrabDataset(rows, SPEC, signal="oracle")
    q = CrabDataset(rows, SPEC, signal="chunk_q", state_values=values)
    np.testing.assert_allclose(q.tables[0].signal - values["dense"][1], chunk.tables[0].signal, atol=1e-12)
    item, item_a, item_o = outcome[6], chunk[6], oracle[6]  # dense episode 1, t = 1: the crack at t = 2 ahead
    assert torch.equal(item["signal"], item["episode_reward"])  # outcome: G = R_e, as before
    assert item_o["signal"].item() == 0.0 and oracle[9]["signal"].item() == 1.0
    t = chunk.tables[0]
    expected = rewards.chunk_advantages(t.step_reward, values["dense"][1], t.episode_index, 3, 1.0)
    assert item_a["signal"].item() == pytest.approx(expected[6]) and np.array_equal(t.signal, expected)
    # the statistics fingerprint: outcome's is what it was before signal kinds; the others differ
    h = hashlib.sha256(json.dumps(SPEC.__dict__, sort_keys=True).encode())
    for row, table in zip(rows, outcome.tables, strict=True):
        h.update(json.dumps([row.name, row.repo_id, row.task, row.quality, list(row.cycles)]).encode())
        h.update(np.round(table.episode_reward, 9).astype(np.float64).tobytes())
    assert outcome.fingerprint == h.hexdigest()[:16]
    assert len({outcome.fingerprint, chunk.fingerprint, oracle.fingerprint, q.fingerprint}) == 4
    with pytest.raises(ManifestError, match="does not hold a value for each of its frames"):
        annotate(rows[0], SPEC, "chunk_advantage", (values["dense"][0][:-1], values["dense"][1][:-1]))


def test_credit_horizon_sets_how_far_the_per_chunk_signals_look(roots, fitted, tmp_path, capsys):
    root, manifest = roots[False]
    rows = load_manifest(manifest, root)
    values, _ = value_fit.load_values(root / "values.parquet", rows, SPEC, manifest, root)
    default = CrabDataset(rows, SPEC, signal="chunk_advantage", state_values=values)
    chunk = CrabDataset(rows, SPEC, signal="chunk_advantage", state_values=values, credit_horizon=SPEC.chunk_size)
    assert default.fingerprint == chunk.fingerprint  # unset: the action chunk
    one = CrabDataset(rows, SPEC, signal="chunk_advantage", state_values=values, credit_horizon=1)
    t, v = one.tables[0], values["dense"][1]
    # H = 1: A_t = r_t + V(s_{t+1}) - V(s_t); dense episode 1 (frames 5-9) cracks at t = 2 (frame 7)
    assert t.signal[6] == pytest.approx(0.0 + v[7] - v[6]) and t.signal[7] == pytest.approx(-1.0 + v[8] - v[7])
    assert t.signal[9] == pytest.approx(-v[9])  # the episode's last frame: V = 0 after it
    np.testing.assert_allclose(t.signal, rewards.chunk_advantages(t.step_reward, v, t.episode_index, 1, 1.0))
    # the oracle: with H = 1 only the crack's own step weighs 0; with the chunk (H = 3) the two before it too
    assert CrabDataset(rows, SPEC, signal="oracle", credit_horizon=1).tables[0].signal[5:10].tolist() == [1, 1, 0, 1, 1]
    assert CrabDataset(rows, SPEC, signal="oracle").tables[0].signal[5:10].tolist() == [0, 0, 0, 1, 1]
    # the statistics record the horizon; training with another one is refused, with the command that fixes it
    out, value_file = tmp_path / "stats.json", root / "values.parquet"
    args = ["--manifest", str(manifest), "--out", str(out), "--data-root", str(root), "--chunk-size", "3"]
    reward_stats.main([*args, "--signal", "chunk_advantage", "--value-file", str(value_file), "--credit-horizon", "1"])
    assert "their 1 steps hold a negative reward" in capsys.readouterr().out
    assert json.loads(out.read_text())["credit_horizon"] == 1
    check = (out, manifest, one.fingerprint, SPEC, root, "chunk_advantage", value_file)
    assert reward_stats.load_checked(*check, 1)["fingerprint"] == one.fingerprint
    with pytest.raises(ManifestError, match="computed with credit horizon 1, training uses 3") as e:
        reward_stats.load_checked(*check)
    assert "--credit-horizon" not in str(e.value)  # the fix for a run without one
    with pytest.raises(ManifestError, match="computed with credit horizon 1, training uses 2") as e:
        reward_stats.load_checked(*check, 2)
    assert str(e.value).endswith("--credit-horizon 2")
    with pytest.raises(SystemExit):  # outcome has no horizon
        reward_stats.main([*args, "--credit-horizon", "2"])
    assert "goes with a per-chunk --signal" in capsys.readouterr().err


def test_statistics_record_the_signal_and_refuse_another(roots, fitted, tmp_path, capsys):
    root, manifest = roots[False]
    rows = load_manifest(manifest, root)
    out, plot = tmp_path / "stats.json", tmp_path / "signal.png"
    value_file = root / "values.parquet"
    args = ["--manifest", str(manifest), "--out", str(out), "--data-root", str(root), "--chunk-size", "3"]
    reward_stats.main([*args, "--signal", "chunk_advantage", "--value-file", str(value_file), "--plot", str(plot)])
    printed = capsys.readouterr().out
    assert "signal 'chunk_advantage'" in printed and "held-out RMSE" in printed and "chunks into damage (" in printed
    assert plot.stat().st_size > 0
    stats = json.loads(out.read_text())
    assert stats["signal_type"] == "chunk_advantage"
    assert stats["value_file"]["fingerprint"] == value_fit.read_meta(value_file)["fingerprint"]
    values, _ = value_fit.load_values(value_file, rows, SPEC, manifest, root)
    chunk = CrabDataset(rows, SPEC, signal="chunk_advantage", state_values=values)
    signal = np.concatenate([t.signal for t in chunk.tables])
    assert stats["overall"]["signal"]["mean"] == pytest.approx(signal.mean())
    loaded = reward_stats.load_checked(out, manifest, chunk.fingerprint, SPEC, root, "chunk_advantage", value_file)
    assert loaded["fingerprint"] == chunk.fingerprint
    with pytest.raises(ManifestError, match=r"computed for signal 'chunk_advantage', training uses 'outcome'"):
        reward_stats.load_checked(out, manifest, fingerprint(rows, CrabDataset(rows, SPEC).tables, SPEC), SPEC, root)
    # the fix command names the signal and the value file
    with pytest.raises(ManifestError, match="stale statistics") as e:
        reward_stats.load_checked(out, manifest, "0" * 16, SPEC, root, "chunk_advantage", value_file)
    assert f"--signal chunk_advantage --value-file {value_file}" in str(e.value)
    with pytest.raises(SystemExit, match="value file not found"):
        reward_stats.main([*args, "--signal", "chunk_advantage"])


@pytest.mark.slow
def test_training_weighs_by_chunk_advantages_and_refuses_mismatched_inputs(roots, fitted, tmp_path, capsys):
    root, manifest = roots[False]
    value_file, stats = root / "values.parquet", tmp_path / "stats.json"
    reward_stats.main([
        "--manifest", str(manifest), "--out", str(stats), "--data-root", str(root), "--chunk-size", "10",
        "--signal", "chunk_advantage", "--value-file", str(value_file),
    ])  # fmt: skip
    layers = [CONFIGS / "train_cycle1_rwfm.yaml", CONFIGS / "demo_overrides.yaml"]
    sets = {
        "run_name": "chunk", "output_dir": (tmp_path / "out").as_posix(), "data.manifest": manifest.as_posix(),
        "data.reward_stats": stats.as_posix(), "data.data_root": root.as_posix(), "data.value_file": value_file.as_posix(),
        "data.num_workers": 0, "data.batch_size": 4, "data.val_episodes_per_dataset": 0, "task_masks": "{}",
        "train.steps": 2, "train.log_every": 1, "train.progress_bar": "false", "reward_weighting.signal": "chunk_advantage",
    }  # fmt: skip

    def cfg(**changes):
        return load_config(layers, [f"{k}={v}" for k, v in {**sets, **changes}.items()])

    run = train.train(cfg())
    assert "training data, before step 1:" in (printed := capsys.readouterr().out) and "\n  dense " in printed
    assert json.loads((run / "step_000002" / "reward_stats.json").read_text())["signal_type"] == "chunk_advantage"
    with pytest.raises(ConfigError, match="`data.value_file` is required by `reward_weighting.signal: chunk_advantage`"):
        cfg(**{"data.value_file": "null"})
    with pytest.raises(ManifestError, match=r"computed for signal 'chunk_advantage', training uses 'oracle'"):
        train.train(cfg(run_name="oracle", **{"reward_weighting.signal": "oracle"}))
    with pytest.raises(ManifestError, match="stale value file"):
        train.train(cfg(run_name="stale", **{"data.value_file": (roots[True][0] / "values.parquet").as_posix()}))
    oracle_stats = tmp_path / "oracle.json"
    reward_stats.main([
        "--manifest", str(manifest), "--out", str(oracle_stats), "--data-root", str(root), "--chunk-size", "10",
        "--signal", "oracle",
    ])  # fmt: skip
    oracle = train.train(cfg(run_name="oracle", **{"reward_weighting.signal": "oracle", "data.reward_stats": oracle_stats}))
    assert (oracle / "plots" / "signal.png").is_file()
    # a longer credit horizon needs statistics computed with it
    longer = {"reward_weighting.credit_horizon": 20}
    with pytest.raises(ManifestError, match="computed with credit horizon 10, training uses 20"):
        train.train(cfg(run_name="h20", **longer))
    reward_stats.main([
        "--manifest", str(manifest), "--out", str(stats), "--data-root", str(root), "--chunk-size", "10",
        "--signal", "chunk_advantage", "--value-file", str(value_file), "--credit-horizon", "20",
    ])  # fmt: skip
    run = train.train(cfg(run_name="h20", **longer))
    assert json.loads((run / "step_000002" / "reward_stats.json").read_text())["credit_horizon"] == 20
    # chunk_q: the same value file, drawn per phase without an upper clip
    q_stats = tmp_path / "q.json"
    reward_stats.main([
        "--manifest", str(manifest), "--out", str(q_stats), "--data-root", str(root), "--chunk-size", "10",
        "--signal", "chunk_q", "--value-file", str(value_file), "--clip-max", "1000000", "--phase-bins", "2",
    ])  # fmt: skip
    assert "share of each part's draw" in capsys.readouterr().out
    drawn = {"reward_weighting.apply": "sample", "reward_weighting.normalize": "phase", "reward_weighting.clip_max": 1000000}
    with pytest.raises(ConfigError, match="`reward_weighting.signal: chunk_q` needs `reward_weighting.normalize: phase`"):
        cfg(**{"reward_weighting.signal": "chunk_q", "reward_weighting.apply": "sample"})
    run = train.train(cfg(run_name="q", **{"reward_weighting.signal": "chunk_q", "data.reward_stats": q_stats}, **drawn))
    assert json.loads((run / "step_000002" / "reward_stats.json").read_text())["signal_type"] == "chunk_q"


def test_expectile_loss_by_hand():
    pred, target = torch.tensor([0.0, 0.0, 1.0]), torch.tensor([1.0, -1.0, 3.0])
    assert value_fit.expectile_loss(pred, target, 0.5).item() == pytest.approx((1 + 1 + 4) / 3)  # the MSE
    assert value_fit.expectile_loss(pred, target, 0.9).item() == pytest.approx((1.8 * 1 + 0.2 * 1 + 1.8 * 4) / 3)
    # minimised over a constant: the expectile; 10% of returns +1, 90% -1 -> 0 at tau = 0.9 (the mean is -0.8)
    returns = torch.tensor([1.0] + [-1.0] * 9)
    v = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.SGD([v], lr=0.2)
    for _ in range(300):
        optimizer.zero_grad()
        value_fit.expectile_loss(v.expand(10), returns, 0.9).backward()
        optimizer.step()
    assert v.item() == pytest.approx(0.0, abs=1e-4)
    assert value_fit.expectile(returns.numpy(), 0.9) == pytest.approx(0.0, abs=1e-9)
    assert value_fit.expectile(returns.numpy(), 0.5) == pytest.approx(-0.8)


def test_each_fold_keeps_its_best_validation_epoch(roots):
    """Early stopping: a fold's model is the one of the epoch with the lowest loss on the next fold's
    episodes: training exactly that many epochs gives the same values bit for bit."""
    root, manifest = roots[False]
    rows = load_manifest(manifest, root)
    tables = [annotate(row, SPEC) for row in rows]
    settings = value_fit.ValueFitSettings(folds=3, epochs=40, patience=2, hidden=16, image_size=8, batch_size=8)
    frames = value_fit.read_frames(rows, tables, settings, progress=False)
    values, fold, kept = value_fit.fit_values(frames, settings, progress=False)
    assert len(kept) == 3 and all(1 <= e <= 40 for e in kept)
    assert min(kept) < 38, "no fold stopped early in 40 epochs at patience 2"  # else the test checks nothing
    for k, epoch in enumerate(kept):
        exact = dataclasses.replace(settings, epochs=epoch, patience=epoch)
        held_out, validate = fold == k, fold == (k + 1) % 3
        again, best = value_fit.fit_fold(frames, ~held_out & ~validate, validate, held_out, exact, settings.seed + k)
        assert best == epoch
        np.testing.assert_array_equal(again, values[held_out])


@pytest.mark.parametrize(
    ("flag", "message"),
    [(["--folds", "2"], "--folds must be >= 3"), (["--patience", "0"], "--patience must be >= 1"),
     (["--epochs", "0"], "--epochs must be >= 1"), (["--expectile", "1"], "--expectile must be in")],
)
def test_bad_settings_are_refused_before_reading_data(tmp_path, flag, message):
    out = tmp_path / "values.parquet"
    with pytest.raises(SystemExit, match=message):
        value_fit.main(["--manifest", str(tmp_path / "absent.csv"), "--out", str(out), *flag])
    assert not out.exists()


def test_train_validate_and_predict_frames_of_each_fold_are_disjoint(roots, monkeypatch):
    """No leakage: each fold's model trains, stops early and predicts on three pairwise disjoint sets of whole
    episodes, it predicts exactly its own fold, and every frame is predicted once (early stopping on the
    predicted fold, or training on it, fails here)."""
    root, manifest = roots[False]
    rows = load_manifest(manifest, root)
    settings = value_fit.ValueFitSettings(folds=3, epochs=1, patience=1, hidden=8, image_size=8, batch_size=8)
    frames = value_fit.read_frames(rows, [annotate(row, SPEC) for row in rows], settings, progress=False)
    seen = []

    def recording(frames, train, validate, predict, *args, **kwargs):
        seen.append((train.copy(), validate.copy(), predict.copy()))
        return np.zeros(int(predict.sum())), 1

    monkeypatch.setattr(value_fit, "fit_fold", recording)
    _, fold, _ = value_fit.fit_values(frames, settings, progress=False)
    episode = frames.dataset * 100_000 + frames.episode_index  # one key per episode of the manifest
    predicted = np.zeros(len(fold), int)
    for k, (fit, validate, predict) in enumerate(seen):
        assert not (fit & validate).any() and not (fit & predict).any() and not (validate & predict).any()
        assert fit.any() and validate.any() and np.array_equal(predict, fold == k)
        predicted += predict
        for a, b in ((fit, validate), (fit, predict), (validate, predict)):  # whole episodes on each side
            assert not set(episode[a]) & set(episode[b])
    assert (predicted == 1).all()
