"""Closed-loop evaluation of a policy in `EggEnv`: success, crack and return rates with intervals, and
where each egg transfer ended (`egg_outcome`).

The policy is a plain callable `act(obs) -> (H, A)` action chunk, where `obs` holds
`observation.images.top` (uint8 H x W x 3), `observation.state` (float32) and `task` (the instruction).
The first `n_action_steps` actions of each chunk are executed before the policy is asked again. If the
callable has a `reset(seed)` method (a learned policy that keeps an action queue or samples noise) it is
called with the episode's seed before each episode.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from crab.sim.egg_env import FPS, IMAGE_KEY, PUT_EGG, STATE_KEY, TASKS, EggEnv, episode_frames

Policy = Callable[[dict], np.ndarray]

# Two-sided 95% Student t critical values for 1..30 degrees of freedom (beyond 30, 1.96 is within 4%).
_T95 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
        2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
        2.045, 2.042)  # fmt: skip


def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for a binomial rate k/n (95% for z=1.96); (0, 1) when n is 0."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def mean_interval(values: Sequence[float]) -> tuple[float, float, float]:
    """Mean and its 95% Student t interval; the interval collapses to the mean for fewer than 2 values."""
    x = np.asarray(values, dtype=np.float64)
    mean = float(x.mean()) if len(x) else float("nan")
    if len(x) < 2:
        return mean, mean, mean
    t = _T95[len(x) - 2] if len(x) - 1 <= len(_T95) else 1.96
    half = t * float(x.std(ddof=1)) / math.sqrt(len(x))
    return mean, mean - half, mean + half


# Where an egg transfer ends, in the order a transfer goes (`egg_outcome`); the other tasks' episodes
# are only "success" or "failure".
EGG_OUTCOMES = (
    "success",
    "never grasped",
    "cracked by the grip",
    "cracked at impact over the tray",
    "cracked at impact elsewhere",
    "dropped / not in tray",
    "timed out holding",
)
OTHER_OUTCOMES = ("success", "failure")


def outcome_categories(task: str) -> tuple[str, ...]:
    return EGG_OUTCOMES if task == PUT_EGG else OTHER_OUTCOMES


def egg_outcome(
    held: Sequence[bool], success: bool, crack_cause: str | None, crack_over_tray: bool | None = None
) -> str:
    """The one `EGG_OUTCOMES` category of a "Put the egg into the tray." episode.

    `held`: the env's `info["egg_held"]` (both fingers touch the egg) of every step, the reset's first;
    not the state's `egg_grasped` flag, which is always 0 (see `EggEnv.step`).
    `crack_cause`: `info["crack_cause"]` at the end ("grip", "impact" or None); `crack_over_tray`:
    `info["crack_over_tray"]`, which splits the impacts into the release's (a drop or a hard set-down over
    the tray) and the carry's (the egg lost on the way). A crack decides the category whatever the fingers
    did, so the three crack categories add up to the crack rate. An uncracked failure runs to the step
    limit (the env ends an episode early only once the egg rests in the tray): the fingers never held the
    egg, still hold it, or let it go somewhere other than into the tray.
    """
    if success:
        return "success"
    if crack_cause == "grip":
        return "cracked by the grip"
    if crack_cause == "impact":
        return "cracked at impact over the tray" if crack_over_tray else "cracked at impact elsewhere"
    if not any(held):
        return "never grasped"
    return "timed out holding" if held[-1] else "dropped / not in tray"


@dataclass
class TaskResult:
    task: str
    successes: list[bool] = field(default_factory=list)
    cracks: list[bool] = field(default_factory=list)
    returns: list[float] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)
    outcomes: list[str] = field(default_factory=list)  # EGG_OUTCOMES for the egg task, else OTHER_OUTCOMES

    def summary(self) -> dict:
        n = len(self.successes)
        categories = outcome_categories(self.task)
        k_s, k_c = sum(self.successes), sum(self.cracks)
        mean, lo, hi = mean_interval(self.returns)
        return {
            "task": self.task,
            "episodes": n,
            "success_rate": k_s / n if n else float("nan"),
            "success_ci95": wilson_interval(k_s, n),
            "crack_rate": k_c / n if n else float("nan"),
            "crack_ci95": wilson_interval(k_c, n),
            "mean_return": mean,
            "return_ci95": (lo, hi),
            "mean_length": float(np.mean(self.lengths)) if n else float("nan"),
            "outcomes": {c: self.outcomes.count(c) for c in categories},
        }


@dataclass
class EpisodeRun:
    """One closed-loop episode. `frames`: per step, keyed as the LeRobot datasets (and `Rollout.frames`): the
    observation the action was chosen on, the action executed, `next.reward` and `next.success`; so the
    episode can be written as a dataset (`crab.sim.experience`). `last_image`: the camera after the last step."""

    success: bool
    cracked: bool
    total: float  # the episode's return
    outcome: str  # one of `EGG_OUTCOMES` for the egg task (`egg_outcome`), else of `OTHER_OUTCOMES`
    frames: dict[str, np.ndarray]
    last_image: np.ndarray

    @property
    def length(self) -> int:
        return len(self.frames["action"])

    @property
    def images(self) -> list[np.ndarray]:
        """Every camera frame of the episode, the reset's first and the last step's last (for videos)."""
        return [*self.frames[IMAGE_KEY], self.last_image]


def run_episode(policy: Policy, env: EggEnv, seed: int, n_action_steps: int) -> EpisodeRun:
    """One closed-loop episode of `policy` in `env`, reset with `seed`."""
    if hasattr(policy, "reset"):  # a learned policy: clear its state and seed its sampling
        policy.reset(seed)
    obs, info = env.reset(seed=seed)
    held = [info["egg_held"]]
    images, states, actions, rewards, successes = [], [], [], [], []
    done = False
    while not done:
        chunk = np.asarray(policy({**obs, "task": env.task}), dtype=np.float32)
        if chunk.ndim == 1:
            chunk = chunk[None]
        for action in chunk[:n_action_steps]:
            images.append(obs[IMAGE_KEY])
            states.append(obs[STATE_KEY])
            actions.append(action)
            obs, reward, terminated, truncated, info = env.step(action)
            held.append(info["egg_held"])
            rewards.append(reward)
            successes.append(info["success"])
            done = terminated or truncated
            if done:
                break
    success = bool(info["success"])
    if env.task == PUT_EGG:
        outcome = egg_outcome(held, success, info["crack_cause"], info["crack_over_tray"])
    else:
        outcome = "success" if success else "failure"
    frames = episode_frames(images, states, actions, rewards, successes)
    return EpisodeRun(success, bool(info["cracked"]), float(sum(rewards)), outcome, frames, obs[IMAGE_KEY])


def save_video(frames: Sequence[np.ndarray], path: Path, scale: int = 4) -> Path:
    """Write frames (H, W, 3 uint8) as an MPEG-4 video, upscaled `scale` times for viewing."""
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=FPS)
        h, w = frames[0].shape[:2]
        stream.width, stream.height = w * scale, h * scale
        stream.pix_fmt = "yuv420p"
        for image in frames:
            big = np.repeat(np.repeat(image, scale, axis=0), scale, axis=1)
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(big), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def episode_seeds(seed: int, task: str, episodes: int) -> np.ndarray:
    """The env seeds of a task's `episodes` scenes drawn from `seed` (`evaluate`'s scenes for that seed)."""
    return np.random.default_rng([seed, 7919, TASKS.index(task)]).integers(0, 2**31 - 1, size=episodes)


def evaluate(
    policy: Policy,
    tasks: Sequence[str] = TASKS,
    episodes_per_task: int = 10,
    seed: int = 0,
    n_action_steps: int = 5,
    image_size: int = 32,
    video_dir: Path | None = None,
    videos_per_task: int = 2,
) -> dict[str, dict]:
    """Run `episodes_per_task` seeded episodes of each task; returns `TaskResult.summary()` per task.

    Episode seeds come from `seed` and the task (its place in `TASKS`, not in `tasks`), so two policies
    evaluated with the same `seed` face the same initial scenes of a task, whichever tasks run. With `video_dir`, the first `videos_per_task` episodes of each task are saved
    there as mp4.
    """
    results = {}
    for task in tasks:
        env = EggEnv(task, image_size=image_size)
        result = TaskResult(task)
        for i, ep_seed in enumerate(episode_seeds(seed, task, episodes_per_task)):
            run = run_episode(policy, env, int(ep_seed), n_action_steps)
            result.successes.append(run.success)
            result.outcomes.append(run.outcome)
            result.cracks.append(run.cracked)
            result.returns.append(run.total)
            result.lengths.append(run.length)
            if video_dir is not None and i < videos_per_task:
                slug = task.lower().rstrip(".").replace(" ", "_")
                save_video(run.images, Path(video_dir) / f"{slug}_{i:02d}.mp4")
        env.close()
        results[task] = result.summary()
    return results
