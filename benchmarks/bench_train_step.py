"""Training-step time and memory: lerobot 0.6.1's own `update_policy` against Crab's step.

    python benchmarks/bench_train_step.py --size tiny [--steps 10 --repeats 15 --threads 1]
    python benchmarks/bench_train_step.py --size base [--steps 1 --repeats 3 --threads 1]

Variants, all on the same SmolVLA configuration, initial weights, preprocessed batch and optimiser
(the config's AdamW and cosine presets, as lerobot builds them):
  (a) lerobot: `lerobot.scripts.lerobot_train.update_policy` (policy.forward = lerobot's loss), set up
      as lerobot 0.6.1's `train` sets it up for SmolVLA (Accelerator without mixed precision, since
      SmolVLAConfig has no `dtype` and `use_amp` is off; optimiser and scheduler presets; its metrics
      tracker) and called as its loop calls it, without a sample weighter (no RA-BC);
  (b) IL, (c) RWFM, (d) RWFM + naive anchor, (e) RWFM + shared-prefix anchor: `CrabSmolVLA`, one step
      exactly as crab/training/train.py runs it (forward, backward, clip, optimiser, scheduler, metrics).
Reward weighting, anchor and task masks come from the cycle-1 cracked-factor config; the anchors run
at lambda_anchor > 0, so the reference is evaluated.

`tiny` is the offline test-size SmolVLA (batch 8, 32x32 camera); `base` is smolvla_base's architecture
(SmolVLAConfig defaults, load_vlm_weights=False) over a random-weight VLM shaped like
SmolVLM2-500M-Video-Instruct, whose config folder is written to a temporary directory (no download).
The batch has the demo robot's features (one camera, 5-D state, 4-D action) and CrabDataset's reward
fields, and goes through the real preprocessor once; it is not part of the timed step (nor is it in
lerobot's `update_policy`).

Timing: after warm-up steps, the variants take turns (order rotated every repeat), `--steps` steps
each; reported are the median time per step over repeats and, for the ratios, the median of the
per-repeat ratios (paired, so slow drift in machine load cancels). Memory: each variant runs again in
a fresh subprocess; on CPU the figure is the peak resident set size (VmHWM, reset through
/proc/self/clear_refs) during the variant's setup (reference copy, optimiser) and its steps, minus the
RSS before it (policy and batch already built); on CUDA the allocator's peak minus what was allocated
before.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch

from crab.training.config import AnchorConfig, PolicyConfig, RewardWeightingConfig, load_config
from crab.training.crab_smolvla_wrapper import CrabSmolVLA, make_policy, policy_config
from crab.training.tiny_smolvla import write_vlm_folder
from crab.training.train import build_optimizer, training_step

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "crab/training/configs/train_cycle1_rwfm_anchor_cracked_factor.yaml"
VARIANTS = ("lerobot", "IL", "RWFM", "RWFM+naive", "RWFM+shared")
LABELS = {
    "lerobot": "(a) lerobot update_policy",
    "IL": "(b) IL",
    "RWFM": "(c) RWFM",
    "RWFM+naive": "(d) RWFM + naive anchor",
    "RWFM+shared": "(e) RWFM + shared-prefix",
}
# The demo robot (crab.sim): one camera, (x, y, z, gripper, grasped) state, (dx, dy, dz, gripper) action.
STATE_DIM, ACTION_DIM = 5, 4
TASKS = ("Put the egg into the tray.", "Open the carton.")


def write_500m_vlm(folder: Path) -> Path:
    """Config + processor folder shaped like HuggingFaceTB/SmolVLM2-500M-Video-Instruct (no weights).

    Sizes as in that model's published config.json (SmolLM2-360M text model, SigLIP-base/16 at 512 px,
    pixel shuffle 4 -> 64 tokens per image). The tokenizer is the tiny folder's byte-level one, so task
    strings tokenise longer than with the real tokenizer (a few dozen tokens instead of ~10).
    """
    text = {
        "vocab_size": 49280,
        "hidden_size": 960,
        "intermediate_size": 2560,
        "num_hidden_layers": 32,
        "num_attention_heads": 15,
        "num_key_value_heads": 5,
        "head_dim": 64,
        "max_position_embeddings": 8192,
        "rope_theta": 100000.0,
    }
    vision = {
        "hidden_size": 768,
        "intermediate_size": 3072,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "image_size": 512,
        "patch_size": 16,
    }
    return write_vlm_folder(folder, text, vision, scale_factor=4)


def build_policy(size: str, vlm_dir: Path, device: str):
    """(policy, preprocessor, SmolVLAConfig) with random weights, seeded."""
    if size == "tiny":
        cfg = policy_config(PolicyConfig("tiny"))
    else:
        from lerobot.policies.smolvla.configuration_smolvla import SmolVLAConfig

        cfg = SmolVLAConfig(vlm_model_name=str(vlm_dir), load_vlm_weights=False)
    cfg = dataclasses.replace(cfg, device=device)
    side = cfg.resize_imgs_with_padding[0]
    features = {
        "observation.images.top": {"dtype": "video", "shape": (side, side, 3), "names": ["height", "width", "channels"]},
        "observation.state": {"dtype": "float32", "shape": (STATE_DIM,), "names": None},
        "action": {"dtype": "float32", "shape": (ACTION_DIM,), "names": None},
    }
    stats = {
        "observation.state": {"mean": np.zeros(STATE_DIM), "std": np.ones(STATE_DIM)},
        "action": {"mean": np.zeros(ACTION_DIM), "std": np.ones(ACTION_DIM)},
    }
    torch.manual_seed(0)
    # pretrained_path "tiny" = randomly initialised SmolVLAPolicy(cfg); cfg itself decides the size.
    policy, preprocessor, _ = make_policy(cfg, PolicyConfig("tiny"), features, stats)
    return policy.to(device), preprocessor, policy.config


def raw_batch(batch_size: int, cfg) -> dict:
    """A collated CrabDataset batch: camera in [0, 1], state, action chunk, padding, rewards, strings."""
    g = torch.Generator().manual_seed(1)
    side, chunk = cfg.resize_imgs_with_padding[0], cfg.chunk_size
    pad = torch.zeros(batch_size, chunk, dtype=torch.bool)
    pad[0, chunk // 2 :] = True  # one sample runs past its episode's end
    return {
        "observation.images.top": torch.rand(batch_size, 3, side, side, generator=g),
        "observation.state": torch.randn(batch_size, STATE_DIM, generator=g),
        "action": torch.randn(batch_size, chunk, ACTION_DIM, generator=g),
        "action_is_pad": pad,
        "task": [TASKS[i % 2] for i in range(batch_size)],
        "step_reward": torch.randn(batch_size, generator=g, dtype=torch.float64),
        "chunk_return": torch.randn(batch_size, generator=g, dtype=torch.float64),
        "episode_reward": torch.randn(batch_size, generator=g, dtype=torch.float64),
        "episode_success": torch.ones(batch_size, dtype=torch.float64),
        "episode_damage": torch.zeros(batch_size, dtype=torch.float64),
        "signal": torch.randn(batch_size, generator=g, dtype=torch.float64),
        "dataset_name": ["egg_carton_to_tray"] * batch_size,
        "task_name": [TASKS[i % 2] for i in range(batch_size)],  # the dataset's task (CrabDataset's item)
        "quality": ["clean"] * batch_size,
    }


def clone_trainable(policy):
    """A copy with its own trainable weights; frozen parameters (the VLM) stay shared, since no
    variant changes them and a 500M-shaped VLM per variant would not fit in memory side by side."""
    memo = {id(p): p for p in policy.parameters() if not p.requires_grad}
    processor = policy.model.vlm_with_expert.processor
    memo[id(processor)] = processor
    return copy.deepcopy(policy, memo)


def lerobot_step(policy, cfg, batch_size: int) -> Callable[[dict], object]:
    """lerobot 0.6.1's `lerobot_train.train` setup (its Accelerator, the optimiser/scheduler presets as
    `make_optimizer_and_scheduler` builds them, `accelerator.prepare`, its metrics tracker), then its loop's
    `update_policy` call (no sample weighter: RA-BC is off by default)."""
    from accelerate import Accelerator, DistributedDataParallelKwargs
    from lerobot.scripts.lerobot_train import update_policy
    from lerobot.utils.logging_utils import AverageMeter, MetricsTracker

    accelerator = Accelerator(
        step_scheduler_with_optimizer=False,
        mixed_precision=None,  # SmolVLAConfig has no `dtype` and `use_amp` is False: full precision
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
        cpu=not torch.cuda.is_available(),
    )
    optimizer = cfg.get_optimizer_preset().build(policy.get_optim_params())
    scheduler = cfg.get_scheduler_preset().build(optimizer, 30_000)
    policy, optimizer, scheduler = accelerator.prepare(policy, optimizer, scheduler)
    meters = {
        "loss": AverageMeter("loss", ":.3f", reduction="mean"),
        "grad_norm": AverageMeter("grdn", ":.3f"),
        "lr": AverageMeter("lr", ":0.1e"),
        "update_s": AverageMeter("updt_s", ":.3f", reduction="max"),
        "dataloading_s": AverageMeter("data_s", ":.3f", reduction="max"),
        "samples_per_s": AverageMeter("smp/s", ":.0f"),
    }
    if torch.cuda.is_available():
        meters["gpu_mem_gb"] = AverageMeter("mem_gb", ":.2f", reduction="max")
    tracker = MetricsTracker(batch_size, 10_000, 100, meters, initial_step=0, accelerator=accelerator)

    def step(batch: dict):
        return update_policy(
            tracker,
            policy,
            dict(batch),
            optimizer,
            cfg.optimizer_grad_clip_norm,
            accelerator=accelerator,
            lr_scheduler=scheduler,
            sample_weighter=None,
        )

    return step


def crab_step(
    policy,
    cfg,
    rw: RewardWeightingConfig,
    anchor: AnchorConfig,
    task_masks: dict,
    signal_mean: float = 0.0,
    signal_std: float = 1.0,
) -> Callable[[dict], torch.Tensor]:
    """train.py's setup and loop body (minus data loading and preprocessing, as for lerobot).

    The signal statistics only scale the advantages; their values do not change the work done."""
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=not torch.cuda.is_available(), mixed_precision="no")
    model = CrabSmolVLA(policy, rw, anchor, signal_mean=signal_mean, signal_std=signal_std, task_masks=task_masks)
    params, optimizer, scheduler = build_optimizer(model, cfg, 30_000)
    model, optimizer = accelerator.prepare(model, optimizer)
    model.train()
    lambda_anchor = anchor.lambda_anchor if anchor.enabled else 0.0

    def step(batch: dict) -> torch.Tensor:
        row, _ = training_step(model, dict(batch), None, lambda_anchor, accelerator, optimizer, scheduler, params, cfg)
        return row

    return step


def make_step(name: str, policy, cfg, batch_size: int) -> Callable[[dict], object]:
    run_cfg = load_config(CONFIG)
    rw, anchor = run_cfg.reward_weighting, run_cfg.anchor
    variants = {
        "IL": (dataclasses.replace(rw, enabled=False), dataclasses.replace(anchor, enabled=False)),
        "RWFM": (rw, dataclasses.replace(anchor, enabled=False)),
        "RWFM+naive": (rw, dataclasses.replace(anchor, enabled=True, mode="naive")),
        "RWFM+shared": (rw, dataclasses.replace(anchor, enabled=True, mode="shared_prefix")),
    }
    if name == "lerobot":
        return lerobot_step(policy, cfg, batch_size)
    return crab_step(policy, cfg, *variants[name], run_cfg.task_masks)


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _proc_status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def measure_memory(name: str, policy, cfg, batch: dict, batch_size: int, steps: int) -> float:
    """MB the variant's setup and `steps` steps add at their peak (see the module docstring)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        before = _proc_status_kb("VmRSS") * 1024
    step = make_step(name, policy, cfg, batch_size)
    for _ in range(steps):
        step(batch)
    sync()
    peak = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else _proc_status_kb("VmHWM") * 1024
    return (peak - before) / 2**20


def memory_in_subprocess(args: argparse.Namespace, name: str) -> float:
    cmd = [sys.executable, __file__, "--size", args.size, "--batch-size", str(args.batch_size), "--memory-of", name]
    cmd += ["--memory-steps", str(args.memory_steps), "--threads", str(torch.get_num_threads())]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=REPO).stdout
    return json.loads(out.strip().splitlines()[-1])["peak_mb"]


def versions() -> str:
    import platform
    from importlib.metadata import version

    return (
        f"python {platform.python_version()}, torch {torch.__version__}, lerobot {version('lerobot')}, "
        f"transformers {version('transformers')}"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=("tiny", "base"), default="tiny")
    p.add_argument("--batch-size", type=int, help="default: tiny 8; base 2 on CPU, 32 on CUDA")
    p.add_argument("--steps", type=int, help="timed steps per variant per repeat (default: tiny 10, base 1)")
    p.add_argument("--repeats", type=int, help="round-robin repeats (default: tiny 15, base 3)")
    p.add_argument("--warmup", type=int, help="untimed steps per variant first (default: tiny 2, base 1)")
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's own choice)")
    p.add_argument("--memory-steps", type=int, default=2, help="steps per variant in the memory subprocess")
    p.add_argument("--no-memory", action="store_true", help="skip the per-variant memory subprocesses")
    p.add_argument("--memory-of", choices=VARIANTS, help=argparse.SUPPRESS)  # the memory subprocess
    args = p.parse_args()
    cuda = torch.cuda.is_available()
    tiny = args.size == "tiny"
    args.batch_size = args.batch_size or (8 if tiny else 32 if cuda else 2)
    args.steps = args.steps or (10 if tiny else 1)
    args.repeats = args.repeats or (15 if tiny else 3)
    args.warmup = args.warmup if args.warmup is not None else (2 if tiny else 1)
    device = "cuda" if cuda else "cpu"
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        vlm_dir = Path(tmp) if tiny else write_500m_vlm(Path(tmp))
        policy, preprocessor, cfg = build_policy(args.size, vlm_dir, device)
        batch = preprocessor(raw_batch(args.batch_size, cfg))

        if args.memory_of:
            peak = measure_memory(args.memory_of, policy, cfg, batch, args.batch_size, args.memory_steps)
            print(json.dumps({"peak_mb": peak}))
            return

        steps = {name: make_step(name, clone_trainable(policy), cfg, args.batch_size) for name in VARIANTS}
        for step in steps.values():
            for _ in range(args.warmup):
                step(batch)
        per_step: dict[str, list[float]] = {name: [] for name in VARIANTS}
        for r in range(args.repeats):
            order = VARIANTS[r % len(VARIANTS) :] + VARIANTS[: r % len(VARIANTS)]
            for name in order:
                sync()
                start = time.perf_counter()
                for _ in range(args.steps):
                    steps[name](batch)
                sync()
                per_step[name].append((time.perf_counter() - start) / args.steps)
        memory = {} if args.no_memory else {name: memory_in_subprocess(args, name) for name in VARIANTS}

    n_params = sum(p.numel() for p in policy.parameters())
    n_train = sum(p.numel() for p in policy.parameters() if p.requires_grad)
    side = cfg.resize_imgs_with_padding[0]
    where = torch.cuda.get_device_name() if cuda else f"CPU, {os.cpu_count()} cores, {torch.get_num_threads()} threads"
    print(
        f"train step, size {args.size}: SmolVLA {n_params / 1e6:.1f}M params ({n_train / 1e6:.1f}M trainable), "
        f"batch {args.batch_size}, 1 camera 3x{side}x{side}, chunk {cfg.chunk_size}, "
        f"max_action_dim {cfg.max_action_dim}; {where}; {versions()}"
    )
    print(
        f"{args.warmup} warm-up + {args.repeats} repeats x {args.steps} steps per variant, round-robin; "
        f"memory: {'CUDA peak allocated' if cuda else 'peak RSS'} delta over {args.memory_steps} steps "
        "in a fresh subprocess"
    )
    print(f"{'variant':<28} {'median ms/step':>14} {'min':>9} {'max':>9} {'peak mem MB':>12}")
    for name in VARIANTS:
        t = per_step[name]
        mem = f"{memory[name]:12.0f}" if name in memory else f"{'-':>12}"
        print(f"{LABELS[name]:<28} {1e3 * statistics.median(t):14.1f} {1e3 * min(t):9.1f} {1e3 * max(t):9.1f} {mem}")

    def ratio(num: str, den: str) -> float:
        return statistics.median(a / b for a, b in zip(per_step[num], per_step[den], strict=True))

    print("ratios (median of per-repeat ratios):")
    headline = []
    for num, den, goal in (
        ("IL", "lerobot", 1.00),
        ("RWFM", "IL", 1.02),
        ("RWFM+shared", "RWFM", 1.20),
        ("RWFM+naive", "RWFM", None),
    ):
        r = ratio(num, den)
        verdict = f"goal <= {goal:.2f}x: {'met' if r <= goal else 'MISSED'}" if goal else "for information"
        print(f"  {num + ' / ' + den:<22} {r:6.3f}x  ({verdict})")
        if goal:
            headline.append(f"{num}/{den} {r:.3f}x ({'met' if r <= goal else 'MISSED'})")
    print(f"train step, size {args.size}: " + ", ".join(headline))


if __name__ == "__main__":
    main()
