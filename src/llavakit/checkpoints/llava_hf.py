"""transformers' llava-hf format (`LlavaForConditionalGeneration`): read both key layouts, export.

Layouts seen in the wild:
- transformers 4.x and the hub: `language_model.model.*`, `language_model.lm_head.*`,
  `vision_tower.vision_model.*`, `multi_modal_projector.linear_{1,2}.*`;
- transformers 5.x in memory: `model.language_model.*`, `lm_head.*`, `model.vision_tower.*`,
  `model.multi_modal_projector.*` (its save_pretrained writes a 4.x-like layout without
  `vision_model.`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from llavakit.checkpoints.hf_configs import language_from_hf, language_to_hf, vision_from_hf, vision_to_hf
from llavakit.checkpoints.io import (
    CheckpointError,
    read_state_dict,
    weight_files,
    without_tied_head,
    write_state_dict,
)
from llavakit.config import LlavaConfig, ProjectorConfig

_SELECT = {"default": "patch", "full": "cls_patch"}
_PROJECTOR_NAMES = {"linear_1": "0", "linear_2": "2"}


def is_llava_hf(config: dict[str, Any]) -> bool:
    return config.get("model_type") == "llava" or "LlavaForConditionalGeneration" in config.get("architectures", [])


def key_from_hf(key: str) -> str | None:
    """Our parameter name for a llava-hf key (None: not a model parameter we use)."""
    for part in ("language_model.", "vision_tower.", "multi_modal_projector."):
        if key.startswith("model." + part):
            key = key[len("model."):]
    if key == "lm_head.weight":
        return "language_model.lm_head.weight"
    if key.startswith("language_model."):
        rest = key[len("language_model."):]
        if rest.startswith(("model.", "lm_head.")):
            return key
        return "language_model.model." + rest
    if key.startswith("vision_tower."):
        rest = key[len("vision_tower."):].removeprefix("vision_model.")
        return None if rest.startswith("head.") else "vision_tower." + rest  # SigLIP pooling head
    if key.startswith("multi_modal_projector."):
        layer, _, param = key[len("multi_modal_projector."):].partition(".")
        if layer in _PROJECTOR_NAMES:
            return f"projector.{_PROJECTOR_NAMES[layer]}.{param}"
    raise CheckpointError(f"unexpected key {key!r} in a llava-hf checkpoint")


def key_to_hf(key: str) -> str:
    """The transformers 4.x / hub name of one of our parameters (the layout vLLM reads)."""
    if key.startswith("vision_tower."):
        return "vision_tower.vision_model." + key[len("vision_tower."):]
    if key.startswith("projector."):
        index, _, param = key[len("projector."):].partition(".")
        names = {v: k for k, v in _PROJECTOR_NAMES.items()}
        return f"multi_modal_projector.{names[index]}.{param}"
    return key


def config_from_hf(d: dict[str, Any], directory: Path) -> LlavaConfig:
    source = str(directory / "config.json")
    layer = d.get("vision_feature_layer", -2)
    if not isinstance(layer, int):
        raise CheckpointError(f"{source}: several vision feature layers ({layer}) are not supported")
    act = d.get("projector_hidden_act", "gelu")
    if act != "gelu":
        raise CheckpointError(f"{source}: projector activation {act!r} is not supported (only 'gelu')")
    strategy = d.get("vision_feature_select_strategy", "default")
    if strategy not in _SELECT:
        raise CheckpointError(f"{source}: unknown vision_feature_select_strategy {strategy!r}")
    vision = vision_from_hf(d.get("vision_config") or {}, source)
    aspect = "pad"
    processor_file = directory / "preprocessor_config.json"
    if processor_file.is_file():
        p = json.loads(processor_file.read_text())
        vision.image_mean = tuple(p.get("image_mean", vision.image_mean))
        vision.image_std = tuple(p.get("image_std", vision.image_std))
        # Follow what the publisher's processor does: CLIPImageProcessor crops, do_pad pads.
        aspect = "pad" if p.get("do_pad") else "square"
    image_token = d.get("image_token_index", d.get("image_token_id"))
    if image_token is None:
        raise CheckpointError(f"{source}: no image_token_index")
    return LlavaConfig(
        vision=vision,
        projector=ProjectorConfig("mlp2x_gelu", bias=d.get("multimodal_projector_bias", True)),
        language=language_from_hf(d.get("text_config") or {}, source),
        image_token_id=image_token,
        vision_feature_layer=layer,
        vision_feature_select=_SELECT[strategy],
        image_aspect=aspect,
        template="llava_hf",
    )


def read(directory: Path, d: dict[str, Any]) -> tuple[LlavaConfig, dict[str, torch.Tensor]]:
    config = config_from_hf(d, directory)
    state = {}
    for key, tensor in read_state_dict(weight_files(directory)).items():
        name = key_from_hf(key)
        if name is not None:
            state[name] = tensor
    return config, state


def config_to_hf(config: LlavaConfig) -> dict[str, Any]:
    if config.projector.type != "mlp2x_gelu":
        raise CheckpointError(
            f"llava-hf has only the mlp2x_gelu projector; this model's is {config.projector.type!r}"
        )
    if not 0 <= config.image_token_id < config.language.vocab_size:
        raise CheckpointError(
            f"llava-hf needs the image token inside the vocabulary; image_token_id is "
            f"{config.image_token_id} with a vocabulary of {config.language.vocab_size}"
        )
    return {
        "architectures": ["LlavaForConditionalGeneration"],
        "model_type": "llava",
        "image_token_index": config.image_token_id,
        "image_seq_length": config.tokens_per_image,
        "projector_hidden_act": "gelu",
        "multimodal_projector_bias": config.projector.bias,
        "vision_feature_layer": config.vision_feature_layer,
        "vision_feature_select_strategy": {v: k for k, v in _SELECT.items()}[config.vision_feature_select],
        "tie_word_embeddings": config.language.tie_word_embeddings,
        "text_config": language_to_hf(config.language),
        "vision_config": vision_to_hf(config.vision),
    }


def write(directory: Path, config: LlavaConfig, state: dict[str, torch.Tensor]) -> None:
    """Write config.json and weights in the hub's llava-hf layout."""
    hf_config = config_to_hf(config)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n")
    state = without_tied_head(state, config.language.tie_word_embeddings)
    write_state_dict({key_to_hf(k): v for k, v in state.items()}, directory)
