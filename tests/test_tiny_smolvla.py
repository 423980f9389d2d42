"""The offline tiny SmolVLM folder: loadable, deterministic, idempotent, atomic; checkpoints reload."""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

from crab.training.tiny_smolvla import SPECIAL_TOKENS, TINY_VLM_DIRNAME, default_tiny_vlm_dir, ensure_tiny_vlm


def _contents(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_default_location_follows_crab_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("CRAB_CACHE", str(tmp_path))
    assert default_tiny_vlm_dir() == tmp_path / TINY_VLM_DIRNAME


def test_folder_loads_with_auto_classes_and_names_special_tokens(tmp_path):
    from transformers import AutoConfig, AutoProcessor

    folder = ensure_tiny_vlm(tmp_path / "vlm")
    config = AutoConfig.from_pretrained(folder)
    assert (config.text_config.hidden_size, config.text_config.num_hidden_layers) == (64, 2)
    assert config.text_config.num_attention_heads == 4
    assert (config.vision_config.hidden_size, config.vision_config.num_hidden_layers) == (32, 1)
    assert (config.vision_config.image_size, config.vision_config.patch_size) == (32, 8)
    tok = AutoProcessor.from_pretrained(folder).tokenizer
    for name, token in SPECIAL_TOKENS.items():
        assert getattr(tok, name) == token
        assert getattr(tok, f"{name}_id") == tok.convert_tokens_to_ids(token) < config.text_config.vocab_size
    # Byte-level: distinct instructions get distinct token sequences.
    assert tok("Open the carton.\n").input_ids != tok("Put the egg into the tray.\n").input_ids


def test_deterministic_and_idempotent(tmp_path):
    a = ensure_tiny_vlm(tmp_path / "a")
    b = ensure_tiny_vlm(tmp_path / "b")
    assert _contents(a) == _contents(b)
    mtimes = {p.name: p.stat().st_mtime_ns for p in a.iterdir()}
    assert ensure_tiny_vlm(a) == a
    assert {p.name: p.stat().st_mtime_ns for p in a.iterdir()} == mtimes
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]  # no temporary folders left


def test_concurrent_builders_agree(tmp_path):
    target = tmp_path / "shared"
    with ProcessPoolExecutor(max_workers=3) as pool:
        results = list(pool.map(ensure_tiny_vlm, [target] * 3))
    assert results == [target] * 3
    assert _contents(target) == _contents(ensure_tiny_vlm(tmp_path / "reference"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["reference", "shared"]


_RELOAD = """
import sys, torch
from crab.training.config import PolicyConfig
from crab.training.crab_smolvla_wrapper import make_policy, policy_config
features = {"observation.images.top": {"dtype": "video", "shape": (32, 32, 3), "names": ["height", "width", "channels"]},
            "observation.state": {"dtype": "float32", "shape": (6,), "names": None},
            "action": {"dtype": "float32", "shape": (4,), "names": None}}
policy_cfg = PolicyConfig(sys.argv[1], {})
policy, _, _ = make_policy(policy_config(policy_cfg), policy_cfg, features, None)
torch.save({k: v for k, v in policy.state_dict().items()}, sys.argv[2])
"""


@pytest.mark.slow
def test_tiny_checkpoint_reloads_in_another_process(tmp_path, monkeypatch):
    """A saved tiny policy names the cache folder; a fresh process (which rebuilds the folder if
    missing) loads identical weights."""
    from crab.training.config import PolicyConfig
    from crab.training.crab_smolvla_wrapper import make_policy, policy_config

    cache = tmp_path / "cache"
    env = {**os.environ, "CRAB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    monkeypatch.setenv("CRAB_CACHE", str(cache))
    features = {
        "observation.images.top": {"dtype": "video", "shape": (32, 32, 3), "names": ["height", "width", "channels"]},
        "observation.state": {"dtype": "float32", "shape": (6,), "names": None},
        "action": {"dtype": "float32", "shape": (4,), "names": None},
    }
    torch.manual_seed(0)
    policy_cfg = PolicyConfig("tiny", {})
    policy, _, _ = make_policy(policy_config(policy_cfg), policy_cfg, features, None)
    policy.save_pretrained(tmp_path / "ckpt")
    assert policy.config.vlm_model_name == str(cache / TINY_VLM_DIRNAME)
    for p in (cache / TINY_VLM_DIRNAME).iterdir():  # the loader must rebuild a vanished cache
        p.unlink()
    (cache / TINY_VLM_DIRNAME).rmdir()
    out = tmp_path / "reloaded.pt"
    subprocess.run(
        [sys.executable, "-c", _RELOAD, str(tmp_path / "ckpt"), str(out)],
        check=True,
        env=env,
        cwd=Path(__file__).resolve().parents[1],
    )
    reloaded = torch.load(out, map_location="cpu")
    for key, value in policy.state_dict().items():
        np.testing.assert_array_equal(reloaded[key].numpy(), value.numpy(), err_msg=key)
