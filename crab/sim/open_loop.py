"""Open-loop imitation error of checkpoints on fresh careful demonstrations.

    python -m crab.sim.open_loop outputs/sim_benchmark/runs/il_clean_seed0/step_008000 [more checkpoints] \
        [--episodes 8] [--seed 5000] [--task "Put the egg into the tray."]

Rolls the careful demonstrator out on scenes no dataset holds (`--seed` onwards), asks each policy for
an action chunk at every frame the demonstrator saw (noise seeded by the frame), and prints the mean
absolute error of the chunk's first action per action dimension against the careful action, plus the
mean and 90th percentile of the gripper command while the demonstrator squeezes. Closed-loop rates
mix imitation error with its consequences; this separates the first from the second.
"""

from __future__ import annotations

import argparse

import numpy as np

from crab.sim.demonstrators import rollout
from crab.sim.egg_env import IMAGE_KEY, PUT_EGG, STATE_KEY, TASKS
from crab.sim.policy_eval import SmolVLAActor


def open_loop_error(actor: SmolVLAActor, episodes: list, task: str) -> dict:
    """{abs_error: per action dim, grip_mean / grip_p90: predicted squeeze where the demonstrator squeezes}."""
    errors, grips = [], []
    for ep in episodes:
        f = ep.frames
        for t in range(ep.length):
            actor.reset(seed=t)
            action = actor({IMAGE_KEY: f[IMAGE_KEY][t], STATE_KEY: f[STATE_KEY][t], "task": task})[0]
            errors.append(np.abs(action - f["action"][t]))
            if f["action"][t][3] > 0:
                grips.append(action[3])
    grips = grips or [float("nan")]
    return {
        "abs_error": np.mean(errors, axis=0).tolist(),
        "grip_mean": float(np.mean(grips)),
        "grip_p90": float(np.percentile(grips, 90)),
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoints", nargs="+", help="outputs/<run>/step_XXXXXX")
    p.add_argument("--episodes", type=int, default=8)
    p.add_argument("--seed", type=int, default=5000, help="first scene seed (the datasets use 0 onwards)")
    p.add_argument("--task", default=PUT_EGG, choices=TASKS)
    p.add_argument("--image-size", type=int, default=32, help="camera size; must match the training data")
    args = p.parse_args(argv)
    episodes = [rollout(args.task, "careful", args.seed + i, args.image_size) for i in range(args.episodes)]
    demo_grips = [a[3] for ep in episodes for a in ep.frames["action"] if a[3] > 0]
    print(f"{args.episodes} careful episodes, {sum(ep.length for ep in episodes)} frames; careful squeeze "
          f"{np.mean(demo_grips) if demo_grips else float('nan'):.3f}")  # fmt: skip
    for checkpoint in args.checkpoints:
        try:
            r = open_loop_error(SmolVLAActor(checkpoint), episodes, args.task)
        except FileNotFoundError as e:
            p.exit(2, f"error: {e}\n")
        print(f"{checkpoint}: mean |error| per action dim {np.round(r['abs_error'], 3).tolist()}, squeeze "
              f"{r['grip_mean']:.3f} (p90 {r['grip_p90']:.3f})")  # fmt: skip


if __name__ == "__main__":
    main()
