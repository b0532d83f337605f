"""`llavakit data check`: every planted problem is found, a clean file passes, --fix output is clean."""

import json
from pathlib import Path

import pytest
from PIL import Image

from llavakit.cli import main
from llavakit.data import PROBLEMS, check_dataset, fix_dataset, read_records
from llavakit.data.check import move_image_tags
from llavakit.data.lengths import TokenCounter


def turns(*values, first="human"):
    roles = ["human", "gpt"] if first == "human" else ["gpt", "human"]
    return [{"from": roles[i % 2], "value": v} for i, v in enumerate(values)]


CLEAN = [
    {"id": "ok1", "image": "a.png", "conversations": turns("<image>\nWhat is this?", "A red square.")},
    {"id": "ok2", "conversations": turns("Tell me a joke.", "Why did the cat sit on the laptop? To keep an eye on the mouse.")},
    {"id": 3, "image": ["a.png", "b.png"], "conversations": [{"from": "system", "value": "Be brief."}]
     + turns("<image>\n<image>\nCompare them.", "Red and blue.", "Which is brighter?", "The red one.")},
]
# One record per problem, in PROBLEMS order; the comment is the line the record is written on.
PLANTED = {
    "malformed_record": "this line is not JSON",  # line 4
    "unknown_role": {"id": "role", "conversations": [{"from": "human", "value": "hi"}, {"from": "bot", "value": "yo"}]},
    "role_order": {"id": "order", "conversations": turns("An answer first.", "Then a question?", first="gpt")},
    "empty_turn": {"id": "empty", "image": "a.png", "conversations": turns("<image>\nWhat is this?", "   ")},
    "image_tag_mismatch": {"id": "tags", "image": "a.png", "conversations": turns("<image>\n<image>\nTwo?", "One.")},
    "missing_image_tag": {"id": "notag", "image": "b.png", "conversations": turns("What colour is it?", "Blue.")},
    "misplaced_image_tag": {"id": "late", "image": "b.png",
                            "conversations": turns("What is this?\n<image>", "A blue square.", "Sure?", "Yes.")},
    "missing_image": {"id": "gone", "image": "nowhere.png", "conversations": turns("<image>\nAnd this?", "Nothing.")},
    "unreadable_image": {"id": "broken", "image": "corrupt.png", "conversations": turns("<image>\nThis?", "Noise.")},
    "duplicate_id": {"id": "ok1", "image": "b.png", "conversations": turns("<image>\nWhat is this?", "Blue.")},
    "duplicate_content": {"id": "copy", **{k: CLEAN[0][k] for k in ("image", "conversations")}},
}


def write_images(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (12, 8), (200, 30, 30)).save(folder / "a.png")
    Image.new("RGB", (8, 12), (30, 30, 200)).save(folder / "b.png")
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"definitely not an image" * 4)


def write_jsonl(path: Path, records) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


@pytest.fixture
def dataset(tmp_path):
    write_images(tmp_path / "img")
    return write_jsonl(tmp_path / "planted.jsonl", CLEAN + list(PLANTED.values())), tmp_path / "img"


def test_every_planted_problem_is_found(dataset):
    path, images = dataset
    report = check_dataset(path, images)
    assert list(PLANTED) == list(PROBLEMS)  # the fixture covers every kind of problem
    assert report.records == len(CLEAN) + len(PLANTED)
    assert {k: v for k, v in report.counts.items() if v} == dict.fromkeys(PROBLEMS, 1)
    for line, (problem, record) in enumerate(PLANTED.items(), start=len(CLEAN) + 1):
        example = report.examples[problem][0]
        assert f"line {line}" in example, (problem, example)
        if isinstance(record, dict):
            assert example.startswith(str(record["id"]))
    assert len(report.problems) == len(PLANTED) and report.images_checked == 4
    assert report.lengths.unit == "characters" and report.lengths.count == len(CLEAN) + 7  # all but the 4 that cannot be rendered


def test_clean_dataset_passes_in_both_formats(tmp_path, capsys):
    write_images(tmp_path)
    jsonl = write_jsonl(tmp_path / "clean.jsonl", CLEAN)
    array = tmp_path / "clean.json"
    array.write_text(json.dumps(CLEAN, indent=1))
    for path in (jsonl, array):
        report = check_dataset(path)  # images default to the file's folder
        assert report.clean and report.records == 3 and report.images_checked == 2
    assert [r.line for r in read_records(jsonl)] == [1, 2, 3] and [r.line for r in read_records(array)] == [None] * 3
    assert main(["data", "check", str(jsonl), "--no-histogram"]) == 0
    out = capsys.readouterr().out
    assert "no problems found" in out and "characters, not tokens" in out


def test_fix_writes_a_clean_copy(dataset, tmp_path, capsys):
    path, images = dataset
    fixed = tmp_path / "fixed.jsonl"
    png = tmp_path / "lengths.png"
    assert main(["data", "check", str(path), "--images", str(images), "--fix", str(fixed),
                 "--histogram", str(png), "--json", str(tmp_path / "report.json")]) == 0
    out = capsys.readouterr().out
    assert "missing_image: 1" in out and "dropped 8" in out and "ids renamed 1" in out and "tags moved" in out
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size == (900, 480)
    assert json.loads((tmp_path / "report.json").read_text())["problems"]["unreadable_image"] == 1
    records = {str(r["id"]): r for r in map(json.loads, fixed.read_text().splitlines())}
    assert set(records) == {"ok1", "ok2", "3", "notag", "late", "ok1_2"}
    assert records["late"]["conversations"][0]["value"] == "<image>\nWhat is this?"
    assert records["notag"]["conversations"][0]["value"] == "<image>\nWhat colour is it?"
    assert records["3"] == CLEAN[2]  # untouched records are copied as they are
    assert check_dataset(fixed, images).clean
    assert main(["data", "check", str(fixed), "--images", str(images), "--no-histogram"]) == 0
    assert main(["data", "check", str(path), "--images", str(images), "--no-histogram"]) == 1  # unfixed: problems


def test_fix_can_write_a_json_array(dataset, tmp_path):
    path, images = dataset
    report = check_dataset(path, images, decode_images=False)
    assert report.counts["unreadable_image"] == 0  # --skip-decode only checks that files exist
    fix = fix_dataset(path, check_dataset(path, images), tmp_path / "fixed.json")
    assert fix.kept == 6 and json.loads((tmp_path / "fixed.json").read_text())[0]["id"] == "ok1"


def test_move_image_tags():
    moved = move_image_tags(turns("Look <image> here", "Ok.", "and <image>", "Fine."), 2)
    assert [t["value"] for t in moved] == ["<image>\n<image>\nLook  here", "Ok.", "and", "Fine."]
    assert move_image_tags(turns("<image>", "A caption."), 1)[0]["value"] == "<image>"


def test_token_lengths_with_a_model(tiny_checkpoint, dataset, tmp_path, capsys):
    from tiny_models import TOKENS_PER_IMAGE

    import llavakit
    from llavakit.conversation import from_llava_conversations
    from llavakit.inputs import prepare_sample

    path, images = dataset
    png = tmp_path / "tokens.png"
    assert main(["data", "check", str(path), "--images", str(images), "--model", str(tiny_checkpoint),
                 "--max-length", "30", "--histogram", str(png)]) == 1
    out = capsys.readouterr().out
    assert "lengths in tokens over 10 records" in out and "over --max-length 30" in out
    assert Image.open(png).size == (900, 480)
    # The lengths are prepare_sample's, image tokens included: compare one record directly.
    model = llavakit.load(tiny_checkpoint, device="cpu")
    report = check_dataset(path, images, length_fn=TokenCounter(tiny_checkpoint), max_length=30)
    sample = prepare_sample(from_llava_conversations(CLEAN[0]["conversations"]), [images / "a.png"],
                            config=model.config, template=model.template, tokenizer=model.tokenizer,
                            image_processor=model.image_processor, add_generation_prompt=False, with_labels=True)
    assert report.length_values[0] == len(sample.input_ids)
    assert sample.input_ids.count(model.config.image_token_id) == TOKENS_PER_IMAGE
    assert report.lengths.over_max == sum(v > 30 for v in report.length_values)
