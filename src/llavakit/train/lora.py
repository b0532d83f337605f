"""LoRA / QLoRA through peft: adapters on the LLM's linear layers, the projector trained in full.

An adapter folder holds peft's files (adapter_config.json + adapter_model.safetensors, keys
`base_model.model.<name>.lora_A.weight`), the non-LoRA trainables (`non_lora_trainables.safetensors`,
the projector) and a marker, `llavakit_adapter.json`, naming the base model and the full
LlavaConfig. `read_adapter_checkpoint` turns such a folder into a plain merged checkpoint, which
is how `llavakit.load(adapter_dir)` and `llavakit merge` read it.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from llavakit.checkpoints import Checkpoint, CheckpointError, build_model
from llavakit.checkpoints.io import atomic_save_safetensors, read_state_dict
from llavakit.config import LlavaConfig
from llavakit.model import LlavaModel
from llavakit.train.recipe import LoraSpec, ModelSpec, RecipeError

ADAPTER_MARKER = "llavakit_adapter.json"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
NON_LORA_WEIGHTS = "non_lora_trainables.safetensors"
ADAPTER_NAME = "default"
_PEFT_PREFIX = "base_model.model."
_ADAPTER_KEY = re.compile(r"\.(lora_[AB]|lora_embedding_[AB])\.default(\.|$)")


def target_pattern(target_modules: list[str]) -> str:
    """A regex over full module names: only the LLM's decoder layers (the tower has q_proj too)."""
    names = "|".join(re.escape(t) for t in target_modules)
    return rf"language_model\.model\.layers\.\d+\.(?:self_attn|mlp)\.(?:{names})"


def lora_config(spec: LoraSpec, base_name: str | None = None):
    from peft import LoraConfig

    return LoraConfig(r=spec.r, lora_alpha=spec.alpha, lora_dropout=spec.dropout, bias="none",
                      target_modules=target_pattern(spec.target_modules), base_model_name_or_path=base_name)


def add_lora(model: LlavaModel, spec: LoraSpec, config=None) -> nn.Module:
    """Inject LoRA layers into `model` in place; returns peft's LoraModel (for merging)."""
    from peft.tuners.lora import LoraModel

    return LoraModel(model, config or lora_config(spec), ADAPTER_NAME)


def quantize_4bit(model: LlavaModel, compute_dtype: torch.dtype, device: torch.device) -> None:
    """QLoRA: the LLM's decoder linears become bitsandbytes NF4 layers (CUDA only)."""
    if device.type != "cuda":
        raise RecipeError("lora.quantize=4bit (QLoRA) needs a CUDA device; bitsandbytes' 4-bit kernels are CUDA-only")
    try:
        import bitsandbytes as bnb
    except ImportError as err:
        raise RecipeError("lora.quantize=4bit needs bitsandbytes: pip install bitsandbytes") from err
    for module in list(model.language_model.model.layers.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, nn.Linear):
                q = bnb.nn.Linear4bit(child.in_features, child.out_features, bias=child.bias is not None,
                                      compute_dtype=compute_dtype, quant_type="nf4")
                q.weight = bnb.nn.Params4bit(child.weight.data.cpu(), requires_grad=False, quant_type="nf4")
                if child.bias is not None:
                    q.bias = nn.Parameter(child.bias.data.to(compute_dtype), requires_grad=False)
                setattr(module, child_name, q.to(device))  # moving to CUDA quantizes


def split_adapter_state(state: dict[str, torch.Tensor],
                        trainable: set[str]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(peft-format adapter weights, non-LoRA trainables) from a full named state dict."""
    adapter, others = {}, {}
    for name, tensor in state.items():
        if _ADAPTER_KEY.search(name):
            adapter[_PEFT_PREFIX + _ADAPTER_KEY.sub(r".\1\2", name)] = tensor
        elif name in trainable:
            others[name] = tensor
    return adapter, others


def _absolute(reference: str | None) -> str | None:
    if reference and Path(reference).expanduser().exists():
        return str(Path(reference).expanduser().resolve())
    return reference


def save_adapter(directory: str | Path, *, state: dict[str, torch.Tensor], trainable: set[str],
                 config: LlavaConfig, spec: LoraSpec, model_spec: ModelSpec, tokenizer=None) -> Path:
    """Write peft's adapter files, the non-LoRA trainables, the tokenizer and the marker (last)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    adapter, others = split_adapter_state(state, trainable)
    base = {k: _absolute(v) if k in ("init", "language_model", "vision_tower", "projector_from") else v
            for k, v in asdict(model_spec).items()}
    lora_config(spec, base.get("init") or base.get("language_model")).save_pretrained(str(directory))
    atomic_save_safetensors({k: v.detach().contiguous().cpu() for k, v in adapter.items()}, directory / ADAPTER_WEIGHTS)
    atomic_save_safetensors({k: v.detach().contiguous().cpu() for k, v in others.items()}, directory / NON_LORA_WEIGHTS)
    if tokenizer is not None:
        tokenizer.save_pretrained(directory)
    marker = {"format": "llavakit-lora", "format_version": 1, "base": base, "lora": asdict(spec),
              "config": config.to_dict()}
    (directory / ADAPTER_MARKER).write_text(json.dumps(marker, indent=2) + "\n")
    return directory


def is_adapter_dir(directory: str | Path) -> bool:
    """True for a llavakit LoRA adapter folder (peft's adapter_config.json plus llavakit's marker)."""
    directory = Path(directory)
    return (directory / ADAPTER_CONFIG).is_file() and (directory / ADAPTER_MARKER).is_file()


def load_adapter_weights(model: LlavaModel, directory: Path) -> None:
    """Copy peft-format adapter weights into a model that already has LoRA layers."""
    params = dict(model.named_parameters())
    for key, tensor in read_state_dict([directory / ADAPTER_WEIGHTS]).items():
        name = key.removeprefix(_PEFT_PREFIX)
        name = re.sub(r"\.(lora_[AB]|lora_embedding_[AB])(\.|$)", rf".\1.{ADAPTER_NAME}\2", name)
        if name not in params:
            raise CheckpointError(f"{directory / ADAPTER_WEIGHTS}: {key} matches no LoRA layer of the model")
        with torch.no_grad():
            params[name].copy_(tensor)


def adapter_model(directory: str | Path, *, merge: bool) -> tuple[LlavaModel, LlavaConfig]:
    """The base model with the adapter applied (merged into the weights, or as live LoRA layers)."""
    from peft import LoraConfig

    from llavakit.train.build import initial_checkpoint

    directory = Path(directory)
    marker = json.loads((directory / ADAPTER_MARKER).read_text())
    config = LlavaConfig.from_dict(marker["config"])
    base = initial_checkpoint(ModelSpec(**marker["base"]), seed=0)
    base.config = config
    model = build_model(base, torch.float32, "cpu")
    tuner = add_lora(model, LoraSpec(**marker["lora"]), LoraConfig.from_pretrained(str(directory)))
    load_adapter_weights(model, directory)
    others = read_state_dict([directory / NON_LORA_WEIGHTS]) if (directory / NON_LORA_WEIGHTS).is_file() else {}
    missing = set(others) - dict(model.named_parameters()).keys()
    if missing:
        raise CheckpointError(f"{directory / NON_LORA_WEIGHTS}: unknown parameters {sorted(missing)[:4]}")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name in others:
                p.copy_(others[name])
    if merge:
        model = tuner.merge_and_unload()
    return model.eval(), config


def read_adapter_checkpoint(directory: str | Path) -> Checkpoint:
    """A llavakit LoRA adapter folder as a plain checkpoint (the adapter merged into the weights).

    Meant for `llavakit.checkpoints.read_checkpoint`: when `is_adapter_dir(directory)`, return
    this instead of reading config.json. The tokenizer comes from the adapter folder.
    """
    model, config = adapter_model(directory, merge=True)
    state = model.state_dict()
    if config.language.tie_word_embeddings:
        state.pop("language_model.lm_head.weight", None)
    return Checkpoint(config, state, Path(directory), "llavakit-lora", str(directory))
