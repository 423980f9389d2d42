"""The egg simulator: crack rule, determinism, demonstrator qualities, evaluation helpers, generation."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from crab.sim.demonstrators import make_demonstrator, rollout
from crab.sim.egg_env import (
    ACTION_NAMES,
    CLOSE_CARTON,
    CRACK_FORCE,
    CRACK_SPEED,
    IMAGE_KEY,
    LID_CLOSED_ANGLE,
    LID_STOP,
    MAX_STEPS,
    OPEN_CARTON,
    PUT_EGG,
    STATE_KEY,
    STATE_NAMES,
    TASK_ACTION_DIMS,
    TASKS,
    EggEnv,
    egg_cracks,
)
from crab.sim.evaluate import EGG_OUTCOMES, egg_outcome, evaluate, mean_interval, run_episode, wilson_interval

SEEDS = range(8)


def test_crack_rule():
    assert not egg_cracks(0.0, 0.0)
    assert not egg_cracks(CRACK_FORCE, CRACK_SPEED)  # thresholds themselves are safe
    assert egg_cracks(CRACK_FORCE + 0.01, 0.0)
    assert egg_cracks(0.0, CRACK_SPEED + 0.01)


def test_spaces_and_task_action_dims():
    env = EggEnv(PUT_EGG, image_size=24)
    obs, info = env.reset(seed=0)
    assert obs in env.observation_space
    assert obs[IMAGE_KEY].shape == (24, 24, 3) and obs[IMAGE_KEY].dtype == np.uint8
    assert obs[STATE_KEY].shape == (len(STATE_NAMES),) and len(STATE_NAMES) <= 8
    assert env.action_space.shape == (len(ACTION_NAMES),) and len(ACTION_NAMES) <= 8
    assert info == {
        "success": False, "cracked": False, "crack_cause": None, "crack_held": None, "crack_over_tray": None,
        "egg_held": False, "task": PUT_EGG,
    }  # fmt: skip
    assert set(TASK_ACTION_DIMS) == set(TASKS)
    assert TASK_ACTION_DIMS[PUT_EGG] == [0, 1, 2, 3] and TASK_ACTION_DIMS[OPEN_CARTON] == [0, 1, 2]
    with pytest.raises(ValueError, match="unknown task"):
        EggEnv("Juggle the eggs.")


def _trajectory(seed: int) -> tuple[np.ndarray, np.ndarray]:
    env = EggEnv(PUT_EGG)
    obs, _ = env.reset(seed=seed)
    images, states = [obs[IMAGE_KEY]], [obs[STATE_KEY]]
    for action in np.random.default_rng(0).uniform(-1, 1, (5, 4)):
        obs, *_ = env.step(action)
        images.append(obs[IMAGE_KEY])
        states.append(obs[STATE_KEY])
    return np.stack(images), np.stack(states)


def test_deterministic_under_seed():
    images_a, states_a = _trajectory(3)
    images_b, states_b = _trajectory(3)
    np.testing.assert_array_equal(images_a, images_b)
    np.testing.assert_array_equal(states_a, states_b)
    env = EggEnv(PUT_EGG, render_images=False)
    env.reset(seed=3)
    egg_3 = env.egg_pos
    env.reset(seed=4)
    assert np.abs(env.egg_pos - egg_3).max() > 1e-4  # scenes are randomised per seed


def test_rendering_does_not_change_physics():
    a = rollout(PUT_EGG, "rough", 5, render=False)
    b = rollout(PUT_EGG, "rough", 5)
    np.testing.assert_array_equal(a.frames["action"], b.frames["action"])
    np.testing.assert_array_equal(a.frames[STATE_KEY], b.frames[STATE_KEY])
    assert b.frames[IMAGE_KEY].any() and not a.frames[IMAGE_KEY].any()


def test_demonstrator_qualities():
    careful = [rollout(PUT_EGG, "careful", s, render=False) for s in SEEDS]
    rough = [rollout(PUT_EGG, "rough", s, render=False) for s in SEEDS]
    failing = [rollout(PUT_EGG, "failing", s, render=False) for s in SEEDS]
    opening = [rollout(OPEN_CARTON, "careful", s, render=False) for s in SEEDS]
    assert all(r.success and not r.cracked for r in careful)
    assert all(r.success and not r.cracked for r in opening)
    assert sum(r.cracked for r in rough) >= len(SEEDS) // 2
    assert sum(r.length < MAX_STEPS for r in rough) >= len(SEEDS) // 2  # the egg still reaches the tray
    assert not any(r.success for r in failing)
    # Rewards: +1 on the success step, -1 on the crack step, nothing else.
    for r in careful + rough:
        rewards = r.frames["next.reward"]
        assert r.episode_return == int(r.success) - int(r.cracked)
        assert set(np.unique(rewards)) <= {-1.0, 0.0, 1.0}
        assert r.frames["next.success"][-1] == r.success and r.frames["next.success"][:-1].sum() == 0
    # Same scenes, different behaviour: the rough operator squeezes harder and moves faster.
    for c, r in zip(careful, rough, strict=True):
        assert r.frames["action"][:, 3].max() > c.frames["action"][:, 3].max() or r.cracked
        assert np.abs(r.frames["action"][:, :3]).max() > np.abs(c.frames["action"][:, :3]).max()


# Physics of seed 3 (actions, states, rewards rounded to 1e-5) as the code wrote them before the third task
# was added (commit 8db8527): adding a task must not change the others' episodes, hence their datasets.
BEFORE_THIRD_TASK = {
    ("careful", PUT_EGG): "68b61805aa55cebb",
    ("rough", PUT_EGG): "2e609251d1f34422",
    ("failing", PUT_EGG): "71f7ba4c333e1acf",
    ("careful", OPEN_CARTON): "4308aaa8000b9a4e",
}


def test_existing_tasks_unchanged_by_the_third():
    import hashlib

    for (style, task), expected in BEFORE_THIRD_TASK.items():
        frames = rollout(task, style, 3, render=False).frames
        h = hashlib.sha256()
        for key in ("action", STATE_KEY, "next.reward"):
            h.update(np.round(frames[key].astype(np.float64), 5).tobytes())
        assert h.hexdigest()[:16] == expected, (style, task)


def test_close_the_carton_scene_and_demonstrator():
    env = EggEnv(CLOSE_CARTON, render_images=False)
    env.reset(seed=1)
    rel = env.egg_pos - env.tray_pos
    assert abs(rel[0]) < 0.05 and abs(rel[1]) < 0.05  # the egg is already in the tray
    assert env.lid_angle == pytest.approx(LID_STOP, abs=0.01)  # and the lid lies open on its stop
    closings = [rollout(CLOSE_CARTON, "careful", s, render=False) for s in SEEDS]
    assert all(r.success and not r.cracked and r.episode_return == 1.0 for r in closings)
    assert all(r.length < MAX_STEPS for r in closings)
    env.reset(seed=1)
    for _ in range(5):  # doing nothing leaves it open
        *_, info = env.step(np.zeros(4))
    assert not info["success"] and env.lid_angle > LID_CLOSED_ANGLE
    with pytest.raises(ValueError, match="only the careful"):
        make_demonstrator(CLOSE_CARTON, "rough", 0)


def test_demonstrator_actions_are_smooth():
    for style in ("careful", "rough", "failing", "sloppy", "squeezing"):
        actions = rollout(PUT_EGG, style, 1, render=False).frames["action"]
        assert np.abs(actions).max() <= 1.0
        assert np.abs(np.diff(actions, axis=0)).max() < 1.8  # filtered: no full-range jumps


SLOPPY_RELEASE_PHASE = 5  # the careful script's lowering into the tray, the sloppy style's one departure


def test_sloppy_is_careful_until_the_release_then_drops_the_egg():
    from crab.sim.demonstrators import Demonstrator, _egg_pick_phases

    for seed in SEEDS:
        # Given the same parameter draws, the two styles act alike until the release.
        demos = {s: Demonstrator(s, *_egg_pick_phases(np.random.default_rng(seed), s)) for s in ("careful", "sloppy")}
        envs = {s: EggEnv(PUT_EGG, render_images=False) for s in demos}
        for env in envs.values():
            env.reset(seed=seed)
        same_until, done = None, False
        while not done:
            actions = {s: demos[s](envs[s]) for s in demos}
            if same_until is None and not np.array_equal(actions["careful"], actions["sloppy"]):
                same_until = demos["sloppy"]._phase
            for s, env in envs.items():
                *_, terminated, truncated, _ = env.step(actions[s])
                done = done or terminated or truncated
        assert same_until == SLOPPY_RELEASE_PHASE, seed
    # Its own episodes (rng stream of the style's index): most crack, and at the release, once the
    # gripper opens over the tray; the crack is the -1 of `next.reward` on that step.
    sloppy = [rollout(PUT_EGG, "sloppy", s, render=False) for s in SEEDS]
    assert sum(r.cracked for r in sloppy) >= len(SEEDS) // 2 and not any(r.cracked and r.success for r in sloppy)
    for r in sloppy:
        rewards, grip = r.frames["next.reward"], r.frames["action"][:, 3]
        if not r.cracked:
            assert r.success and r.episode_return == 1.0
            continue
        crack = int(np.flatnonzero(rewards < 0)[0])
        assert r.episode_return == -1.0 and rewards[crack] == -1.0
        opened = int(np.flatnonzero((grip[1:] < 0) & (grip[:-1] >= 0))[0]) + 1  # first opening after the grasp
        assert opened <= crack  # not before (at the grasp or in the carry): the egg hits the tray on falling


def test_squeezing_is_careful_but_for_the_closing_grip_and_cracks_at_the_grasp():
    from crab.sim.demonstrators import GRIP_OPEN, _egg_pick_phases

    for seed in SEEDS:
        # Given the same parameter draws, the phases differ only in the grip while the fingers close.
        careful, squeezing = (_egg_pick_phases(np.random.default_rng(seed), s)[0] for s in ("careful", "squeezing"))
        differ = [i for i, (a, b) in enumerate(zip(careful, squeezing, strict=True)) if a.grip != b.grip]
        assert differ == [2] and squeezing[2].grip > 0.6 > careful[2].grip > GRIP_OPEN  # over CRACK_FORCE / 10 N
    squeezed = [rollout(PUT_EGG, "squeezing", s, render=False) for s in SEEDS]
    assert sum(r.cracked for r in squeezed) >= len(SEEDS) // 2 and not any(r.cracked and r.success for r in squeezed)
    for r in (r for r in squeezed if r.cracked):
        rewards, grip = r.frames["next.reward"], r.frames["action"][:, 3]
        crack = int(np.flatnonzero(rewards < 0)[0])
        closed = int(np.flatnonzero(grip > 0)[0])  # the first step the fingers close
        # The crack is the -1 of the squeeze, before the carry; the episode goes on to the release.
        assert closed <= crack < closed + 6 and r.length > crack + 10 and r.episode_return == -1.0


def test_tightening_is_careful_but_for_a_tight_grip_in_the_carry_and_cracks_there():
    from crab.sim.demonstrators import TIGHTEN_AFTER, TIGHTEN_STEPS, _egg_pick_phases

    for seed in SEEDS:
        # Given the same draws, the same moves: the careful carry is one phase, tightening's the same goal and
        # speed in three, the middle one over the crack force; nothing else differs.
        careful, tight = (_egg_pick_phases(np.random.default_rng(seed), s)[0] for s in ("careful", "tightening"))
        assert len(tight) == len(careful) + 2
        carry = careful[4]
        assert [p.speed for p in tight[4:7]] == [carry.speed] * 3
        assert [p.grip for p in tight[4:7]] == [carry.grip, tight[5].grip, carry.grip] and tight[5].grip > 0.6
        assert (tight[5].min_steps, tight[5].max_steps) == (TIGHTEN_STEPS, TIGHTEN_STEPS)
        assert [(p.grip, p.speed) for p in tight[:4] + tight[7:]] == [
            (p.grip, p.speed) for p in careful[:4] + careful[5:]
        ]
    tightened = [rollout(PUT_EGG, "tightening", s, render=False) for s in SEEDS]
    assert sum(r.cracked for r in tightened) >= len(SEEDS) // 2 and not any(r.success for r in tightened)
    for r in (r for r in tightened if r.cracked):
        rewards, grip = r.frames["next.reward"], r.frames["action"][:, 3]
        crack = int(np.flatnonzero(rewards < 0)[0])
        closed = int(np.flatnonzero(grip > 0)[0])  # the first step the fingers close
        released = int(np.flatnonzero((grip[1:] < 0) & (grip[:-1] >= 0))[0]) + 1
        # The crack is in the carry: well after the grasp, before the release, at the first tight steps.
        assert closed + 6 < crack < released and grip[crack] > 0.6 and crack - TIGHTEN_AFTER > closed


def test_wilson_interval_hand_checked():
    # p = 0.5, n = 10: centre 0.5, half-width 1.96/1.38416 * sqrt(0.025 + 0.009604) = 0.26341
    lo, hi = wilson_interval(5, 10)
    assert lo == pytest.approx(0.23659, abs=1e-5) and hi == pytest.approx(0.76341, abs=1e-5)
    # k = 0: lower bound 0, upper 2 * (z^2 / 2n) / (1 + z^2 / n) = 0.27754
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.27754), abs=1e-5)
    assert wilson_interval(10, 10) == pytest.approx((0.72246, 1.0), abs=1e-5)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    mean, lo, hi = mean_interval([1.0, 0.0, 1.0, 1.0])  # sd 0.5, t(3) = 3.182
    assert mean == 0.75 and hi - mean == pytest.approx(3.182 * 0.5 / 2)


def test_closed_loop_runner_with_a_demonstrator_as_policy():
    env = EggEnv(PUT_EGG, render_images=False)
    demo = make_demonstrator(PUT_EGG, "careful", 2)
    run = run_episode(lambda obs: demo(env)[None], env, 2, n_action_steps=5)
    assert run.success and not run.cracked and run.total == 1.0 and run.outcome == "success"
    # What it records is what the demonstrator's own rollout records, step for step (a dataset's frames).
    scripted = rollout(PUT_EGG, "careful", 2, render=False)
    assert set(run.frames) == set(scripted.frames) and run.length == scripted.length
    for key, column in scripted.frames.items():
        np.testing.assert_array_equal(run.frames[key], column, err_msg=key)
    assert len(run.images) == run.length + 1


def test_evaluate_reports_rates_and_saves_videos(tmp_path):
    results = evaluate(lambda obs: np.zeros((10, 4), np.float32), episodes_per_task=2, video_dir=tmp_path)
    assert set(results) == set(TASKS)
    for summary in results.values():
        assert summary["episodes"] == 2 and summary["success_rate"] == 0.0 and summary["crack_rate"] == 0.0
        assert summary["success_ci95"] == pytest.approx(wilson_interval(0, 2))
        assert summary["mean_length"] == MAX_STEPS
    assert len(list(tmp_path.glob("*.mp4"))) == 2 * len(TASKS)
    # Standing still: the fingers never reach the egg; the other tasks only tell success from failure.
    assert results[PUT_EGG]["outcomes"] == dict.fromkeys(EGG_OUTCOMES, 0) | {"never grasped": 2}
    assert results[OPEN_CARTON]["outcomes"] == {"success": 0, "failure": 2}


def test_egg_outcome_hand_checked():
    never, held, let_go = [False] * 5, [False, True, True, True, True], [False, True, True, False, False]
    assert egg_outcome(let_go, True, None) == "success"
    assert egg_outcome(never, False, None) == "never grasped"
    assert egg_outcome(held, False, None) == "timed out holding"
    assert egg_outcome(let_go, False, None) == "dropped / not in tray"
    # A crack decides, whatever the fingers did: the crack categories add up to the crack rate.
    assert egg_outcome(held, False, "grip") == "cracked by the grip"
    assert (
        egg_outcome(let_go, False, "impact", True)
        == egg_outcome(never, False, "impact", True)
        == ("cracked at impact over the tray")
    )
    assert egg_outcome(held, False, "impact", True) == "cracked at impact over the tray"  # a hard set-down, still held
    assert egg_outcome(let_go, False, "impact", False) == "cracked at impact elsewhere"  # lost on the way


CAREFUL_CARRY_PHASE = 4  # the careful script's move from the lift to over the tray


def _demonstrator_episode(style: str, seed: int, at_carry: str | None = None) -> tuple[str, dict]:
    """A PUT_EGG demonstrator run closed loop by `run_episode`: (its outcome, the env's last info). Once the
    egg is lifted, `at_carry` "stop" stands still, grip kept; "drop" opens the fingers on the way."""
    env = EggEnv(PUT_EGG, render_images=False)
    demo = make_demonstrator(PUT_EGG, style, seed)

    def policy(obs):
        action = demo(env)
        if at_carry == "stop" and demo._phase >= CAREFUL_CARRY_PHASE:
            action[:3] = 0.0
        if at_carry == "drop" and demo._phase >= CAREFUL_CARRY_PHASE:
            action[3] = -1.0
        return action[None]

    return run_episode(policy, env, seed, n_action_steps=1).outcome, env._info()


def test_demonstrators_end_where_their_style_says():
    for seed in range(4):
        assert _demonstrator_episode("careful", seed)[0] == "success"
        assert _demonstrator_episode("careful", seed, at_carry="stop")[0] == "timed out holding"
        outcome, info = _demonstrator_episode("careful", seed, at_carry="drop")
        assert outcome == "cracked at impact elsewhere" and info["crack_over_tray"] is False, (seed, outcome)
    # The failing attempts miss the egg or lose it on the way (weak grip, early release), uncracked.
    failing = {_demonstrator_episode("failing", seed)[0] for seed in range(4)}
    assert failing == {"never grasped", "dropped / not in tray"}
    # Squeezing cracks at the grasp, still holding; sloppy at the release, the falling egg no longer held.
    for style, cracked_as, held in (
        ("squeezing", "cracked by the grip", True), ("sloppy", "cracked at impact over the tray", False)
    ):  # fmt: skip
        outcomes = []
        for seed in range(4):
            outcome, info = _demonstrator_episode(style, seed)
            outcomes.append(outcome)
            if info["cracked"]:
                assert outcome == cracked_as and info["crack_held"] is held, (style, seed)
            else:
                assert outcome == "success" and info["crack_cause"] is None, (style, seed)
        assert outcomes.count(cracked_as) >= 2, (style, outcomes)


class SeedRecorder:
    """A do-nothing policy that records the episode seeds `evaluate` resets it with."""

    def __init__(self):
        self.seeds = []

    def reset(self, seed):
        self.seeds.append(seed)

    def __call__(self, obs):
        return np.zeros((MAX_STEPS, 4), np.float32)  # one chunk per episode


def test_a_tasks_scenes_do_not_depend_on_the_other_tasks_evaluated():
    both, alone = SeedRecorder(), SeedRecorder()
    evaluate(both, tasks=[PUT_EGG, CLOSE_CARTON], episodes_per_task=2, n_action_steps=MAX_STEPS)
    evaluate(alone, tasks=[CLOSE_CARTON], episodes_per_task=2, n_action_steps=MAX_STEPS)
    assert alone.seeds == both.seeds[2:] and alone.seeds != both.seeds[:2]


def test_rendering_then_importing_torch_compiler_does_not_crash():
    # Mesa's EGL loads LLVM; triton loaded after it used to segfault the process (see egg_env).
    code = "from crab.sim.egg_env import EggEnv; e = EggEnv(); e.reset(seed=0); import torch._dynamo; print('ok')"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "ok" in done.stdout, done.stderr[-2000:]


def test_episode_counts_per_dataset():
    from crab.sim.generate import DATASETS, episode_counts

    counts = episode_counts(50, {"egg_carton_to_tray": 11, "egg_carton_to_tray_cracked": 0})
    assert list(counts) == [d.name for d in DATASETS]
    assert counts["egg_carton_to_tray"] == 11 and counts["egg_carton_to_tray_cracked"] == 0
    assert counts["egg_carton_to_tray_sloppy"] == counts["open_the_carton"] == 50
    with pytest.raises(ValueError, match="unknown dataset.*egg_typo"):
        episode_counts(5, {"egg_typo": 3})
    with pytest.raises(ValueError, match=">= 0"):
        episode_counts(5, {"open_the_carton": -1})


def test_generate_cli_refuses_a_bad_count(capsys):
    from crab.sim.generate import main

    for bad in ("egg_carton_to_tray", "egg_carton_to_tray=x", "nope=3"):
        with pytest.raises(SystemExit) as exit_info:
            main(["--out", "unused", "--count", bad])
        assert exit_info.value.code == 2
        assert bad.split("=")[0] in capsys.readouterr().err


@pytest.mark.slow
def test_generate_writes_only_the_counted_episodes(tmp_path):
    import json

    from crab.sim.generate import DATASETS, generate

    counts = {d.name: 0 for d in DATASETS} | {"egg_carton_to_tray": 2, "egg_carton_to_tray_sloppy": 1}
    generate(tmp_path, episodes_per_dataset=5, seed=0, image_size=32, counts=counts)
    summary = json.loads((tmp_path / "generation_summary.json").read_text())["datasets"]
    assert {k: v["episodes"] for k, v in summary.items()} == {"egg_carton_to_tray": 2, "egg_carton_to_tray_sloppy": 1}
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == sorted(summary)


@pytest.mark.slow
def test_generate_writes_readable_lerobot_datasets_and_manifests(tmp_path):
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    from crab.sim.generate import DATASETS, generate
    from crab.training.manifest import check_roots, load_manifest

    with pytest.raises(ValueError, match="image_size"):
        generate(tmp_path, episodes_per_dataset=1, seed=0, image_size=16)
    assert generate(tmp_path, episodes_per_dataset=2, seed=0, image_size=32) == tmp_path
    manifests = Path(__file__).resolve().parents[1] / "crab" / "training" / "docs"  # the shipped manifests
    rows = load_manifest(manifests / "dataset_manifest.csv", tmp_path)
    check_roots(rows)
    assert [r.name for r in rows] == [d.name for d in DATASETS]
    assert [r.name for r in load_manifest(manifests / "dataset_manifest_cycle1_clean.csv", tmp_path)] == [
        "egg_carton_to_tray",
        "open_the_carton",
    ]
    with_cracked = load_manifest(manifests / "dataset_manifest_cycle1_with_cracked.csv", tmp_path)
    assert {r.name: r.quality for r in with_cracked}["egg_carton_to_tray_cracked"] == "cracked"
    for stem in (
        "anchor_base",
        "anchor_egg_clean",
        "anchor_retention",
        "scarce_clean",
        "scarce_mixed",
        "scarce_grasp_mixed",
        "scarce_eggonly",
        "scarce_eggonly_mixed",
        "scarce_grasp_eggonly_mixed",
        "scarce_eggonly_nofailed_mixed",
        "scarce_grasp_eggonly_nofailed_mixed",
    ):
        check_roots(load_manifest(manifests / f"dataset_manifest_{stem}.csv", tmp_path))

    expected_labels = {"clean": ("1.0", "0.0"), "cracked": ("0.0", "1.0"), "failed": ("0.0", "0.0")}
    for row in rows:
        ds = LeRobotDataset(row.repo_id, root=row.root, video_backend="torchcodec")
        assert ds.num_episodes == 2 and ds.fps == 10
        item = ds[0]
        assert item[IMAGE_KEY].shape == (3, 32, 32)
        assert item[STATE_KEY].shape == (len(STATE_NAMES),) and item["action"].shape == (len(ACTION_NAMES),)
        assert item["task"] == row.task
        with open(row.root / "meta" / "crab_episode_labels.csv", newline="") as f:
            labels = {(r["success"], r["damage"]) for r in csv.DictReader(f)}
        assert labels == {expected_labels[row.quality]}
    with pytest.raises(FileExistsError):
        generate(tmp_path, episodes_per_dataset=1, seed=0)
