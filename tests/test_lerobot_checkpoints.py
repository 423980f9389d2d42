"""Checkpoints move both ways between Crab and lerobot 0.6.1: Crab fine-tunes a checkpoint written by
`lerobot-train`, and lerobot's own `make_policy` / processors act on a Crab checkpoint exactly as Crab's
evaluation does."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from test_train import config, setup  # noqa: F401 (setup is a fixture)

from crab.sim.policy_eval import SmolVLAActor
from crab.training import train
from crab.training.conditioning import conditioned_task
from crab.training.config import PolicyConfig
from crab.training.crab_smolvla_wrapper import TINY_SMOLVLA_DEFAULTS, make_policy, policy_config
from crab.training.tiny_smolvla import ensure_tiny_vlm

pytestmark = pytest.mark.slow

# The tiny policy's architecture, as `lerobot-train` flags (the optimiser presets stay lerobot's).
ARCHITECTURE = ("load_vlm_weights", "num_vlm_layers", "chunk_size", "n_action_steps", "max_state_dim",
                "max_action_dim", "resize_imgs_with_padding", "expert_width_multiplier")  # fmt: skip


def lerobot_flag(key, value) -> str:
    if isinstance(value, tuple):
        value = "[" + ",".join(map(str, value)) + "]"
    return f"--policy.{key}={str(value).lower() if isinstance(value, bool) else value}"


@pytest.fixture(scope="module")
def lerobot_checkpoint(setup, tmp_path_factory):  # noqa: F811
    """Two steps of lerobot 0.6.1's own trainer (`lerobot-train`) on the test data, tiny SmolVLA, CPU."""
    out = tmp_path_factory.mktemp("lerobot_train") / "run"
    dataset = setup["data_root"] / "clean"
    cmd = [
        sys.executable, "-m", "lerobot.scripts.lerobot_train",
        "--dataset.repo_id=crab_test/clean", f"--dataset.root={dataset.as_posix()}",
        "--policy.type=smolvla", f"--policy.vlm_model_name={ensure_tiny_vlm().as_posix()}",
        *(lerobot_flag(k, TINY_SMOLVLA_DEFAULTS[k]) for k in ARCHITECTURE),
        "--policy.device=cpu", "--policy.push_to_hub=false", "--wandb.enable=false",
        "--steps=2", "--save_freq=2", "--batch_size=2", "--num_workers=0", f"--output_dir={out.as_posix()}",
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    checkpoint = out / "checkpoints" / "000002"
    assert (checkpoint / "pretrained_model" / "model.safetensors").is_file()
    return checkpoint


def test_crab_fine_tunes_a_checkpoint_written_by_lerobot_train(setup, lerobot_checkpoint):  # noqa: F811
    from lerobot.datasets.lerobot_dataset import LeRobotDatasetMetadata

    saved = load_file(lerobot_checkpoint / "pretrained_model" / "model.safetensors")
    policy_cfg = PolicyConfig(lerobot_checkpoint.as_posix(), {"device": "cpu"})
    meta = LeRobotDatasetMetadata("crab_test/clean", root=setup["data_root"] / "clean")
    policy, _, _ = make_policy(policy_config(policy_cfg), policy_cfg, meta.features, meta.stats)
    ours = policy.state_dict()
    assert saved and all(torch.equal(ours[k], v) for k, v in saved.items())  # starts from lerobot's weights

    run = train.train(config(setup, "from_lerobot", **{
        "policy.pretrained_path": lerobot_checkpoint.as_posix(),
        "policy.normalization": "pretrained",  # the normalisation lerobot-train saved
        "train.steps": 2, "train.save_every": 2,
    }))  # fmt: skip
    trained = load_file(run / "step_000002" / "pretrained_model" / "model.safetensors")
    assert trained.keys() == saved.keys()
    assert any(not torch.equal(trained[k], saved[k]) for k in saved)  # it trained


@pytest.mark.parametrize("conditioned", [False, True])
def test_lerobot_make_policy_acts_on_a_crab_checkpoint_as_crab_evaluation_does(setup, conditioned):  # noqa: F811
    """A robot's deploy loop in lerobot 0.6.1 (`make_policy`, `make_pre_post_processors`, `select_action`
    then the postprocessor, one action per call) gives the actions of Crab's evaluation (`SmolVLAActor`:
    one chunk) on the same observation and flow noise. A checkpoint trained with advantage conditioning
    is deployed the same way, with "Advantage: positive." after the task, which Crab's evaluation asks."""
    from lerobot.configs.policies import PreTrainedConfig
    from lerobot.datasets.lerobot_dataset import LeRobotDatasetMetadata
    from lerobot.policies.factory import make_policy as lerobot_make_policy
    from lerobot.policies.factory import make_pre_post_processors

    extra = {"conditioning.enabled": "true"} if conditioned else {}
    run = train.train(config(setup, f"to_lerobot_{conditioned}", **{"train.steps": 2, "train.save_every": 2, **extra}))
    checkpoint = run / "step_000002"
    folder = checkpoint / "pretrained_model"

    rng = np.random.default_rng(0)
    obs = {
        "observation.images.top": rng.integers(0, 255, (32, 32, 3), dtype=np.uint8),
        "observation.state": rng.normal(size=6).astype(np.float32),
        "task": "Put the egg into the tray.",
    }
    actor = SmolVLAActor(checkpoint, device="cpu", guidance=1.0)  # lerobot's own loop has no guidance
    actor.reset(seed=3)
    chunk = actor(obs)  # (H, A)
    assert actor.label == ("positive" if conditioned else None) and actor.guidance == 1.0

    cfg = PreTrainedConfig.from_pretrained(folder)
    cfg.pretrained_path, cfg.device = folder, "cpu"
    meta = LeRobotDatasetMetadata("crab_test/clean", root=setup["data_root"] / "clean")
    policy = lerobot_make_policy(cfg, ds_meta=meta)
    pre, post = make_pre_post_processors(cfg, pretrained_path=str(folder))
    policy.reset()
    frame = {
        "observation.images.top": torch.from_numpy(obs["observation.images.top"]).permute(2, 0, 1)[None].float() / 255,
        "observation.state": torch.from_numpy(obs["observation.state"])[None],
        "task": [conditioned_task(obs["task"], actor.label)],
    }
    noise = torch.randn(1, cfg.chunk_size, cfg.max_action_dim, generator=torch.Generator().manual_seed(3))
    actions = [post(policy.select_action(pre(frame), noise=noise))[0].numpy() for _ in range(cfg.n_action_steps)]
    assert chunk.shape == (cfg.n_action_steps, 4)
    np.testing.assert_array_equal(np.stack(actions), chunk)
