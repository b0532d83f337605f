"""Issue 5, part B: the embedded world model end to end on the "tiny" budget (about a minute)."""

from __future__ import annotations

import json

import pytest
from PIL import Image

import llavakit
from llavakit.world.pipeline import _f1, build_tiny_world_model, evaluate_on_bench, normalise


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("world_model")
    return build_tiny_world_model(out, seed=0, budget="tiny", num_threads=2)


def test_tiny_pipeline_writes_a_loadable_model_that_answers(built) -> None:
    report = json.loads(built.report.read_text())
    assert report["budget"] == "tiny"
    assert set(report["timings_s"]) >= {"backbones", "stage1", "stage2", "total"}
    assert (built.stage1 / "mm_projector.safetensors").exists()
    assert report["summaries"]["stage2"]["output_kind"] == "checkpoint"

    llava = llavakit.load(built.model, dtype="fp32", device="cpu")
    assert llava.template.name == "vicuna_v1"
    image = Image.open(built.backbones.world / "images" / "bench" / "000000.png").convert("RGB")
    answer = llava.generate([[{"role": "user", "content": "<image>\nWhat is in the image?"}]], [[image]],
                            max_new_tokens=12)[0]
    assert isinstance(answer, str) and answer.strip()


def test_bench_evaluation_on_the_tiny_model(built) -> None:
    world = built.backbones.world
    result = evaluate_on_bench(built.model, world / "bench.jsonl", world / "images", limit=70)
    assert result["questions"] == 70
    keys = ("short/colour", "short/shape", "short/count", "short/position", "short/all", "mc/all", "pope/all")
    assert all(key in result for key in keys), result
    assert 0.0 <= result["short/all"]["accuracy"] <= 1.0 and 0.0 <= result["pope/all"]["f1"] <= 1.0
    # Stage 2 teaches the answer formats: POPE answers are yes/no, not sentences.
    assert 0.0 < result["pope/all"]["yes_ratio"] < 1.0 or result["pope/all"]["accuracy"] >= 0.5


def test_scoring_rules() -> None:
    assert normalise(" Red.\n") == "red" and normalise("Top left") == "top left"
    metrics = _f1([("yes", "yes"), ("no", "no"), ("yes", "no"), ("maybe", "yes")])
    assert metrics["precision"] == 0.5 and metrics["recall"] == 0.5 and metrics["accuracy"] == 0.5
