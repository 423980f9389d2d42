"""Typed training configuration, loaded from YAML with strict validation.

Every section is a dataclass; an unknown key, a mistyped value or a missing required key is a
`ConfigError` that names the key and the file. `key=value` overrides (dotted paths) go through the
same validation.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal


class ConfigError(ValueError):
    pass


@dataclass
class DataConfig:
    manifest: str  # CSV manifest (see crab/training/docs/manifest_schema.md)
    reward_stats: str  # statistics JSON recomputed for that manifest
    data_root: str = "data"  # relative dataset roots in the manifest resolve against this
    batch_size: int = 8
    num_workers: int = 2
    val_episodes_per_dataset: int = 1  # last episodes of each dataset held out for validation
    video_backend: str = "torchcodec"


@dataclass
class PolicyConfig:
    # A Hub id or local folder loaded with SmolVLAPolicy.from_pretrained, or "tiny" for the offline
    # test-size SmolVLA built by crab.training.tiny_smolvla.
    pretrained_path: str = "lerobot/smolvla_base"
    # SmolVLAConfig fields to set (chunk_size, n_action_steps, optimizer_lr, ...).
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass
class RewardWeightingConfig:
    enabled: bool = True
    alpha: float = 0.25
    clip_min: float = 0.1  # bounds on the raw weight exp(alpha * A)
    clip_max: float = 10.0
    normalize_batch: bool = True  # divide by the batch mean weight so the loss scale matches IL


@dataclass
class AnchorConfig:
    enabled: bool = False
    lambda_anchor: float = 0.1  # target value after warmup and ramp
    warmup_steps: int = 0  # lambda_anchor is 0 for steps < warmup_steps
    ramp_steps: int = 0  # then rises linearly to the target over this many steps
    mode: Literal["shared_prefix", "naive"] = "shared_prefix"


@dataclass
class TrainConfig:
    steps: int = 1000
    log_every: int = 10
    save_every: int = 500
    keep_last: int = 3
    grad_clip_norm: float = 10.0
    # None: use the policy config's optimizer/scheduler presets (lerobot's SmolVLA recipe).
    lr: float | None = None
    warmup_steps: int | None = None
    decay_steps: int | None = None
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"  # applied only where a GPU is present
    progress_bar: bool = True
    tensorboard: bool = False
    wandb: bool = False


@dataclass
class CrabConfig:
    run_name: str
    data: DataConfig
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    reward_weighting: RewardWeightingConfig = field(default_factory=RewardWeightingConfig)
    anchor: AnchorConfig = field(default_factory=AnchorConfig)
    # task instruction -> indices of the action dimensions its loss counts. Empty: all dimensions
    # for every task; otherwise every task of the manifest needs an entry.
    task_masks: dict[str, list[int]] = field(default_factory=dict)
    train: TrainConfig = field(default_factory=TrainConfig)
    output_dir: str = "outputs"
    seed: int = 1000

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.run_name


def _check_type(value: Any, tp: Any, key: str, source: str) -> Any:
    """Validate (and lightly coerce int -> float) `value` against the annotation `tp`."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{source}: `{key}` must be one of {typing.get_args(tp)}, got {value!r}")
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _check_type(value, inner, key, source)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{source}: `{key}` must be a list, got {value!r}")
        (inner,) = typing.get_args(tp)
        return [_check_type(v, inner, f"{key}[{i}]", source) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: `{key}` must be a mapping, got {value!r}")
        kt, vt = typing.get_args(tp)
        return {_check_type(k, kt, key, source): _check_type(v, vt, f"{key}.{k}", source) for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key, source)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if (tp is int and isinstance(value, bool)) or not isinstance(value, tp):
        raise ConfigError(f"{source}: `{key}` must be {tp.__name__}, got {value!r}")
    return value


def _build(cls: type, raw: Any, prefix: str, source: str):
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: `{prefix or 'top level'}` must be a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        names = ", ".join(f"`{prefix}{k}`" for k in unknown)
        raise ConfigError(f"{source}: unknown key(s) {names}; known: {sorted(fields)}")
    kwargs = {}
    for name, f in fields.items():
        key = f"{prefix}{name}"
        if name in raw:
            kwargs[name] = _check_type(raw[name], hints[name], key, source)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{source}: missing required key `{key}`")
    return cls(**kwargs) if not prefix else _nested(cls, kwargs)


def _nested(cls: type, kwargs: dict) -> Any:
    return cls(**kwargs)
