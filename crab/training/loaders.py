"""The trainer's data plumbing: the retention and replay datasets, seeded resumable batch loaders, and
the validation losses (held-out episodes, retention tasks) with their interval."""

from __future__ import annotations

import math

import torch

from crab.training.config import ConfigError, CrabConfig
from crab.training.crab_dataset import CrabDataset
from crab.training.crab_smolvla_wrapper import CrabSmolVLA
from crab.training.manifest import ManifestError, load_datasets
from crab.training.monitoring import RETENTION_PREFIX
from crab.training.rewards import RewardSpec
from crab.training.sampling import EpochBatchSampler, split_episodes

# A validation batch costs about a third of a training step (forward only): 10 steps per batch keeps
# validation near 3% of the wall time.
TRAIN_STEPS_PER_VAL_BATCH = 10


def validation_interval(cfg: CrabConfig, val_frames: int, batches_per_epoch: int) -> int:
    """Epochs between validations: `train.val_every_epochs` when set; otherwise every epoch, stretched so
    that at least `TRAIN_STEPS_PER_VAL_BATCH` training steps pass per validation batch (on a small dataset
    an epoch is a few steps, and validating after each would cost as much as training)."""
    if cfg.train.val_every_epochs is not None:
        return cfg.train.val_every_epochs
    val_batches = math.ceil(min(val_frames, cfg.train.val_max_batches * cfg.data.batch_size) / cfg.data.batch_size)
    return max(1, math.ceil(TRAIN_STEPS_PER_VAL_BATCH * val_batches / batches_per_epoch))


def retention_dataset(cfg: CrabConfig, rows, spec: RewardSpec, data_kw: dict) -> CrabDataset | None:
    """The held-out episodes of `data.retention_manifest` (None without one): the last
    `val_episodes_per_dataset` of each of its datasets (all of a smaller one), those a base trained with
    the same setting never saw. Its tasks must be ones the training manifest lacks."""
    from lerobot.datasets.lerobot_dataset import LeRobotDatasetMetadata

    if cfg.data.retention_manifest is None:
        return None
    retention_rows = load_datasets(cfg.data.retention_manifest, cfg.data.data_root)
    overlap = sorted({r.task for r in retention_rows} & {r.task for r in rows})
    if overlap:
        raise ConfigError(
            f"{cfg.data.retention_manifest}: task(s) {overlap} are also in the training manifest "
            f"{cfg.data.manifest}; the retention manifest is for tasks the training data lacks"
        )
    held_out = {}
    for row in retention_rows:
        n = LeRobotDatasetMetadata(row.repo_id, root=row.root).total_episodes
        held_out[row.name] = list(range(max(n - cfg.data.val_episodes_per_dataset, 0), n))
    return unweighted_dataset(retention_rows, spec, held_out, data_kw)


def replay_dataset(cfg: CrabConfig, spec: RewardSpec, data_kw: dict) -> CrabDataset | None:
    """The training split of `replay.manifest` (None without one): its held-out episodes stay unseen, so the
    same manifest can also be the retention manifest whose validation loss they give."""
    if cfg.replay.manifest is None:
        return None
    replay_rows = load_datasets(cfg.replay.manifest, cfg.data.data_root)
    episodes, _ = split_episodes(replay_rows, cfg.data.val_episodes_per_dataset)
    return unweighted_dataset(replay_rows, spec, episodes, data_kw)


def unweighted_dataset(rows, spec: RewardSpec, episodes: dict[str, list[int]], data_kw: dict) -> CrabDataset:
    """A dataset whose items are never weighted (retention validation, anchor replay): read like the
    training data, but with the outcome signal, which needs no value model for these datasets."""
    outcome = {"signal": "outcome", "state_values": None, "credit_horizon": None}
    return CrabDataset(rows, spec, episodes=episodes, **{**data_kw, **outcome})


def batch_loader(cfg: CrabConfig, ds: CrabDataset, batch_size: int, seed: int, accelerator, source: str, weights=None):
    """(sampler, DataLoader) of `ds`'s batches for this process: seeded, resumable at any batch
    (`EpochBatchSampler`; with `weights`, one per item, items drawn in proportion to them); `source` (the
    manifest) names the data when it holds less than one batch."""
    world = accelerator.num_processes
    sampler = EpochBatchSampler(len(ds), batch_size, seed, accelerator.process_index, world, weights)
    if len(sampler) == 0:
        raise ManifestError(f"{source}: {len(ds)} training frames, fewer than one batch of {batch_size}")
    loader = torch.utils.data.DataLoader(
        ds,
        batch_sampler=sampler,
        num_workers=cfg.data.num_workers,
        persistent_workers=cfg.data.num_workers > 0,
        pin_memory=torch.cuda.is_available(),
        # Its own generator: creating the iterator (again, on resume) must not draw from the global RNG
        # that samples the flow noise, or a resumed run would diverge from an uninterrupted one.
        generator=torch.Generator().manual_seed(seed),
    )
    return sampler, loader


def replay_batches(cfg: CrabConfig, replay_ds: CrabDataset | None, accelerator, step: int):
    """Endless iterator of the replay batches from training step `step` on (None without a
    replay dataset). Batch k is a pure function of (seed, k) and the process, as the training batches
    are, so a resumed run draws what the uninterrupted one did."""
    if replay_ds is None:
        return None
    size = cfg.replay.batch_size or cfg.data.batch_size
    sampler, loader = batch_loader(cfg, replay_ds, size, cfg.seed + 1, accelerator, cfg.replay.manifest)

    def batches():
        epoch, position = divmod(step, len(sampler))
        while True:
            sampler.set_epoch(epoch, start=position)
            yield from loader
            epoch, position = epoch + 1, 0

    return batches()


def retention_loss(model: CrabSmolVLA, retention_ds: CrabDataset | None, prepare, cfg: CrabConfig) -> dict[str, float]:
    """Validation loss per task of the retention manifest, keyed `RETENTION_PREFIX + task` ({} without one)."""
    if retention_ds is None:
        return {}
    losses = validation_loss(model, retention_ds, prepare, cfg, group_by="task")
    return {RETENTION_PREFIX + task.rstrip("\n"): loss for task, loss in losses.items()}


@torch.no_grad()
def validation_loss(
    model: CrabSmolVLA, val_ds: CrabDataset, prepare, cfg: CrabConfig, group_by: str = "quality"
) -> dict[str, float]:
    """Unweighted masked flow loss on held-out episodes, per `group_by` value (a string field of the
    batch: quality, task), with fixed noise and time; `prepare` turns a loader's batch into the policy's
    input (the trainer's frame conversion and preprocessor)."""
    model.eval()
    generator = torch.Generator().manual_seed(cfg.seed)
    # A fixed subset spread evenly over the held-out frames, so every dataset (and quality) is seen.
    n = min(len(val_ds), cfg.train.val_max_batches * cfg.data.batch_size)
    subset = torch.utils.data.Subset(val_ds, torch.linspace(0, len(val_ds) - 1, n).long().tolist())
    # Its own generator: validating must not draw from the global RNG that samples training's flow noise.
    loader = torch.utils.data.DataLoader(
        subset, batch_size=cfg.data.batch_size, shuffle=False, generator=torch.Generator().manual_seed(cfg.seed)
    )
    totals: dict[str, list[float]] = {}
    for batch in loader:
        groups = batch[group_by]
        losses = model.validation_loss(prepare(batch), generator).cpu().tolist()
        for q, loss in zip(groups, losses, strict=True):
            totals.setdefault(q, []).append(loss)
    model.train()
    return {q: sum(v) / len(v) for q, v in sorted(totals.items())}
