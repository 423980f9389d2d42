"""Closed-loop evaluation of a trained SmolVLA checkpoint in the simulated egg-transfer env.

    python -m crab.sim.policy_eval --checkpoint outputs/<run>/step_XXXXXX --episodes 50 [--seed 0] \
        [--n-action-steps 5] [--task "Open the carton." ...] [--video-dir D --videos 2] [--out results.json]

The checkpoint is loaded the way lerobot loads any policy: `SmolVLAPolicy.from_pretrained` on its
`pretrained_model` folder and `make_pre_post_processors(config, pretrained_path=...)` for the saved
normalisation and tokenisation pipelines. Each task runs `--episodes` seeded episodes; success and crack
rates come with Wilson 95% intervals, the mean return with a t interval.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from crab.sim.egg_env import IMAGE_KEY, STATE_KEY, TASKS
from crab.sim.evaluate import evaluate
from crab.training.conditioning import NEGATIVE, POSITIVE, conditioned_task
from crab.training.smolvla_internals import guided_action_chunk

PRETRAINED_DIRNAME = "pretrained_model"


def pretrained_dir(checkpoint: str | Path) -> Path:
    """`<checkpoint>/pretrained_model` (a `pretrained_model` folder itself is accepted too)."""
    path = Path(checkpoint)
    folder = path if path.name == PRETRAINED_DIRNAME else path / PRETRAINED_DIRNAME
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(
            f"no policy checkpoint at {path}: expected {folder / 'config.json'} "
            "(pass a checkpoint folder outputs/<run>/step_XXXXXX)"
        )
    return folder


def run_conditioning(checkpoint: str | Path):
    """The `conditioning` section of the Crab run that saved `checkpoint` (its crab_config.yaml), or None for
    a checkpoint without one (lerobot's own, or saved before conditioning existed)."""
    from crab.training.config import saved_conditioning

    saved = pretrained_dir(checkpoint).parent / "crab_config.yaml"
    return saved_conditioning(saved) if saved.is_file() else None


class SmolVLAActor:
    """`act(obs) -> (H, A)` numpy chunk around a lerobot SmolVLA policy and its processors.

    A checkpoint trained with advantage conditioning (`conditioning.enabled` in its crab_config.yaml) is
    asked for "Advantage: positive" (`label`, None: no label) with the run's `conditioning.guidance` as beta
    (`guidance` overrides it; 1: no guidance, one policy pass per denoising step; above 1, the unconditioned
    prompt runs beside it)."""

    def __init__(
        self, checkpoint: str | Path, device: str | None = None, label: str | None = POSITIVE, guidance: float | None = None
    ) -> None:
        from lerobot.configs.policies import PreTrainedConfig
        from lerobot.policies.factory import make_pre_post_processors
        from lerobot.policies.smolvla.modeling_smolvla import SmolVLAPolicy

        from crab.training.tiny_smolvla import ensure_backbone

        folder = pretrained_dir(checkpoint)
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        config = PreTrainedConfig.from_pretrained(folder)
        ensure_backbone(config.vlm_model_name)
        config.device = self.device
        self.policy = SmolVLAPolicy.from_pretrained(folder, config=config).to(self.device).eval()
        self.preprocessor, self.postprocessor = make_pre_post_processors(
            self.policy.config,
            pretrained_path=str(folder),
            preprocessor_overrides={"device_processor": {"device": self.device}},
        )
        self.generator = torch.Generator(self.device)
        conditioning = run_conditioning(checkpoint)
        self.label = label if conditioning is not None and conditioning.enabled else None
        self.guidance = 1.0 if self.label is None else guidance if guidance is not None else conditioning.guidance

    @property
    def n_action_steps(self) -> int:
        return self.policy.config.n_action_steps

    def reset(self, seed: int = 0) -> None:
        """Start an episode: clear lerobot's queues and reseed the flow-sampling noise, so an evaluation
        depends on the checkpoint and the episode seeds only, not on what the process drew before."""
        self.policy.reset()
        self.generator.manual_seed(seed)

    @torch.no_grad()
    def __call__(self, obs: dict) -> np.ndarray:
        image = torch.from_numpy(np.ascontiguousarray(obs[IMAGE_KEY])).permute(2, 0, 1)[None].float() / 255.0
        state = torch.as_tensor(obs[STATE_KEY], dtype=torch.float32)[None]
        cfg = self.policy.config
        noise = torch.randn(1, cfg.chunk_size, cfg.max_action_dim, generator=self.generator, device=self.device)
        task = conditioned_task(obs["task"], self.label)
        if self.guidance == 1.0:
            batch = {IMAGE_KEY: image, STATE_KEY: state, "task": [task]}
            actions = self.policy.predict_action_chunk(self.preprocessor(batch), noise=noise)
        else:  # the conditioned and the unconditioned prompt on the same observation
            batch = {IMAGE_KEY: image.repeat(2, 1, 1, 1), STATE_KEY: state.repeat(2, 1), "task": [task, obs["task"]]}
            actions = guided_action_chunk(self.policy, self.preprocessor(batch), self.guidance, noise)
        return self.postprocessor(actions)[0].float().cpu().numpy()


def evaluate_checkpoint(
    checkpoint: str | Path,
    episodes: int,
    seed: int = 0,
    n_action_steps: int | None = None,
    image_size: int = 32,
    video_dir: Path | None = None,
    videos: int = 2,
    tasks: tuple[str, ...] = TASKS,
    label: str | None = POSITIVE,
    guidance: float | None = None,
) -> dict:
    """Evaluate one checkpoint; returns {checkpoint, n_action_steps, seed, label, guidance, wall_s, tasks:
    {task: summary}} (`label`, `guidance`: what a conditioned checkpoint is asked, see `SmolVLAActor`)."""
    start = time.perf_counter()
    actor = SmolVLAActor(checkpoint, label=label, guidance=guidance)
    steps = n_action_steps or actor.n_action_steps
    results = evaluate(actor, tasks, episodes, seed, steps, image_size, video_dir, videos)
    return {
        "checkpoint": str(checkpoint),
        "n_action_steps": steps,
        "seed": seed,
        "label": actor.label,
        "guidance": actor.guidance,
        "wall_s": time.perf_counter() - start,
        "tasks": results,
    }


def format_results(result: dict) -> str:
    asked = "" if result.get("label") is None else f", asked {result['label']}, guidance {result['guidance']:g}"
    lines = [f"{result['checkpoint']} (n_action_steps {result['n_action_steps']}, seed {result['seed']}{asked}):"]
    for task, s in result["tasks"].items():
        lines.append(
            f"  {task:<28} n={s['episodes']:<4} success {s['success_rate']:.0%} "
            f"[{s['success_ci95'][0]:.0%}, {s['success_ci95'][1]:.0%}]  crack {s['crack_rate']:.0%} "
            f"[{s['crack_ci95'][0]:.0%}, {s['crack_ci95'][1]:.0%}]  return {s['mean_return']:+.2f} "
            f"[{s['return_ci95'][0]:+.2f}, {s['return_ci95'][1]:+.2f}]"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="outputs/<run>/step_XXXXXX")
    parser.add_argument("--episodes", type=int, default=50, help="episodes per task")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-action-steps", type=int, help="actions executed per chunk (default: the policy's)")
    parser.add_argument("--image-size", type=int, default=32, help="camera size; must match the training data")
    parser.add_argument("--video-dir", type=Path)
    parser.add_argument("--videos", type=int, default=2, help="videos saved per task with --video-dir")
    parser.add_argument("--task", action="append", choices=TASKS, help="evaluate this task (repeat; default: all)")
    parser.add_argument("--label", choices=(POSITIVE, NEGATIVE, "none"), default=POSITIVE,
                        help="what a checkpoint trained with advantage conditioning is asked for (none: no label)")
    parser.add_argument("--guidance", type=float, help="classifier-free guidance beta (default: the run's "
                        "conditioning.guidance; 1: none)")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args(argv)
    if args.guidance is not None and not args.guidance >= 0:  # also refuses nan
        parser.error("--guidance must be >= 0 (as conditioning.guidance)")
    try:
        result = evaluate_checkpoint(
            args.checkpoint, args.episodes, args.seed, args.n_action_steps, args.image_size, args.video_dir, args.videos,
            tuple(args.task or TASKS), None if args.label == "none" else args.label, args.guidance,
        )
    except FileNotFoundError as e:
        parser.exit(2, f"error: {e}\n")
    print(format_results(result))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))
        print(f"results -> {args.out}")


if __name__ == "__main__":
    main()
