"""Fit the out-of-episode value model V(s) that `reward_weighting.signal: chunk_advantage` needs.

    python -m crab.training.value_fit --manifest crab/training/docs/dataset_manifest_cycle1_with_cracked.csv \
        --data-root data --out data/values_cycle1_with_cracked.parquet [--folds 5] [--epochs 40] [--expectile 0.9]

V(s_t) estimates the discounted return-to-go `sum_{j>=t} gamma^(j-t) r_j` of the dataset's step rewards
(`next.reward`, or the sparse `r = R_e` on the last frame; docs/reward_weighting.md) from what the
policy sees at t: every camera image (downsampled to `--image-size`, through a small CNN), the state,
the task and the time since the episode began. It is fitted **out of episode**: the episodes are split into
K folds, and the value of each frame comes from the model trained on the other folds, so it never saw
that episode's outcome (a model that had would predict each episode's own return, and every advantage
would collapse to zero). Each fold's model stops early: of the other folds, the next one is kept back and
the epoch with the lowest loss on it is the model used (`--epochs` is the most, `--patience` the epochs
without improvement before stopping). Without it V overfit the few episodes of scarce data and predicted
held-out returns worse than a constant.

Why a small network on the policy's inputs rather than SmolVLA's frozen VLM features: it needs no
policy and no GPU, fits in minutes on a CPU, and whether a crack is coming is visible in the low-level
state and the image (the egg's height and speed, the gripper), which the VLM prefix was not trained to
expose. The printed held-out error, next to that of a constant per task, says whether it learned
anything.

The file (parquet: `dataset_name, index, episode_index, frame_index, fold, return_to_go, value`) carries
a fingerprint of its data and settings; `reward_stats` and training refuse a missing or stale one.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import math
import shlex
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
from torch import nn

from crab.training.crab_dataset import RewardTable, annotate
from crab.training.files import check_output_file, write_atomically
from crab.training.manifest import ManifestError, ManifestRow, load_datasets
from crab.training.rewards import VALUE_SIGNALS, RewardSpec, returns_to_go

METADATA_KEY = b"crab_value_fit"


@dataclass(frozen=True)
class ValueFitSettings:
    """Everything besides the data that decides the fitted values (part of the file's fingerprint)."""

    gamma: float = RewardSpec.gamma  # discount of the return-to-go; must equal the training spec's
    folds: int = 5
    # The most epochs; each fold's model is the epoch with the lowest loss on its validation episodes
    # (early stopping). Trained for a fixed 40 epochs, V overfit the 60 egg episodes of the scarce regime:
    # held-out RMSE 0.673 against 0.608 for a constant (docs/sim_benchmark_findings.md, 2026-12-03).
    epochs: int = 40
    patience: int = 5  # stop after this many epochs without a lower validation loss
    batch_size: int = 256
    lr: float = 1e-3
    hidden: int = 128
    image_size: int = 32  # each camera image is resized to image_size x image_size
    seed: int = 0
    # 0.5: V is the mean return-to-go. Above 0.5, V leans towards the better returns seen from similar
    # states (expectile regression, as in IQL), so where good behaviour is rare the chunks that lead into
    # damage stay clearly negative instead of close to a mostly-bad mean (docs/reward_weighting.md).
    expectile: float = 0.5


@dataclass
class Frames:
    """The value model's inputs and targets, one row per frame of the manifest (datasets in order)."""

    dataset: np.ndarray  # (N,) position of the frame's dataset in the manifest
    index: np.ndarray  # (N,) the dataset's absolute frame index
    episode_index: np.ndarray
    frame_index: np.ndarray
    task: np.ndarray  # (N,) position of the dataset's task among the manifest's sorted tasks
    time_s: np.ndarray  # (N,) seconds since the episode began
    state: np.ndarray  # (N, S) float32
    images: np.ndarray  # (N, 3 * cameras, size, size) uint8; (N, 0, size, size) without cameras
    target: np.ndarray  # (N,) discounted return-to-go


def fix_command(
    manifest: str | Path, data_root: str | Path, out: str | Path, settings: ValueFitSettings | None = None
) -> str:
    """The command that fits the value file `out` of `manifest`, with `settings` where they differ from
    the defaults (a refit keeps the settings of the fit it replaces)."""
    args = ["--manifest", manifest, "--data-root", data_root, "--out", out]
    defaults = asdict(ValueFitSettings())
    for name, value in asdict(settings or ValueFitSettings()).items():
        if name != "gamma" and value != defaults[name]:  # gamma is the reward spec's, not a flag
            args += [f"--{name.replace('_', '-')}", value]
    return "python -m crab.training.value_fit " + " ".join(shlex.quote(str(a)) for a in args)


def _states(row: ManifestRow, index: np.ndarray) -> np.ndarray:
    table = pads.dataset(row.root / "data", format="parquet").to_table(columns=["index", "observation.state"])
    table = table.sort_by("index")
    if not np.array_equal(table.column("index").to_numpy(), index):
        raise ManifestError(f"{row.root / 'data'}: frame indices differ from the reward annotation of {row.name!r}")
    return np.asarray(table.column("observation.state").to_pylist(), dtype=np.float32)


def values_fingerprint(rows: list[ManifestRow], tables: list[RewardTable], settings: ValueFitSettings) -> str:
    """Identifies the manifest, every frame's episode and step reward (the targets), every state, and the
    settings. Videos are not hashed: regenerated data changes its states too."""
    h = hashlib.sha256(json.dumps(asdict(settings), sort_keys=True).encode())
    for row, t in zip(rows, tables, strict=True):
        h.update(json.dumps([row.name, row.repo_id, row.task, row.quality]).encode())
        for a in (t.index, t.episode_index):
            h.update(np.ascontiguousarray(a, dtype=np.int64).tobytes())
        h.update(np.round(t.step_reward, 9).astype(np.float64).tobytes())
        h.update(np.round(_states(row, t.index), 6).astype(np.float64).tobytes())
    return h.hexdigest()[:16]


def read_frames(
    rows: list[ManifestRow],
    tables: list[RewardTable],
    settings: ValueFitSettings,
    num_workers: int = 0,
    progress: bool = True,
) -> Frames:
    """Decode every frame once through lerobot's LeRobotDataset (its video decoding), downsample images."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset
    from tqdm import tqdm

    tasks = sorted({row.task for row in rows})
    parts: dict[str, list] = {k: [] for k in Frames.__dataclass_fields__}
    for d, (row, table) in enumerate(zip(rows, tables, strict=True)):
        ds = LeRobotDataset(row.repo_id, root=row.root)
        cameras = list(ds.meta.camera_keys)
        loader = torch.utils.data.DataLoader(ds, batch_size=64, num_workers=num_workers)
        index, frame_index, state, images = [], [], [], []
        for batch in tqdm(loader, desc=f"reading {row.name}", leave=False, dynamic_ncols=True, disable=not progress):
            index.append(batch["index"].numpy())
            frame_index.append(batch["frame_index"].numpy())
            state.append(batch["observation.state"].float().numpy())
            size = (settings.image_size, settings.image_size)
            per_camera = [F.interpolate(batch[k].float(), size=size, mode="area") for k in cameras]
            pixels = torch.cat(per_camera, dim=1) if cameras else torch.zeros(len(batch["index"]), 0, *size)
            images.append((pixels * 255).round().clamp(0, 255).to(torch.uint8).numpy())
        index = np.concatenate(index)
        order = np.argsort(index, kind="stable")
        if not np.array_equal(index[order], table.index):
            raise ManifestError(f"{row.root}: the frames lerobot reads differ from the parquet of {row.name!r}")
        n = len(index)
        parts["dataset"].append(np.full(n, d))
        parts["index"].append(table.index)
        parts["episode_index"].append(table.episode_index)
        parts["frame_index"].append(np.concatenate(frame_index)[order])
        parts["task"].append(np.full(n, tasks.index(row.task)))
        parts["time_s"].append(np.concatenate(frame_index)[order] / ds.meta.fps)
        parts["state"].append(np.concatenate(state)[order])
        parts["images"].append(np.concatenate(images)[order])
        parts["target"].append(returns_to_go(table.step_reward, table.episode_index, settings.gamma))
    widths = {p.shape[1] for p in parts["images"]}
    if len(widths) > 1:
        raise ManifestError(f"the datasets of the manifest have different numbers of cameras ({sorted(widths)})")
    return Frames(**{k: np.concatenate(v) for k, v in parts.items()})


def assign_folds(frames: Frames, folds: int, seed: int) -> np.ndarray:
    """Fold of each frame: the (dataset, episode) pairs are shuffled with `seed` and dealt round-robin,
    so each fold holds whole episodes and the assignment never depends on an outcome."""
    pairs, inverse = np.unique(np.stack([frames.dataset, frames.episode_index], axis=1), axis=0, return_inverse=True)
    if len(pairs) < folds:
        raise ManifestError(f"{len(pairs)} episodes cannot be split into {folds} folds; lower --folds")
    order = np.random.default_rng(seed).permutation(len(pairs))
    fold_of_pair = np.empty(len(pairs), dtype=np.int64)
    fold_of_pair[order] = np.arange(len(pairs)) % folds
    return fold_of_pair[inverse.reshape(-1)]


class ValueNet(nn.Module):
    """V(image, state, task, time): a two-layer CNN on the images, an MLP on everything."""

    def __init__(self, channels: int, low_dim: int, hidden: int):
        super().__init__()
        self.cnn = None
        image_features = 0
        if channels:
            self.cnn = nn.Sequential(
                nn.Conv2d(channels, 16, 3, stride=2, padding=1), nn.ReLU(),
                nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
                nn.AdaptiveAvgPool2d(4), nn.Flatten(),
            )  # fmt: skip
            image_features = 32 * 16
        self.mlp = nn.Sequential(
            nn.Linear(image_features + low_dim, hidden), nn.ReLU(),
            nn.Linear(hidden, hidden), nn.ReLU(),
            nn.Linear(hidden, 1),
        )  # fmt: skip

    def forward(self, images: torch.Tensor, low_dim: torch.Tensor) -> torch.Tensor:
        x = low_dim if self.cnn is None else torch.cat([self.cnn(images), low_dim], dim=1)
        return self.mlp(x).squeeze(1)


def _low_dim(frames: Frames, n_tasks: int) -> np.ndarray:
    """State, seconds since the episode began and the task (one-hot), one row per frame."""
    return np.concatenate([frames.state, frames.time_s[:, None], np.eye(n_tasks)[frames.task]], axis=1)


def expectile_loss(pred: torch.Tensor, target: torch.Tensor, tau: float) -> torch.Tensor:
    """mean(2 |tau - 1[target < pred]| (target - pred)^2): the mean squared error at tau = 0.5; its
    minimiser over a constant is the tau-expectile of the targets."""
    weight = torch.where(target >= pred, 2 * tau, 2 * (1 - tau))
    return (weight * (target - pred) ** 2).mean()


def fit_fold(
    frames: Frames,
    train: np.ndarray,
    validate: np.ndarray,
    predict: np.ndarray,
    settings: ValueFitSettings,
    seed: int,
    bar=None,
) -> tuple[np.ndarray, int]:
    """Train V on the frames `train` (bool mask), keeping the epoch with the lowest expectile loss on the
    frames `validate`; return its predictions on the frames `predict` and that epoch (1-based)."""
    torch.manual_seed(seed)
    n_tasks = int(frames.task.max()) + 1
    low = _low_dim(frames, n_tasks)
    mean, std = low[train].mean(0), low[train].std(0)
    std[std < 1e-6] = 1.0  # constant features (one task, a fixed joint) stay as they are
    low = torch.from_numpy(((low - mean) / std).astype(np.float32))
    images = torch.from_numpy(frames.images)
    target = torch.from_numpy(frames.target.astype(np.float32))
    model = ValueNet(frames.images.shape[1], low.shape[1], settings.hidden)
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.lr)

    def predictions(mask: np.ndarray) -> torch.Tensor:
        with torch.no_grad():
            rows = torch.from_numpy(np.flatnonzero(mask))
            return torch.cat([model(images[b].float() / 255, low[b]) for b in rows.split(1024)])

    rows = torch.from_numpy(np.flatnonzero(train))
    val_target = target[torch.from_numpy(np.flatnonzero(validate))]
    g = torch.Generator().manual_seed(seed)
    best, best_state, best_epoch = float("inf"), None, 0
    for epoch in range(1, settings.epochs + 1):
        model.train()
        for batch in rows[torch.randperm(len(rows), generator=g)].split(settings.batch_size):
            loss = expectile_loss(model(images[batch].float() / 255, low[batch]), target[batch], settings.expectile)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        model.eval()
        val_loss = expectile_loss(predictions(validate), val_target, settings.expectile).item()
        if bar is not None:
            bar.update(1)
            bar.set_postfix(val_loss=f"{val_loss:.4f}")
        if val_loss < best:
            best, best_state, best_epoch = val_loss, copy.deepcopy(model.state_dict()), epoch
        elif epoch - best_epoch >= settings.patience:
            break
    if best_state is None:  # a nan loss compares as never lower
        raise ManifestError(
            f"value model, fold seed {seed}: the validation loss was not finite in any epoch (non-finite "
            f"states or rewards in the data, or too high a learning rate: --lr {settings.lr}); nothing was written"
        )
    model.load_state_dict(best_state)
    return predictions(predict).numpy().astype(np.float64), best_epoch


def fit_values(
    frames: Frames, settings: ValueFitSettings, progress: bool = True
) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Out-of-fold values of every frame, each frame's fold, and the epoch each fold's model kept. The
    model for fold k trains on the other folds but k + 1, whose episodes decide its early stopping, so
    neither its weights nor its stopping saw fold k."""
    from tqdm import tqdm

    fold = assign_folds(frames, settings.folds, settings.seed)
    values, kept = np.zeros(len(fold)), []
    with tqdm(total=settings.folds * settings.epochs, desc="value folds x epochs", disable=not progress) as bar:
        for k in range(settings.folds):
            held_out, validate = fold == k, fold == (k + 1) % settings.folds
            values[held_out], epoch = fit_fold(
                frames, ~held_out & ~validate, validate, held_out, settings, settings.seed + k, bar
            )
            kept.append(epoch)
            bar.update((k + 1) * settings.epochs - bar.n)  # the epochs early stopping skipped
    return values, fold, kept


def expectile(x: np.ndarray, tau: float) -> float:
    """The tau-expectile of `x` (the mean at 0.5): the fixed point of its asymmetrically weighted mean."""
    m = float(x.mean())
    for _ in range(200):
        w = np.where(x >= m, tau, 1 - tau)
        m = float((w * x).sum() / w.sum())
    return m


def heldout_errors(frames: Frames, values: np.ndarray, fold: np.ndarray, tau: float = 0.5) -> dict[str, float]:
    """RMSE of the out-of-fold values, and of the best constant per task fitted on the other folds (its
    tau-expectile; what V must beat to have learned anything from the states)."""
    constant = np.zeros(len(values))
    for k in np.unique(fold):
        for task in np.unique(frames.task):
            train, test = (fold != k) & (frames.task == task), (fold == k) & (frames.task == task)
            constant[test] = expectile(frames.target[train], tau) if train.any() else 0.0
    rmse = lambda pred: float(np.sqrt(np.mean((pred - frames.target) ** 2)))  # noqa: E731
    return {"rmse": rmse(values), "rmse_constant_per_task": rmse(constant), "target_std": float(frames.target.std())}


def write_values(
    path: Path, rows: list[ManifestRow], frames: Frames, values: np.ndarray, fold: np.ndarray, meta: dict
) -> None:
    """Write the value file atomically (a temporary file renamed over `path`)."""
    table = pa.table({
        "dataset_name": [rows[d].name for d in frames.dataset],
        "index": frames.index.astype(np.int64),
        "episode_index": frames.episode_index.astype(np.int64),
        "frame_index": frames.frame_index.astype(np.int64),
        "fold": fold.astype(np.int64),
        "return_to_go": frames.target,
        "value": values,
    }).replace_schema_metadata({METADATA_KEY: json.dumps(meta).encode()})  # fmt: skip
    write_atomically(path, lambda tmp: pq.write_table(table, str(tmp)))


def read_meta(path: Path) -> dict:
    """The metadata of a value file; a `ManifestError` naming it when it is not one (or is cut short)."""
    try:
        raw = pq.read_schema(path).metadata or {}
    except (pa.ArrowException, OSError) as e:
        raise ManifestError(
            f"{path}: not a readable parquet file ({e}); an interrupted copy or write leaves one like this: "
            "copy it again or refit it"
        ) from None
    if METADATA_KEY not in raw:
        raise ManifestError(
            f"{path}: not a value file of crab.training.value_fit (no {METADATA_KEY.decode()} metadata)"
        )
    return json.loads(raw[METADATA_KEY])


def load_values(
    path: str | Path | None, rows: list[ManifestRow], spec: RewardSpec, manifest: str | Path, data_root: str | Path
) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], dict]:
    """The checked values of a manifest: {dataset name: (frame index, V)} and the file's metadata.

    Refuses, with the command that fixes it, a missing or unreadable file, one fitted for another
    manifest's datasets (the fix writes a file of its own beside it), one fitted with another discount,
    and a stale one (its data fingerprint differs from that of the data now under `data_root`; the fix
    refits with the file's own settings).
    """
    fix = f"fit it with: {fix_command(manifest, data_root, 'values.parquet' if path is None else path)}"
    if path is None or not Path(path).is_file():
        given = "none given (--value-file, data.value_file)" if path is None else path
        raise ManifestError(f"value file not found: {given} (needed by the signals {', '.join(VALUE_SIGNALS)}); {fix}")
    path = Path(path)
    meta = read_meta(path)
    settings = ValueFitSettings(**meta["settings"])
    try:
        table = pq.read_table(path, columns=["dataset_name", "index", "value"])
    except (pa.ArrowException, OSError) as e:
        raise ManifestError(f"{path}: its values cannot be read ({e}); copy it again or {fix}") from None
    names = np.asarray(table.column("dataset_name").to_pylist())
    if set(names) != {row.name for row in rows} and meta.get("manifest") != Path(manifest).as_posix():
        own = path.with_name(f"values_{Path(manifest).stem}.parquet")
        raise ManifestError(
            f"{path}: the value file of another manifest ({meta.get('manifest')}: datasets {sorted(set(names))}), "
            f"not of {manifest} (datasets {[row.name for row in rows]}); fit this manifest's own and set "
            f"data.value_file (--value-file) to it: {fix_command(manifest, data_root, own, settings)}"
        )
    fix = f"refit it with its settings: {fix_command(manifest, data_root, path, settings)}"
    if settings.gamma != spec.gamma:
        raise ManifestError(f"{path}: fitted with gamma {settings.gamma}, training uses {spec.gamma}; {fix}")
    tables = [annotate(row, spec) for row in rows]
    now = values_fingerprint(rows, tables, settings)
    if meta["fingerprint"] != now:
        raise ManifestError(
            f"{path}: stale value file (fingerprint {meta['fingerprint']} != {now} of manifest {manifest} "
            f"and its data); {fix}"
        )
    table = table.sort_by([("dataset_name", "ascending"), ("index", "ascending")])
    names = np.asarray(table.column("dataset_name").to_pylist())
    index, value = table.column("index").to_numpy(), table.column("value").to_numpy()
    values = {row.name: (index[names == row.name], value[names == row.name]) for row in rows}
    return values, {**meta, "path": path.as_posix()}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--manifest", required=True)
    p.add_argument("--data-root", default="data")
    p.add_argument("--out", required=True, help="value file to write (parquet)")
    defaults = ValueFitSettings()
    for name, value in asdict(defaults).items():
        if name != "gamma":  # the reward spec's: training refuses values fitted with another
            p.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value)
    p.add_argument("--num-workers", type=int, default=0, help="video decoding workers (speed only)")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    settings = ValueFitSettings(**{k: getattr(args, k) for k in asdict(defaults) if k != "gamma"})
    if settings.folds < 3:
        sys.exit(
            "error: --folds must be >= 3 (an episode's value comes from a model that neither trained nor "
            "early-stopped on it)"
        )
    if not 0 < settings.expectile < 1:
        sys.exit("error: --expectile must be in (0, 1)")
    for name in ("epochs", "patience", "batch_size", "hidden", "image_size"):
        if getattr(settings, name) < 1:  # 0 crashed only after decoding every frame (or fitted a constant)
            sys.exit(f"error: --{name.replace('_', '-')} must be >= 1, got {getattr(settings, name)}")
    if args.num_workers < 0:
        sys.exit(f"error: --num-workers must be >= 0, got {args.num_workers}")
    if not 0 < settings.lr < math.inf:  # also refuses nan
        sys.exit(f"error: --lr must be a positive finite number, got {settings.lr}")
    spec = RewardSpec()
    try:
        check_output_file(args.out, "--out")
        rows = load_datasets(args.manifest, args.data_root)
        tables = [annotate(row, spec) for row in rows]
        fingerprint = values_fingerprint(rows, tables, settings)
        frames = read_frames(rows, tables, settings, args.num_workers, progress=not args.no_progress)
        values, fold, kept = fit_values(frames, settings, progress=not args.no_progress)
    except ManifestError as e:
        sys.exit(f"error: {e}")
    errors = heldout_errors(frames, values, fold, settings.expectile)
    meta = {
        "manifest": Path(args.manifest).as_posix(),
        "settings": asdict(settings),
        "fingerprint": fingerprint,
        "heldout": errors,
        "epochs_kept": kept,
    }
    write_values(Path(args.out), rows, frames, values, fold, meta)
    print(
        f"{args.out}: {len(values)} frames, {settings.folds} folds by episode; held-out RMSE of V "
        f"{errors['rmse']:.4f} (a constant per task: {errors['rmse_constant_per_task']:.4f}; return-to-go std "
        f"{errors['target_std']:.4f}), epochs kept per fold {kept}, fingerprint {fingerprint}"
    )


if __name__ == "__main__":
    main()
