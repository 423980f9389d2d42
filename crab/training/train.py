"""Train SmolVLA with RWFM and the anchor regulariser: the one training loop.

    python crab/training/train.py --config crab/training/configs/train_cycle1_rwfm_anchor_cracked_factor.yaml
    python crab/training/train.py --config <yaml> --resume outputs/<run>/step_XXXXXX
    python crab/training/train.py --config <yaml> --set train.steps=200 --set policy.pretrained_path=tiny
    accelerate launch crab/training/train.py --config <yaml>          # several GPUs or machines
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

from crab.data.lerobot_reader import float_frames
from crab.training import checkpoint as ckpt
from crab.training.conditioning import (
    advantage_labels,
    balanced_with_report,
    label_table,
    labelled_tasks,
    rule_text,
    unconditioned,
)
from crab.training.config import ConfigError, CrabConfig, config_warnings, load_config, signal_read, to_dict
from crab.training.crab_dataset import CrabDataset
from crab.training.crab_smolvla_wrapper import CrabSmolVLA, make_policy, policy_config
from crab.training.inputs import changed_inputs, check_reference_action_space, labels_digest, run_inputs
from crab.training.loaders import (
    batch_loader,
    replay_batches,
    replay_dataset,
    retention_dataset,
    retention_loss,
    validation_interval,
    validation_loss,
)
from crab.training.manifest import ManifestError, load_datasets
from crab.training.monitoring import (
    STEP_METRICS,
    EpochAccumulator,
    append_epoch_summary,
    combine_ranks,
    interval_row,
    read_epoch_summaries,
    truncate_step_log,
    write_epoch_summaries,
)
from crab.training.plots import plot_run, read_step_log
from crab.training.reward_stats import load_checked, plot_signal
from crab.training.rewards import VALUE_SIGNALS, RewardSpec
from crab.training.sampling import split_episodes
from crab.training.schedules import lambda_anchor_at
from crab.training.value_fit import load_values
from crab.training.weighting import WeightingError, preflight_table, run_weights

# Plots and the whole-file epoch_summary.json are redrawn at checkpoints, at the end, and at an epoch end
# only when this long has passed since the last time: on a small dataset epochs take a second or less.
PUBLISH_EVERY_S = 120.0
class TrainingError(RuntimeError):
    pass


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--config", required=True, action="append", help="training config YAML; repeat to layer overrides files"
    )
    p.add_argument("--resume", help="checkpoint folder outputs/<run>/step_XXXXXX to continue from")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override one config key")
    return p.parse_args(argv)


def train(cfg: CrabConfig, resume: str | None = None) -> Path:
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import gather_object, set_seed

    cuda = torch.cuda.is_available()
    # accelerate keeps the first run's mixed-precision mode for the whole process; `train` may run several
    # times in one (tests, notebooks), each with its own config. The process group (PartialState) stays.
    AcceleratorState._reset_state()
    accelerator = Accelerator(cpu=not cuda, mixed_precision=mixed_precision(cfg, cuda))
    main_process = accelerator.is_main_process
    run_dir = cfg.run_dir
    log = print if main_process else (lambda *a, **k: None)

    # --- everything that can be wrong with the input fails here, before any step -------------------
    resume_state = None
    schedule_steps = cfg.train.steps
    if resume:
        pretrained_dir, resume_state, saved_cfg = ckpt.load_checkpoint(resume)
        ckpt.check_resume_config(saved_cfg, cfg, resume)
        schedule_steps = ckpt.check_resume_state(resume_state, saved_cfg, cfg, resume, accelerator.num_processes)
    elif existing := ckpt.list_checkpoints(run_dir):
        raise TrainingError(
            f"{run_dir} already holds checkpoints {[p.name for p in existing]}; continue with --resume "
            f"{existing[-1]} or choose another run_name (--set run_name=...)"
        )
    # Each process its own flow noise (process 0 draws what a single-process run draws).
    set_seed(cfg.seed, device_specific=True)
    smolvla_cfg = policy_config(cfg.policy)
    spec = RewardSpec(chunk_size=smolvla_cfg.chunk_size)
    rows = load_datasets(cfg.data.manifest, cfg.data.data_root)
    train_eps, val_eps = split_episodes(rows, cfg.data.val_episodes_per_dataset)
    kind = signal_read(cfg)
    values = None  # out-of-episode values V(s), for chunk advantages only
    if kind in VALUE_SIGNALS:
        values, _ = load_values(cfg.data.value_file, rows, spec, cfg.data.manifest, cfg.data.data_root)
    horizon = cfg.reward_weighting.credit_horizon  # None: the action chunk; only for the per-chunk signals
    data_kw = {"video_backend": cfg.data.video_backend, "cache": cfg.data.cache_items, "signal": kind, "state_values": values}
    data_kw |= {"credit_horizon": horizon}
    data_kw |= {"frame_cache": cfg.data.frame_cache, "resolution": smolvla_cfg.resize_imgs_with_padding}
    data_kw |= {"return_uint8": True}  # converted after collate (`prepare` below), as lerobot-train does
    train_ds = CrabDataset(rows, spec, episodes=train_eps, **data_kw)
    val_ds = CrabDataset(rows, spec, episodes=val_eps, **data_kw) if val_eps else None
    retention_ds = retention_dataset(cfg, rows, spec, data_kw)
    replay_ds = replay_dataset(cfg, spec, data_kw)
    reward_stats = {}  # required when weighting is on (checked with the config), else optional
    if cfg.data.reward_stats:
        reward_stats = load_checked(
            cfg.data.reward_stats, cfg.data.manifest, train_ds.fingerprint, spec, cfg.data.data_root,
            kind, cfg.data.value_file, horizon,
        )  # fmt: skip
    signal = reward_stats.get("overall", {}).get("signal", {})
    inputs = run_inputs(cfg, train_ds, reward_stats, values, retention_ds, replay_ds)
    # The run's per-frame weights, computed once: the loss, the draw, the normalisation and the table below.
    try:
        weights = run_weights(cfg.reward_weighting, train_ds.weight_frames(val_eps), signal.get("mean", 0.0), signal.get("std", 1.0))
    except WeightingError as e:
        raise TrainingError(f"{cfg.data.manifest}: {e}") from None
    log("training data, before step 1:\n" + preflight_table(weights, cfg.reward_weighting.normalization_counts))
    positive = None  # with conditioning: each training frame's advantage label, from the frames weighed above
    if cfg.conditioning.enabled:
        bins = cfg.reward_weighting.phase_bins
        cond = cfg.conditioning
        positive = advantage_labels(weights.datasets, spec.horizon(horizon), bins, cond.positive_threshold, cond.label_rule)
        log(f"advantage labels (positive: {rule_text(cond.label_rule, cond.positive_threshold)}; {bins} parts of each "
            f"episode):\n{label_table(weights.datasets, positive, bins)}")
        inputs["advantage_labels"] = labels_digest(positive)
    if resume_state is not None and (changed := changed_inputs(resume_state.get("inputs", {}), inputs)):
        raise TrainingError(
            f"cannot resume from {resume}: input(s) changed since it was saved, though their paths did not: "
            f"{'; '.join(changed)}. Put back the files the run started with (the checkpoint's reward_stats.json "
            "holds the statistics it used), or train a new run on the new ones (--set run_name=...)"
        )
    for warning in config_warnings(cfg):
        log(f"warning: {warning}")
    if main_process and cfg.reward_weighting.enabled:  # the signal over a few episodes of each dataset
        plot_path = run_dir / "plots" / "signal.png"
        floor, plot_horizon = cfg.reward_weighting.std_floor, spec.horizon(horizon)
        plot_signal(train_ds.rows, train_ds.tables, kind, signal, floor, plot_path, plot_horizon)
    # Actions and states are normalised with the training episodes' statistics, each episode counted as
    # `reward_weighting.normalization_counts` says (dropped episodes not at all).
    dataset_stats = train_ds.normalization_stats(weights.normalization_counts(cfg.reward_weighting.normalization_counts))
    policy, preprocessor, postprocessor = make_policy(smolvla_cfg, cfg.policy, train_ds.meta.features, dataset_stats)

    def prepare(batch: dict, step: int | None = None) -> dict:
        """A loader's batch as the policy takes it: uint8 frames to lerobot's floats, then preprocessed. With
        conditioning, a training batch (`step` given) carries its advantage labels in the task text."""
        if positive is not None and step is not None:
            skip = unconditioned(cfg.seed, step, accelerator.process_index, len(batch["task"]), cfg.conditioning.unconditioned_fraction)
            batch = {**batch, "task": labelled_tasks(batch["task"], positive[batch["item_index"].numpy()], skip)}
        return preprocessor(float_frames(batch, train_ds.video_keys))

    if cfg.anchor.enabled and cfg.anchor.reference is not None:
        state = policy.config.input_features.get("observation.state")
        check_reference_action_space(
            cfg.anchor.reference, policy.config.output_features["action"].shape, state and state.shape
        )
    model = CrabSmolVLA(
        policy,
        cfg.reward_weighting,
        cfg.anchor,
        signal_mean=signal.get("mean", 0.0),
        signal_std=signal.get("std", 1.0),
        weight_mean=weights.constant,
        task_masks=cfg.task_masks,
        replay=cfg.replay,
    )
    extra_rows = [*(retention_ds.rows if retention_ds else []), *(replay_ds.rows if replay_ds else [])]
    model.check_tasks(sorted({row.task for row in [*rows, *extra_rows]}))
    if resume_state is not None:  # the reference stays the starting policy; the trained one resumes
        model.load_policy_weights(pretrained_dir)
    params, optimizer, scheduler = build_optimizer(model, smolvla_cfg, schedule_steps)
    model, optimizer = accelerator.prepare(model, optimizer)

    step, epoch, position = 0, 0, 0
    accumulator = EpochAccumulator()
    summaries = read_epoch_summaries(run_dir) if resume else []
    if resume_state is not None:
        optimizer.load_state_dict(resume_state["optimizer"])
        scheduler.load_state_dict(resume_state["scheduler"])
        ckpt.set_rng_state(ckpt.rank_rng_states(resume_state)[accelerator.process_index])
        step, epoch, position = resume_state["step"], resume_state["epoch"], resume_state["position"]
        accumulator.load_state_dict(resume_state["epoch_metrics"])
        summaries = [s for s in summaries if s["epoch"] < epoch]
        if main_process:
            write_epoch_summaries(run_dir, summaries)
            truncate_step_log(run_dir, step)  # the steps after the checkpoint are logged again
        log(f"resumed from {resume} at step {step} (epoch {epoch}, batch {position})")
        if cfg.train.steps != schedule_steps:
            log(
                f"note: train.steps {cfg.train.steps} differs from the run's first length {schedule_steps}; the "
                f"learning-rate schedule keeps that length (steps past it run at its final rate)"
            )

    # `apply: sample`: the weights choose the frames (each epoch's draw), and the loss leaves them out.
    draw_weights = weights.draw if weights.apply == "sample" else None
    if positive is not None and cfg.conditioning.positive_share is not None:
        draw_weights, report = balanced_with_report(weights.datasets, weights.draw, positive, cfg.conditioning.positive_share)
        log(report)
    sampler, loader = batch_loader(cfg, train_ds, cfg.data.batch_size, cfg.seed, accelerator, cfg.data.manifest, draw_weights)
    replay = replay_batches(cfg, replay_ds, accelerator, step)
    global_batch = cfg.data.batch_size * accelerator.num_processes
    val_every = validation_interval(cfg, len(val_ds) if val_ds else 0, len(sampler))
    qualities = sorted({row.quality for row in rows})  # weights travel between processes as indices
    run_dir.mkdir(parents=True, exist_ok=True)
    tracker = make_tracker(cfg, run_dir) if main_process else None
    log(
        f"run {cfg.run_name}: {len(train_ds)} training frames ({sum(map(len, train_eps.values()))} episodes), "
        f"{len(sampler)} batches/epoch, {cfg.train.steps} steps, weighting "
        f"{f'on ({cfg.reward_weighting.apply})' if cfg.reward_weighting.enabled else 'off'}, anchor {'on' if cfg.anchor.enabled else 'off'}, "
        f"device {accelerator.device}, {accelerator.num_processes} process(es), batch {cfg.data.batch_size} each"
        + (f", validation every {val_every} epoch(s)" if val_ds else "")
    )
    if cfg.anchor.enabled and cfg.anchor.reference is None and cfg.policy.pretrained_path == "tiny":
        log(
            "note: the anchor's frozen reference is the starting policy, here a randomly initialised tiny one, so "
            "the anchor pulls towards noise; it is meant for a pretrained start (docs/sim_benchmark.md)"
        )

    # --- the loop ------------------------------------------------------------------------------------
    pending: list[torch.Tensor] = []  # per-step metric rows, still on the device
    pending_weights: list[torch.Tensor] = []  # per-step (2, B): quality index, weight
    run_start = time.perf_counter()
    epoch_start = run_start - (resume_state or {}).get("epoch_elapsed_s", 0.0)
    interval_start = run_start
    epoch_end_s, last_publish = 0.0, run_start
    progress = make_progress(cfg, main_process, step)

    def flush() -> None:
        """Bring the pending metrics of every process to the host (one sync per logging interval), check
        them and log one row that summarises the interval."""
        nonlocal interval_start
        if not pending:
            return
        steps = torch.stack(pending)
        rows_host = combine_ranks(accelerator.gather(steps[None]).double()).cpu().tolist()
        tagged = accelerator.gather(torch.stack(pending_weights)).cpu()  # (steps x processes, 2, B)
        accumulator.add_weights(
            [qualities[i] for i in tagged[:, 0].long().flatten().tolist()], tagged[:, 1].flatten().tolist()
        )
        first_step = step - len(rows_host) + 1
        for i, row in enumerate(rows_host):
            if not all(math.isfinite(v) for v in row):
                bad = [n for n, v in zip(STEP_METRICS, row, strict=True) if not math.isfinite(v)]
                last = ckpt.list_checkpoints(run_dir)
                raise TrainingError(
                    f"non-finite {bad} at step {first_step + i}; stopped before saving. "
                    f"Last good checkpoint: {last[-1] if last else 'none'}"
                )
            accumulator.add(row, global_batch)
        elapsed = time.perf_counter() - interval_start
        summary = interval_row(rows_host)
        summary.update(step=step, epoch=epoch, samples_per_s=len(rows_host) * global_batch / max(elapsed, 1e-9))
        if main_process:
            with open(run_dir / "train_log.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps(summary) + "\n")
            if tracker:
                tracker(summary, step)
            progress.set_postfix_str(
                " ".join(f"{k}={summary[k]:.4g}" for k in ("loss", "loss_weighted", "loss_anchor", "w_max", "lr"))
            )
        pending.clear()
        pending_weights.clear()
        interval_start = time.perf_counter()

    def publish() -> None:
        """Whole-file summary and plots: at checkpoints, at the end, and every few minutes."""
        nonlocal last_publish
        if main_process:
            write_epoch_summaries(run_dir, summaries)
            plot_run(run_dir, accumulator.weights)
        last_publish = time.perf_counter()

    def save() -> None:
        flush()
        # Every process's own RNG states (flow noise, CUDA generators): each resumes its own stream.
        rng = gather_object([ckpt.rng_state()])
        if main_process:
            state = {
                "step": step,
                "epoch": epoch,
                "position": position,
                "schedule_steps": schedule_steps,
                "world_size": accelerator.num_processes,
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "rng": rng,
                "epoch_metrics": accumulator.state_dict(),
                "inputs": inputs,
                "epoch_elapsed_s": time.perf_counter() - epoch_start,
            }
            unwrapped = accelerator.unwrap_model(model)

            def write_model(folder: Path) -> None:
                unwrapped.policy.save_pretrained(folder)
                preprocessor.save_pretrained(folder)
                postprocessor.save_pretrained(folder)

            path = ckpt.save_checkpoint(
                run_dir, step, write_model, state, to_dict(cfg), reward_stats, cfg.train.keep_last
            )
            progress.write(f"checkpoint {path}")
        publish()
        accelerator.wait_for_everyone()

    model.train()
    while step < cfg.train.steps:
        sampler.set_epoch(epoch, start=position)
        for batch in loader:
            batch = prepare(batch, step)
            lambda_anchor = lambda_anchor_at(
                step, cfg.anchor.lambda_anchor if cfg.anchor.enabled else 0.0, cfg.anchor.warmup_steps, cfg.anchor.ramp_steps
            )
            # Drawn at every step, used or not, so that the replay batch of a step does not depend on the
            # anchor schedule or on where the run was resumed.
            replay_batch = prepare(next(replay)) if replay is not None else None
            row, weights = training_step(
                model, batch, replay_batch, lambda_anchor, accelerator, optimizer, scheduler, params, smolvla_cfg
            )
            step, position = step + 1, position + 1
            pending.append(row)
            quality = torch.tensor([qualities.index(q) for q in batch["quality"]], dtype=weights.dtype)
            pending_weights.append(torch.stack([quality.to(weights.device), weights.float()]))
            progress.update(1)
            if step % cfg.train.log_every == 0:
                flush()
            if step % cfg.train.save_every == 0 or step == cfg.train.steps:
                save()
            if step >= cfg.train.steps:
                break
        epoch_done = position >= len(sampler)
        finished = step >= cfg.train.steps
        if epoch_done or finished:
            flush()
            end_start = time.perf_counter()
            val = {}
            # The last epoch validates too, complete or not, so the last summary carries validation losses.
            due = finished or (epoch + 1) % val_every == 0
            if val_ds is not None and main_process and due:
                val = validation_loss(accelerator.unwrap_model(model), val_ds, prepare, cfg)
                val.update(retention_loss(accelerator.unwrap_model(model), retention_ds, prepare, cfg))
            if main_process and accumulator.rows:
                summary = accumulator.summary(epoch, step, time.perf_counter() - epoch_start, val, complete=epoch_done)
                summaries.append(summary)
                append_epoch_summary(run_dir, summaries)
                progress.write(
                    f"epoch {epoch}: loss {summary['metrics']['loss']['mean']:.4f}, val {val} -> "
                    f"{run_dir / 'epoch_summary.jsonl'}"
                )
            if finished or time.perf_counter() - last_publish >= PUBLISH_EVERY_S:
                publish()
            epoch_end_s += time.perf_counter() - end_start
        if epoch_done:
            epoch, position = epoch + 1, 0
            accumulator = EpochAccumulator()
            epoch_start = time.perf_counter()
    progress.close()
    wall = time.perf_counter() - run_start
    log(f"epoch-end work (validation, summaries, plots): {epoch_end_s:.1f} s of {wall:.1f} s ({epoch_end_s / wall:.1%})")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    if main_process:
        logged = read_step_log(run_dir)
        first, last = logged[0], logged[-1]
        log(f"loss: first logged {first['loss']:.4f} (steps 1-{first['step']}), last {last['loss']:.4f} "
            f"(steps {last['step'] - last['steps'] + 1}-{last['step']}), {last['loss'] / first['loss']:.0%} of the first")
    log(f"done: summaries {run_dir}/epoch_summary.{{json,jsonl,csv}}, plots {run_dir / 'plots'}, "
        f"checkpoints {[p.name for p in ckpt.list_checkpoints(run_dir)]}")
    return run_dir


def mixed_precision(cfg: CrabConfig, cuda: bool) -> str:
    """The accelerate mixed-precision mode: the config's on a GPU; on a CPU bf16 autocast works, fp16 does not."""
    if not cuda and cfg.train.mixed_precision == "fp16":
        raise ConfigError("`train.mixed_precision: fp16` needs a GPU; on a CPU use `bf16` or `no`")
    return cfg.train.mixed_precision


def build_optimizer(model: CrabSmolVLA, smolvla_cfg, total_steps: int):
    """lerobot's SmolVLA presets: AdamW over the trainable parameters and the cosine schedule with warmup."""
    params = [p for p in model.policy.parameters() if p.requires_grad]
    optimizer = smolvla_cfg.get_optimizer_preset().build(params)
    return params, optimizer, smolvla_cfg.get_scheduler_preset().build(optimizer, total_steps)


def training_step(model, batch, replay, lambda_anchor, accelerator, optimizer, scheduler, params, smolvla_cfg):
    """One optimisation step (`replay`: the anchor's replayed batch or None). Returns the STEP_METRICS row
    and the per-sample weights, both still on the device: nothing here waits for the device (the trainer
    reads them at its logging interval)."""
    with accelerator.autocast():
        loss, metrics = model(batch, lambda_anchor, replay=replay)
    accelerator.backward(loss)
    grad_norm = accelerator.clip_grad_norm_(params, smolvla_cfg.optimizer_grad_clip_norm)
    lr = scheduler.get_last_lr()[0]  # the rate this step uses (a Python float: no sync)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    metrics.update(lr=torch.tensor(lr), grad_norm=grad_norm)
    row = torch.stack([metrics[k].detach().float().to(accelerator.device) for k in STEP_METRICS])
    return row, metrics["weights"].detach()


def make_progress(cfg: CrabConfig, main_process: bool, initial: int):
    from tqdm import tqdm

    return tqdm(total=cfg.train.steps, initial=initial, disable=not (main_process and cfg.train.progress_bar), dynamic_ncols=True)


def make_tracker(cfg: CrabConfig, run_dir: Path):
    """TensorBoard and/or wandb, only when the config asks (both off by default)."""
    sinks = []
    if cfg.train.tensorboard:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(run_dir / "tensorboard")
        sinks.append(lambda m, s: [writer.add_scalar(k, v, s) for k, v in m.items()])
    if cfg.train.wandb:
        import wandb

        wandb.init(project="crab_vla", name=cfg.run_name, dir=str(run_dir), config=to_dict(cfg))
        sinks.append(lambda m, s: wandb.log(m, step=s))
    return (lambda m, s: [sink(m, s) for sink in sinks]) if sinks else None


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        cfg = load_config(args.config, args.set)
        train(cfg, args.resume)
    except (ConfigError, ManifestError, ckpt.CheckpointError, TrainingError) as e:  # bad input: no traceback
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
