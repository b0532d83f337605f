"""The two LLaVA-1.5 stages, what trains in each, the feature cache, and LoRA save / merge / load."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from test_train_fixtures import caption_records, chat_records, tiny_recipe, write_images, write_json

import llavakit
from llavakit.api import from_checkpoint, image_processor_for, load_tokenizer
from llavakit.checkpoints import build_model, read_checkpoint
from llavakit.cli import main
from llavakit.conversation import get_template
from llavakit.train.build import initial_checkpoint
from llavakit.train.data import LlavaDataset
from llavakit.train.loop import Trainer, train
from llavakit.train.lora import adapter_model, is_adapter_dir
from llavakit.train.recipe import ModelSpec
from llavakit.train.step import dataset_loss

STAGE1 = ("model.template=plain", "train.trainable=[projector]", "train.lr=5e-2", "train.epochs=4")
STAGE2 = ("train.trainable=[projector,language_model]", "train.lr=3e-3", "train.epochs=3")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    names = write_images(root / "images", 24)
    return {"images": root / "images", "captions": write_json(root / "cap.json", caption_records(names)),
            "chat": write_json(root / "chat.jsonl", chat_records(names[:16], 8), jsonl=True)}


def _loss(checkpoint, path, images, template) -> float:
    model = build_model(checkpoint)
    tokenizer = load_tokenizer(checkpoint.tokenizer_dir)
    ds = LlavaDataset(path, config=model.config, template=get_template(template), tokenizer=tokenizer,
                      image_processor=image_processor_for(model.config), image_folder=images)
    return dataset_loss(model, ds, pad_id=0)


def _state(checkpoint):
    return {k: v.clone() for k, v in checkpoint.state.items()}


def test_stage1_then_stage2_lower_the_loss_and_train_only_their_parts(tmp_path, data, tiny_checkpoint):
    # Stage 1: the projector alone moves; the tower and the LLM are bit for bit the same.
    s1 = tmp_path / "stage1"
    trainer = Trainer(tiny_recipe(tiny_checkpoint, data["captions"], s1, f"data.image_folder={data['images']}", *STAGE1))
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.run()
    after = trainer.model.state_dict()
    for name, tensor in before.items():
        changed = not torch.equal(tensor, after[name])
        assert changed == name.startswith("projector."), name
    saved = load_file(s1 / "mm_projector.safetensors")
    assert {k.replace("model.mm_projector.", "projector.") for k in saved} == {k for k in before if k.startswith("projector.")}
    start = initial_checkpoint(ModelSpec(init=str(tiny_checkpoint), template="plain"), 0)
    aligned = initial_checkpoint(ModelSpec(init=str(tiny_checkpoint), template="plain", projector_from=str(s1)), 0)
    assert _loss(aligned, data["captions"], data["images"], "plain") < _loss(start, data["captions"], data["images"], "plain")

    # Stage 2 from the stage-1 folder: projector + LLM move, the tower does not.
    s2 = tmp_path / "stage2"
    summary = train(tiny_recipe(tiny_checkpoint, data["chat"], s2, f"data.image_folder={data['images']}",
                                f"model.projector_from={s1}", *STAGE2))
    assert summary["output_kind"] == "checkpoint"
    start2 = initial_checkpoint(ModelSpec(init=str(tiny_checkpoint), projector_from=str(s1)), 0)
    tuned = read_checkpoint(s2)
    for name, tensor in start2.state.items():
        changed = not torch.equal(tensor, tuned.state[name])
        assert changed == (not name.startswith("vision_tower.")), name
    assert _loss(tuned, data["chat"], data["images"], "vicuna_v1") < _loss(start2, data["chat"], data["images"], "vicuna_v1")
    log = [json.loads(line) for line in (s2 / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if r["event"] == "step"] == list(range(1, summary["steps"] + 1))
    assert all(r["tokens_per_s"] > 0 and r["padded_tokens"] >= 0 for r in log if r["event"] == "step")
    assert (s2 / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_unfrozen_tower_gets_its_own_learning_rate(tmp_path, data, tiny_checkpoint):
    recipe = tiny_recipe(tiny_checkpoint, data["chat"], tmp_path / "out", f"data.image_folder={data['images']}",
                         "train.trainable=[projector,language_model,vision_tower]", "train.lr=1e-3",
                         "train.projector_lr=2e-3", "train.vision_tower_lr=1e-4", "train.max_steps=2",
                         "train.weight_decay=0.1")
    trainer = Trainer(recipe)
    lrs = {(g["part"], g["weight_decay"]): g["lr"] for g in trainer.optimizer.param_groups}
    assert lrs == {("language_model", 0.0): 1e-3, ("language_model", 0.1): 1e-3, ("projector", 0.0): 2e-3,
                   ("projector", 0.1): 2e-3, ("vision_tower", 0.0): 1e-4, ("vision_tower", 0.1): 1e-4}
    before = trainer.model.vision_tower.encoder.layers[0].mlp.fc1.weight.clone()
    trainer.run()
    assert not torch.equal(before, trainer.model.vision_tower.encoder.layers[0].mlp.fc1.weight)


def test_feature_cache_gives_the_same_losses_and_is_reused(tmp_path, data, tiny_checkpoint):
    common = (f"data.image_folder={data['images']}", *STAGE1, "train.epochs=2", "cache.dtype=float32",
              f"cache.dir={tmp_path / 'cache'}")

    def losses(out):
        return [r["loss"] for r in map(json.loads, (out / "log.jsonl").read_text().splitlines()) if r["event"] == "step"]

    train(tiny_recipe(tiny_checkpoint, data["captions"], tmp_path / "live", *common))
    train(tiny_recipe(tiny_checkpoint, data["captions"], tmp_path / "cached", *common, "cache.features=true"))
    assert losses(tmp_path / "cached") == pytest.approx(losses(tmp_path / "live"), rel=1e-5, abs=1e-6)
    parts = list((tmp_path / "cache").glob("*/part-*"))
    assert len(parts) == 1 and len(json.loads((parts[0] / "paths.json").read_text())) == 24
    # A second run (and every epoch) reads the same part instead of computing anything.
    stamp = (parts[0] / "features.npy").stat().st_mtime_ns
    train(tiny_recipe(tiny_checkpoint, data["captions"], tmp_path / "again", *common, "cache.features=true"))
    assert list((tmp_path / "cache").glob("*/part-*")) == parts and (parts[0] / "features.npy").stat().st_mtime_ns == stamp
    assert losses(tmp_path / "again") == losses(tmp_path / "cached")


def test_lora_adapter_saves_merges_and_loads(tmp_path, data, tiny_checkpoint):
    out = tmp_path / "lora"
    summary = train(tiny_recipe(tiny_checkpoint, data["chat"], out, f"data.image_folder={data['images']}",
                                "lora.enabled=true", "lora.r=4", "lora.alpha=8", "lora.dropout=0.1",
                                "train.lr=2e-2", "train.projector_lr=2e-3", "train.max_steps=3"))
    assert summary["output_kind"] == "lora-adapter" and is_adapter_dir(out)
    config = json.loads((out / "adapter_config.json").read_text())
    assert (config["peft_type"], config["r"], config["lora_alpha"]) == ("LORA", 4, 8)
    adapter = load_file(out / "adapter_model.safetensors")
    assert adapter and all(k.startswith("base_model.model.language_model.model.layers.") and ".lora_" in k
                           for k in adapter)
    assert any(k.endswith("lora_B.weight") and v.abs().max() > 0 for k, v in adapter.items())  # trained (B starts at 0)
    assert set(load_file(out / "non_lora_trainables.safetensors")) == {
        "projector.0.weight", "projector.0.bias", "projector.2.weight", "projector.2.bias"}

    unmerged, _ = adapter_model(out, merge=False)  # live LoRA layers
    merged = llavakit.load(out, device="cpu")  # the adapter folder loads directly, merged on the fly
    assert read_checkpoint(out).format == "llavakit-lora"
    batch = merged.prepare([[{"role": "user", "content": "<image>\nWhat is in the picture?"}]],
                           [[data["images"] / "img000.png"]])
    with torch.no_grad():
        live = unmerged(batch.input_ids, batch.pixel_values, attention_mask=batch.attention_mask)
        folded = merged.model(batch.input_ids, batch.pixel_values, attention_mask=batch.attention_mask)
    assert (live - folded).abs().max() <= 1e-4 * live.abs().max()  # fp32; merging only reorders sums
    base = read_checkpoint(tiny_checkpoint).state
    assert not torch.equal(base["language_model.model.layers.0.self_attn.q_proj.weight"],
                           merged.model.state_dict()["language_model.model.layers.0.self_attn.q_proj.weight"])

    assert main(["merge", str(out), "--out", str(tmp_path / "merged")]) == 0
    plain = from_checkpoint(read_checkpoint(tmp_path / "merged"), device="cpu")
    with torch.no_grad():
        assert torch.equal(plain.model(batch.input_ids, batch.pixel_values, attention_mask=batch.attention_mask), folded)
    assert main(["merge", str(tmp_path / "merged"), "--out", str(tmp_path / "x")]) == 1


def test_qlora_asks_for_cuda_without_importing_bitsandbytes(tmp_path, data, tiny_checkpoint):
    import sys

    from llavakit.train.recipe import RecipeError

    recipe = tiny_recipe(tiny_checkpoint, data["chat"], tmp_path / "q", f"data.image_folder={data['images']}",
                         "lora.enabled=true", "lora.quantize=4bit")
    with pytest.raises(RecipeError, match="needs a CUDA device"):
        Trainer(recipe)
    assert "bitsandbytes" not in sys.modules
