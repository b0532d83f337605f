"""Checkpoint formats: llavakit's own, llava-hf, the original LLaVA's, projector-only; hub ids.

The format is decided from what config.json says, never from the folder's name.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from llavakit.checkpoints import llava_hf, original
from llavakit.checkpoints.hub import resolve
from llavakit.checkpoints.io import (
    CheckpointError,
    load_into,
    read_state_dict,
    weight_files,
    without_tied_head,
    write_state_dict,
)
from llavakit.config import FORMAT_NAME, LlavaConfig
from llavakit.model import LlavaModel

__all__ = [
    "Checkpoint", "CheckpointError", "build_model", "detect_format", "export_llava_hf", "read_checkpoint",
    "read_projector_only", "resolve", "save_checkpoint",
]

FORMATS = ("llavakit", "llava-hf", "llava-original")


@dataclass
class Checkpoint:
    """What a checkpoint folder holds, before a model is built from it."""

    config: LlavaConfig
    state: dict[str, torch.Tensor]
    tokenizer_dir: Path
    format: str
    source: str


def detect_format(config: dict) -> str:
    """One of FORMATS, from the content of a config.json."""
    if config.get("format") == FORMAT_NAME:
        return "llavakit"
    if llava_hf.is_llava_hf(config):
        return "llava-hf"
    if original.is_original(config):
        return "llava-original"
    kind = config.get("model_type", "unknown")
    raise CheckpointError(
        f"config.json describes a {kind!r} model, not a LLaVA model (llavakit, llava-hf or the original "
        "LLaVA format). For a base language model with a stage-1 projector use "
        "llavakit.load_projector_only()."
    )


def read_checkpoint(reference: str | Path, *, revision: str | None = None,
                    vision_tower: str | Path | None = None, template: str | None = None) -> Checkpoint:
    """Read a checkpoint folder or hub id in any supported format."""
    directory = resolve(reference, revision)
    # Lazy import: the trainer imports this package. A LoRA adapter folder names its base model.
    from llavakit.train.lora import is_adapter_dir, read_adapter_checkpoint

    if is_adapter_dir(directory):
        checkpoint = read_adapter_checkpoint(directory)
        if template:
            checkpoint.config.template = template
        return checkpoint
    d = original.read_config_json(directory)
    fmt = detect_format(d)
    if fmt == "llavakit":
        config = LlavaConfig.from_dict(d)
        state = read_state_dict(weight_files(directory))
    elif fmt == "llava-hf":
        config, state = llava_hf.read(directory, d)
    else:
        config, state = original.read(directory, d, vision_tower=vision_tower)
    if template:
        config.template = template
    return Checkpoint(config, state, directory, fmt, str(directory))


def read_projector_only(projector_file: str | Path, language_model: str | Path, vision_tower: str | Path,
                        **options) -> Checkpoint:
    config, state, llm_dir = original.read_projector_only(projector_file, language_model, vision_tower, **options)
    return Checkpoint(config, state, llm_dir, "projector-only", str(projector_file))


def build_model(checkpoint: Checkpoint, dtype: torch.dtype = torch.float32,
                device: torch.device | str = "cpu") -> LlavaModel:
    """Build the model on the meta device and move the checkpoint's tensors in (no double init)."""
    with torch.device("meta"):
        model = LlavaModel(checkpoint.config)
    optional = ["language_model.lm_head.weight"] if checkpoint.config.language.tie_word_embeddings else []
    load_into(model, checkpoint.state, checkpoint.source, optional=optional)
    model.language_model.finish_loading()
    return model.to(device=device, dtype=dtype).eval()


def _own_state(model: LlavaModel) -> dict[str, torch.Tensor]:
    return without_tied_head(model.state_dict(), model.config.language.tie_word_embeddings)


def save_checkpoint(model: LlavaModel, tokenizer, directory: str | Path, max_shard_bytes: int = 5 * 2**30) -> Path:
    """llavakit's format: config.json + model.safetensors (sharded when large) + tokenizer files."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    write_state_dict(_own_state(model), directory, max_shard_bytes)
    if tokenizer is not None:
        tokenizer.save_pretrained(directory)
    model.config.save(directory / "config.json")  # last: a folder with a config is complete
    return directory


def export_llava_hf(model: LlavaModel, tokenizer, directory: str | Path, image_processor=None) -> Path:
    """Write a transformers `LlavaForConditionalGeneration` folder (the hub's 4.x layout).

    The tokenizer must already know `<image>` at the model's image_token_id: llava-hf prompts
    carry it as a real token.
    """
    directory = Path(directory)
    if tokenizer is not None:
        image_id = tokenizer.convert_tokens_to_ids("<image>")
        if image_id != model.config.image_token_id:
            raise CheckpointError(
                f"the tokenizer maps '<image>' to {image_id}, but the model's image_token_id is "
                f"{model.config.image_token_id}; llava-hf needs them equal"
            )
    llava_hf.write(directory, model.config, _own_state(model))
    if tokenizer is not None:
        tokenizer.save_pretrained(directory)
    if image_processor is not None:
        p = image_processor.to_hf_preprocessor_config()
        (directory / "preprocessor_config.json").write_text(json.dumps(p, indent=2) + "\n")
        processor = {
            "processor_class": "LlavaProcessor",
            "patch_size": model.config.vision.patch_size,
            "vision_feature_select_strategy": "default" if model.config.vision_feature_select == "patch" else "full",
            "num_additional_image_tokens": 1 if model.config.vision.has_class_token else 0,
            "image_token": "<image>",
        }
        (directory / "processor_config.json").write_text(json.dumps(processor, indent=2) + "\n")
    return directory
