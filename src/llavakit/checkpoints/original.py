"""The original LLaVA repository's formats: full checkpoints and projector-only ones.

A full checkpoint is a Llama checkpoint with `mm_*` config keys and the projector under
`model.mm_projector.N.*`; the vision tower usually is not in it but named by `mm_vision_tower`
(a hub id or folder of a CLIP model). A stage-1 run saves only `mm_projector.bin`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from llavakit.checkpoints.hf_configs import language_from_hf, vision_from_hf
from llavakit.checkpoints.hub import resolve
from llavakit.checkpoints.io import CheckpointError, read_state_dict, weight_files
from llavakit.config import LlavaConfig, ProjectorConfig, VisionConfig

_ARCHITECTURES = ("LlavaLlamaForCausalLM", "LlavaMistralForCausalLM", "LlavaQwenForCausalLM")
_TOWER_PREFIX = "model.vision_tower.vision_tower.vision_model."
_TOWER_PARTS = ("embeddings.", "pre_layrnorm.", "encoder.", "post_layernorm.")


def is_original(config: dict[str, Any]) -> bool:
    return "mm_vision_tower" in config or any(a in config.get("architectures", []) for a in _ARCHITECTURES)


def read_config_json(directory: Path) -> dict[str, Any]:
    path = directory / "config.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as err:
        raise CheckpointError(f"no config.json in {directory}") from err
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path} is not valid JSON: {err}") from err


def read_vision_tower(reference: str | Path) -> tuple[VisionConfig, dict[str, torch.Tensor]]:
    """A CLIP/SigLIP model folder or hub id -> our vision config and `vision_tower.*` weights."""
    directory = resolve(reference)
    config = vision_from_hf(read_config_json(directory), str(directory / "config.json"))
    processor_file = directory / "preprocessor_config.json"
    if processor_file.is_file():
        p = json.loads(processor_file.read_text())
        config.image_mean = tuple(p.get("image_mean", config.image_mean))
        config.image_std = tuple(p.get("image_std", config.image_std))
    state = {}
    for key, tensor in read_state_dict(weight_files(directory)).items():
        # A full CLIP model (the hub's) prefixes the tower with vision_model. and also holds the
        # text tower; transformers 5 saves a bare CLIPVisionModel without the prefix.
        key = key.removeprefix("vision_model.")
        if key.startswith(_TOWER_PARTS):
            state["vision_tower." + key] = tensor
    if not state:
        raise CheckpointError(f"no vision tower weights (vision_model.*) in {directory}")
    return config, state


def _llava_options(d: dict[str, Any], source: str) -> dict[str, Any]:
    if d.get("mm_use_im_start_end"):
        raise CheckpointError(f"{source}: mm_use_im_start_end models (image start/end tokens) are not supported")
    if d.get("mm_patch_merge_type", "flat") != "flat":
        raise CheckpointError(f"{source}: mm_patch_merge_type {d['mm_patch_merge_type']!r} (LLaVA-1.6) is not supported")
    aspect = d.get("image_aspect_ratio") or "square"
    if aspect not in ("pad", "square"):
        raise CheckpointError(f"{source}: image_aspect_ratio {aspect!r} is not supported (only 'pad' and 'square')")
    return {
        "projector": ProjectorConfig(d.get("mm_projector_type", "linear")),
        "vision_feature_layer": d.get("mm_vision_select_layer", -2),
        "vision_feature_select": d.get("mm_vision_select_feature", "patch"),
        "image_aspect": aspect,
    }


def _language_key(key: str) -> str:
    if key.startswith("model.mm_projector."):
        return "projector." + key[len("model.mm_projector."):]
    if key.startswith(_TOWER_PREFIX):
        return "vision_tower." + key[len(_TOWER_PREFIX):]
    if key.startswith(("model.", "lm_head.")):
        return "language_model." + key
    raise CheckpointError(f"unexpected key {key!r} in an original LLaVA checkpoint")


def read(directory: Path, d: dict[str, Any], vision_tower: str | Path | None = None,
         template: str = "vicuna_v1") -> tuple[LlavaConfig, dict[str, torch.Tensor]]:
    source = str(directory / "config.json")
    state = {}
    for key, tensor in read_state_dict(weight_files(directory)).items():
        if not key.endswith("rotary_emb.inv_freq"):  # old Llama checkpoints saved the RoPE buffer
            state[_language_key(key)] = tensor
    tower_reference = vision_tower or d.get("mm_vision_tower")
    if tower_reference is None:
        raise CheckpointError(f"{source}: no mm_vision_tower; pass the vision tower explicitly")
    vision, tower_state = read_vision_tower(tower_reference)
    for key, tensor in tower_state.items():
        state.setdefault(key, tensor)  # a tower saved inside the checkpoint (fine-tuned) wins
    config = LlavaConfig(vision=vision, language=language_from_hf(d, source), template=template,
                         **_llava_options(d, source))
    return config, state


def read_projector_only(projector_file: str | Path, language_model: str | Path, vision_tower: str | Path,
                        projector_type: str | None = None, template: str = "plain",
                        vision_feature_layer: int | None = None) -> tuple[LlavaConfig, dict[str, torch.Tensor], Path]:
    """A stage-1 `mm_projector.bin` on top of a base LLM folder and a CLIP folder.

    Options come from a config.json beside the projector file when there is one (a stage-1
    output folder has it), else from the arguments. Returns the LLM folder for its tokenizer.
    """
    projector_file = Path(projector_file)
    beside = projector_file.parent / "config.json"
    d = read_config_json(projector_file.parent) if beside.is_file() else {}
    options = _llava_options(d, str(beside))
    if projector_type:
        options["projector"] = ProjectorConfig(projector_type)
    elif "mm_projector_type" not in d:
        raise CheckpointError(f"no config.json with mm_projector_type beside {projector_file}; pass projector_type")
    if vision_feature_layer is not None:
        options["vision_feature_layer"] = vision_feature_layer
    state = {}
    for key, tensor in read_state_dict([projector_file]).items():
        _, found, rest = key.partition("mm_projector.")
        if not found:
            raise CheckpointError(f"{projector_file}: unexpected key {key!r} (expected mm_projector.*)")
        state["projector." + rest] = tensor
    llm_dir = resolve(language_model)
    llm_config = read_config_json(llm_dir)
    for key, tensor in read_state_dict(weight_files(llm_dir)).items():
        if not key.endswith("rotary_emb.inv_freq"):
            state["language_model." + key] = tensor
    vision, tower_state = read_vision_tower(vision_tower)
    state.update(tower_state)
    config = LlavaConfig(vision=vision, language=language_from_hf(llm_config, str(llm_dir / "config.json")),
                         template=template, **options)
    return config, state, llm_dir
