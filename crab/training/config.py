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

import yaml

from crab.training.rewards import VALUE_SIGNALS


class ConfigError(ValueError):
    pass


@dataclass
class DataConfig:
    manifest: str  # CSV manifest (see crab/training/docs/manifest_schema.md)
    # Statistics JSON recomputed for that manifest (reward_stats.py); needed when weighting is on.
    reward_stats: str | None = None
    # Out-of-episode values V(s) of every frame (crab.training.value_fit); needed by
    # `reward_weighting.signal: chunk_advantage` and `chunk_q`.
    value_file: str | None = None
    data_root: str = "data"  # relative dataset roots in the manifest resolve against this
    batch_size: int = 8
    num_workers: int = 2
    val_episodes_per_dataset: int = 1  # last episodes of each dataset held out for validation
    video_backend: str = "torchcodec"
    # Keep every decoded item in RAM once read (in each loader worker and in the main process), so only
    # the first epoch decodes video. For datasets that fit several times in memory; batches are identical.
    cache_items: bool = False
    # Folder of decoded frames at the policy's input resolution, built once by `python -m
    # crab.data.frame_cache` for this run's manifests: items read their camera frames from it instead of
    # decoding video (frames equal up to uint8 rounding after the policy's resize). null: decode.
    frame_cache: str | None = None
    # Optional manifest of tasks the training data lacks (e.g. the other skills of a pretrained policy):
    # the held-out episodes of its datasets (`val_episodes_per_dataset` each) get a validation loss per
    # task at every validation, so forgetting shows while training.
    retention_manifest: str | None = None


@dataclass
class PolicyConfig:
    # A Hub id or local folder loaded with SmolVLAPolicy.from_pretrained, or "tiny" for the offline
    # test-size SmolVLA built by crab.training.tiny_smolvla.
    pretrained_path: str = "lerobot/smolvla_base"
    # SmolVLAConfig fields to set (chunk_size, n_action_steps, optimizer_lr, ...).
    overrides: dict[str, Any] = field(default_factory=dict)
    # Action/state normalisation: "data" = statistics of the training manifest (lerobot's default);
    # "pretrained" = those saved with `pretrained_path` (a checkpoint folder), so fine-tuning keeps the
    # spaces the starting policy (and an anchor reference) learned in, also for tasks the data lacks.
    normalization: Literal["data", "pretrained"] = "data"


@dataclass
class RewardWeightingConfig:
    enabled: bool = True
    # The return signal G the weights come from (docs/reward_weighting.md): the episode's outcome R_e,
    # the action chunk's advantage under a learned value baseline, the chunk's bootstrapped return
    # compared within its phase (`chunk_q`, needs `normalize: phase`), or the oracle's 0/1 (damage known).
    signal: Literal["outcome", "chunk_advantage", "chunk_q", "oracle"] = "outcome"
    # Steps the per-chunk signals (chunk_advantage, chunk_q, oracle) look ahead from a chunk's start; null: the
    # policy's action chunk. Longer when a chunk's harm shows only after it ends, e.g. a descent stopped
    # too high whose drop cracks the egg a chunk later (docs/reward_weighting.md, "Credit horizon").
    credit_horizon: int | None = None
    alpha: float = 0.25
    std_floor: float = 1.0  # lower bound on the std that normalises the advantage (reward units)
    clip_min: float = 0.1  # bounds on the raw weight exp(alpha * A); 0 lets the worst data reach weight 0
    clip_max: float = 10.0
    # How the weights act: "loss" multiplies each sample's flow loss by its weight; "sample" draws each
    # batch's frames with probability proportional to their weight (with replacement) and leaves the loss
    # unweighted. Both are the same objective in expectation; "sample" makes every sample of a batch count
    # when most of the data weighs about 0 (docs/reward_weighting.md, "Weights as sampling").
    apply: Literal["loss", "sample"] = "loss"
    # What the weights are normalised over: "global" divides them by the training frames' mean weight;
    # "phase" by the mean weight of the frame's task and part of its episode (`phase_bins` equal parts),
    # so every part of a task keeps its imitation-learning share of the draw even where most episodes did
    # that part badly (docs/reward_weighting.md, "Per-phase normalisation"). "phase" needs `apply: sample`.
    normalize: Literal["global", "phase"] = "global"
    phase_bins: int = 10
    # Episodes that neither succeeded nor hold a negative step reward: failures nothing in the data locates
    # (a miss, a weak grip; `rewards.unlocated_failures`). No per-chunk signal can tell their good chunks
    # from their bad ones, so "drop" leaves them out of the draw (weight 0), as filtering does; "keep"
    # draws them as the signal weighs them. "drop" needs `apply: sample` (docs/reward_weighting.md,
    # "Failures nothing locates").
    unlocated_failures: Literal["keep", "drop"] = "keep"
    # How each training episode counts in the action/state normalisation statistics: "frame" every kept
    # frame once, as imitation learning of the kept episodes; "weight" by its frames' training weight (the
    # draw with `apply: sample`, the loss weight with `apply: loss`). Dropped episodes never count. "frame"
    # was level or ahead wherever both were measured (docs/sim_benchmark_findings.md, 2026-12-06): a few
    # heavily weighted episodes no longer set the scale of every input.
    normalization_counts: Literal["weight", "frame"] = "frame"


@dataclass
class AnchorConfig:
    enabled: bool = False
    lambda_anchor: float = 0.1  # target value after warmup and ramp
    warmup_steps: int = 0  # lambda_anchor is 0 for steps < warmup_steps
    ramp_steps: int = 0  # then rises linearly to the target over this many steps
    mode: Literal["shared_prefix", "naive"] = "shared_prefix"
    # The frozen reference: null = the starting policy; or a checkpoint folder (outputs/<run>/step_XXXXXX
    # or its pretrained_model folder) of the same architecture, e.g. a multi-task base to retain.
    reference: str | None = None


@dataclass
class ReplayConfig:
    # Frames of other data beside each fine-tuning batch, for skills the fine-tuning data lacks (e.g. the other
    # tasks of a multi-task base: on the fine-tuning batches alone the anchor never sees their inputs,
    # docs/anchor.md). Each step a batch of `batch_size` frames from `manifest`'s training split (its held-out
    # episodes stay unseen, so the same manifest can be `data.retention_manifest`). null: no replay.
    manifest: str | None = None
    batch_size: int | None = None  # null: data.batch_size
    # The anchor holds the policy to its reference on them too (needs `anchor.enabled`); their actions only
    # place the noisy action the two models are compared at.
    anchor: bool = True
    # Rehearsal (co-training): they are imitated too, at weight 1, the imitation loss the mean over both
    # batches' samples; with `anchor: false`, the way to keep other tasks that was measured best
    # (docs/anchor.md). `batch_size` / (data.batch_size + batch_size) is their share of each step's frames.
    # Their prompts carry no advantage label (with `conditioning`, they train the unconditioned policy).
    imitate: bool = False


# The label rules that look `reward_weighting.credit_horizon` steps ahead (does the chunk lead into damage?).
HORIZON_RULES = ("advantage", "damage")


def horizon_read(signal: str, label_rule: str | None) -> bool:
    """Whether a run reads `reward_weighting.credit_horizon`: its return signal is a per-chunk one, or its
    conditioning's label rule (None: no conditioning) looks ahead."""
    return signal != "outcome" or label_rule in HORIZON_RULES


@dataclass
class ConditioningConfig:
    # Advantage conditioning (RECAP-style; crab/training/conditioning.py): every frame is imitated, its task
    # text labelled "Advantage: positive" or "negative" by `label_rule`, with or without
    # `reward_weighting.enabled`. Only the `advantage` rule reads `reward_weighting.signal` (with its inputs:
    # data.value_file for the per-chunk signals); `damage` and `episode` read the rewards alone.
    enabled: bool = False
    # What makes a chunk positive (failures nothing locates are negative under every rule):
    # - advantage: its signal is at least its task-and-phase group's mean plus `positive_threshold` standard
    #   deviations (groups: `reward_weighting.phase_bins` parts of each episode), and it does not lead into
    #   located damage (within the credit horizon);
    # - damage: it does not lead into located damage (every other chunk positive);
    # - episode: its episode holds no damage (a damaged episode is negative throughout).
    # Measured in docs/sim_benchmark.md (conditioning rows): `episode` with `positive_share: 0.5` ahead of
    # `advantage` where the clean episodes are few, level on today's data; recipe_conditioned.yaml sets it.
    # The default here is RECAP's rule, what the paper describes.
    label_rule: Literal["advantage", "damage", "episode"] = "advantage"
    positive_threshold: float = 0.0  # label_rule: advantage only
    # Share of each task's draw from its positive frames (0 < share < 1; the proportions within the positive
    # and within the negative frames kept; `conditioning.balanced_draw`). null: as the data has them. Where the
    # positives are a few clean episodes among many damaged ones, 0.5 lets the "positive" policy see them
    # about as often as the rest.
    positive_share: float | None = None
    # Share of the training samples whose prompt carries no label (p): the unconditioned policy that
    # guidance steers away from.
    unconditioned_fraction: float = 0.2
    # Classifier-free guidance at evaluation (beta): 1 asks the conditioned policy alone; above 1 each
    # denoising step also runs the unconditioned prompt (twice the expert rows). 1 (lerobot's own deploy
    # loop): the best beta depends on the data (3 to 5 in the scarce regime, where it helped; on today's data
    # 3 and 5 fell from 39% to 25% and 2%; docs/sim_benchmark.md), so guidance is measured before it is used.
    guidance: float = 1.0


@dataclass
class TrainConfig:
    # Optimiser, learning-rate schedule and gradient clipping are lerobot's SmolVLA presets; change them
    # through `policy.overrides` (optimizer_lr, scheduler_warmup_steps, optimizer_grad_clip_norm, ...).
    steps: int = 1000
    log_every: int = 10
    save_every: int = 500
    keep_last: int = 3
    # Epochs between validations; null: every epoch, stretched on small datasets so that validating stays a
    # small part of the time (loaders.validation_interval). The last epoch always validates.
    val_every_epochs: int | None = None
    val_max_batches: int = 20  # bound on the validation pass at each epoch end
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"  # bf16 autocasts on a CPU too; fp16 needs a GPU
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
    replay: ReplayConfig = field(default_factory=ReplayConfig)
    conditioning: ConditioningConfig = field(default_factory=ConditioningConfig)
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
    """Validate `value` against the annotation `tp` (an int is accepted where a float is expected)."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, f"{key}.", source)
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{source}: `{key}` must be one of {list(typing.get_args(tp))}, got {value!r}")
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        (inner,) = [a for a in typing.get_args(tp) if a is not type(None)]
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
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if (isinstance(value, bool) and tp is not bool) or not isinstance(value, tp):
        raise ConfigError(f"{source}: `{key}` must be {tp.__name__}, got {value!r}")
    if tp is str and (control := [c for c in value if c in _CONTROL]):
        raise ConfigError(
            f"{source}: `{key}` holds the control character {control[0]!r} ({value!r}): {_BACKSLASH_HINT}"
        )
    return value


# Characters no path, name or task of a config holds, but that YAML's double-quoted escapes make of a
# Windows path: "C:\tmp\values.parquet" holds a tab (\t) and a vertical tab (\v). (Newlines are left
# out: lerobot's task instructions may end with one.)
_CONTROL = frozenset(map(chr, [*range(0, 10), *range(11, 32), 127]))
_BACKSLASH_HINT = (
    "in YAML double quotes a backslash starts an escape (\\t is a tab, \\d is an error); write a Windows path "
    "in single quotes ('C:\\data\\values.parquet') or with forward slashes (C:/data/values.parquet)"
)


def _yaml(text: str, source: str) -> Any:
    """`yaml.safe_load(text)`; a `ConfigError` naming `source` and the line for text that is not YAML."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        hint = f"; {_BACKSLASH_HINT}" if "\\" in text else ""
        raise ConfigError(f"{source}: not valid YAML{where}: {problem}{hint}") from None


# Keys that moved, with their new place (configs written before the move get told where).
MOVED = {"anchor.replay_manifest": "replay.manifest", "anchor.replay_batch_size": "replay.batch_size"}


def _build(cls: type, raw: Any, prefix: str, source: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: `{prefix.rstrip('.') or 'top level'}` must be a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    moved = [f"`{prefix}{k}` is now `{MOVED[prefix + k]}`" for k in unknown if prefix + k in MOVED]
    if moved:
        raise ConfigError(f"{source}: {'; '.join(moved)}")
    if unknown:
        names = ", ".join(f"`{prefix}{k}`" for k in unknown)
        raise ConfigError(f"{source}: unknown key(s) {names}; known keys here: {sorted(fields)}")
    kwargs = {}
    for name, f in fields.items():
        if name in raw:
            kwargs[name] = _check_type(raw[name], hints[name], f"{prefix}{name}", source)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{source}: missing required key `{prefix}{name}`")
    return cls(**kwargs)


def apply_override(raw: dict, override: str) -> None:
    """Set one dotted key from `key=value`, the value parsed as YAML (`train.steps=20`, `anchor.enabled=false`)."""
    key, sep, value = override.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {override!r} is not of the form key=value")
    node = raw
    *parents, leaf = key.split(".")
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {override!r}: `{part}` is not a section")
    node[leaf] = _yaml(value, f"override {override!r}")


def _deep_merge(base: dict, top: dict) -> dict:
    merged = dict(base)
    for key, value in top.items():
        both_maps = isinstance(value, dict) and isinstance(merged.get(key), dict)
        merged[key] = _deep_merge(merged[key], value) if both_maps and key != "task_masks" else value
    return merged


def load_config(paths: str | Path | list, overrides: list[str] = ()) -> CrabConfig:
    """Load one YAML, or several layered left to right (e.g. a cycle config, then demo overrides)."""
    paths = [Path(p) for p in (paths if isinstance(paths, list | tuple) else [paths])]
    raw: dict = {}
    for path in paths:
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            text = path.read_text(encoding="utf-8-sig")  # a BOM from a Windows editor is no key
        except UnicodeDecodeError as e:
            raise ConfigError(f"{path}: not UTF-8 text (byte {e.start}); save it as UTF-8") from None
        layer = _yaml(text, str(path)) or {}
        if not isinstance(layer, dict):
            raise ConfigError(f"{path}: a config is a mapping of keys, got {type(layer).__name__}")
        raw = _deep_merge(raw, layer)
    for override in overrides:
        apply_override(raw, override)
    source = " + ".join(map(str, paths)) + (f" (with overrides {list(overrides)})" if overrides else "")
    cfg = _build(CrabConfig, raw, "", source)
    _check_values(cfg, source)
    return cfg


def _check_values(cfg: CrabConfig, source: str) -> None:
    rw, anchor, replay, cond = cfg.reward_weighting, cfg.anchor, cfg.replay, cfg.conditioning
    checks = [
        (rw.enabled and not cfg.data.reward_stats, "`data.reward_stats` is required when `reward_weighting.enabled`"),
        (signal_read(cfg) in VALUE_SIGNALS and not cfg.data.value_file,
         f"`data.value_file` is required by `reward_weighting.signal: {rw.signal}` "
         "(fit it with `python -m crab.training.value_fit`)"),
        (rw.enabled and rw.signal == "chunk_q" and rw.normalize != "phase",
         "`reward_weighting.signal: chunk_q` needs `reward_weighting.normalize: phase`: its values are not "
         "centred per state, so only the chunks of one phase are comparable"),
        (rw.credit_horizon is not None and rw.credit_horizon < 1, "`reward_weighting.credit_horizon` must be >= 1"),
        (rw.credit_horizon is not None and not horizon_read(rw.signal, cond.label_rule if cond.enabled else None),
         "`reward_weighting.credit_horizon` applies to the per-chunk signals (`chunk_advantage`, `chunk_q`, `oracle`) "
         f"and to `conditioning.label_rule` {' and '.join(HORIZON_RULES)}, not to `outcome` alone"),
        (rw.alpha < 0, "`reward_weighting.alpha` must be >= 0"),
        (rw.std_floor <= 0, "`reward_weighting.std_floor` must be > 0"),
        (not 0 <= rw.clip_min < rw.clip_max, "need 0 <= `reward_weighting.clip_min` < `reward_weighting.clip_max`"),
        (rw.normalize == "phase" and rw.apply != "sample",
         "`reward_weighting.normalize: phase` needs `reward_weighting.apply: sample` (the phases' weights choose "
         "the frames drawn)"),
        (rw.phase_bins < 1, "`reward_weighting.phase_bins` must be >= 1"),
        (rw.unlocated_failures == "drop" and rw.apply != "sample",
         "`reward_weighting.unlocated_failures: drop` needs `reward_weighting.apply: sample` (it leaves those "
         "episodes out of the draw)"),
        (cond.positive_threshold != 0 and cond.label_rule != "advantage",
         f"`conditioning.positive_threshold` is read by `label_rule: advantage` only, not `{cond.label_rule}`"),
        (cond.positive_share is not None and not 0 < cond.positive_share < 1,
         "`conditioning.positive_share` must be in (0, 1) or null"),
        (not 0 <= cond.unconditioned_fraction < 1, "`conditioning.unconditioned_fraction` must be in [0, 1)"),
        (cond.guidance != 1 and cond.unconditioned_fraction == 0,
         "`conditioning.guidance` other than 1 needs `conditioning.unconditioned_fraction` > 0 (the unconditioned "
         "policy it steers away from is trained on the unlabelled samples)"),
        (cond.guidance < 0, "`conditioning.guidance` must be >= 0"),
        (anchor.lambda_anchor < 0, "`anchor.lambda_anchor` must be >= 0"),
        (anchor.warmup_steps < 0 or anchor.ramp_steps < 0, "`anchor.warmup_steps`/`ramp_steps` must be >= 0"),
        (replay.manifest is not None and not (replay.anchor or replay.imitate),
         "`replay.manifest` is set but neither `replay.anchor` nor `replay.imitate`: nothing would use it"),
        (replay.manifest is not None and replay.anchor and not anchor.enabled,
         "`replay.anchor` needs the anchor on (`anchor.enabled: true`); for rehearsal alone set "
         "`replay.anchor: false` and `replay.imitate: true`"),
        (replay.batch_size is not None and replay.batch_size < 1, "`replay.batch_size` must be >= 1"),
        (cfg.policy.normalization == "pretrained" and cfg.policy.pretrained_path == "tiny",
         "`policy.normalization: pretrained` needs `policy.pretrained_path` to be a saved policy, not tiny"),
        (cfg.data.batch_size < 1, "`data.batch_size` must be >= 1"),
        (cfg.data.num_workers < 0, "`data.num_workers` must be >= 0"),
        (cfg.data.retention_manifest is not None and cfg.data.val_episodes_per_dataset < 1,
         "`data.retention_manifest` needs `data.val_episodes_per_dataset` >= 1 (its held-out episodes)"),
        (cfg.train.steps < 1, "`train.steps` must be >= 1"),
        (min(cfg.train.log_every, cfg.train.save_every) < 1, "`train.log_every` and `save_every` must be >= 1"),
        (cfg.train.val_every_epochs is not None and cfg.train.val_every_epochs < 1,
         "`train.val_every_epochs` must be >= 1 (or null: every epoch, stretched on small datasets)"),
    ]
    for failed, message in checks:
        if failed:
            raise ConfigError(f"{source}: {message}")


# Below this `clip_max` binds on `chunk_q`'s best chunks (spread over several std units), which the recipe
# measured without a cap (docs/sim_benchmark_findings.md: capped, the scarce regime's row fell behind).
CHUNK_Q_UNCAPPED = 1000.0


def signal_read(cfg: CrabConfig) -> str:
    """The return signal a run reads: `reward_weighting.signal` where the weights or the `advantage` label
    rule compare it, else `outcome` (the statistics' default): the `damage` and `episode` label rules read
    the rewards only, so conditioning by them needs no value model."""
    rw, cond = cfg.reward_weighting, cfg.conditioning
    return rw.signal if rw.enabled or (cond.enabled and cond.label_rule == "advantage") else "outcome"


def config_warnings(cfg: CrabConfig) -> list[str]:
    """Settings that run but that the measurements say weaken a signal: printed before step 1."""
    rw = cfg.reward_weighting
    warnings = []
    if rw.enabled and rw.signal == "chunk_q" and rw.clip_max < CHUNK_Q_UNCAPPED:
        warnings.append(
            f"`reward_weighting.clip_max: {rw.clip_max:g}` caps `chunk_q`'s best chunks; the recipe "
            "(crab/training/configs/recipe_chunk_q.yaml) was measured uncapped (clip_max 1000000)"
        )
    if rw.enabled and rw.signal == "chunk_advantage" and rw.apply == "sample" and rw.clip_max >= CHUNK_Q_UNCAPPED:
        warnings.append(
            "`chunk_advantage` drawn without a cap collapses the draw onto a few chunks; keep a clip_max "
            "(docs/reward_weighting.md)"
        )
    if rw.enabled and rw.apply == "sample" and rw.signal in ("chunk_q", "chunk_advantage") and rw.unlocated_failures == "keep":
        warnings.append(
            "failed episodes with no damage step are drawn as the value model weighs them: nothing locates "
            "their failure (`reward_weighting.unlocated_failures: drop` leaves them out, as the recipe does)"
        )
    return warnings


def saved_conditioning(path: Path) -> ConditioningConfig | None:
    """The `conditioning` section of a run's saved crab_config.yaml (None when the file has none: saved
    before the section existed)."""
    raw = _yaml(path.read_text(encoding="utf-8"), str(path)) or {}
    return None if "conditioning" not in raw else _build(ConditioningConfig, raw["conditioning"], "conditioning.", str(path))


def to_dict(cfg: CrabConfig) -> dict:
    return dataclasses.asdict(cfg)


# Keys that never change the trained weights: how fast the batches come (the sampler fixes the order, and
# items are the same whether decoded by a worker, the main process or read from the cache), and the guidance
# an evaluation asks of a conditioned policy.
NOT_TRAINED = {"data": ("num_workers", "cache_items"), "conditioning": ("guidance",)}


def _moved_to_today(cfg_dict: dict) -> dict:
    """A saved config dict with its `MOVED` keys at their new places (a copy; sections shallow-copied)."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in cfg_dict.items()}
    for old, new in MOVED.items():
        (section, key), (new_section, new_key) = old.split("."), new.split(".")
        if isinstance(out.get(section), dict) and key in out[section]:
            out.setdefault(new_section, {})[new_key] = out[section].pop(key)
    return out


def training_settings(cfg_dict: dict) -> dict:
    """A config dict (`to_dict`, or a saved crab_config.yaml) without its `NOT_TRAINED` keys: runs that agree
    on it train the same weights, and a run may be resumed or reused with other speed or guidance settings.
    Keys a saved config lacks (written before they existed) count as their defaults, and keys that moved
    since (`MOVED`) are read at their new place."""
    try:
        out = to_dict(_build(CrabConfig, _moved_to_today(cfg_dict), "", "saved config"))
    except ConfigError:  # not a valid config today (a key since removed): compared as it is
        out = dict(cfg_dict)
    for section, keys in NOT_TRAINED.items():
        if isinstance(out.get(section), dict):
            out[section] = {k: v for k, v in out[section].items() if k not in keys}
    rw = out.get("reward_weighting")
    if isinstance(rw, dict) and not rw.get("enabled", True):
        # With weighting off every frame weighs 1 and none is dropped, so both ways of counting frames in
        # the normalisation statistics give the same statistics (`weighting.RunWeights.normalization_counts`).
        out["reward_weighting"] = {k: v for k, v in rw.items() if k != "normalization_counts"}
    return out
