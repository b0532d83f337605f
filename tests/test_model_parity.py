"""The model against transformers on the same weights: same numbers, not just same shapes."""

from __future__ import annotations

import pytest
import torch
from tiny_models import (
    IMAGE_SIZE,
    IMAGE_TOKEN,
    TOKENS_PER_IMAGE,
    hf_llama,
    hf_llava,
    hf_vision_config,
    prompt_ids,
)
from transformers import CLIPVisionModel, SiglipVisionConfig, SiglipVisionModel

from llavakit.checkpoints import build_model, read_checkpoint
from llavakit.checkpoints.hf_configs import language_from_hf, vision_from_hf
from llavakit.config import LlavaConfig
from llavakit.model import LanguageModel, VisionTower
from llavakit.model.language import KVCache

TOL = 1e-4


def _load_tower(hf_model, kind_config) -> VisionTower:
    tower = VisionTower(kind_config)
    tower.load_state_dict(hf_model.state_dict())
    return tower.eval()


def test_clip_tower_matches_transformers_at_every_layer():
    torch.manual_seed(0)
    hf = CLIPVisionModel(hf_vision_config()).eval()
    ours = _load_tower(hf, vision_from_hf(hf.config.to_dict(), "test"))
    pixels = torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE)
    with torch.no_grad():
        states = hf(pixels, output_hidden_states=True).hidden_states
        for layer in (0, 1, -2, -1):
            assert (ours(pixels, layer) - states[layer]).abs().max() <= TOL


def test_siglip_tower_matches_transformers():
    torch.manual_seed(0)
    config = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                image_size=32, patch_size=8)
    hf = SiglipVisionModel(config).eval()
    ours = VisionTower(vision_from_hf(config.to_dict(), "test"))
    state = {k: v for k, v in hf.state_dict().items() if not k.startswith("head.")}
    ours.load_state_dict(state)
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        states = hf(pixels, output_hidden_states=True).hidden_states
        assert (ours.eval()(pixels, -1) - states[-1]).abs().max() <= TOL
        assert (ours(pixels, -2) - states[-2]).abs().max() <= TOL


def _decoder_pair(**kw):
    hf = hf_llama(**kw)
    ours = LanguageModel(language_from_hf(hf.config.to_dict(), "test"))
    ours.load_state_dict(hf.state_dict(), strict=False)
    return hf, ours.eval()


@pytest.mark.parametrize("kw", [
    {},  # grouped-query attention (4 heads, 2 kv heads)
    {"num_key_value_heads": 4},
    {"qwen2": True},
    {"tie_word_embeddings": True},
    {"rope_scaling": {"rope_type": "linear", "factor": 2.0}},
    {"rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 64}},
    {"attention_bias": True},
], ids=["gqa", "mha", "qwen2-bias", "tied", "rope-linear", "rope-llama3", "llama-bias"])
def test_decoder_matches_transformers(kw):
    hf, ours = _decoder_pair(**kw)
    if kw.get("tie_word_embeddings"):
        assert ours.lm_head.weight.data_ptr() == ours.model.embed_tokens.weight.data_ptr()
    if kw.get("attention_bias"):
        with torch.no_grad():
            for layer in hf.model.layers:
                layer.self_attn.o_proj.bias.normal_()
        ours.load_state_dict(hf.state_dict(), strict=False)
    ids = torch.randint(3, 100, (2, 40))
    with torch.no_grad():
        assert (hf(ids).logits - ours(ids)).abs().max() <= TOL


def _hf_pair():
    hf = hf_llava()
    return hf


def test_llava_hf_checkpoint_gives_same_logits_and_greedy_tokens(tmp_path):
    hf = _hf_pair()
    hf.save_pretrained(tmp_path / "hf")
    ours = build_model(read_checkpoint(tmp_path / "hf"))
    ids = torch.tensor([prompt_ids([1, 5, 6, 7], 1, [8, 9, 10, 11, 12])])
    pixels = torch.randn(1, 3, IMAGE_SIZE, IMAGE_SIZE)
    with torch.no_grad():
        reference = hf(input_ids=ids, pixel_values=pixels).logits
        logits = ours(ids, pixels)
    assert (reference - logits).abs().max() <= TOL
    # The image must matter, or this comparison proves little.
    with torch.no_grad():
        assert (ours(ids, torch.randn_like(pixels)) - logits).abs().max() > 1e-2
    expected = hf.generate(input_ids=ids, pixel_values=pixels, max_new_tokens=12, do_sample=False,
                           eos_token_id=None, pad_token_id=0, min_new_tokens=12)[0, ids.shape[1]:]
    got = ours.generate(ids, pixels, max_new_tokens=12, eos_token_ids=[])[0]
    assert got == expected.tolist()


def test_kv_cache_decoding_equals_full_recomputation():
    hf = _hf_pair()
    config = read_config_from(hf)
    model = model_from(hf, config)
    ids = torch.tensor([prompt_ids([1, 5, 6], 1, [8, 9, 10, 11, 12, 13, 14])])
    pixels = torch.randn(1, 3, IMAGE_SIZE, IMAGE_SIZE)
    with torch.no_grad():
        full = model(ids, pixels)
        cache = KVCache(config.language, 1, capacity=4)  # small: forces the buffers to grow
        split = 9
        first = model(ids[:, :split], pixels, cache=cache)
        steps = [model.language_model(ids[:, i:i + 1], cache=cache) for i in range(split, ids.shape[1])]
    stepped = torch.cat([first, *steps], dim=1)
    assert (full - stepped).abs().max() <= TOL


def read_config_from(hf) -> LlavaConfig:
    from llavakit.checkpoints.llava_hf import config_from_hf

    return config_from_hf(hf.config.to_dict(), __import__("pathlib").Path("/nonexistent"))


def model_from(hf, config):
    from llavakit.checkpoints.llava_hf import key_from_hf
    from llavakit.model import LlavaModel

    model = LlavaModel(config).eval()
    model.load_state_dict({key_from_hf(k): v for k, v in hf.state_dict().items()})
    return model


def test_mixed_batch_with_left_padding_equals_each_sample_alone():
    hf = _hf_pair()
    model = model_from(hf, read_config_from(hf))
    samples = [
        (prompt_ids([1, 5, 6, 7, 8, 9, 10]), 0),
        (prompt_ids([1, 5], 1, [8, 9, 10]), 1),
        (prompt_ids([1], 1, [4], 1, [8, 9]), 2),
    ]
    images = torch.randn(3, 3, IMAGE_SIZE, IMAGE_SIZE)
    length = max(len(ids) for ids, _ in samples)
    batch = torch.zeros(len(samples), length, dtype=torch.long)
    mask = torch.zeros_like(batch)
    for row, (ids, _) in enumerate(samples):
        batch[row, length - len(ids):] = torch.tensor(ids)
        mask[row, length - len(ids):] = 1
    with torch.no_grad():
        batched = model(batch, images, attention_mask=mask)
        batched_gen = model.generate(batch, images, attention_mask=mask, max_new_tokens=6, eos_token_ids=[])
        used = 0
        for row, (ids, n_images) in enumerate(samples):
            pixels = images[used:used + n_images]
            used += n_images
            alone = model(torch.tensor([ids]), pixels if n_images else None)
            assert (batched[row, length - len(ids):] - alone[0]).abs().max() <= TOL
            assert model.generate(torch.tensor([ids]), pixels if n_images else None, max_new_tokens=6,
                                  eos_token_ids=[])[0] == batched_gen[row]


def test_wrong_number_of_images_is_a_clear_error():
    hf = _hf_pair()
    model = model_from(hf, read_config_from(hf))
    ids = torch.tensor([prompt_ids([1, 5], 1, [8])])
    with pytest.raises(ValueError, match="1 images of 4 tokens.*but 2 images were given"):
        model(ids, torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE))
    assert IMAGE_TOKEN in ids


def test_cls_patch_features_match_transformers_full_strategy(tmp_path):
    hf = hf_llava(seed=4)
    hf.config.vision_feature_select_strategy = "full"
    hf.config.image_seq_length = TOKENS_PER_IMAGE + 1
    hf.save_pretrained(tmp_path / "hf")
    checkpoint = read_checkpoint(tmp_path / "hf")
    assert checkpoint.config.vision_feature_select == "cls_patch"
    assert checkpoint.config.tokens_per_image == TOKENS_PER_IMAGE + 1
    model = build_model(checkpoint)
    ids = torch.tensor([[1, 5] + [IMAGE_TOKEN] * (TOKENS_PER_IMAGE + 1) + [8, 9]])
    pixels = torch.randn(1, 3, IMAGE_SIZE, IMAGE_SIZE)
    with torch.no_grad():
        assert (hf(input_ids=ids, pixel_values=pixels).logits - model(ids, pixels)).abs().max() <= TOL


@pytest.mark.parametrize("kind,linears", [("linear", 1), ("mlp2x_gelu", 2), ("mlp3x_gelu", 3), ("identity", 0)])
def test_projector_variants(kind, linears):
    from llavakit.config import ProjectorConfig
    from llavakit.model import build_projector

    width = 32 if kind == "identity" else 48
    projector = build_projector(ProjectorConfig(kind), 32, width)
    layers = [m for m in projector if isinstance(m, torch.nn.Linear)]
    assert len(layers) == linears
    x = torch.randn(2, 5, 32)
    y = projector(x)
    assert y.shape == (2, 5, width)
    if kind == "identity":
        assert torch.equal(x, y)
    if kind == "mlp3x_gelu":  # Linear, GELU, Linear, GELU, Linear, at indices 0..4
        h = torch.nn.functional.gelu(layers[1](torch.nn.functional.gelu(layers[0](x))))
        assert torch.allclose(layers[2](h), y)
    with pytest.raises(ValueError, match="unknown projector type"):
        ProjectorConfig("mlp2x_relu")


def test_right_padding_equals_each_sample_alone():
    hf = _hf_pair()
    model = model_from(hf, read_config_from(hf))
    samples = [prompt_ids([1, 5], 1, [8, 9, 10, 11, 12]), prompt_ids([1, 7, 8])]
    length = max(map(len, samples))
    batch = torch.zeros(2, length, dtype=torch.long)
    mask = torch.zeros_like(batch)
    for row, ids in enumerate(samples):
        batch[row, :len(ids)] = torch.tensor(ids)
        mask[row, :len(ids)] = 1
    pixels = torch.randn(1, 3, IMAGE_SIZE, IMAGE_SIZE)
    with torch.no_grad():
        batched = model(batch, pixels, attention_mask=mask)
        assert (batched[0] - model(torch.tensor([samples[0]]), pixels)[0]).abs().max() <= TOL
        assert (batched[1, :len(samples[1])] - model(torch.tensor([samples[1]]))[0]).abs().max() <= TOL
