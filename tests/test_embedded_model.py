"""Issue 5: the model shipped inside the package is the default, small, scored and answers its examples."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest

import llavakit
from llavakit.cli import main
from llavakit.defaults import default_model_reference
from llavakit.world.card import TIME_TARGET_S
from llavakit.world.ship import example_questions, example_scene, shipped_model_dir

SHIPPED = shipped_model_dir()
README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_package_ships_a_model_under_25_mb() -> None:
    assert SHIPPED is not None, "llavakit/assets/tiny-world is missing: python -m llavakit.world.ship RUN_DIR"
    total = sum(p.stat().st_size for p in SHIPPED.rglob("*") if p.is_file())
    assert total <= 25 * 2**20, f"{total / 2**20:.1f} MB"
    assert default_model_reference() == str(SHIPPED)


def test_scores_and_recipe_are_recorded_with_the_weights() -> None:
    record = json.loads((SHIPPED / "scores.json").read_text())
    assert record["recipe"]["name"] == "tiny-world" and record["recipe"]["budget"] == "full"
    assert isinstance(record["recipe"]["seed"], int)
    final = record["scores"]["final"]
    assert {"short", "short_accuracy", "mc_accuracy", "pope_f1"} <= set(final)
    card = (SHIPPED / "README.md").read_text()
    assert f"{final['short_accuracy']:.1f}" in card and "What it cannot do" in card
    # The recipe's whole time is the card's last timing row, within issue 5's 20 minutes (the
    # shipped run took 19.4, 1 161 s); a card over the target would have to say so.
    total = record["timings_s"]["total"]
    assert f"| **total** | **{total:.0f}** |" in card
    assert total <= TIME_TARGET_S
    assert "the recipe's time" not in card


@pytest.fixture(scope="module")
def shipped():
    return llavakit.load(SHIPPED, dtype="fp32", device="cpu")


def test_the_examples_are_the_recorded_scenes() -> None:
    # The bundled example answers come from the scenes' annotations, not from the model.
    examples = json.loads((SHIPPED / "examples" / "examples.json").read_text())
    scene = example_scene(3, 3)
    assert [e for e in examples if e["image"] == "three-shapes.png"] == [
        {"image": "three-shapes.png", **q} for q in example_questions(scene)]


def test_the_shipped_model_answers_the_bundled_examples(shipped) -> None:
    examples = json.loads((SHIPPED / "examples" / "examples.json").read_text())
    conversations = [[{"role": "user", "content": "<image>\n" + e["question"]}] for e in examples]
    images = [[SHIPPED / "examples" / e["image"]] for e in examples]
    answers = shipped.generate(conversations, images, max_new_tokens=8)
    wrong = [(e["question"], e["answer"], a) for e, a in zip(examples, answers) if a.lower() != e["answer"].lower()]
    assert not wrong


def test_ask_without_model_uses_the_embedded_one(capsys) -> None:
    example = json.loads((SHIPPED / "examples" / "examples.json").read_text())[0]
    assert main(["ask", "--image", str(SHIPPED / "examples" / example["image"]), example["question"]]) == 0
    assert capsys.readouterr().out.strip().lower() == example["answer"].lower()


def test_the_readme_first_command_gets_the_right_answer(capsys) -> None:
    # The README's first command asks in free form (no short-answer suffix); its answer must
    # name what the example scene's annotations say.
    line = next(x for x in README.read_text().splitlines() if x.startswith("pip install") and "llavakit ask" in x)
    args = shlex.split(line.split("&&", 1)[1])[1:]
    at = args.index("--image") + 1
    image, question = README.parent / args[at], args[-1]
    args[at] = str(image)
    examples = json.loads((SHIPPED / "examples" / "examples.json").read_text())
    expected = next(e["answer"] for e in examples
                    if e["image"] == image.name and e["question"].split("\n")[0] == question)
    assert main(args) == 0
    assert expected in capsys.readouterr().out.lower().split(".")[0].split()


def test_serve_without_model_answers_with_the_embedded_one(tmp_path) -> None:
    import base64

    import openai
    from test_serve_helpers import running_server

    example = json.loads((SHIPPED / "examples" / "examples.json").read_text())[0]
    data = base64.b64encode((SHIPPED / "examples" / example["image"]).read_bytes()).decode()
    with running_server([], tmp_path / "serve.log") as (_, url):
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused")
        model = client.models.list().data[0].id
        reply = client.chat.completions.create(model=model, temperature=0, max_tokens=8, messages=[{
            "role": "user", "content": [{"type": "image_url", "image_url": {"url": f"data:image/png;base64,{data}"}},
                                        {"type": "text", "text": example["question"]}]}])
    assert reply.choices[0].message.content.strip().lower() == example["answer"].lower()
