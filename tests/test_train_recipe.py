"""Recipes: packaged hyperparameters, YAML inheritance, overrides, validation, --dry-run, the CLI."""

from __future__ import annotations

import json

import pytest

from llavakit.cli import main
from llavakit.train import dry_run, load_recipe, packaged_recipes
from llavakit.train.recipe import RecipeError
from llavakit.train.sampler import split_global_batch


def test_packaged_recipes_carry_the_papers_hyperparameters():
    assert {"llava-v1.5-7b-pretrain", "llava-v1.5-7b-finetune", "llava-v1.5-7b-lora", "llava-v1.5-13b-pretrain",
            "llava-v1.5-13b-finetune", "llava-v1.5-13b-lora"} <= set(packaged_recipes())
    for size in ("7b", "13b"):
        pre, fine, lora = (load_recipe(f"llava-v1.5-{size}-{s}") for s in ("pretrain", "finetune", "lora"))
        for r in (pre, fine, lora):
            assert r.model.language_model == f"lmsys/vicuna-{size}-v1.5"
            assert r.model.vision_tower == "openai/clip-vit-large-patch14-336"
            assert (r.model.projector, r.model.vision_feature_layer, r.model.image_aspect) == ("mlp2x_gelu", -2, "pad")
            assert (r.train.schedule, r.train.warmup_ratio, r.train.weight_decay) == ("cosine", 0.03, 0.0)
            assert (r.data.max_length, r.train.precision, r.train.gradient_checkpointing, r.train.epochs) == (
                2048, "bf16", True, 1)
            assert r.data.path is None  # data paths are the user's to set
        assert (pre.train.lr, pre.train.global_batch_size, pre.train.trainable, pre.model.template) == (
            1e-3, 256, ["projector"], "plain")
        assert (fine.train.lr, fine.train.global_batch_size, fine.model.template) == (2e-5, 128, "vicuna_v1")
        assert fine.train.trainable == ["projector", "language_model"] and fine.data.group_by_modality_length
        assert (lora.lora.enabled, lora.lora.r, lora.lora.alpha, lora.train.lr, lora.train.projector_lr) == (
            True, 128, 256, 2e-4, 2e-5)


def test_overrides_coerce_types_and_reject_unknown_keys(tmp_path):
    r = load_recipe("llava-v1.5-7b-lora", ["train.lr=3e-5", "lora.r=8", "train.trainable=projector,language_model",
                                            "data.path=x.json", "model.projector_from=null", "train.max_steps=7"])
    assert r.train.lr == 3e-5 and isinstance(r.train.lr, float) and r.lora.r == 8 and r.train.max_steps == 7
    assert r.train.trainable == ["projector", "language_model"] and r.model.projector_from is None
    with pytest.raises(RecipeError, match="did you mean 'train.lr'"):
        load_recipe("llava-v1.5-7b-lora", ["train.lrr=1"])
    with pytest.raises(RecipeError, match="train.epochs must be of type int"):
        load_recipe("llava-v1.5-7b-lora", ["train.epochs=1.5"])
    with pytest.raises(RecipeError, match="train.trainable"):
        load_recipe("llava-v1.5-7b-lora", ["train.trainable=[tower]"])
    with pytest.raises(RecipeError, match="frozen vision tower"):
        load_recipe("llava-v1.5-7b-lora", ["cache.features=true", "train.trainable=[projector,vision_tower]"])
    with pytest.raises(RecipeError, match="no packaged recipe"):
        load_recipe("llava-v9")
    assert load_recipe("llava-v1.5-7b-lora", ["data.length_group_size=1024"]).data.length_group_size == 1024
    with pytest.raises(RecipeError, match="data.length_group_size 100 must be a positive multiple"):
        load_recipe("llava-v1.5-7b-lora", ["data.length_group_size=100"])
    with pytest.raises(RecipeError, match="only applies when data.group_by_modality_length is true"):
        load_recipe("llava-v1.5-7b-lora", ["data.length_group_size=1024", "data.group_by_modality_length=false"])
    child = tmp_path / "mine.yaml"
    child.write_text("base: llava-v1.5-7b-pretrain\nname: mine\ntrain:\n  lr: 5.0e-4\n")
    mine = load_recipe(child)
    assert (mine.name, mine.train.lr, mine.train.global_batch_size) == ("mine", 5e-4, 256)


def test_accumulation_is_derived_from_the_global_batch():
    r = load_recipe("llava-v1.5-7b-finetune")
    assert [r.accumulation(w) for w in (1, 2, 8)] == [8, 4, 1]
    with pytest.raises(RecipeError, match="not a multiple"):
        r.accumulation(3)
    # One process with 4 slots sees the same micro-batches as two processes with 2 each.
    batch = list(range(16))
    one = split_global_batch(batch, 4, 1, 4, 0)
    two = [split_global_batch(batch, 4, 2, 2, rank) for rank in (0, 1)]
    assert sorted(map(tuple, one)) == sorted(tuple(mb) for rank in two for mb in rank)


def test_dry_run_of_the_7b_and_13b_recipes_is_offline_and_plausible():
    d = dry_run(load_recipe("llava-v1.5-7b-pretrain"))
    p = d["parameters"]
    assert 7.0e9 < p["total"] < 7.1e9 and p["trainable"] == p["projector"] == 1024 * 4096 + 4096 + 4096 * 4096 + 4096
    assert (d["records"], d["steps"], d["accumulation"], d["global_batch_size"]) == (558128, 2181, 8, 256)
    assert 12 * 2**30 < d["memory_bytes"]["weights"] < 14 * 2**30  # bf16 frozen weights
    fine = dry_run(load_recipe("llava-v1.5-7b-finetune"), world_size=8)
    assert fine["strategy"] == "fsdp" and fine["accumulation"] == 1 and fine["steps"] == 5198
    assert fine["parameters"]["trainable"] == fine["parameters"]["projector"] + fine["parameters"]["language_model"]
    lora = dry_run(load_recipe("llava-v1.5-13b-lora"))
    assert 13.0e9 < lora["parameters"]["total"] - lora["parameters"]["lora"] < 13.5e9
    assert lora["parameters"]["trainable"] == lora["parameters"]["lora"] + lora["parameters"]["projector"]


def test_cli_dry_run_and_errors(capsys):
    assert main(["train", "llava-v1.5-7b-lora", "--dry-run", "--world-size", "8", "train.micro_batch_size=8"]) == 0
    out = capsys.readouterr().out
    assert "8 per device x 2 accumulation x 8 = 128 global" in out and "trainable" in out and "GiB" in out
    assert main(["train", "llava-v1.5-7b-lora", "lora.r=4", "--dry-run", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["parameters"]["lora"] > 0
    assert main(["train", "llava-v1.5-7b-lora", "train.global_batch_size=100", "--dry-run"]) == 1
    assert "not a multiple" in capsys.readouterr().err
    assert main(["train", "--list"]) == 0 and "llava-v1.5-13b-lora" in capsys.readouterr().out


def test_dry_run_of_a_local_checkpoint_counts_the_data_file(tmp_path, tiny_checkpoint):
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"conversations": [{"from": "human", "value": "hi"},
                                                          {"from": "gpt", "value": "hello"}]}) + "\n"
                            for _ in range(20)))
    r = load_recipe("llava-v1.5-7b-finetune", [f"model.init={tiny_checkpoint}", f"data.path={data}",
                                               "train.global_batch_size=8", "train.micro_batch_size=2", "train.epochs=3"])
    d = dry_run(r, world_size=2)
    assert (d["records"], d["steps"], d["accumulation"], d["strategy"]) == (20, 9, 2, "ddp")
    assert d["config"]["language"]["hidden_size"] == 48 and d["parameters"]["trainable_vision_tower"] == 0
