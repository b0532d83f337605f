"""The model a recipe starts from: a LLaVA checkpoint, or a base LLM + a vision tower + a fresh
projector, optionally with a stage-1 projector; what trains; and the optimiser's groups.

`plan_config` reads config.json files only (or built-in configs of the LLaVA-1.5 parts), so
`--dry-run` can describe a 7B or 13B run without any weights on disk.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from llavakit.checkpoints import (
    Checkpoint,
    CheckpointError,
    build_model,
    llava_hf,
    original,
    read_checkpoint,
    resolve,
)
from llavakit.checkpoints.hf_configs import language_from_hf, vision_from_hf
from llavakit.checkpoints.io import read_state_dict, weight_files
from llavakit.config import FORMAT_NAME, LanguageConfig, LlavaConfig, ProjectorConfig, VisionConfig
from llavakit.model import LlavaModel, build_projector
from llavakit.train.recipe import ModelSpec, Recipe

# The parts of LLaVA-1.5, so that a dry run of the packaged recipes needs no download.
BUILTIN_LANGUAGE = {
    "lmsys/vicuna-7b-v1.5": LanguageConfig(vocab_size=32000, hidden_size=4096, intermediate_size=11008,
                                           num_layers=32, num_heads=32, max_position_embeddings=4096,
                                           rms_norm_eps=1e-5, pad_token_id=0),
    "lmsys/vicuna-13b-v1.5": LanguageConfig(vocab_size=32000, hidden_size=5120, intermediate_size=13824,
                                            num_layers=40, num_heads=40, max_position_embeddings=4096,
                                            rms_norm_eps=1e-5, pad_token_id=0),
}
BUILTIN_VISION = {
    "openai/clip-vit-large-patch14-336": VisionConfig(image_size=336, patch_size=14, hidden_size=1024,
                                                      intermediate_size=4096, num_layers=24, num_heads=16),
}
PROJECTOR_FILES = ("mm_projector.safetensors", "mm_projector.bin")


def _config_json(reference: str) -> tuple[dict, Path]:
    """config.json of a local folder, else of a hub repository (that one file only)."""
    path = Path(reference).expanduser()
    if path.is_dir():
        return original.read_config_json(path), path
    try:
        from huggingface_hub import hf_hub_download

        file = Path(hf_hub_download(reference, "config.json"))
    except Exception as err:
        raise CheckpointError(f"cannot read the config.json of {reference!r} ({type(err).__name__}: {err})") from err
    return json.loads(file.read_text()), file.parent


def _language_config(reference: str) -> LanguageConfig:
    if reference in BUILTIN_LANGUAGE and not Path(reference).is_dir():
        return LanguageConfig(**vars(BUILTIN_LANGUAGE[reference]))
    d, directory = _config_json(reference)
    return language_from_hf(d, str(directory / "config.json"))


def _vision_config(reference: str) -> VisionConfig:
    if reference in BUILTIN_VISION and not Path(reference).is_dir():
        return VisionConfig(**vars(BUILTIN_VISION[reference]))
    d, directory = _config_json(reference)
    return vision_from_hf(d, str(directory / "config.json"))


def _fresh_config(spec: ModelSpec, language: LanguageConfig, vision: VisionConfig) -> LlavaConfig:
    return LlavaConfig(vision=vision, projector=ProjectorConfig(spec.projector), language=language,
                       vision_feature_layer=spec.vision_feature_layer, image_aspect=spec.image_aspect,
                       template=spec.template)


def plan_config(spec: ModelSpec) -> LlavaConfig:
    """The model's config without reading any weights."""
    if spec.init is None:
        return _fresh_config(spec, _language_config(spec.language_model), _vision_config(spec.vision_tower))
    d, directory = _config_json(spec.init)
    if d.get("format") == FORMAT_NAME:
        config = LlavaConfig.from_dict(d)
    elif llava_hf.is_llava_hf(d):
        config = llava_hf.config_from_hf(d, directory)
    elif original.is_original(d):
        config = LlavaConfig(vision=_vision_config(d["mm_vision_tower"]),
                             language=language_from_hf(d, str(directory)),
                             **original._llava_options(d, str(directory)))
    else:
        raise CheckpointError(f"{spec.init}: config.json does not describe a LLaVA model")
    config.template = spec.template
    return config


def read_projector(reference: str | Path) -> dict[str, torch.Tensor]:
    """`projector.*` weights from a stage-1 output folder, an mm_projector file or a llavakit checkpoint."""
    path = Path(reference).expanduser()
    if path.is_dir():
        found = [path / name for name in PROJECTOR_FILES if (path / name).is_file()]
        if found:
            path = found[0]
        elif (path / "config.json").is_file():
            return {k: v for k, v in read_checkpoint(path).state.items() if k.startswith("projector.")}
        else:
            raise CheckpointError(f"{path}: no {' or '.join(PROJECTOR_FILES)} (a stage-1 output folder has one)")
    state = {}
    for key, tensor in read_state_dict([path]).items():
        _, found, rest = key.partition("mm_projector.")
        if not found and not key.startswith("projector."):
            raise CheckpointError(f"{path}: unexpected key {key!r} (expected mm_projector.*)")
        state["projector." + rest if found else key] = tensor
    return state


def fresh_projector_state(config: LlavaConfig, seed: int) -> dict[str, torch.Tensor]:
    """nn.Linear's default initialisation (as the original), from a seed so every process agrees."""
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    projector = build_projector(config.projector, config.vision.hidden_size, config.language.hidden_size)
    torch.random.set_rng_state(generator_state)
    return {"projector." + k: v for k, v in projector.state_dict().items()}


def initial_checkpoint(spec: ModelSpec, seed: int) -> Checkpoint:
    """Config, weights and tokenizer folder of the model a run starts from."""
    if spec.init is not None:
        checkpoint = read_checkpoint(spec.init)
        checkpoint.config.template = spec.template
    else:
        llm_dir = resolve(spec.language_model)
        language = language_from_hf(original.read_config_json(llm_dir), str(llm_dir / "config.json"))
        state = {"language_model." + k: v for k, v in read_state_dict(weight_files(llm_dir)).items()
                 if not k.endswith("rotary_emb.inv_freq")}
        vision, tower_state = original.read_vision_tower(spec.vision_tower)
        state.update(tower_state)
        config = _fresh_config(spec, language, vision)
        state.update(fresh_projector_state(config, seed))
        checkpoint = Checkpoint(config, state, llm_dir, "base-llm+tower", str(llm_dir))
    if spec.projector_from:
        checkpoint.state.update(read_projector(spec.projector_from))
    return checkpoint


def load_model(checkpoint: Checkpoint) -> LlavaModel:
    return build_model(checkpoint, torch.float32, "cpu")


def set_trainable(model: LlavaModel, trainable: list[str], lora: bool) -> None:
    """Freeze everything but the named parts; with LoRA the LLM trains through its adapters only."""
    model.requires_grad_(False)
    if "projector" in trainable:
        model.projector.requires_grad_(True)
    if "vision_tower" in trainable:
        model.vision_tower.requires_grad_(True)
    if "language_model" in trainable and not lora:
        model.language_model.requires_grad_(True)
    if lora:
        for name, p in model.named_parameters():
            if ".lora_" in name:
                p.requires_grad_("language_model" in trainable)


def component(name: str) -> str:
    name = name.removeprefix("model.")
    for part in ("projector", "vision_tower"):
        if name.startswith(part + "."):
            return part
    return "language_model"


def param_groups(named: list[tuple[str, nn.Parameter]], recipe: Recipe) -> list[dict]:
    """AdamW groups: one learning rate per part (projector / tower / LLM), decay on matrices only."""
    t = recipe.train
    lrs = {"projector": t.projector_lr or t.lr, "vision_tower": t.vision_tower_lr or t.lr, "language_model": t.lr}
    groups: dict[tuple[str, bool], dict] = {}
    for name, p in named:
        if not p.requires_grad:
            continue
        part = component(name)
        decay = p.ndim >= 2 and "norm" not in name  # the original decays neither biases nor norms
        key = (part, decay)
        if key not in groups:
            groups[key] = {"params": [], "names": [], "lr": lrs[part], "base_lr": lrs[part],
                           "weight_decay": t.weight_decay if decay else 0.0, "part": part}
        groups[key]["params"].append(p)
        groups[key]["names"].append(name)
    return [groups[k] for k in sorted(groups)]


def count_parameters(config: LlavaConfig, recipe: Recipe) -> dict[str, int]:
    """Total and trainable parameters of each part, computed on the meta device."""
    with torch.device("meta"):
        model = LlavaModel(config)
    counts = {part: sum(p.numel() for p in getattr(model, part).parameters())
              for part in ("vision_tower", "projector", "language_model")}
    trainable = {part: counts[part] if part in recipe.train.trainable else 0 for part in counts}
    if recipe.lora.enabled:
        lora = 0
        for name, module in model.language_model.model.layers.named_modules():
            if isinstance(module, nn.Linear) and name.rsplit(".", 1)[-1] in recipe.lora.target_modules:
                lora += recipe.lora.r * (module.in_features + module.out_features)
        trainable["language_model"] = lora if "language_model" in recipe.train.trainable else 0
        counts["lora"] = lora
    return {"total": sum(counts[p] for p in ("vision_tower", "projector", "language_model")),
            "trainable": sum(trainable.values()), **{f"{p}": n for p, n in counts.items()},
            **{f"trainable_{p}": n for p, n in trainable.items()}}
