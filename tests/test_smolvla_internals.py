"""crab/training/smolvla_internals.py against lerobot 0.6.1's own SmolVLA code paths (tiny offline policy):
the velocity, the shared-context velocity, the per-sample loss, the image resize, and the vision position
ids of the installed transformers."""

from __future__ import annotations

import pytest
import torch
from lerobot.policies.smolvla.modeling_smolvla import resize_with_pad
from test_crab_smolvla_wrapper import (
    CHUNK,
    MAX_ACTION_DIM,
    NO_ANCHOR,
    OFF,
    OPEN,
    PICK,
    build,
    noise_time,
    raw_batch,
)

from crab.training.crab_smolvla_wrapper import CrabSmolVLA
from crab.training.smolvla_internals import flow_velocity, prepare_inputs, resize_images


@pytest.fixture(scope="module")
def tiny():
    return build()


def test_velocity_matches_lerobot_internal_forward(tiny):
    policy, pre, _ = tiny
    batch = pre(raw_batch())
    noise, time = noise_time()
    v, u = flow_velocity(policy, batch, noise, time)
    inp = prepare_inputs(policy, batch)
    with torch.no_grad():
        elementwise = policy.model.forward(
            inp.images, inp.img_masks, inp.lang_tokens, inp.lang_masks, inp.state, inp.actions, noise, time
        )
    assert v.shape == u.shape == (4, CHUNK, MAX_ACTION_DIM)
    torch.testing.assert_close((v - u) ** 2, elementwise, rtol=0, atol=0)
    assert torch.equal(u, noise - inp.actions)


@pytest.mark.parametrize(
    ("overrides", "bf16_vlm", "tol"),
    [
        ({}, False, 1e-5),
        ({"add_image_special_tokens": True}, False, 1e-5),
        ({"attention_mode": "self_attn"}, False, 1e-5),
        ({"num_expert_layers": 1}, False, 1e-5),  # layer 1 has no expert layer
        ({}, True, 1e-3),  # lerobot loads a pretrained VLM in bfloat16; the expert stays float32
    ],
)
def test_training_path_velocity_matches_full_forward(overrides, bf16_vlm, tol):
    """CrabSmolVLA computes the frozen VLM's context once and runs only state token + expert.

    With a bf16 VLM the cached context keys are rounded to bf16 after RoPE (as in lerobot's own
    KV-cache inference) while the full pass keeps them float32, hence the looser tolerance."""
    policy, pre, _ = build(**overrides)
    if bf16_vlm:
        policy.model.vlm_with_expert.vlm.to(torch.bfloat16)
    crab = CrabSmolVLA(policy, OFF, NO_ANCHOR)
    assert crab.context_shared
    batch = pre(raw_batch(tasks=[PICK, OPEN, "Carry it over there, slowly.", OPEN]))
    noise, time = noise_time()
    v, u = crab.velocity_and_target(batch, noise, time)
    v_full, u_full = flow_velocity(policy, batch, noise, time)
    assert torch.equal(u, u_full)
    torch.testing.assert_close(v, v_full, rtol=tol, atol=tol)


def test_per_sample_loss_equals_lerobot_forward_reduction_none(tiny):
    """Where lerobot 0.6.1's loss is defined as ours (no per-task masks, finite targets), Crab's masked
    per-sample loss equals `SmolVLAPolicy.forward(reduction="none")`: padded chunk steps and padded action
    dimensions left out, the mean over the valid entries."""
    policy, pre, _ = tiny
    crab = CrabSmolVLA(policy, OFF, NO_ANCHOR)
    batch = pre(raw_batch())
    assert batch["action_is_pad"].any()  # sample 0 runs past its episode's end
    noise, time = noise_time()
    ours = crab.per_sample_loss(batch, noise, time)
    with torch.no_grad():
        theirs, _ = policy.forward(dict(batch), noise=noise, time=time, reduction="none")
    assert theirs.shape == ours.shape == (4,)
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=0)


def test_resize_images_is_what_prepare_images_does(tiny):
    """`resize_images` (which the frame cache uses) resizes as SmolVLA's `prepare_images`, non-square too."""
    policy, _, _ = tiny
    img = torch.rand(2, 3, 30, 50)
    for resolution in ((32, 32), (24, 20), (20, 24)):
        policy.config.resize_imgs_with_padding = resolution
        try:
            seen, _ = policy.prepare_images({"observation.images.top": img})
        finally:
            policy.config.resize_imgs_with_padding = (32, 32)
        torch.testing.assert_close(resize_images(img, resolution) * 2 - 1, seen[0], rtol=0, atol=0)
    width, height = 24, 20
    assert resize_images(img, (width, height)).shape[2:] == (height, width)
    assert torch.equal(resize_images(img, (24, 20)), resize_with_pad(img, 20, 24, pad_value=0))


@pytest.mark.parametrize(("image_size", "patch_size"), [(32, 8), (512, 16)])  # the tiny VLM's, smolvla_base's
def test_vision_position_ids_are_those_smolvla_base_was_trained_with(image_size, patch_size):
    """Every patch of a full image gets its own position id 0..n-1, as in the transformers releases before
    4.55.1 (smolvla_base was trained in June 2025, before 4.55.1). 4.55.1 to 4.57 scaled the patch
    coordinates by (1 - 1e-6) and gave a 4x4 grid [0, 0, 1, 2] per row (transformers issue #41190); a
    transformers that does that again fails here."""
    from transformers.models.smolvlm.configuration_smolvlm import SmolVLMVisionConfig
    from transformers.models.smolvlm.modeling_smolvlm import SmolVLMVisionEmbeddings

    cfg = SmolVLMVisionConfig(hidden_size=8, image_size=image_size, patch_size=patch_size)
    embeddings = SmolVLMVisionEmbeddings(cfg)
    seen = []
    embeddings.position_embedding.register_forward_hook(lambda _m, args, _out: seen.append(args[0]))
    side = image_size // patch_size
    embeddings(torch.zeros(1, 3, image_size, image_size), torch.ones(1, side, side, dtype=torch.bool))
    assert torch.equal(seen[0], torch.arange(side * side)[None])
