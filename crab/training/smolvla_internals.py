"""The only module that reaches into SmolVLA's internals (lerobot 0.6.1, `VLAFlowMatching` and
`SmolVLMWithExpertModel`): the flow-matching velocity of a policy, and the same velocity computed from a
shared image+language context so that only the state token and the action expert run per model.

Everything here mirrors lerobot's own code path step by step (tests/test_smolvla_internals.py checks the
results against lerobot's `forward` and against each other, bit for bit where the arithmetic is the same),
so a lerobot upgrade that changes those internals touches this file and its tests only. The loss
composition (masks, weights, anchor) lives in `crab_smolvla_wrapper.py` and calls:

- `prepare_inputs(policy, batch)` -> `Inputs`; `noisy_actions(actions, noise, time)` -> (x_t, u_t);
- `full_velocity(policy, inp, x_t, time)`: one pass over prefix + suffix, as `VLAFlowMatching.forward`;
- `shared_context(policy, inp)` + `expert_velocity(policy, ctx, state, x_t, time)`: the same velocity with
  the frozen VLM's image+language keys/values computed once (exact when `shared_prefix_supported`);
- `frozen_memo(policy)`, `shares_vlm(a, b)`: what a frozen reference copy may share with the policy;
- `resize_images(img, resolution)`: SmolVLA's image resize (the frame cache stores frames at its size);
- `guided_action_chunk(policy, batch, beta, noise)`: an action chunk with classifier-free guidance between
  two prompts (advantage conditioning, crab/training/conditioning.py).

Shapes: B batch, H chunk size, D = max_action_dim (padded action size).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from lerobot.policies.smolvla.modeling_smolvla import (
    SmolVLAPolicy,
    create_sinusoidal_pos_embedding,
    make_att_2d_masks,
    resize_with_pad,
)
from lerobot.policies.smolvla.smolvlm_with_expert import apply_rope
from lerobot.utils.constants import ACTION, OBS_LANGUAGE_ATTENTION_MASK, OBS_LANGUAGE_TOKENS, OBS_STATE
from torch import Tensor, nn


def resize_images(img: Tensor, resolution: tuple[int, int]) -> Tensor:
    """(B, C, h, w) float images resized and padded (left and top, with 0) as `SmolVLAPolicy.prepare_images`
    does for `resize_imgs_with_padding=resolution`, which SmolVLAConfig stores as (width, height)."""
    width, height = resolution
    return resize_with_pad(img, height, width, pad_value=0)


def frozen_memo(policy: SmolVLAPolicy) -> dict[int, Any]:
    """deepcopy memo that makes a copy reuse every frozen parameter (and the read-only processor)."""
    memo: dict[int, Any] = {id(p): p for p in policy.parameters() if not p.requires_grad}
    processor = policy.model.vlm_with_expert.processor
    memo[id(processor)] = processor
    return memo


def vlm_parameters(policy: SmolVLAPolicy) -> list[nn.Parameter]:
    """The VLM backbone's parameters (frozen with `train_expert_only`)."""
    return list(policy.model.vlm_with_expert.vlm.parameters())


def shares_vlm(policy: SmolVLAPolicy, other: SmolVLAPolicy) -> bool:
    """Whether `other` uses the very same VLM parameter tensors as `policy`."""
    return all(p is q for p, q in zip(vlm_parameters(policy), vlm_parameters(other), strict=True))


@dataclasses.dataclass
class Inputs:
    images: list[Tensor]  # per camera (B, C, h, w) in [-1, 1]
    img_masks: list[Tensor]  # per camera (B,)
    lang_tokens: Tensor  # (B, T)
    lang_masks: Tensor  # (B, T)
    state: Tensor  # (B, max_state_dim)
    actions: Tensor  # (B, H, D)


def prepare_inputs(policy: SmolVLAPolicy, batch: Mapping[str, Any]) -> Inputs:
    """SmolVLA's own input preparation, on a shallow copy: `adapt_to_pi_aloha` edits tensors in place."""
    batch = dict(batch)
    if policy.config.adapt_to_pi_aloha:
        batch[OBS_STATE] = policy._pi_aloha_decode_state(batch[OBS_STATE].clone())
        batch[ACTION] = policy._pi_aloha_encode_actions_inv(batch[ACTION].clone())
    images, img_masks = policy.prepare_images(batch)
    return Inputs(
        images=images,
        img_masks=img_masks,
        lang_tokens=batch[OBS_LANGUAGE_TOKENS],
        lang_masks=batch[OBS_LANGUAGE_ATTENTION_MASK],
        state=policy.prepare_state(batch),
        actions=policy.prepare_action(batch),
    )


def noisy_actions(actions: Tensor, noise: Tensor, time: Tensor) -> tuple[Tensor, Tensor]:
    """x_t = t * noise + (1 - t) * actions and u_t = noise - actions, (B, H, D) each."""
    t = time[:, None, None]
    return t * noise + (1 - t) * actions, noise - actions


def full_velocity(policy: SmolVLAPolicy, inp: Inputs, x_t: Tensor, time: Tensor) -> Tensor:
    """v_t (B, H, D) exactly as `VLAFlowMatching.forward` computes it (one pass over prefix + suffix)."""
    flow = policy.model
    prefix_embs, prefix_pad, prefix_att = flow.embed_prefix(
        inp.images, inp.img_masks, inp.lang_tokens, inp.lang_masks, state=inp.state
    )
    suffix_embs, suffix_pad, suffix_att = flow.embed_suffix(x_t, time)
    pad = torch.cat([prefix_pad, suffix_pad], dim=1)
    att = torch.cat([prefix_att, suffix_att], dim=1)
    (_, suffix_out), _ = flow.vlm_with_expert.forward(
        attention_mask=make_att_2d_masks(pad, att),
        position_ids=torch.cumsum(pad, dim=1) - 1,
        past_key_values=None,
        inputs_embeds=[prefix_embs, suffix_embs],
        use_cache=False,
    )
    return flow.action_out_proj(suffix_out[:, -flow.config.chunk_size :].to(torch.float32))


def flow_velocity(
    policy: SmolVLAPolicy, batch: Mapping[str, Any], noise: Tensor, time: Tensor
) -> tuple[Tensor, Tensor]:
    """(v_t, u_t), both (B, H, D), of `policy` on a preprocessed batch at noise (B, H, D), time (B,)."""
    inp = prepare_inputs(policy, batch)
    x_t, u_t = noisy_actions(inp.actions, noise, time)
    return full_velocity(policy, inp, x_t, time), u_t


@dataclasses.dataclass
class SharedContext:
    """Per-layer keys/values of the image+language tokens, identical for every model sharing the VLM."""

    kv: list[tuple[Tensor, Tensor]]  # per layer (keys, values), each (B, n_ctx, kv_heads, head_dim)
    pad: Tensor  # (B, n_ctx) valid-token mask


def _embed_context(flow: Any, inp: Inputs) -> tuple[Tensor, Tensor]:
    """Image (+ optional special tokens) and language token embeddings (B, n_ctx, hidden) and their
    validity (B, n_ctx): `VLAFlowMatching.embed_prefix` without the state token. Unlike it, no tensor
    is built from a Python list on the device (a blocking host-to-device copy on CUDA)."""
    vwe = flow.vlm_with_expert
    embs, pads = [], []

    def special(tokens: Tensor, batch_size: int) -> None:
        emb = vwe.embed_language_tokens(tokens.to(inp.lang_tokens.device, non_blocking=True))
        embs.append(emb.unsqueeze(0).expand(batch_size, -1, -1))
        pads.append(torch.ones(batch_size, emb.shape[0], dtype=torch.bool, device=emb.device))

    for img, img_mask in zip(inp.images, inp.img_masks, strict=True):
        batch_size = img.shape[0]
        if flow.add_image_special_tokens:
            special(flow.global_image_start_token, batch_size)
        img_emb = vwe.embed_image(img)
        # A 0-d tensor in the embedding's dtype, as embed_prefix scales (same rounding in bf16).
        img_emb = img_emb * torch.full((), img_emb.shape[-1] ** 0.5, dtype=img_emb.dtype, device=img_emb.device)
        embs.append(img_emb)
        pads.append(img_mask[:, None].expand(batch_size, img_emb.shape[1]))
        if flow.add_image_special_tokens:
            special(flow.image_end_token, batch_size)
    lang_emb = vwe.embed_language_tokens(inp.lang_tokens)
    embs.append(lang_emb * math.sqrt(lang_emb.shape[-1]))
    pads.append(inp.lang_masks)
    # embed_prefix concatenates these with the float32 state embedding, which promotes a bf16 VLM's
    # embeddings; keep that dtype so the VLM layers see the same inputs.
    dtype = torch.promote_types(embs[0].dtype, flow.state_proj.weight.dtype)
    return torch.cat(embs, dim=1).to(dtype), torch.cat(pads, dim=1)


def _embed_actions(flow: Any, x_t: Tensor, time: Tensor) -> Tensor:
    """Action-time tokens (B, H, expert_hidden): `VLAFlowMatching.embed_suffix` without its masks
    (built from a Python list on the device there)."""
    action_emb = flow.action_in_proj(x_t)
    time_emb = create_sinusoidal_pos_embedding(
        time,
        flow.vlm_with_expert.expert_hidden_size,
        flow.config.min_period,
        flow.config.max_period,
        device=action_emb.device,
    ).type(dtype=action_emb.dtype)
    fused = torch.cat([action_emb, time_emb[:, None, :].expand_as(action_emb)], dim=2)
    return flow.action_time_mlp_out(F.silu(flow.action_time_mlp_in(fused)))


def shared_context(policy: SmolVLAPolicy, inp: Inputs) -> SharedContext:
    """Run the frozen VLM over the image+language tokens once, filling a KV cache.

    In `embed_prefix` those tokens have attention block 0 and the state token opens block 1, so they
    never attend to the state (or actions): their keys/values at every layer depend only on the frozen
    VLM. It is the cache `sample_actions` fills, minus the state token. No trainable parameter is
    involved, hence no_grad. lerobot keeps it in a transformers `DynamicCache`, laid out (B, heads, seq,
    head_dim); the expert pass below works in SmolVLMWithExpertModel's (B, seq, heads, head_dim).
    """
    flow = policy.model
    with torch.no_grad():
        embs, pad = _embed_context(flow, inp)
        _, cache = flow.vlm_with_expert.forward(
            attention_mask=make_att_2d_masks(pad, torch.zeros_like(pad)),
            position_ids=torch.cumsum(pad, dim=1) - 1,
            past_key_values=None,
            inputs_embeds=[embs, None],
            use_cache=True,
        )
    layers = [(layer.keys.transpose(1, 2), layer.values.transpose(1, 2)) for layer in cache.layers]
    return SharedContext(kv=layers, pad=pad)


def _qkv(layer: nn.Module, hidden: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """q, k, v (B, L, heads, head_dim) of a decoder layer, as SmolVLMWithExpertModel computes them."""
    hidden = layer.input_layernorm(hidden).to(dtype=layer.self_attn.q_proj.weight.dtype)
    shape = (*hidden.shape[:-1], -1, layer.self_attn.head_dim)
    attn = layer.self_attn
    return attn.q_proj(hidden).view(shape), attn.k_proj(hidden).view(shape), attn.v_proj(hidden).view(shape)


def _finish_layer(layer: nn.Module, att_out: Tensor, hidden: Tensor) -> Tensor:
    """Output projection, residual, MLP, residual (SmolVLMWithExpertModel.forward's per-layer tail).

    The residual adds are in place as there, so the stream keeps the layer's dtype (a bf16 VLM's
    state token stays bf16 even though the state projection is float32)."""
    out = layer.self_attn.o_proj(att_out.to(layer.self_attn.o_proj.weight.dtype))
    out += hidden
    mlp_out = layer.mlp(layer.post_attention_layernorm(out))
    mlp_out += out
    return mlp_out


def expert_velocity(policy: SmolVLAPolicy, ctx: SharedContext, state: Tensor, x_t: Tensor, time: Tensor) -> Tensor:
    """v_t (B, H, D) given the shared image+language context: only the state token and the action
    expert run. Mirrors `SmolVLMWithExpertModel.forward` layer by layer (self-attention layers: state
    and actions attend jointly over context+state+actions; cross-attention layers: the state token
    attends over context+state, the expert attends over the expert-projected context+state keys)."""
    flow = policy.model
    vwe = flow.vlm_with_expert
    batch_size, chunk = x_t.shape[:2]
    n_ctx = ctx.pad.shape[1]
    n_prefix = n_ctx + 1  # context + state token

    state_emb = flow.state_proj(state)[:, None, :]  # (B, 1, hidden)
    suffix_emb = _embed_actions(flow, x_t, time)  # (B, H, expert_hidden)

    # Masks/positions of the [state, actions] rows over [context, state, actions] columns, as built for
    # the full sequence (state: block 1, each action token its own block; all valid).
    ones = ctx.pad.new_ones(batch_size, 1 + chunk)
    pad = torch.cat([ctx.pad, ones], dim=1)
    att = torch.cat([torch.zeros_like(ctx.pad), ones], dim=1)
    mask = make_att_2d_masks(pad, att)[:, n_ctx:]  # (B, 1 + H, n_ctx + 1 + H)
    pos = (torch.cumsum(pad, dim=1) - 1)[:, n_ctx:]  # (B, 1 + H)
    pos_state, pos_act = pos[:, :1], pos[:, 1:]
    pos_act_cross = pos_act - pos_act.min(dim=1, keepdim=True).values  # cross layers restart at 0

    vlm_layers, expert_layers = vwe.get_model_layers([vwe.get_vlm_model().text_model, vwe.lm_expert])
    head_dim = vwe.vlm.config.text_config.head_dim
    attend = vwe.get_attention_interface()
    h_state, h_act = state_emb, suffix_emb
    last = vwe.num_vlm_layers - 1
    for i in range(vwe.num_vlm_layers):
        vlm_layer, expert_layer = vlm_layers[i], expert_layers[i]
        q_s, k_s, v_s = _qkv(vlm_layer, h_state)
        ctx_k, ctx_v = ctx.kv[i]  # (B, n_ctx, kv_heads, head_dim)
        self_attn_layer = "cross" not in vwe.attention_mode or (
            vwe.self_attn_every_n_layers > 0 and i % vwe.self_attn_every_n_layers == 0
        )
        if expert_layer is not None and self_attn_layer:
            # Concatenate before RoPE, as the full pass does (it matters for dtypes: a bf16 VLM's state
            # q/k are promoted to the float32 expert's dtype before rotation there).
            q_a, k_a, v_a = _qkv(expert_layer, h_act)
            out = attend(
                mask,
                batch_size,
                head_dim,
                apply_rope(torch.cat([q_s, q_a], dim=1), pos),
                torch.cat([ctx_k, apply_rope(torch.cat([k_s, k_a], dim=1), pos)], dim=1),
                torch.cat([ctx_v, v_s, v_a], dim=1),
            )
            att_state, att_act = out[:, :1], out[:, 1:]
        else:
            keys = torch.cat([ctx_k, apply_rope(k_s, pos_state)], dim=1)  # (B, n_prefix, kv_heads, head_dim)
            values = torch.cat([ctx_v, v_s], dim=1)
            # The state token's own output feeds only the next layer: the last one skips it (at the test
            # size, a fifth of an expert pass's operator calls; the anchor's reference pays it again).
            if i < last:
                q_state = apply_rope(q_s, pos_state)
                att_state = attend(mask[:, :1, :n_prefix], batch_size, head_dim, q_state, keys, values)
            if expert_layer is not None:
                e_attn = expert_layer.self_attn
                dtype = e_attn.k_proj.weight.dtype
                hidden = expert_layer.input_layernorm(h_act).to(dtype=e_attn.q_proj.weight.dtype)
                q_a = e_attn.q_proj(hidden).view(*hidden.shape[:-1], -1, e_attn.head_dim)
                k_a = e_attn.k_proj(keys.to(dtype).flatten(2)).view(batch_size, n_prefix, -1, e_attn.head_dim)
                v_a = e_attn.v_proj(values.to(dtype).flatten(2)).view(batch_size, n_prefix, -1, e_attn.head_dim)
                q_a = apply_rope(q_a, pos_act_cross)
                att_act = attend(mask[:, 1:, :n_prefix], batch_size, head_dim, q_a, k_a, v_a)
        if i < last:
            h_state = _finish_layer(vlm_layer, att_state, h_state)
        if expert_layer is not None:
            h_act = _finish_layer(expert_layer, att_act, h_act)
    h_act = vwe.lm_expert.norm(h_act)
    return flow.action_out_proj(h_act[:, -chunk:].to(torch.float32))


def guided_action_chunk(policy: SmolVLAPolicy, batch: Mapping[str, Any], beta: float, noise: Tensor) -> Tensor:
    """`policy.predict_action_chunk` with classifier-free guidance: at each denoising step the velocity is
    v_u + beta * (v_c - v_u). `batch` (preprocessed) holds 2B rows, the first B with the conditioned prompt
    and the last B the same observations with the unconditioned one (tokenised together, so padded alike);
    `noise` (B, H, D). Returns (B, H, action dim), as `predict_action_chunk`.

    lerobot's sampler runs unchanged on the 2B-row prefix (one KV cache for both prompts); only its
    `denoise_step` is wrapped for the call: it gets the B-row x_t, runs it for both halves and mixes them.
    """
    flow = policy.model
    denoise = flow.denoise_step

    def guided(prefix_pad_masks: Tensor, past_key_values: Any, x_t: Tensor, timestep: Tensor) -> Tensor:
        both = denoise(
            prefix_pad_masks=prefix_pad_masks,
            past_key_values=past_key_values,
            x_t=torch.cat([x_t, x_t]),
            timestep=torch.cat([timestep, timestep]),
        )
        v_c, v_u = both.chunk(2)
        return v_u + beta * (v_c - v_u)

    flow.denoise_step = guided
    try:
        return policy.predict_action_chunk(dict(batch), noise=noise)
    finally:
        del flow.denoise_step  # the class's method again


def shared_prefix_supported(policy: SmolVLAPolicy) -> str | None:
    """None when the image+language context can be computed once and shared (exactly), else why not."""
    if any(p.requires_grad for p in policy.model.vlm_with_expert.vlm.parameters()):
        return "the VLM has trainable parameters (train_expert_only=False), so its keys/values differ per model"
    if policy.config.prefix_length > 0:
        return "prefix_length > 0 pads the prefix after the state token"
    return None


