"""Issue 5: the whole embedded-model recipe (`llavakit train tiny-world`) on the reduced budget."""

from __future__ import annotations

import json
import time

import pytest
from PIL import Image

import llavakit
from llavakit.cli import main
from llavakit.world.pipeline import load_world_recipe

# Chance on the benchmark's short questions: 6 colours, 5 shapes, counts 1-5, 9 positions.
CHANCE_SHORT = (1 / 6 + 1 / 5 + 1 / 5 + 1 / 9) / 4 * 100


@pytest.fixture(scope="module")
def reduced_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny_world")
    start = time.perf_counter()
    code = main(["train", "tiny-world", "budget=tiny", f"output={out}", "progress=false"])
    return out, code, time.perf_counter() - start


def test_reduced_recipe_trains_a_model_that_beats_chance(reduced_run, capsys) -> None:
    out, code, seconds = reduced_run
    assert code == 0
    assert seconds < 120, f"the reduced recipe took {seconds:.0f} s"
    summary = json.loads((out / "tiny_world.json").read_text())
    assert summary["recipe"]["budget"] == "tiny" and summary["recipe"]["seed"] == 0
    assert set(summary["timings_s"]) >= {"backbones", "stage1", "stage2", "eval_final", "eval_stage1_only", "total"}
    final, baseline = summary["scores"]["final"], summary["scores"]["stage1_only"]
    # Stage 2 teaches the answer formats and what the image holds; stage 1 alone does neither.
    assert final["short_accuracy"] > CHANCE_SHORT + 15, final
    assert final["short_accuracy"] > baseline["short_accuracy"] + 15
    # The scores are the `llavakit eval` benchmark's, stored where `llavakit eval` stores them.
    stored = json.loads((out / "eval" / "final" / "tiny-world" / "bench" / "scores.json").read_text())
    assert stored["scores"]["short_accuracy"] == final["short_accuracy"]


def test_the_run_is_a_loadable_model_and_a_rerun_continues(reduced_run) -> None:
    out, _, _ = reduced_run
    llava = llavakit.load(out / "stage2", dtype="fp32", device="cpu")
    assert llava.template.name == "vicuna_v1" and llava.config.tokens_per_image == 9
    image = Image.open(out / "backbones" / "world" / "images" / "bench" / "000000.png").convert("RGB")
    assert llava.ask(image, "How many objects are there in the image?", max_new_tokens=8).strip()
    # Everything is done, so the same command only rescores the stored predictions.
    start = time.perf_counter()
    assert main(["train", "tiny-world", "budget=tiny", f"output={out}", "progress=false"]) == 0
    assert time.perf_counter() - start < 20


def test_world_recipe_errors(tmp_path, capsys) -> None:
    assert load_world_recipe("tiny-world", ["seed=3"]).seed == 3
    assert main(["train", "tiny-world", "budget=huge", f"output={tmp_path}"]) == 1
    assert "budget 'huge' is not one of" in capsys.readouterr().err
    assert main(["train", "tiny-world", "epochs=3", f"output={tmp_path}"]) == 1
    assert "unknown field(s) epochs" in capsys.readouterr().err
