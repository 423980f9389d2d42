"""Scripted demonstrators of controlled quality for `EggEnv`, and rollouts of them.

Each demonstrator follows a list of waypoint phases with speed caps and low-pass filtered actions, so its
actions are smooth enough to imitate. The three styles act differently in the same situations:

- `careful`: slow descent, gentle grip (well under the crack force), lowers the egg onto the tray floor
  before letting go. Succeeds without cracks.
- `rough`: an operator in a hurry: full speed, hard grip (often over the crack force) and releases the
  egg from a height (often fast enough to crack it on impact). Still usually delivers the egg.
- `failing`: a missed grasp (off to the side), a grip too weak to lift, or a release right after lifting;
  the egg never reaches the tray.
- `sloppy`: the careful style everywhere except at one moment, the release: it lets go from a height
  over the tray (`DROP_HEIGHT`), so the egg usually cracks on impact. The approach, grasp and carry are
  the careful ones (the same phases and parameter draws), so only the release is worth avoiding.
- `squeezing`: the careful style everywhere except at one moment, the grasp: the fingers close with a
  squeeze over the crack force (`SQUEEZE_GRIP`) for the grasp's few steps, then hold with the careful grip
  for the carry and the release, which are the careful ones (the cracked egg still goes into the tray).
- `tightening`: the careful style everywhere except in the middle of the carry: a few steps after the
  carry starts the fingers tighten over the crack force (`SQUEEZE_GRIP`) for `TIGHTEN_STEPS` steps, as a
  hand does when it feels the egg slip, then relax to the careful grip for the rest of the carry and the
  release. The damage sits where neither other damaging style puts it: between the grasp and the release.

The demonstrators read the true scene state from the env (egg, tray, lid positions), as a human
teleoperator would see them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from crab.sim.egg_env import (
    CLOSE_CARTON,
    EE_STEP,
    EGG_HALF_HEIGHT,
    FINGER_LENGTH,
    IMAGE_KEY,
    LID_LENGTH,
    LID_STOP,
    OPEN_CARTON,
    PUT_EGG,
    STATE_KEY,
    EggEnv,
    episode_frames,
)

# New styles go last: the index seeds their rng.
STYLES = ("careful", "rough", "failing", "sloppy", "squeezing", "tightening")
GRIP_OPEN = -1.0
PALM_ABOVE_EGG_CENTRE = 0.028  # palm height over the egg centre at which the fingertips straddle its equator
TRAY_FLOOR = 0.004
GAIN = 0.6  # fraction of the remaining distance commanded per step (before the speed cap)
APPROACH = 0.07  # hover height over the grasp pose: fingertips clear the egg and the carton walls
# The sloppy style's release height (egg bottom over the tray floor): a free fall from 2.5 cm reaches
# CRACK_SPEED, so most drops from this range crack the egg.
DROP_HEIGHT = (0.02, 0.06)
# The squeezing style's grip command while the fingers close (x GRIP_FORCE_MAX newtons): over CRACK_FORCE.
SQUEEZE_GRIP = (0.7, 0.9)
# The tightening style: the carry's steps before the fingers tighten, and how many steps they stay tight.
TIGHTEN_AFTER, TIGHTEN_STEPS = 3, 4


@dataclass
class Phase:
    target: Callable[[EggEnv], np.ndarray]  # end-effector goal, re-evaluated every step
    speed: float  # cap on |action| per axis
    grip: float
    min_steps: int = 0
    max_steps: int = 30
    tol: float = 0.006  # metres from the goal that end the phase (after min_steps)


@dataclass
class Demonstrator:
    """A phase script with a first-order filter on the commanded action (`smoothing` = filter gain)."""

    style: str
    phases: list[Phase]
    smoothing: float
    _phase: int = 0
    _steps_in_phase: int = 0
    _last: np.ndarray | None = None

    def __call__(self, env: EggEnv) -> np.ndarray:
        if self._last is None:
            self._last = np.array([0.0, 0.0, 0.0, self.phases[0].grip])
        while self._phase < len(self.phases):
            p = self.phases[self._phase]
            err = p.target(env) - env.ee_pos
            settled = self._steps_in_phase >= p.min_steps and np.abs(err).max() < p.tol
            if not settled and self._steps_in_phase < p.max_steps:
                break
            self._phase += 1
            self._steps_in_phase = 0
        if self._phase == len(self.phases):
            desired = np.array([0.0, 0.0, 0.0, self._last[3]])  # script done: hold still
        else:
            # Proportional control of the commanded position (not the lagging actual one, which would
            # overshoot), saturated at the phase's speed.
            move = np.clip(GAIN * (p.target(env) - env.ee_target) / EE_STEP, -p.speed, p.speed)
            desired = np.append(move, p.grip)
            self._steps_in_phase += 1
        self._last = self._last + self.smoothing * (desired - self._last)
        return self._last.astype(np.float32)


def _above(point: Callable[[EggEnv], np.ndarray], dz: float) -> Callable[[EggEnv], np.ndarray]:
    return lambda env: point(env) + np.array([0.0, 0.0, dz])


def _egg_pick_phases(rng: np.random.Generator, style: str) -> tuple[list[Phase], float]:
    """Phases for "Put the egg into the tray." in the given style, and the action filter gain."""
    egg0: dict[str, np.ndarray] = {}

    def egg_grasp(env: EggEnv) -> np.ndarray:
        # Aim at where the egg stood when the script started: a squeezed egg shifts in the fingers.
        egg0.setdefault("p", env.egg_pos)
        return egg0["p"] + np.array([0.0, 0.0, PALM_ABOVE_EGG_CENTRE])

    def tray_release(gap: float) -> Callable[[EggEnv], np.ndarray]:
        def target(env: EggEnv) -> np.ndarray:
            # Lower until the held egg's bottom is `gap` above the tray floor.
            egg_z = TRAY_FLOOR + EGG_HALF_HEIGHT + gap
            tray = env.tray_pos
            return np.array([tray[0], tray[1], env.ee_pos[2] + egg_z - env.egg_pos[2]])

        return target

    def over_tray(height: float) -> Callable[[EggEnv], np.ndarray]:
        return lambda env: env.tray_pos + np.array([0.0, 0.0, height])

    def lift(height: float) -> Callable[[EggEnv], np.ndarray]:
        return lambda env: np.append(egg0["p"][:2], height)

    def hold(env: EggEnv) -> np.ndarray:
        return env.ee_pos

    if style in ("careful", "sloppy", "squeezing", "tightening"):
        # The same draws in the same order: given the same rng, sloppy differs from careful only in `gap`,
        # squeezing only in the grip while the fingers close and tightening only in the grip of a few
        # carry steps (one more draw each, after the careful ones).
        grip = rng.uniform(0.3, 0.45)
        gap = rng.uniform(*DROP_HEIGHT) if style == "sloppy" else rng.uniform(0.0, 0.004)
        carry = rng.uniform(0.14, 0.16)
        closing = rng.uniform(*SQUEEZE_GRIP) if style == "squeezing" else grip
        tight = rng.uniform(*SQUEEZE_GRIP) if style == "tightening" else grip
        # The carry in three pieces (one move to the same goal at the same speed), the middle one tight.
        carry_phases = [
            Phase(over_tray(carry), speed=0.6, grip=grip, min_steps=TIGHTEN_AFTER, max_steps=TIGHTEN_AFTER, tol=0.0),
            Phase(over_tray(carry), speed=0.6, grip=tight, min_steps=TIGHTEN_STEPS, max_steps=TIGHTEN_STEPS, tol=0.0),
            Phase(over_tray(carry), speed=0.6, grip=grip, tol=0.01),
        ]
        phases = [
            Phase(_above(egg_grasp, APPROACH), speed=0.7, grip=GRIP_OPEN, tol=0.01),
            Phase(egg_grasp, speed=0.3, grip=GRIP_OPEN, tol=0.003),
            Phase(egg_grasp, speed=0.3, grip=closing, min_steps=4, max_steps=4),
            Phase(lift(carry), speed=0.4, grip=grip, tol=0.01),
            *(carry_phases if style == "tightening" else [Phase(over_tray(carry), speed=0.6, grip=grip, tol=0.01)]),
            Phase(tray_release(gap), speed=0.3, grip=grip, tol=0.003),
            Phase(hold, speed=0.0, grip=GRIP_OPEN, min_steps=3, max_steps=3),
            Phase(over_tray(carry), speed=0.4, grip=GRIP_OPEN),
        ]
        return phases, 0.5
    if style == "rough":
        grip = rng.uniform(0.3, 0.7)
        gap = rng.uniform(0.0, 0.05)
        carry = rng.uniform(0.12, 0.15)
        phases = [
            Phase(_above(egg_grasp, APPROACH - 0.01), speed=1.0, grip=GRIP_OPEN, tol=0.015),
            Phase(egg_grasp, speed=0.8, grip=GRIP_OPEN, tol=0.005),
            Phase(egg_grasp, speed=0.8, grip=grip, min_steps=2, max_steps=2),
            Phase(lift(carry), speed=1.0, grip=grip, tol=0.015),
            Phase(over_tray(carry), speed=1.0, grip=grip, tol=0.015),
            Phase(tray_release(gap), speed=0.8, grip=grip, tol=0.008),
            Phase(hold, speed=0.0, grip=GRIP_OPEN, min_steps=2, max_steps=2),
            Phase(over_tray(carry), speed=1.0, grip=GRIP_OPEN),
        ]
        return phases, 0.8
    if style == "failing":
        mode = rng.choice(["miss", "weak", "early_release"])
        grip = rng.uniform(0.3, 0.45)
        carry = rng.uniform(0.14, 0.16)
        offset = np.zeros(3)
        if mode == "miss":
            offset[1] = rng.choice([-1, 1]) * rng.uniform(0.04, 0.05)  # beside the egg, across the fingers
        elif mode == "weak":
            grip = rng.uniform(0.0, 0.05)  # no more than the finger springs' opening force

        def grasp(env: EggEnv) -> np.ndarray:
            return egg_grasp(env) + offset

        phases = [
            Phase(_above(grasp, APPROACH), speed=0.6, grip=GRIP_OPEN),
            Phase(grasp, speed=0.3, grip=GRIP_OPEN, tol=0.004),
            Phase(grasp, speed=0.3, grip=grip, min_steps=4, max_steps=4),
        ]
        if mode == "early_release":
            phases += [
                Phase(_above(grasp, rng.uniform(0.01, 0.015)), speed=0.3, grip=grip),
                Phase(hold, speed=0.0, grip=GRIP_OPEN, min_steps=3, max_steps=3),
            ]
        phases += [
            Phase(lift(carry), speed=0.4, grip=grip if mode != "early_release" else GRIP_OPEN),
            Phase(over_tray(carry), speed=0.5, grip=GRIP_OPEN),
            Phase(over_tray(0.06), speed=0.3, grip=GRIP_OPEN),
            Phase(over_tray(carry), speed=0.4, grip=GRIP_OPEN),
        ]
        return phases, 0.5
    raise ValueError(f"unknown style {style!r}; expected one of {STYLES}")


def _open_carton_phases(rng: np.random.Generator) -> tuple[list[Phase], float]:
    """Push the lid's front flap backwards with the fingers, then keep pushing its front edge around
    the hinge until the lid is past vertical."""
    lead = rng.uniform(0.25, 0.35)  # how far (rad) the push point runs ahead of the lid
    depth = rng.uniform(0.015, 0.025)  # fingertip distance below the pushed edge

    def hinge(env: EggEnv) -> np.ndarray:
        return env.lid_hinge_pos

    def in_front(env: EggEnv) -> np.ndarray:
        return hinge(env) + np.array([0.0, -LID_LENGTH - 0.05, 0.008 + FINGER_LENGTH])

    def push(env: EggEnv) -> np.ndarray:
        angle = max(env.lid_angle, 0.0) + lead
        edge = hinge(env) + LID_LENGTH * np.array([0.0, -np.cos(angle), np.sin(angle)])
        return edge + np.array([0.0, 0.0, FINGER_LENGTH - depth])

    phases = [
        Phase(_above(in_front, 0.03), speed=0.7, grip=0.0, tol=0.01),
        Phase(in_front, speed=0.4, grip=0.0),
        Phase(push, speed=0.4, grip=0.0, max_steps=40, tol=0.0),
    ]
    return phases, 0.5


def _close_carton_phases(rng: np.random.Generator) -> tuple[list[Phase], float]:
    """Come in low from the tray's side under the open lid (it leans back on its stop, so its outer face
    looks down), lift it past vertical with the fingers, and follow it down until it falls shut."""
    lead = rng.uniform(0.25, 0.35)  # how far (rad) the push point runs ahead of the lid
    radius = rng.uniform(0.45, 0.55) * LID_LENGTH  # push point's distance from the hinge
    behind = rng.uniform(0.03, 0.04)  # start point behind the hinge (under the lid)
    fingertip_z = rng.uniform(0.015, 0.025)  # fingertip height when sliding under the lid

    def hinge(env: EggEnv) -> np.ndarray:
        return env.lid_hinge_pos

    def low(env: EggEnv, dx: float) -> np.ndarray:
        h = hinge(env)
        return np.array([h[0] + dx, h[1] + behind, fingertip_z + FINGER_LENGTH])

    def push(env: EggEnv) -> np.ndarray:
        angle = min(env.lid_angle, LID_STOP) - lead
        point = hinge(env) + radius * np.array([0.0, -np.cos(angle), np.sin(angle)])
        return point + np.array([0.0, 0.0, FINGER_LENGTH])

    phases = [
        Phase(_above(lambda env: low(env, 0.15), 0.06), speed=0.7, grip=0.0, tol=0.01),
        Phase(lambda env: low(env, 0.15), speed=0.5, grip=0.0, tol=0.008),
        Phase(lambda env: low(env, 0.0), speed=0.4, grip=0.0, tol=0.006),
        Phase(push, speed=0.4, grip=0.0, max_steps=40, tol=0.0),
    ]
    return phases, 0.5


def make_demonstrator(task: str, style: str, seed: int) -> Demonstrator:
    """A demonstrator for `task` in `style`, its per-episode parameters drawn from `seed`."""
    rng = np.random.default_rng([seed, STYLES.index(style) if style in STYLES else len(STYLES)])
    if task == PUT_EGG:
        phases, smoothing = _egg_pick_phases(rng, style)
    elif task == OPEN_CARTON:
        if style != "careful":
            raise ValueError("only the careful demonstrator opens the carton")
        phases, smoothing = _open_carton_phases(rng)
    elif task == CLOSE_CARTON:
        if style != "careful":
            raise ValueError("only the careful demonstrator closes the carton")
        phases, smoothing = _close_carton_phases(rng)
    else:
        raise ValueError(f"unknown task {task!r}")
    return Demonstrator(style, phases, smoothing)


@dataclass
class Rollout:
    task: str
    style: str
    seed: int
    frames: dict[str, np.ndarray]  # keyed as in the LeRobot datasets
    success: bool
    cracked: bool

    @property
    def length(self) -> int:
        return len(self.frames["action"])

    @property
    def episode_return(self) -> float:
        return float(self.frames["next.reward"].sum())


def rollout(task: str, style: str, seed: int, image_size: int = 32, render: bool = True) -> Rollout:
    """Run one demonstrator episode; the env and the demonstrator are both seeded by `seed`."""
    env = EggEnv(task, image_size=image_size, render_images=render)
    demo = make_demonstrator(task, style, seed)
    obs, info = env.reset(seed=seed)
    images, states, actions, rewards, successes = [], [], [], [], []
    done = False
    while not done:
        action = demo(env)
        images.append(obs[IMAGE_KEY])
        states.append(obs[STATE_KEY])
        actions.append(action)
        obs, reward, terminated, truncated, info = env.step(action)
        rewards.append(reward)
        successes.append(info["success"])
        done = terminated or truncated
    env.close()
    frames = episode_frames(images, states, actions, rewards, successes)
    return Rollout(task, style, seed, frames, bool(info["success"]), bool(info["cracked"]))
