"""Tiny random models for tests: transformers' classes and the matching llavakit configs.

Sizes follow transformers' own tests (width 32, 2 layers, 28-pixel images) so every forward
pass takes milliseconds.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import (
    CLIPVisionConfig,
    CLIPVisionModel,
    LlamaConfig,
    LlamaForCausalLM,
    LlavaForConditionalGeneration,
)
from transformers import LlavaConfig as HFLlavaConfig

from llavakit.config import LanguageConfig, LlavaConfig, ProjectorConfig, VisionConfig

VOCAB = 128
IMAGE_TOKEN = 120
IMAGE_SIZE = 28
PATCH = 14
TOKENS_PER_IMAGE = (IMAGE_SIZE // PATCH) ** 2


def hf_vision_config(**overrides) -> CLIPVisionConfig:
    kw = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
              image_size=IMAGE_SIZE, patch_size=PATCH)
    return CLIPVisionConfig(**{**kw, **overrides})


def hf_text_config(**overrides) -> LlamaConfig:
    kw = dict(vocab_size=VOCAB, hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=256, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    return LlamaConfig(**{**kw, **overrides})


def hf_llava(seed: int = 0, **text_overrides) -> LlavaForConditionalGeneration:
    torch.manual_seed(seed)
    config = HFLlavaConfig(vision_config=hf_vision_config(), text_config=hf_text_config(**text_overrides),
                           image_token_index=IMAGE_TOKEN, image_seq_length=TOKENS_PER_IMAGE)
    model = LlavaForConditionalGeneration(config).eval()
    # Random init leaves the projector tiny; scale it up so images visibly change the logits.
    with torch.no_grad():
        for p in model.model.multi_modal_projector.parameters():
            p.mul_(20)
    return model


def our_config(**overrides) -> LlavaConfig:
    kw = dict(
        vision=VisionConfig(image_size=IMAGE_SIZE, patch_size=PATCH, hidden_size=32, intermediate_size=64,
                            num_layers=3, num_heads=4),
        projector=ProjectorConfig("mlp2x_gelu"),
        language=LanguageConfig(vocab_size=VOCAB, hidden_size=48, intermediate_size=96, num_layers=2, num_heads=4,
                                num_kv_heads=2, max_position_embeddings=256, rms_norm_eps=1e-6, pad_token_id=0),
        image_token_id=IMAGE_TOKEN,
    )
    return LlavaConfig(**{**kw, **overrides})


def prompt_ids(*pieces: list[int] | int) -> list[int]:
    """Ids from pieces: a list is text tokens, an int n>0 is one image (n slots are written)."""
    ids: list[int] = []
    for piece in pieces:
        ids += piece if isinstance(piece, list) else [IMAGE_TOKEN] * TOKENS_PER_IMAGE
    return ids


def write_original_llava(hf: LlavaForConditionalGeneration, directory: Path, tower_dir: Path) -> None:
    """Write `hf`'s weights as the original LLaVA repository lays them out (.bin shards)."""
    directory.mkdir(parents=True, exist_ok=True)
    tower = CLIPVisionModel(hf.config.vision_config)
    tower.load_state_dict(hf.model.vision_tower.state_dict())
    tower.save_pretrained(tower_dir)
    state = {}
    for key, tensor in hf.model.language_model.state_dict().items():
        state["model." + key] = tensor.clone()
    state["lm_head.weight"] = hf.lm_head.weight.clone()
    for i, name in ((0, "linear_1"), (2, "linear_2")):
        for param in ("weight", "bias"):
            state[f"model.mm_projector.{i}.{param}"] = getattr(hf.model.multi_modal_projector, name)._parameters[param].clone()
    keys = sorted(state)
    halves = [keys[: len(keys) // 2], keys[len(keys) // 2:]]
    weight_map = {}
    for i, part in enumerate(halves, start=1):
        name = f"pytorch_model-0000{i}-of-00002.bin"
        torch.save({k: state[k] for k in part}, directory / name)
        weight_map.update(dict.fromkeys(part, name))
    (directory / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": weight_map}))
    text = hf.config.text_config.to_dict()
    config = {
        **{k: text[k] for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                                "num_attention_heads", "num_key_value_heads", "max_position_embeddings",
                                "rms_norm_eps", "bos_token_id", "eos_token_id", "pad_token_id")},
        "rope_theta": 10000.0,
        "architectures": ["LlavaLlamaForCausalLM"],
        "model_type": "llava_llama",
        "mm_vision_tower": str(tower_dir),
        "mm_hidden_size": hf.config.vision_config.hidden_size,
        "mm_projector_type": "mlp2x_gelu",
        "mm_vision_select_layer": -2,
        "mm_vision_select_feature": "patch",
        "image_aspect_ratio": "pad",
        "mm_use_im_start_end": False,
        "mm_use_im_patch_token": False,
        "mm_patch_merge_type": "flat",
        "tokenizer_padding_side": "right",
    }
    (directory / "config.json").write_text(json.dumps(config, indent=2))


def hf_llama(seed: int = 0, qwen2: bool = False, **overrides) -> torch.nn.Module:
    torch.manual_seed(seed)
    if qwen2:
        from transformers import Qwen2Config, Qwen2ForCausalLM

        kw = dict(vocab_size=VOCAB, hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
        model = Qwen2ForCausalLM(Qwen2Config(**{**kw, **overrides}))
        with torch.no_grad():  # biases start at zero; make them matter
            for layer in model.model.layers:
                for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                    proj.bias.normal_(0, 0.5)
        return model.eval()
    return LlamaForCausalLM(hf_text_config(**overrides)).eval()


def make_tiny_checkpoint(directory: Path, seed: int = 0, context: int = 256) -> Path:
    """A complete llavakit checkpoint folder (random weights + a real tokenizer), in about a second.

    The tokenizer is the test sentencepiece Llama tokenizer; the image slots use -200 (outside
    the vocabulary) as the original LLaVA does; the template is vicuna_v1.
    """
    from tokenizers_for_tests import build_llama_sp_tokenizer

    from llavakit.checkpoints import save_checkpoint
    from llavakit.model import LlavaModel

    directory = Path(directory)
    tokenizer = build_llama_sp_tokenizer(directory.parent / f"{directory.name}_tokenizer_build")
    torch.manual_seed(seed)
    config = our_config(image_token_id=-200)
    config.language.vocab_size = len(tokenizer)
    config.language.pad_token_id = None
    config.language.max_position_embeddings = context
    model = LlavaModel(config).eval()
    with torch.no_grad():
        for p in model.projector.parameters():
            p.mul_(20)
    save_checkpoint(model, tokenizer, directory)
    return directory
