"""RWFM + anchor training module around lerobot 0.6.1's real `SmolVLAPolicy`.

- `policy_config` / `make_policy` build (or load) the policy and lerobot's own pre/post-processors;
  the preprocessor keeps the batch keys lerobot's pipeline would drop (reward fields, string lists).
- The velocities come from `smolvla_internals` (the one module that reaches into SmolVLA's internals);
  `CrabSmolVLA.per_sample_loss` masks them (lerobot 0.6 semantics: padded chunk steps and action
  dimensions out, the mean over valid entries) and adds per-task dimension masks and NaN safety.
  lerobot's `SmolVLAPolicy.forward` is not used: it multiplies NaN through its mask, has no per-task
  masks and calls `.item()` several times per step.
- `CrabSmolVLA.forward` is the training loss: reward-weighted flow matching plus an output-space anchor
  to a frozen reference copy that shares every frozen parameter with the trained policy. With a frozen
  VLM the image+language keys/values are computed once per batch (no autograd) and only the state
  token and the action expert run for the policy and, in the "shared_prefix" anchor mode, the reference.

Shapes: B batch, H chunk size, D = max_action_dim (padded action size), A real action size.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import safetensors.torch
import torch
from huggingface_hub.constants import SAFETENSORS_SINGLE_FILE
from lerobot.configs.policies import PreTrainedConfig
from lerobot.policies.smolvla.configuration_smolvla import SmolVLAConfig
from lerobot.policies.smolvla.modeling_smolvla import SmolVLAPolicy
from lerobot.policies.smolvla.processor_smolvla import make_smolvla_pre_post_processors
from lerobot.processor import EnvTransition, PolicyProcessorPipeline, TransitionKey
from lerobot.processor.converters import batch_to_transition
from lerobot.utils.constants import ACTION, DONE, OBS_PREFIX, OBS_STATE, REWARD, TRUNCATED
from lerobot.utils.feature_utils import dataset_to_policy_features
from torch import Tensor, nn

from crab.training.config import AnchorConfig, ConfigError, PolicyConfig, ReplayConfig, RewardWeightingConfig
from crab.training.flow_loss import (
    TaskDimMask,
    loss_mask,
    masked_mean_sq_diff,
    masked_per_sample_loss,
    sample_flow_time,
)
from crab.training.rewards import signal_weights, weight_statistics
from crab.training.smolvla_internals import (
    expert_velocity,
    frozen_memo,
    full_velocity,
    noisy_actions,
    prepare_inputs,
    shared_context,
    shared_prefix_supported,
    shares_vlm,
)
from crab.training.tiny_smolvla import ensure_backbone, ensure_tiny_vlm

logger = logging.getLogger(__name__)

ACTION_IS_PAD = f"{ACTION}_is_pad"

# The offline test-size SmolVLA (see docs in tiny_smolvla.py); PolicyConfig.overrides apply on top.
TINY_SMOLVLA_DEFAULTS: dict[str, Any] = {
    "load_vlm_weights": False,
    "num_vlm_layers": 2,
    "chunk_size": 10,
    "n_action_steps": 10,
    "max_state_dim": 8,
    "max_action_dim": 8,
    "resize_imgs_with_padding": (32, 32),
    "expert_width_multiplier": 1.0,
    "optimizer_lr": 5e-4,
    "scheduler_warmup_steps": 200,
}


@runtime_checkable
class FlowPolicy(Protocol):
    """What the trainer, benchmarks and simulator evaluation need from a flow-matching policy.

    Batches are preprocessed (normalised, tokenised, on the policy's device).
    """

    @property
    def chunk_size(self) -> int:
        """H, the number of actions per predicted chunk."""

    @property
    def action_dim(self) -> int:
        """A, the robot's real action size (predicted chunks are (B, H, A))."""

    def sample_noise_time(
        self, batch: Mapping[str, Any], generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """Fresh flow noise (B, H, D) and time (B,) for `batch` (from `generator` when given)."""

    def velocity_and_target(self, batch: Mapping[str, Any], noise: Tensor, time: Tensor) -> tuple[Tensor, Tensor]:
        """Predicted velocity v_t and target u_t = noise - actions, both (B, H, D), at the given noise/time."""

    def per_sample_loss(self, batch: Mapping[str, Any], noise: Tensor, time: Tensor) -> Tensor:
        """Masked flow-matching loss per sample (B,) at the given noise/time."""

    def predict_action_chunk(self, batch: Mapping[str, Any], noise: Tensor | None = None) -> Tensor:
        """Sampled normalised action chunk (B, H, A) (the postprocessor unnormalises it)."""


# --------------------------------------------------------------------------------------------------
# Construction


def policy_config(policy_cfg: PolicyConfig) -> SmolVLAConfig:
    """The run's SmolVLAConfig, before the dataset's features are known (chunk size, optimiser presets).

    "tiny": the offline test-size SmolVLA (`TINY_SMOLVLA_DEFAULTS`); otherwise the config stored with
    the pretrained policy (Hub id or folder). `policy_cfg.overrides` apply on top, through the config's
    own validation.
    """
    overrides = dict(policy_cfg.overrides)
    known = {f.name for f in dataclasses.fields(SmolVLAConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ConfigError(f"policy.overrides: unknown SmolVLAConfig field(s) {unknown}")
    if policy_cfg.pretrained_path == "tiny":
        return SmolVLAConfig(vlm_model_name=str(ensure_tiny_vlm()), **{**TINY_SMOLVLA_DEFAULTS, **overrides})
    loaded = PreTrainedConfig.from_pretrained(pretrained_folder(policy_cfg.pretrained_path))
    if not isinstance(loaded, SmolVLAConfig):
        raise ValueError(f"{policy_cfg.pretrained_path} is a {type(loaded).__name__}, not a SmolVLA policy")
    # dataclasses.replace re-runs SmolVLAConfig's validation on the overridden values.
    return dataclasses.replace(loaded, **overrides)


def make_policy(
    smolvla_cfg: SmolVLAConfig,
    policy_cfg: PolicyConfig,
    features: Mapping[str, Mapping[str, Any]],
    dataset_stats: Mapping[str, Mapping[str, Any]] | None,
) -> tuple[SmolVLAPolicy, Any, Any]:
    """Build the SmolVLA policy and lerobot's SmolVLA pre/post-processors.

    `smolvla_cfg` comes from `policy_config(policy_cfg)`. `features` is a LeRobot dataset's
    `meta.features` (cameras, `observation.state`, `action`; other keys are ignored) and replaces the
    config's input/output features, so the dataset's cameras and sizes are the ones used;
    `dataset_stats` are `meta.stats`-style statistics for normalisation (with
    `policy_cfg.normalization: pretrained`, those saved with the pretrained policy replace them). "tiny"
    builds a randomly initialised policy (seed first); anything else loads weights with
    `SmolVLAPolicy.from_pretrained` (a Hub id, a `pretrained_model` folder or a Crab checkpoint folder).
    Returns (policy in train mode, preprocessor, postprocessor); the preprocessor keeps the batch keys
    lerobot's pipeline would drop (see `batch_to_transition_keeping_extras`).
    """
    policy_features = dataset_to_policy_features(dict(features))
    if ACTION not in policy_features:
        raise ValueError("dataset features have no 'action'")
    cfg = dataclasses.replace(
        smolvla_cfg,
        output_features={k: f for k, f in policy_features.items() if k == ACTION},
        input_features={k: f for k, f in policy_features.items() if k != ACTION},
    )
    ensure_backbone(cfg.vlm_model_name)
    if policy_cfg.pretrained_path == "tiny":
        policy = SmolVLAPolicy(cfg)
    else:
        policy = SmolVLAPolicy.from_pretrained(pretrained_folder(policy_cfg.pretrained_path), config=cfg)
    if policy_cfg.normalization == "pretrained":
        dataset_stats = pretrained_stats(policy_cfg.pretrained_path)
    policy.train()
    pre, postprocessor = make_smolvla_pre_post_processors(policy.config, dataset_stats=dataset_stats)
    preprocessor = PolicyProcessorPipeline[dict[str, Any], dict[str, Any]](
        steps=pre.steps, name=pre.name, to_transition=batch_to_transition_keeping_extras, to_output=pre.to_output
    )
    return policy, preprocessor, postprocessor


PRETRAINED_DIRNAME = "pretrained_model"


def pretrained_folder(path: str | Path) -> str:
    """A Crab checkpoint folder (`outputs/<run>/step_XXXXXX`) names its `pretrained_model` folder; any other
    path or Hub id is returned as is."""
    inner = Path(path) / PRETRAINED_DIRNAME
    return str(inner) if (inner / "config.json").is_file() else str(path)


def pretrained_stats(path: str | Path) -> dict[str, dict[str, Tensor]]:
    """The normalisation statistics saved with a policy's preprocessor (lerobot's normalizer step file),
    as `{feature: {stat: tensor}}`."""
    folder = Path(pretrained_folder(path))
    files = sorted(folder.glob("*preprocessor*normalizer_processor.safetensors"))
    if not files:
        raise ConfigError(
            f"policy.normalization is 'pretrained' but {folder} has no saved normalizer statistics "
            "(*preprocessor*normalizer_processor.safetensors): use a checkpoint saved with its processors"
        )
    stats: dict[str, dict[str, Tensor]] = {}
    for key, value in safetensors.torch.load_file(str(files[0])).items():
        feature, stat = key.rsplit(".", 1)
        stats.setdefault(feature, {})[stat] = value
    return stats


# Batch keys lerobot's `batch_to_transition` maps to transition fields other than complementary data.
_TRANSITION_KEYS = {ACTION, REWARD, DONE, TRUNCATED, "info"}


def batch_to_transition_keeping_extras(batch: dict[str, Any]) -> EnvTransition:
    """lerobot's `batch_to_transition`, with every other batch key kept as complementary data.

    lerobot keeps only observation.*, action, *_is_pad, task, subtask, index, task_index and
    episode_index, so our reward fields (`step_reward`, `chunk_return`, ...) and string lists
    (`dataset_name`, `task_name`, `quality`) would vanish. As complementary data they pass the
    pipeline's device step (tensors moved) and come back as batch keys. The processed `task` strings
    end with "\n" (SmolVLA's newline step); task-mask lookups strip it.
    """
    transition = batch_to_transition(batch)
    extras = {k: v for k, v in batch.items() if not k.startswith(OBS_PREFIX) and k not in _TRANSITION_KEYS}
    transition[TransitionKey.COMPLEMENTARY_DATA] = {**extras, **transition[TransitionKey.COMPLEMENTARY_DATA]}
    return transition


def make_reference(policy: SmolVLAPolicy) -> SmolVLAPolicy:
    """Frozen reference = the policy as it is now, in eval mode, without gradients.

    Only trainable modules are copied; parameters training leaves frozen (the whole VLM with
    `train_expert_only`, the vision tower with `freeze_vision_encoder`) are the same tensors as the
    policy's. Build it after moving the policy to its device.
    """
    reference = copy.deepcopy(policy, memo=frozen_memo(policy))
    reference.eval()
    reference.requires_grad_(False)
    return reference


# SmolVLAConfig fields that change what a set of weights computes without changing their shapes (the
# state dict's keys and shapes catch the others): a reference must agree with the policy on them.
_ARCHITECTURE_FIELDS = (
    "chunk_size", "max_state_dim", "max_action_dim", "num_vlm_layers", "num_expert_layers",
    "expert_width_multiplier", "attention_mode", "self_attn_every_n_layers", "prefix_length",
    "add_image_special_tokens", "resize_imgs_with_padding", "min_period", "max_period",
)  # fmt: skip


def load_reference(policy: SmolVLAPolicy, path: str | Path) -> SmolVLAPolicy:
    """Frozen reference = the SmolVLA policy saved at `path` (a `pretrained_model` folder or a Crab
    checkpoint folder), in eval mode, without gradients.

    It is `make_reference(policy)` with the saved weights loaded: the architecture must be the policy's
    (same config type, `_ARCHITECTURE_FIELDS`, state-dict keys and shapes), else a `ConfigError`. Frozen
    parameters whose saved values equal the policy's stay the policy's tensors (no memory, and the
    shared-prefix anchor stays exact); those that differ get their own.
    """
    folder = Path(pretrained_folder(path))
    weights = folder / SAFETENSORS_SINGLE_FILE
    if not (folder / "config.json").is_file() or not weights.is_file():
        raise ConfigError(
            f"anchor.reference: no policy at {path} (expected config.json and {SAFETENSORS_SINGLE_FILE} in "
            f"{folder}; pass a checkpoint folder outputs/<run>/step_XXXXXX or its pretrained_model folder)"
        )
    saved_cfg = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    if saved_cfg.get("type") != policy.config.type:
        raise ConfigError(f"anchor.reference {folder}: a {saved_cfg.get('type')!r} policy, not {policy.config.type!r}")
    differ = {}
    for name in _ARCHITECTURE_FIELDS:
        ours = getattr(policy.config, name)
        theirs = saved_cfg.get(name, ours)
        if (list(ours) if isinstance(ours, tuple) else ours) != theirs:
            differ[name] = (theirs, ours)
    reference = make_reference(policy)
    expected = reference.state_dict()
    state = safetensors.torch.load_file(str(weights))
    # Tied tensors are saved once: a key the file lacks is fine if it shares storage with one it has.
    saved_ptrs = {expected[k].untyped_storage().data_ptr() for k in state if k in expected}
    missing = sorted(k for k in set(expected) - set(state) if expected[k].untyped_storage().data_ptr() not in saved_ptrs)
    unexpected = sorted(set(state) - set(expected))
    shapes = {k: (tuple(state[k].shape), tuple(expected[k].shape)) for k in set(state) & set(expected)
              if state[k].shape != expected[k].shape}  # fmt: skip
    if differ or missing or unexpected or shapes:
        raise ConfigError(
            f"anchor.reference {folder}: its architecture differs from the policy's: "
            + "; ".join(
                f"{what} {items}" for what, items in (
                    ("config (saved, policy)", differ), ("missing weights", missing[:5]),
                    ("unexpected weights", unexpected[:5]), ("shapes (saved, policy)", dict(list(shapes.items())[:5])),
                ) if items
            )
        )  # fmt: skip
    shared = {id(p) for p in policy.parameters()}
    own: dict[int, nn.Parameter] = {}  # policy tensor id -> the reference's own copy (tied aliases share it)
    with torch.no_grad():
        for name, param in list(reference.named_parameters(remove_duplicate=False)):
            module_name, _, leaf = name.rpartition(".")
            if id(param) in own:
                setattr(reference.get_submodule(module_name), leaf, own[id(param)])
                continue
            if name not in state:
                continue
            value = state[name].to(param.device, param.dtype)
            if id(param) not in shared:
                param.copy_(value)
            elif not torch.equal(param, value):  # differs from the policy's frozen tensor: unshare it
                own[id(param)] = nn.Parameter(value, requires_grad=False)
                setattr(reference.get_submodule(module_name), leaf, own[id(param)])
        for name, buffer in reference.named_buffers():
            if name in state:
                buffer.copy_(state[name])
    return reference


def _tensor_bytes(module: nn.Module, exclude_ptrs: frozenset[int] | set[int] = frozenset()) -> int:
    seen: set[int] = set()
    total = 0
    for t in (*module.parameters(), *module.buffers()):
        ptr = t.untyped_storage().data_ptr()
        if ptr in exclude_ptrs or ptr in seen:
            continue
        seen.add(ptr)
        total += t.untyped_storage().nbytes()
    return total


def module_bytes(module: nn.Module) -> int:
    """Bytes of all parameter and buffer storages of `module` (a full copy would add this much)."""
    return _tensor_bytes(module)


def reference_extra_bytes(policy: nn.Module, reference: nn.Module) -> int:
    """Bytes of parameter/buffer storage the reference holds that the policy does not share."""
    shared = {t.untyped_storage().data_ptr() for t in (*policy.parameters(), *policy.buffers())}
    return _tensor_bytes(reference, shared)


# --------------------------------------------------------------------------------------------------
# Training module


class CrabSmolVLA(nn.Module):
    """Trained SmolVLA policy + optional frozen reference; `forward` is the RWFM + anchor loss.

    Implements `FlowPolicy` for the trained policy. Batches must be preprocessed (`make_policy`'s preprocessor)
    and carry, besides SmolVLA's inputs, `action_is_pad` (B, H) and - with reward weighting enabled -
    `signal` (B,), the return signal G (`CrabDataset`'s item field); with task masks, `task` (list of B str).

    Args:
        policy: the SmolVLA policy to train (already on its device).
        reward_weighting / anchor / replay: the run's config sections (replay: what a replayed batch given to
            `forward` serves; default: the anchor only).
        signal_mean / signal_std: frame-level statistics of the return signal G of the manifest (its kind
            is `reward_weighting.signal`).
        weight_mean: the mean clipped raw weight over the training frames (`weighting.RunWeights.constant`),
            the constant that divides every weight.
        task_masks: instruction -> counted action-dimension indices ({}: all real dimensions).

    With the anchor enabled the frozen reference is built at construction: `make_reference(policy)` (the
    starting policy) or, with `anchor.reference` set, `load_reference(policy, anchor.reference)`. To
    resume, build from the starting policy, then `load_policy_weights(checkpoint)`.
    """

    def __init__(
        self,
        policy: SmolVLAPolicy,
        reward_weighting: RewardWeightingConfig,
        anchor: AnchorConfig,
        signal_mean: float = 0.0,
        signal_std: float = 1.0,
        weight_mean: float = 1.0,
        task_masks: Mapping[str, Sequence[int]] | None = None,
        replay: ReplayConfig | None = None,
    ):
        super().__init__()
        self.policy = policy
        self.reward_weighting = reward_weighting
        self.anchor = anchor
        self.replay = replay or ReplayConfig()
        self.signal_mean = float(signal_mean)
        self.signal_std = float(signal_std)
        self.weight_mean = float(weight_mean)
        self.dim_mask = TaskDimMask(task_masks or {}, self.action_dim, policy.config.max_action_dim)
        self.reference = None
        if anchor.enabled:
            self.reference = make_reference(policy) if anchor.reference is None else load_reference(policy, anchor.reference)
        # With a frozen VLM the image+language context is computed once without autograd and only the
        # state token and the expert run per model (exact); the anchor then costs one more expert pass.
        unsupported = shared_prefix_supported(policy)
        self.context_shared = unsupported is None
        self.anchor_mode = anchor.mode
        if anchor.enabled and anchor.mode == "shared_prefix":
            if unsupported is None and not shares_vlm(policy, self.reference):
                unsupported = "the reference's frozen VLM weights are not the policy's"
            if unsupported is not None:
                logger.warning("anchor mode shared_prefix is not exact here (%s); using naive", unsupported)
                self.anchor_mode = "naive"

    def check_tasks(self, tasks: Sequence[str]) -> None:
        """Fail before training when per-task masks are set and some of `tasks` have none."""
        missing = self.dim_mask.missing(tasks)
        if missing:
            raise ConfigError(f"task(s) {missing} of the manifest have no entry in task_masks")

    def load_policy_weights(self, pretrained_dir: str | Path) -> None:
        """Load trained weights saved with `policy.save_pretrained` into the policy (resume); the
        reference keeps the starting weights. Frozen parameters are shared and unchanged by training,
        so copying them in place leaves the reference intact."""
        device = next(self.policy.parameters()).device
        missing, unexpected = safetensors.torch.load_model(
            self.policy, str(Path(pretrained_dir) / SAFETENSORS_SINGLE_FILE), strict=True, device=str(device)
        )
        if missing or unexpected:
            raise ValueError(f"{pretrained_dir}: missing {missing}, unexpected {unexpected}")

    def train(self, mode: bool = True) -> CrabSmolVLA:
        """Train/eval the policy; the reference always stays in eval mode."""
        self.training = mode
        self.policy.train(mode)
        return self

    # FlowPolicy ------------------------------------------------------------------------------------

    @property
    def chunk_size(self) -> int:
        return self.policy.config.chunk_size

    @property
    def action_dim(self) -> int:
        return self.policy.config.action_feature.shape[0]

    def sample_noise_time(
        self, batch: Mapping[str, Any], generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """noise (B, H, D) ~ N(0, 1) and time (B,) ~ Beta(1.5, 1) * 0.999 + 0.001 on the batch's device,
        drawn from `generator` (on its device, then moved) when given."""
        state = batch[OBS_STATE]
        cfg = self.policy.config
        shape = (state.shape[0], cfg.chunk_size, cfg.max_action_dim)
        if generator is None:
            return torch.randn(shape, device=state.device), sample_flow_time(shape[0], state.device)
        noise = torch.randn(shape, generator=generator, device=generator.device)
        time = sample_flow_time(shape[0], generator.device, generator)
        return noise.to(state.device, non_blocking=True), time.to(state.device, non_blocking=True)

    def velocity_and_target(self, batch: Mapping[str, Any], noise: Tensor, time: Tensor) -> tuple[Tensor, Tensor]:
        v, u, _ = self._velocities(batch, noise, time, with_reference=False)
        return v, u

    def loss_mask(self, batch: Mapping[str, Any]) -> Tensor:
        """Bool (B, H, D): in-episode steps x counted action dimensions of each sample's task (its dataset's
        `task_name` where the batch has one: the prompt in `task` may carry an advantage label)."""
        batch_size = batch[OBS_STATE].shape[0]
        dims = self.dim_mask(batch.get("task_name", batch.get("task")), batch_size, batch[OBS_STATE].device)
        return loss_mask(batch.get(ACTION_IS_PAD), dims, self.chunk_size)

    def per_sample_loss(self, batch: Mapping[str, Any], noise: Tensor, time: Tensor) -> Tensor:
        v, u = self.velocity_and_target(batch, noise, time)
        return masked_per_sample_loss(v, u, self.loss_mask(batch))

    def validation_loss(self, batch: Mapping[str, Any], generator: torch.Generator) -> Tensor:
        """Unweighted masked flow loss per sample (B,), noise and time drawn from `generator`."""
        return self.per_sample_loss(batch, *self.sample_noise_time(batch, generator))

    def predict_action_chunk(self, batch: Mapping[str, Any], noise: Tensor | None = None) -> Tensor:
        batch = dict(batch)
        if self.policy.config.adapt_to_pi_aloha:  # edits the state tensor in place
            batch[OBS_STATE] = batch[OBS_STATE].clone()
        was_training = self.policy.training
        try:
            return self.policy.predict_action_chunk(batch, noise=noise)
        finally:
            self.policy.train(was_training)

    # Training loss ---------------------------------------------------------------------------------

    def _velocities(
        self, batch: Mapping[str, Any], noise: Tensor, time: Tensor, with_reference: bool
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """(v_theta, u_t, v_ref or None), each (B, H, D); v_ref carries no graph.

        The "naive" anchor runs both models' full forward (nothing shared); otherwise the policy uses
        the shared context whenever its VLM is frozen, and the "shared_prefix" reference reuses it.
        """
        inp = prepare_inputs(self.policy, batch)
        x_t, u_t = noisy_actions(inp.actions, noise, time)
        naive = with_reference and self.anchor_mode == "naive"
        if self.context_shared and not naive:
            ctx = shared_context(self.policy, inp)
            v = expert_velocity(self.policy, ctx, inp.state, x_t, time)
        else:
            v = full_velocity(self.policy, inp, x_t, time)
        if not with_reference:
            return v, u_t, None
        # inference_mode skips no_grad's version-counter and view bookkeeping (a few % of a small step);
        # v_ref is then an inference tensor, which the anchor loss only subtracts, never saves.
        with torch.inference_mode():
            if naive:
                v_ref = full_velocity(self.reference, prepare_inputs(self.reference, batch), x_t, time)
            else:
                v_ref = expert_velocity(self.reference, ctx, inp.state, x_t, time)
        return v, u_t, v_ref

    def _weights(self, batch: Mapping[str, Any], like: Tensor) -> tuple[Tensor, Tensor]:
        """RWFM weights w (B,) and the clipped flags (B,) from the batch's reward fields."""
        if "signal" not in batch:
            raise KeyError("reward weighting is enabled but the batch has no 'signal' field (the return signal G)")
        signal = batch["signal"].to(like)  # G of kind reward_weighting.signal (docs/reward_weighting.md)
        rw = self.reward_weighting
        clip = (rw.clip_min, rw.clip_max)
        return signal_weights(
            signal, rw.signal, self.signal_mean, self.signal_std, rw.alpha, clip, rw.std_floor, self.weight_mean
        )

    def forward(
        self,
        batch: Mapping[str, Any],
        lambda_anchor: float,
        noise: Tensor | None = None,
        time: Tensor | None = None,
        replay: Mapping[str, Any] | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """L_total = mean_i(w_i * l_i) + lambda_anchor * L_anchor, and detached 0-d metrics (w_i = 1 without
        weighting, and with `reward_weighting.apply: sample`, where the weights chose the batch's frames).

        `noise` (B, H, D) / `time` (B,) are drawn when omitted. `lambda_anchor` is this step's value
        (see `schedules.lambda_anchor_at`); at 0, or with the anchor disabled, the reference is not run.
        `replay` (`replay.manifest`'s batch, preprocessed) is drawn at its own noise and time (after the
        fine-tuning batch's, so those do not change). With `replay.anchor` it joins the anchor: L_anchor is
        then the masked mean over both batches' elements. With `replay.imitate` (rehearsal) it joins the
        imitation loss at weight 1: mean_i(w_i * l_i) becomes the mean over both batches' samples.
        `metrics["weights"]` holds the per-sample weights (B,), every other metric is 0-d.
        """
        if noise is None or time is None:
            noise, time = self.sample_noise_time(batch)
        use_anchor = self.anchor.enabled and lambda_anchor != 0.0
        v, u, v_ref = self._velocities(batch, noise, time, with_reference=use_anchor)
        mask = self.loss_mask(batch)
        per_sample = masked_per_sample_loss(v, u, mask)  # (B,)
        loss_unweighted = per_sample.mean()

        rw = self.reward_weighting
        if rw.enabled and rw.apply == "loss":
            w, clipped = self._weights(batch, per_sample)
            loss_weighted = (w * per_sample).mean()
        else:
            # Plain IL, or weights that chose the batch's frames (`apply: sample`): bit-identical to the
            # unweighted loss; statistics are those of all-ones weights.
            w, clipped = torch.ones_like(per_sample), torch.zeros_like(per_sample, dtype=torch.bool)
            loss_weighted = loss_unweighted
        alpha = rw.alpha if rw.enabled else 0.0

        replay_anchored = use_anchor and replay is not None and self.replay.anchor
        if replay is not None and (replay_anchored or self.replay.imitate):
            v_r, u_r, v_ref_r = self._velocities(replay, *self.sample_noise_time(replay), with_reference=replay_anchored)
            mask_r = self.loss_mask(replay)
            if self.replay.imitate:
                replay_losses = masked_per_sample_loss(v_r, u_r, mask_r)
                loss_weighted = (loss_weighted * len(per_sample) + replay_losses.sum()) / (len(per_sample) + len(replay_losses))

        if use_anchor:
            if replay_anchored:
                v, v_ref, mask = torch.cat([v, v_r]), torch.cat([v_ref, v_ref_r]), torch.cat([mask, mask_r])
            loss_anchor = masked_mean_sq_diff(v, v_ref, mask)
            loss = loss_weighted + lambda_anchor * loss_anchor
        else:
            loss_anchor = loss_weighted.new_zeros(())
            loss = loss_weighted

        metrics = weight_statistics(w, clipped)
        metrics.update(
            loss_unweighted=loss_unweighted.detach(),
            loss_weighted=loss_weighted.detach(),
            loss_anchor=loss_anchor.detach(),
            alpha=loss.new_full((), alpha).detach(),
            lambda_anchor=loss.new_full((), lambda_anchor).detach(),
            loss=loss.detach(),
            weights=w.detach(),
        )
        return loss, metrics
