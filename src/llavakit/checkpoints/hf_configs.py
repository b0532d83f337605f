"""Translation between transformers' config dicts (CLIP, SigLIP, Llama, Mistral, Qwen2) and ours.

Defaults for absent keys are transformers' own class defaults, since older files omit them.
"""

from __future__ import annotations

from typing import Any

from llavakit.checkpoints.io import CheckpointError
from llavakit.config import LanguageConfig, VisionConfig

_VISION_DEFAULTS = {
    "clip": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                 image_size=224, patch_size=32, layer_norm_eps=1e-5, hidden_act="quick_gelu", num_channels=3),
    "siglip": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                   image_size=224, patch_size=16, layer_norm_eps=1e-6, hidden_act="gelu_pytorch_tanh",
                   num_channels=3),
}
_VISION_TYPES = {"clip_vision_model": "clip", "clip": "clip", "siglip_vision_model": "siglip", "siglip": "siglip"}
_TEXT_TYPES = ("llama", "mistral", "qwen2")


def vision_from_hf(d: dict[str, Any], source: str) -> VisionConfig:
    """A CLIP/SigLIP vision config (or a full CLIP/SigLIP config with `vision_config` inside)."""
    model_type = d.get("model_type", "clip_vision_model")
    if model_type in ("clip", "siglip") and "vision_config" in d:
        d = {**d["vision_config"], "model_type": f"{model_type}_vision_model"}
        model_type = d["model_type"]
    kind = _VISION_TYPES.get(model_type)
    if kind is None:
        raise CheckpointError(f"{source}: unsupported vision model type {model_type!r}; llavakit reads CLIP and SigLIP")
    v = {**_VISION_DEFAULTS[kind], **{k: x for k, x in d.items() if x is not None}}
    return VisionConfig(
        kind=kind, image_size=v["image_size"], patch_size=v["patch_size"], hidden_size=v["hidden_size"],
        intermediate_size=v["intermediate_size"], num_layers=v["num_hidden_layers"],
        num_heads=v["num_attention_heads"], num_channels=v["num_channels"],
        layer_norm_eps=v["layer_norm_eps"], hidden_act=v["hidden_act"],
    )


def vision_to_hf(config: VisionConfig) -> dict[str, Any]:
    return {
        "model_type": f"{config.kind}_vision_model",
        "hidden_size": config.hidden_size, "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.num_layers, "num_attention_heads": config.num_heads,
        "image_size": config.image_size, "patch_size": config.patch_size, "num_channels": config.num_channels,
        "layer_norm_eps": config.layer_norm_eps, "hidden_act": config.hidden_act,
    }


def _rope(d: dict[str, Any]) -> tuple[float, dict[str, Any] | None]:
    """rope_theta and scaling from either the 4.x keys or the 5.x `rope_parameters` dict."""
    params = d.get("rope_parameters")
    if isinstance(params, dict):
        theta = params.get("rope_theta", d.get("rope_theta", 10000.0))
        kind = params.get("rope_type", "default")
        scaling = None if kind == "default" else {k: v for k, v in params.items() if k != "rope_theta"}
        return float(theta), scaling
    scaling = d.get("rope_scaling")
    if scaling and scaling.get("rope_type", scaling.get("type")) == "default":
        scaling = None
    return float(d.get("rope_theta", 10000.0)), scaling


def language_from_hf(d: dict[str, Any], source: str) -> LanguageConfig:
    """A Llama / Mistral / Qwen2 config dict (the original LLaVA's config is a Llama one)."""
    model_type = d.get("model_type", "llama")
    if model_type.startswith("llava_"):  # original LLaVA: llava_llama, llava_mistral
        model_type = model_type.removeprefix("llava_")
    if model_type not in _TEXT_TYPES:
        raise CheckpointError(f"{source}: unsupported language model type {model_type!r}; llavakit reads {_TEXT_TYPES}")
    window = d.get("sliding_window")
    max_pos = d.get("max_position_embeddings", 2048)
    if d.get("use_sliding_window", model_type == "mistral") and window and window < max_pos:
        raise CheckpointError(f"{source}: sliding-window attention ({window}) is not implemented")
    if d.get("mlp_bias"):
        raise CheckpointError(f"{source}: MLP biases (mlp_bias) are not implemented")
    theta, scaling = _rope(d)
    heads = d.get("num_attention_heads", 32)
    return LanguageConfig(
        vocab_size=d.get("vocab_size", 32000), hidden_size=d.get("hidden_size", 4096),
        intermediate_size=d.get("intermediate_size", 11008), num_layers=d.get("num_hidden_layers", 32),
        num_heads=heads, num_kv_heads=d.get("num_key_value_heads") or heads, head_dim=d.get("head_dim"),
        max_position_embeddings=max_pos, rms_norm_eps=d.get("rms_norm_eps", 1e-6),
        rope_theta=theta, rope_scaling=scaling,
        attention_bias=model_type == "qwen2" or bool(d.get("attention_bias", False)),
        attention_out_bias=model_type != "qwen2" and bool(d.get("attention_bias", False)),
        tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
        bos_token_id=d.get("bos_token_id", 1), eos_token_id=d.get("eos_token_id", 2),
        pad_token_id=d.get("pad_token_id"),
    )


def language_to_hf(config: LanguageConfig) -> dict[str, Any]:
    return {
        # Qwen2 is the Llama layout with bias on q/k/v only; Llama's attention_bias covers o_proj too.
        "model_type": "qwen2" if config.attention_bias and not config.attention_out_bias else "llama",
        "vocab_size": config.vocab_size, "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size, "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_heads, "num_key_value_heads": config.num_kv_heads,
        "head_dim": config.head_dim, "max_position_embeddings": config.max_position_embeddings,
        "rms_norm_eps": config.rms_norm_eps, "rope_theta": config.rope_theta,
        "rope_scaling": config.rope_scaling, "attention_bias": config.attention_bias,
        "tie_word_embeddings": config.tie_word_embeddings, "hidden_act": "silu",
        "bos_token_id": config.bos_token_id, "eos_token_id": config.eos_token_id,
        "pad_token_id": config.pad_token_id,
    }
