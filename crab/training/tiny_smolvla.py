"""An offline, test-size SmolVLM backbone folder for SmolVLA.

SmolVLA reads its backbone with `AutoConfig/AutoProcessor.from_pretrained(vlm_model_name)`; with
`load_vlm_weights=False` that folder needs only a config and a processor (no weights), so a small
one written here lets the real `SmolVLAPolicy` run without the Hugging Face Hub.

The folder's content is a pure function of the constants below (JSON files, a byte-level tokenizer
with a fixed vocabulary), written atomically to a stable cache location, so a checkpoint whose
config names the folder loads again in any later process.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import tempfile
from pathlib import Path

# Bump the version whenever the content below changes. The transformers major version is part of the
# name: the processor and config files save_pretrained writes differ between majors, and a folder
# written by one must never be read by another (two environments can share the cache).
TINY_VLM_DIRNAME = f"tiny_smolvlm_v2_transformers{importlib.metadata.version('transformers').split('.')[0]}"

# The names SmolVLMProcessor and SmolVLA look up on the tokenizer (`fake_image_token_id`, ...).
SPECIAL_TOKENS = {
    "fake_image_token": "<fake_token_around_image>",
    "image_token": "<image>",
    "global_image_token": "<global-img>",
    "end_of_utterance_token": "<end_of_utterance>",
}
PAD_TOKEN = "<pad>"
EOS_TOKEN = "<|endoftext|>"
_COMPLETE_MARKER = "tokenizer.json"  # written last by save_pretrained's tokenizer step


def default_tiny_vlm_dir() -> Path:
    """`$CRAB_CACHE/<TINY_VLM_DIRNAME>` (default cache `~/.cache/crab_vla`)."""
    return Path(os.environ.get("CRAB_CACHE", Path.home() / ".cache" / "crab_vla")) / TINY_VLM_DIRNAME


def _build_tokenizer():
    """Byte-level BPE without merges: one token per byte, so every task string tokenises distinctly."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = [PAD_TOKEN, EOS_TOKEN, *SPECIAL_TOKENS.values()]
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {tok: i for i, tok in enumerate(specials + alphabet)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=PAD_TOKEN,
        eos_token=EOS_TOKEN,
        extra_special_tokens=dict(SPECIAL_TOKENS),
        model_max_length=512,
    )


# The tiny backbone: a 2-layer llama text model and a 1-layer vision tower on 32x32 images.
TINY_TEXT = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,  # grouped-query attention, as in SmolVLM2
    # Explicit, so the action expert keeps the VLM's head size at any expert_width_multiplier.
    "head_dim": 16,
    "max_position_embeddings": 512,
}
TINY_VISION = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "image_size": 32,
    "patch_size": 8,
}


def write_vlm_folder(folder: Path, text: dict, vision: dict, scale_factor: int) -> Path:
    """A SmolVLM config + processor folder (no weights) with the byte-level tokenizer.

    `text` / `vision` are SmolVLM text (llama) and vision config fields; images are resized to
    `vision["image_size"]` and give (image_size / patch_size / scale_factor)^2 tokens each.
    """
    from transformers import SmolVLMConfig, SmolVLMImageProcessor, SmolVLMProcessor, SmolVLMVideoProcessor

    tokenizer = _build_tokenizer()
    config = SmolVLMConfig(
        text_config={
            "model_type": "llama",
            "vocab_size": len(tokenizer),
            "rms_norm_eps": 1e-5,
            "pad_token_id": tokenizer.pad_token_id,
            **text,
        },
        vision_config=vision,
        scale_factor=scale_factor,
        image_token_id=tokenizer.convert_tokens_to_ids(SPECIAL_TOKENS["image_token"]),
        pad_token_id=tokenizer.pad_token_id,
    )
    size = {"longest_edge": vision["image_size"]}
    processor = SmolVLMProcessor(
        image_processor=SmolVLMImageProcessor(size=size, max_image_size=size, do_image_splitting=False),
        tokenizer=tokenizer,
        video_processor=SmolVLMVideoProcessor(size=size, max_image_size=size),
        image_seq_len=(vision["image_size"] // vision["patch_size"] // scale_factor) ** 2,
    )
    config.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def ensure_backbone(vlm_model_name: str) -> None:
    """A tiny-policy config (or checkpoint) names the tiny VLM cache folder, which SmolVLAPolicy reads on
    construction: rebuild it (deterministically) where this machine lacks it. Other names are left alone."""
    if Path(vlm_model_name).name == TINY_VLM_DIRNAME:
        ensure_tiny_vlm(vlm_model_name)


def ensure_tiny_vlm(folder: str | Path | None = None) -> Path:
    """Return the tiny SmolVLM folder, writing it first if it does not exist yet.

    Idempotent and safe under concurrency: the folder is built in a sibling temporary directory and
    renamed into place, so readers never see a partial folder; when another process wins the race,
    its (identical) folder is kept.
    """
    folder = Path(folder) if folder is not None else default_tiny_vlm_dir()
    if (folder / _COMPLETE_MARKER).is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        write_vlm_folder(tmp, TINY_TEXT, TINY_VISION, scale_factor=2)
        try:
            os.rename(tmp, folder)
        except OSError:
            if not (folder / _COMPLETE_MARKER).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder
