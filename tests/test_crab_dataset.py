"""CrabDataset on real LeRobot v3.0 datasets with video, the statistics command, and bad input."""

from __future__ import annotations

import json
import re
import shlex
import shutil

import numpy as np
import pytest
import torch
from conftest import ALL_ROWS, OPEN, PLACE, synthetic_episode, write, write_manifest

from crab.data.lerobot_reader import float_frames
from crab.data.lerobot_writer import LABELS_FILE
from crab.training import reward_stats
from crab.training.crab_dataset import CrabDataset, annotate, scale_counts
from crab.training.manifest import ManifestError, load_manifest
from crab.training.rewards import REWARD_FIELDS, RewardSpec
from crab.training.weighting import phase_groups

SPEC = RewardSpec(chunk_size=3)


@pytest.fixture(scope="module")
def dataset(data_root, tmp_path_factory):
    manifest = write_manifest(tmp_path_factory.mktemp("m") / "all.csv", ALL_ROWS)
    return CrabDataset(load_manifest(manifest, data_root), SPEC)


def test_items_carry_lerobot_fields_and_rewards(dataset):
    assert len(dataset) == 12 + 9 + 8 + 7 + 4
    item = dataset[0]
    assert item["observation.images.top"].shape == (3, 32, 32)
    assert item["action"].shape == (3, 4) and item["action_is_pad"].shape == (3,)
    for name in REWARD_FIELDS:
        assert item[name].dtype == torch.float32 and item[name].shape == ()
    assert (item["dataset_name"], item["task_name"], item["quality"]) == ("clean", PLACE, "clean")
    last = dataset[11]  # last frame of the first clean episode: chunk padded past the end
    assert last["action_is_pad"].tolist() == [False, True, True]


def test_item_cache_serves_the_same_items(dataset, data_root, tmp_path):
    cached = CrabDataset(load_manifest(write_manifest(tmp_path / "all.csv", ALL_ROWS), data_root), SPEC, cache=True)
    for i in (0, 11, len(dataset) - 1):
        first = cached[i]
        first["scribble"] = 1  # callers own the dict they get
        again, fresh = cached[i], dataset[i]
        assert "scribble" not in again and again.keys() == fresh.keys()
        for key, value in fresh.items():
            assert torch.equal(again[key], value) if isinstance(value, torch.Tensor) else again[key] == value, key


def test_reward_values_follow_the_spec(dataset):
    clean, labelled, stepwise = dataset.tables
    # quality only: clean -> s=1, d=0, R_e=1 on the last frame of each episode
    assert clean.episode_reward.tolist() == [1.0] * 21
    assert clean.step_reward[[11, 20]].tolist() == [1.0, 1.0] and clean.step_reward.sum() == 2
    assert clean.chunk_return[9:12].tolist() == [1.0, 1.0, 1.0] and clean.chunk_return[8] == 0
    # label file overrides quality `cracked`: episode 0 (s=1, d=1), episode 1 (s=0, d=0)
    assert labelled.episode_success.tolist() == [1.0] * 8 + [0.0] * 7
    assert labelled.episode_damage.tolist() == [1.0] * 8 + [0.0] * 7
    assert labelled.episode_reward.tolist() == [0.0] * 15
    # per-step columns: the worked example of reward_weighting.md
    assert stepwise.chunk_return.tolist() == [-1, 0, 1, 1]
    assert stepwise.signal.tolist() == [0, 0, 0, 0]  # G = R_e
    assert stepwise.episode_success.tolist() == [1.0] * 4
    item = dataset[len(dataset) - 3]
    assert item["chunk_return"].item() == 0.0 and item["step_reward"].item() == -1.0


def test_episode_subset_keeps_rewards_aligned(data_root, tmp_path):
    manifest = write_manifest(tmp_path / "m.csv", [("clean", PLACE, "clean")])
    ds = CrabDataset(load_manifest(manifest, data_root), SPEC, episodes={"clean": [1]})
    assert len(ds) == 9
    assert ds[8]["step_reward"].item() == 1.0 and ds[8]["episode_index"].item() == 1


def test_phase_groups_split_each_episode_per_task(dataset):
    groups = phase_groups(dataset.weight_frames(), 2)
    assert len(groups) == len(dataset)
    # "Open the carton." sorts before "Place ...": the carton's groups are 0-1, the placing ones 2-3;
    # each episode's first half is its task's first group, whatever the episode's length.
    for d, row in enumerate(dataset.rows):
        first = int(dataset._offsets[d])
        episodes = np.array([dataset[first + i]["episode_index"].item() for i in range(len(dataset.datasets[d]))])
        base = 0 if row.task == OPEN else 2
        for e in np.unique(episodes):
            of_episode = groups[first:][: len(episodes)][episodes == e]
            n = len(of_episode)
            assert of_episode.tolist() == [base] * ((n + 1) // 2) + [base + 1] * (n // 2), (row.name, e)


def test_default_collate_with_spawn_workers(dataset):
    loader = torch.utils.data.DataLoader(dataset, batch_size=4, num_workers=2, multiprocessing_context="spawn")
    batch = next(iter(loader))
    assert batch["chunk_return"].shape == (4,) and batch["dataset_name"] == ["clean"] * 4
    assert batch["observation.images.top"].shape == (4, 3, 32, 32)


# --- the fast path serves lerobot's items ---------------------------------------------------------------


def assert_same_item(ours: dict, theirs: dict, where: str) -> None:
    assert list(ours) == list(theirs), where  # same keys, same order
    for key, value in theirs.items():
        if isinstance(value, torch.Tensor):
            mine = ours[key]
            assert (mine.dtype, mine.shape) == (value.dtype, value.shape), f"{where} {key}"
            assert torch.equal(mine, value), f"{where} {key}"  # frames bit-identical too
        else:
            assert ours[key] == value, f"{where} {key}"


def boundary_and_random_indices(ds: CrabDataset, count: int, seed: int) -> list[int]:
    """First and last frames of every episode (padded action chunks at the ends), plus random ones."""
    edges = []
    for d, frames in enumerate(ds.datasets):
        starts = np.flatnonzero(np.diff(frames.columns["episode_index"], prepend=-1))
        ends = np.append(starts[1:], len(frames)) - 1
        edges += (ds._offsets[d] + np.concatenate([starts, ends, ends - 1])).tolist()
    rng = np.random.default_rng(seed)
    return sorted(set(edges)) + rng.integers(0, len(ds), count).tolist()


@pytest.fixture(scope="module")
def image_dataset(data_root, tmp_path_factory):
    manifest = write_manifest(tmp_path_factory.mktemp("m") / "images.csv", [("images", PLACE, "clean")])
    return CrabDataset(load_manifest(manifest, data_root), SPEC, episodes={"images": [1, 0]})


@pytest.mark.parametrize("kind", ["video", "image"])
def test_fast_path_items_equal_lerobot_items(kind, dataset, image_dataset):
    ds = dataset if kind == "video" else image_dataset
    reference = [ds.lerobot_dataset(d) for d in range(len(ds.datasets))]
    indices = boundary_and_random_indices(ds, 20, seed=1)
    padded = 0
    for i in indices:
        d, local = ds.locate(i)
        theirs = reference[d][local]
        assert_same_item(ds.datasets[d][local], theirs, f"{kind} item {i}")
        annotated = ds[i]  # CrabDataset's item: lerobot's, less uncommon features, plus the reward fields
        assert_same_item({k: annotated[k] for k in theirs if k in annotated}, {k: v for k, v in theirs.items() if k in annotated}, f"{kind} {i}")
        padded += bool(theirs["action_is_pad"].any())
        assert theirs["observation.images.top"].shape == (3, 32, 32)
    assert padded >= 2  # the chunks past episode ends were compared


def test_fast_path_with_two_cameras_delta_timestamps_and_episode_subset(tmp_path):
    """Two cameras (decoded in parallel threads), several frames per camera from one batched decode,
    padding before the episode start, and an episode subset (absolute -> relative frame indices)."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    from crab.data.lerobot_reader import LeRobotFrames

    rng = np.random.default_rng(3)
    episodes = [synthetic_episode(rng, PLACE, n) for n in (6, 5)]
    for ep in episodes:
        ep.frames["observation.images.wrist"] = rng.integers(0, 255, (ep.length, 32, 48, 3), dtype=np.uint8)
    write(tmp_path, "two_cams", episodes)
    delta = {"observation.images.top": [-0.2, -0.1, 0.0], "observation.state": [-0.1, 0.0], "action": [0.0, 0.1]}
    for subset in (None, [1]):
        args = ("crab_test/two_cams", tmp_path / "two_cams", subset, delta)
        ours, theirs = LeRobotFrames(*args), LeRobotDataset(*args[:2], episodes=subset, delta_timestamps=delta)
        assert len(ours) == len(theirs)
        for i in range(len(ours)):
            assert_same_item(ours[i], theirs[i], f"episodes {subset} item {i}")
        first = ours[0]
        assert first["observation.images.top"].shape == (3, 3, 32, 32)
        assert first["observation.images.wrist"].shape == (3, 32, 48)
        assert first["observation.images.top_is_pad"].tolist() == [True, True, False]


@pytest.mark.parametrize("workers", [1, 2])
def test_fast_path_items_in_spawned_workers(workers, dataset, image_dataset):
    """The datasets pickle into `spawn` workers (Windows' only start method), which open their own decoders."""
    for ds in (dataset, image_dataset):
        indices = boundary_and_random_indices(ds, 6, seed=workers)
        loader = torch.utils.data.DataLoader(
            ds, sampler=indices, batch_size=None, num_workers=workers, multiprocessing_context="spawn"
        )
        reference = [ds.lerobot_dataset(d) for d in range(len(ds.datasets))]
        for i, item in zip(indices, loader, strict=True):
            d, local = ds.locate(i)
            theirs = reference[d][local]
            assert_same_item({k: item[k] for k in theirs if k in item}, {k: v for k, v in theirs.items() if k in item}, f"item {i}")


def test_uint8_frames_through_a_spawn_worker_convert_to_lerobot_items(dataset, data_root, tmp_path):
    """The trainer's read: video frames cross the worker boundary as uint8 (`return_uint8`, lerobot's own
    uint8 item) and `float_frames` after collate gives lerobot's float item, bit for bit."""
    rows = load_manifest(write_manifest(tmp_path / "all.csv", ALL_ROWS), data_root)
    ds = CrabDataset(rows, SPEC, return_uint8=True)
    assert ds.video_keys == ["observation.images.top"]
    indices = boundary_and_random_indices(ds, 8, seed=5)
    loader = torch.utils.data.DataLoader(
        ds, sampler=indices, batch_size=4, num_workers=1, multiprocessing_context="spawn"
    )
    floats = [ds.lerobot_dataset(d) for d in range(len(ds.datasets))]
    uint8s = [ds.lerobot_dataset(d, return_uint8=True) for d in range(len(ds.datasets))]
    key, seen = "observation.images.top", 0
    for start, batch in zip(range(0, len(indices), 4), loader, strict=True):
        converted = float_frames(batch, ds.video_keys)
        assert batch[key].dtype == torch.uint8 and converted[key].dtype == torch.float32
        assert torch.equal(converted["action"], batch["action"])  # other keys untouched
        for j, i in enumerate(indices[start : start + 4]):
            d, local = ds.locate(i)
            assert torch.equal(batch[key][j], uint8s[d][local][key]), i
            assert torch.equal(converted[key][j], floats[d][local][key]), i
            assert torch.equal(converted[key][j], dataset[i][key]), i
            seen += 1
    assert seen == len(indices)


def preflight_rows(printed: str) -> dict[str, dict[str, str]]:
    """The pre-flight table `weighting.preflight_table` printed: {dataset: {column: cell}} (`episodes`: train/
    held out/dropped)."""
    lines = printed.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip().startswith("dataset  "))
    header = [c.split(" (")[0] for c in re.split(r"\s{2,}", lines[start].strip())]
    header[2] = "episodes"
    rows = {}
    for line in lines[start + 1 :]:
        if not line.startswith("  ") or ":" in line:
            break
        cells = re.split(r"\s{2,}", line.strip())
        rows[cells[0]] = dict(zip(header, cells, strict=True))
    return rows


def test_statistics_command_and_staleness(data_root, tmp_path, capsys):
    manifest = write_manifest(tmp_path / "m.csv", ALL_ROWS)
    out = tmp_path / "stats.json"
    argv = ["--manifest", str(manifest), "--out", str(out), "--data-root", str(data_root), "--chunk-size", "3"]
    reward_stats.main([*argv, "--phase-bins", "2"])
    printed = capsys.readouterr().out
    assert "40 frames, 5 episodes" in printed
    # The pre-flight table: per phase, each task's datasets share all of its draw, the placing ones between them.
    table = preflight_rows(printed)
    assert table["stepwise"]["of its task's"] == "100.00%" and table["stepwise"]["episodes"] == "1/0/0"
    assert float(table["clean"]["of its task's"][:-1]) + float(table["labelled"]["of its task's"][:-1]) == pytest.approx(100, abs=0.02)
    # and per part of the episodes: the only dataset of its task draws all of each part
    assert "  stepwise: share of each part's draw, first to last: 100% 100%" in printed.splitlines()
    # Without the labelled dataset's failure nothing locates (its second episode, 7 of its 15 frames), it
    # weighs less; the table names the dropped episode.
    reward_stats.main([*argv, "--unlocated-failures", "drop"])
    dropped = preflight_rows(capsys.readouterr().out)
    assert dropped["labelled"]["episodes"] == "2/0/1" and dropped["clean"]["episodes"] == "2/0/0"
    reward_stats.main([*argv, "--apply", "sample"])
    kept = preflight_rows(capsys.readouterr().out)
    share = {k: float(kept[k]["of the draw"][:-1]) for k in kept}
    share_dropped = {k: float(dropped[k]["of the draw"][:-1]) for k in dropped}
    assert share_dropped["labelled"] < share["labelled"] and share_dropped["clean"] > share["clean"]
    stats = json.loads(out.read_text())
    assert stats["alpha"] == 0.25 and stats["overall"]["episodes"] == 5
    assert stats["per_dataset"]["stepwise"]["signal"]["mean"] == 0.0  # G = R_e = sum of next.reward
    assert stats["per_dataset"]["clean"]["signal"]["mean"] == 1.0
    assert stats["per_dataset"]["clean"]["success_rate"] == 1.0
    ds = CrabDataset(load_manifest(manifest, data_root), SPEC)
    assert reward_stats.load_checked(out, manifest, ds.fingerprint, SPEC, data_root)["fingerprint"] == ds.fingerprint

    other = write_manifest(tmp_path / "other.csv", [(n, t, "failed" if n == "clean" else q) for n, t, q in ALL_ROWS])
    stale = CrabDataset(load_manifest(other, data_root), SPEC)
    with pytest.raises(ManifestError, match="stale statistics.*recompute with: python -m crab.training.reward_stats") as e:
        reward_stats.load_checked(out, other, stale.fingerprint, SPEC, data_root)
    # The printed command works as printed (the data root is not the default `data` here).
    command = shlex.split(str(e.value).split("recompute with: ")[1])
    assert command[:3] == ["python", "-m", "crab.training.reward_stats"]
    reward_stats.main(command[3:])
    assert reward_stats.load_checked(out, other, stale.fingerprint, SPEC, data_root)["fingerprint"] == stale.fingerprint
    with pytest.raises(ManifestError, match="reward spec"):
        reward_stats.load_checked(out, manifest, ds.fingerprint, RewardSpec(chunk_size=5), data_root)
    with pytest.raises(ManifestError, match="reward statistics not found"):
        reward_stats.load_checked(tmp_path / "nope.json", manifest, ds.fingerprint, SPEC, data_root)


# --- bad input: each error names the file / row / column ---------------------------------------------


def test_manifest_errors(tmp_path, data_root):
    empty = tmp_path / "empty.csv"
    empty.write_text("name,repo_id,root,task,quality,cycle\n")
    with pytest.raises(ManifestError, match="empty.csv: the manifest lists no datasets"):
        load_manifest(empty, data_root)
    no_col = tmp_path / "nocol.csv"
    no_col.write_text("name,repo_id,root,task,cycle\nclean,a,b,c,cycle1\n")
    with pytest.raises(ManifestError, match=r"nocol.csv: missing column\(s\) \['quality'\]"):
        load_manifest(no_col, data_root)
    bad_quality = write_manifest(tmp_path / "q.csv", [("clean", PLACE, "broken")])
    with pytest.raises(ManifestError, match=r"q.csv:2: unknown quality 'broken' in column `quality`"):
        load_manifest(bad_quality, data_root)
    dup = write_manifest(tmp_path / "dup.csv", [("clean", PLACE, "clean"), ("clean", PLACE, "clean")])
    with pytest.raises(ManifestError, match=r"dup.csv:3: dataset name 'clean' already used at .*dup.csv:2"):
        load_manifest(dup, data_root)
    with pytest.raises(ManifestError, match="manifest not found"):
        load_manifest(tmp_path / "missing.csv", data_root)
    with pytest.raises(SystemExit, match=r"^error: .*q.csv:2: unknown quality"):
        reward_stats.main(["--manifest", str(bad_quality), "--out", str(tmp_path / "s.json")])
    assert not (tmp_path / "s.json").exists()


def test_missing_root_is_reported_and_not_created(tmp_path):
    manifest = write_manifest(tmp_path / "m.csv", [("ghost", PLACE, "clean")])
    with pytest.raises(ManifestError, match=r"m.csv:2: dataset 'ghost': no LeRobot dataset at"):
        CrabDataset(load_manifest(manifest, tmp_path), SPEC)
    assert not (tmp_path / "ghost").exists()


def test_task_not_in_dataset(data_root, tmp_path):
    manifest = write_manifest(tmp_path / "m.csv", [("clean", OPEN, "clean")])
    with pytest.raises(ManifestError, match="task 'Open the carton.' of dataset 'clean' is not among its tasks"):
        CrabDataset(load_manifest(manifest, data_root), SPEC)


def test_bad_label_files(data_root, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(data_root / "labelled", root / "labelled")
    manifest = write_manifest(tmp_path / "m.csv", [("labelled", PLACE, "cracked")])
    labels = root / "labelled" / LABELS_FILE
    labels.write_text("episode_index,success\n0,1\n1,0\n")
    with pytest.raises(ManifestError, match=r"crab_episode_labels.csv: missing column\(s\) \['damage'\]"):
        CrabDataset(load_manifest(manifest, root), SPEC)
    labels.write_text("episode_index,success,damage\n0,1,nan\n1,0,0\n")
    with pytest.raises(ManifestError, match=r"crab_episode_labels.csv:2: NaN or infinite label"):
        CrabDataset(load_manifest(manifest, root), SPEC)
    labels.write_text("episode_index,success,damage\n0,1,0\n")
    with pytest.raises(ManifestError, match=r"no labels for episode\(s\) \[1\]"):
        CrabDataset(load_manifest(manifest, root), SPEC)


def test_nan_step_reward(tmp_path):
    rng = np.random.default_rng(1)
    write(tmp_path, "nan", [synthetic_episode(rng, PLACE, 4, rewards=[0, np.nan, 0, 1])])
    manifest = write_manifest(tmp_path / "m.csv", [("nan", PLACE, "clean")])
    with pytest.raises(ManifestError, match=r"dataset 'nan' .*NaN or infinite values in column `next.reward` at frame index \[1\]"):
        CrabDataset(load_manifest(manifest, tmp_path), SPEC)


def test_features_and_fps_must_agree(data_root, tmp_path):
    rng = np.random.default_rng(2)
    ep = synthetic_episode(rng, PLACE, 5)
    ep.frames["observation.state"] = ep.frames["observation.state"][:, :5]
    from crab.data.lerobot_writer import write_lerobot_dataset

    write_lerobot_dataset(tmp_path / "narrow", "crab_test/narrow", 10, [ep], [f"s{i}" for i in range(5)], list("abcd"))
    write_lerobot_dataset(tmp_path / "slow", "crab_test/slow", 5, [synthetic_episode(rng, PLACE, 5)], list("abcdef"), list("abcd"))
    shutil.copytree(data_root / "clean", tmp_path / "clean")
    narrow = write_manifest(tmp_path / "n.csv", [("clean", PLACE, "clean"), ("narrow", PLACE, "clean")])
    with pytest.raises(ManifestError, match=r"n.csv:3: feature `observation.state` of dataset 'narrow' is .*\(5,\).* in 'clean'"):
        CrabDataset(load_manifest(narrow, tmp_path), SPEC)
    slow = write_manifest(tmp_path / "s.csv", [("clean", PLACE, "clean"), ("slow", PLACE, "clean")])
    with pytest.raises(ManifestError, match=r"s.csv:3: dataset 'slow' has fps 5 but 'clean' .* has 10"):
        CrabDataset(load_manifest(slow, tmp_path), SPEC)


def test_scaled_counts_weight_the_pooled_normalisation_statistics():
    from lerobot.datasets.compute_stats import aggregate_stats

    def stats(mean):
        return {"action": {"mean": np.array([mean]), "std": np.array([1.0]), "min": np.array([mean - 3.0]),
                           "max": np.array([mean + 3.0]), "count": np.array([10])}}  # fmt: skip

    pooled = aggregate_stats([scale_counts(stats(0.0), 1.0), scale_counts(stats(2.0), 0.25)])["action"]
    # weights 10 and 2.5: mean 5 / 12.5 = 0.4; variance (10 (1 + 0.4^2) + 2.5 (1 + 1.6^2)) / 12.5 = 1.64
    assert pooled["mean"].tolist() == pytest.approx([0.4])
    assert pooled["std"].tolist() == pytest.approx([1.64**0.5])
    assert aggregate_stats([stats(0.0), stats(2.0)])["action"]["mean"].tolist() == pytest.approx([1.0])


def test_normalisation_statistics_come_from_the_served_episodes(data_root, tmp_path):
    """lerobot's own per-episode statistics, pooled by lerobot: all episodes give meta/stats.json, the
    training split gives the statistics of its frames only, and weights scale each episode's count."""
    from lerobot.datasets.compute_stats import get_feature_stats

    manifest = write_manifest(tmp_path / "m.csv", [("clean", PLACE, "clean")])
    rows = load_manifest(manifest, data_root)
    everything = CrabDataset(rows, SPEC).normalization_stats()
    meta = CrabDataset(rows, SPEC).datasets[0].meta.stats
    for key in ("mean", "std", "min", "max"):
        np.testing.assert_allclose(everything["action"][key], meta["action"][key], rtol=1e-6)
    first = CrabDataset(rows, SPEC, episodes={"clean": [0]})
    frames = np.stack([first.lerobot_dataset(0).hf_dataset[i]["action"].numpy() for i in range(len(first))])
    own = get_feature_stats(frames, axis=0, keepdims=False)
    split = first.normalization_stats()
    for key in ("mean", "std", "min", "max"):
        np.testing.assert_allclose(split["action"][key], own[key], rtol=1e-5)
    assert not np.allclose(split["action"]["mean"], everything["action"]["mean"])
    assert split["action"]["count"].item() == len(first) == 12
    halved = first.normalization_stats(np.full(len(first), 0.5))
    assert halved["action"]["count"].item() == 6 and np.allclose(halved["action"]["mean"], split["action"]["mean"])


@pytest.mark.skipif("fork" not in torch.multiprocessing.get_all_start_methods(), reason="no fork here")
def test_forked_workers_open_their_own_decoders(dataset):
    """Decoders the main process opened (it read items first) are not used by forked workers."""
    indices = boundary_and_random_indices(dataset, 6, seed=5)
    expected = [dataset[i] for i in indices]  # opens decoders in this process
    loader = torch.utils.data.DataLoader(
        dataset, sampler=indices, batch_size=None, num_workers=2, multiprocessing_context="fork"
    )
    for i, item, theirs in zip(indices, loader, expected, strict=True):
        assert_same_item(item, theirs, f"item {i}")


def test_a_next_success_column_never_true_does_not_override_successful_labels(tmp_path, caplog):
    """A recorder that writes next.success but never sets it: the quality column's success stands (else
    `drop` would leave the clean episodes out as unlocated failures), and the log says so."""
    write(tmp_path, "never", [synthetic_episode(np.random.default_rng(0), PLACE, 4, rewards=[0, 0, 0, 0])])
    row = load_manifest(write_manifest(tmp_path / "m.csv", [("never", PLACE, "clean")]), tmp_path)[0]
    with caplog.at_level("WARNING"):
        table = annotate(row, SPEC, "outcome")
    assert table.episode_success.tolist() == [1.0] * 4
    assert "next.success column is never True" in caplog.text and "'never'" in caplog.text
    failed = load_manifest(write_manifest(tmp_path / "f.csv", [("never", PLACE, "failed")]), tmp_path)[0]
    caplog.clear()
    assert annotate(failed, SPEC, "outcome").episode_success.tolist() == [0.0] * 4 and not caplog.text
