"""Checkpoint formats: llava-hf, original LLaVA, projector-only, our own; export; hub ids; errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from tiny_models import IMAGE_SIZE, hf_llava, prompt_ids, write_original_llava
from transformers import LlamaForCausalLM, LlavaForConditionalGeneration

from llavakit.checkpoints import (
    CheckpointError,
    build_model,
    detect_format,
    export_llava_hf,
    read_checkpoint,
    read_projector_only,
    save_checkpoint,
)
from llavakit.checkpoints.io import read_state_dict, weight_files

TOL = 1e-4
IDS = torch.tensor([prompt_ids([1, 5, 6, 7], 1, [8, 9, 10, 11])])


@pytest.fixture(scope="module")
def hf_model():
    return hf_llava(seed=1)


@pytest.fixture(scope="module")
def pixels():
    torch.manual_seed(3)
    return torch.randn(1, 3, IMAGE_SIZE, IMAGE_SIZE)


def _reference_logits(hf_model, pixels):
    with torch.no_grad():
        return hf_model(input_ids=IDS, pixel_values=pixels).logits


def _logits(model, pixels):
    with torch.no_grad():
        return model(IDS, pixels)


def test_format_comes_from_config_content_not_folder_name(tmp_path, hf_model):
    # Folder names that would mislead a name-matching loader.
    hf_dir = tmp_path / "llava-v1.5-7b-lora-original"
    hf_model.save_pretrained(hf_dir)
    original_dir = tmp_path / "llava-hf-model"
    write_original_llava(hf_model, original_dir, tmp_path / "clip")
    assert read_checkpoint(hf_dir).format == "llava-hf"
    assert read_checkpoint(original_dir).format == "llava-original"
    with pytest.raises(CheckpointError, match="'llama' model, not a LLaVA model"):
        detect_format({"model_type": "llama", "architectures": ["LlamaForCausalLM"]})


def test_original_llava_checkpoint_matches_transformers(tmp_path, hf_model, pixels):
    write_original_llava(hf_model, tmp_path / "orig", tmp_path / "clip")
    checkpoint = read_checkpoint(tmp_path / "orig")
    assert checkpoint.config.template == "vicuna_v1"
    assert checkpoint.config.image_aspect == "pad"
    assert checkpoint.config.image_token_id == -200  # not in the vocabulary, never embedded
    model = build_model(checkpoint)
    ids = IDS.masked_fill(hf_model.config.image_token_index == IDS, -200)
    with torch.no_grad():
        logits = model(ids, pixels)
    assert (logits - _reference_logits(hf_model, pixels)).abs().max() <= TOL
    expected = hf_model.generate(input_ids=IDS, pixel_values=pixels, max_new_tokens=8, min_new_tokens=8,
                                 do_sample=False, eos_token_id=None, pad_token_id=0)[0, IDS.shape[1]:]
    assert model.generate(ids, pixels, max_new_tokens=8, eos_token_ids=[])[0] == expected.tolist()


def test_projector_only_checkpoint_on_base_llm_and_clip(tmp_path, hf_model, pixels):
    write_original_llava(hf_model, tmp_path / "orig", tmp_path / "clip")
    llm = LlamaForCausalLM(hf_model.config.text_config)
    llm.model.load_state_dict(hf_model.model.language_model.state_dict())
    llm.lm_head.load_state_dict(hf_model.lm_head.state_dict())
    llm.save_pretrained(tmp_path / "vicuna")
    stage1 = tmp_path / "stage1"
    stage1.mkdir()
    projector = hf_model.model.multi_modal_projector
    torch.save({"model.mm_projector.0.weight": projector.linear_1.weight.clone(),
                "model.mm_projector.0.bias": projector.linear_1.bias.clone(),
                "model.mm_projector.2.weight": projector.linear_2.weight.clone(),
                "model.mm_projector.2.bias": projector.linear_2.bias.clone()}, stage1 / "mm_projector.bin")
    with pytest.raises(CheckpointError, match="pass projector_type"):
        read_projector_only(stage1 / "mm_projector.bin", tmp_path / "vicuna", tmp_path / "clip")
    checkpoint = read_projector_only(stage1 / "mm_projector.bin", tmp_path / "vicuna", tmp_path / "clip",
                                     projector_type="mlp2x_gelu")
    assert checkpoint.config.template == "plain"
    model = build_model(checkpoint)
    ids = IDS.masked_fill(hf_model.config.image_token_index == IDS, -200)
    with torch.no_grad():
        assert (model(ids, pixels) - _reference_logits(hf_model, pixels)).abs().max() <= TOL


def test_export_round_trip_is_bit_identical_and_transformers_agrees(tmp_path, hf_model, pixels):
    hf_model.save_pretrained(tmp_path / "hf")
    model = build_model(read_checkpoint(tmp_path / "hf"))
    export_llava_hf(model, None, tmp_path / "export")
    again = build_model(read_checkpoint(tmp_path / "export"))
    for key, tensor in model.state_dict().items():
        assert torch.equal(tensor, again.state_dict()[key]), key
    exported = read_state_dict(weight_files(tmp_path / "export"))
    assert "vision_tower.vision_model.embeddings.class_embedding" in exported  # the hub layout
    assert "language_model.model.embed_tokens.weight" in exported
    reloaded = LlavaForConditionalGeneration.from_pretrained(tmp_path / "export").eval()
    for ours_key, tensor in hf_model.state_dict().items():
        assert torch.equal(tensor, reloaded.state_dict()[ours_key]), ours_key
    with torch.no_grad():
        theirs = reloaded(input_ids=IDS, pixel_values=pixels).logits
    assert (theirs - _logits(model, pixels)).abs().max() <= TOL


def test_transformers_4x_and_5x_key_layouts_load_the_same(tmp_path, hf_model, pixels):
    hf_model.save_pretrained(tmp_path / "hf")
    state = load_file(tmp_path / "hf" / "model.safetensors")
    layout_5x = {}
    for key, tensor in state.items():
        if key.startswith("language_model.model."):
            key = "model.language_model." + key[len("language_model.model."):]
        elif key == "language_model.lm_head.weight":
            key = "lm_head.weight"
        else:
            key = "model." + key
        layout_5x[key] = tensor
    save_file(layout_5x, tmp_path / "hf" / "model.safetensors")
    model = build_model(read_checkpoint(tmp_path / "hf"))
    assert (_logits(model, pixels) - _reference_logits(hf_model, pixels)).abs().max() <= TOL


def test_own_format_round_trip_with_shards(tmp_path, hf_model):
    hf_model.save_pretrained(tmp_path / "hf")
    model = build_model(read_checkpoint(tmp_path / "hf"))
    save_checkpoint(model, None, tmp_path / "ours", max_shard_bytes=40_000)
    shards = sorted(p.name for p in (tmp_path / "ours").glob("model-*.safetensors"))
    assert len(shards) > 2 and (tmp_path / "ours" / "model.safetensors.index.json").is_file()
    checkpoint = read_checkpoint(tmp_path / "ours")
    assert checkpoint.format == "llavakit"
    again = build_model(checkpoint)
    for key, tensor in model.state_dict().items():
        assert torch.equal(tensor, again.state_dict()[key]), key


def test_a_tied_head_is_written_once_and_re_tied_on_load(tmp_path, pixels):
    """Both writers leave a head tied to the embeddings out of the file; loading ties it again."""
    tied = hf_llava(seed=2, tie_word_embeddings=True)
    tied.save_pretrained(tmp_path / "hf")
    model = build_model(read_checkpoint(tmp_path / "hf"))
    save_checkpoint(model, None, tmp_path / "ours")
    export_llava_hf(model, None, tmp_path / "export")
    for folder in ("ours", "export"):
        assert "language_model.lm_head.weight" not in read_state_dict(weight_files(tmp_path / folder))
        again = build_model(read_checkpoint(tmp_path / folder))
        assert again.language_model.lm_head.weight is again.language_model.model.embed_tokens.weight
        assert torch.equal(_logits(again, pixels), _logits(model, pixels)), folder


def test_dtype_and_device_on_load(tmp_path, hf_model):
    hf_model.save_pretrained(tmp_path / "hf")
    model = build_model(read_checkpoint(tmp_path / "hf"), dtype=torch.bfloat16, device="cpu")
    assert model.dtype == torch.bfloat16
    assert all(p.device.type == "cpu" and not p.is_meta for p in model.parameters())
    assert model.language_model.inv_freq.dtype == torch.float32


def test_missing_unexpected_and_misshaped_keys_are_named(tmp_path, hf_model):
    hf_model.save_pretrained(tmp_path / "hf")
    path = tmp_path / "hf" / "model.safetensors"
    state = load_file(path)
    del state["multi_modal_projector.linear_2.bias"]
    state["language_model.model.extra.weight"] = torch.zeros(2)
    state["language_model.model.norm.weight"] = torch.zeros(7)
    save_file(state, path)
    with pytest.raises(CheckpointError) as err:
        build_model(read_checkpoint(tmp_path / "hf"))
    message = str(err.value)
    assert str(tmp_path / "hf") in message
    assert "missing keys: projector.2.bias" in message
    assert "unexpected keys: language_model.model.extra.weight" in message
    assert "language_model.model.norm.weight (file (7,), model (48,))" in message


def test_corrupt_and_absent_files_are_named(tmp_path, hf_model):
    hf_model.save_pretrained(tmp_path / "hf")
    weights = tmp_path / "hf" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=f"cannot read weights file {weights}"):
        read_checkpoint(tmp_path / "hf")
    weights.unlink()
    with pytest.raises(CheckpointError, match="no weights in"):
        read_checkpoint(tmp_path / "hf")
    (tmp_path / "hf" / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="config.json is not valid JSON"):
        read_checkpoint(tmp_path / "hf")
    with pytest.raises(CheckpointError, match="no checkpoint folder"):
        read_checkpoint(tmp_path / "nowhere" / "x" / "y")


def test_original_bin_files_load_with_weights_only(tmp_path, hf_model):
    write_original_llava(hf_model, tmp_path / "orig", tmp_path / "clip")
    shard = next((tmp_path / "orig").glob("pytorch_model-00001*.bin"))

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    torch.save({"x": Evil()}, shard)
    with pytest.raises(CheckpointError, match=f"cannot read weights file {shard}"):
        read_checkpoint(tmp_path / "orig")


_HUB_SCRIPT = """
import sys
from llavakit.checkpoints import read_checkpoint, CheckpointError
try:
    print(read_checkpoint(sys.argv[1]).format)
except CheckpointError as err:
    print("ERROR", err)
"""


def _run_offline(reference: str, hf_home: Path) -> str:
    env = {**os.environ, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    out = subprocess.run([sys.executable, "-c", _HUB_SCRIPT, reference], env=env, capture_output=True,
                         text=True, timeout=120)
    return out.stdout.strip() + out.stderr[-2000:]


def test_hub_ids_resolve_through_the_hub_cache_offline(tmp_path, hf_model):
    assert "could not be fetched from the hub" in _run_offline("someone/absent-model", tmp_path / "hf_home")
    revision = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hf_home" / "hub" / "models--tiny--llava"
    hf_model.save_pretrained(repo / "snapshots" / revision)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(revision)
    assert _run_offline("tiny/llava", tmp_path / "hf_home").startswith("llava-hf")


def test_unsupported_llava_options_are_refused_clearly(tmp_path, hf_model):
    write_original_llava(hf_model, tmp_path / "orig", tmp_path / "clip")
    config_path = tmp_path / "orig" / "config.json"
    config = json.loads(config_path.read_text())
    config["mm_use_im_start_end"] = True
    config_path.write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="mm_use_im_start_end"):
        read_checkpoint(tmp_path / "orig")
