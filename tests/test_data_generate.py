"""`llavakit data generate`: COCO context, reply parsing, and whole runs against an HTTP endpoint.

`llm_endpoint` is a scripted stub server (tests/test_llm_client.py's StubServer) that answers
well-formed dialogues and descriptions, malformed text, 429s and 500s on purpose, depending on
markers in the captions.  It is meant to be swappable for a real `llavakit serve` running a tiny
model: yield ``Endpoint(url, model_name, stub=None)`` instead.  With a real model (random weights,
gibberish replies) only the structural assertions run: the run completes, every request is accounted
for as written, rejected (counted by reason) or failed, and whatever was written is valid LLaVA data.
"""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image
from test_llm_client import StubServer

from llavakit.cli import main
from llavakit.conversation import from_llava_conversations
from llavakit.data import check_dataset, load_coco, parse_reply
from llavakit.data.coco import normalise_box
from llavakit.data.parse import Rejected, parse_dialogue
from llavakit.data.prompts import FEW_SHOT, SYSTEM_PROMPTS, build_messages

# Markers planted in captions make the stub misbehave for that image.
BEHAVIOUR = {2: "[[429]]", 3: "[[malformed]]", 4: "[[500]]", 5: "[[empty]]", 6: "[[unbalanced]]"}
NO_CAPTIONS, NO_FILE = 7, 8


def write_coco(root: Path, n: int = 10, *, merged: bool = False, behaviour=BEHAVIOUR) -> dict:
    """A small COCO-style dataset: instances + captions JSON and tiny JPEGs."""
    images_dir = root / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    images, boxes, captions = [], [], []
    for i in range(1, n + 1):
        name = f"{i:012d}.jpg"
        images.append({"id": i, "file_name": name, "width": 200, "height": 100})
        if i != NO_FILE:
            Image.new("RGB", (20, 10), (i * 20 % 255, 90, 160)).save(images_dir / name)
        boxes.append({"image_id": i, "category_id": 1, "bbox": [20, 10, 50, 80]})
        boxes.append({"image_id": i, "category_id": 2, "bbox": [0, 0, 200, 100]})
        if i != NO_CAPTIONS:
            for k in range(5):
                captions.append({"image_id": i, "caption": f"A cat number {i} sits on a sofa, view {k}. "
                                 + behaviour.get(i, "")})
    categories = [{"id": 1, "name": "cat"}, {"id": 2, "name": "couch"}]
    instances = {"images": images, "annotations": boxes, "categories": categories}
    paths = {"images": images_dir, "captions": None}
    if merged:
        instances["annotations"] = boxes + captions
    else:
        paths["captions"] = root / "captions.json"
        paths["captions"].write_text(json.dumps({"images": images, "annotations": captions}))
    paths["annotations"] = root / "instances.json"
    paths["annotations"].write_text(json.dumps(instances))
    return paths


def scripted_reply():
    """The stub's behaviour: well-formed replies by kind, misbehaviour by caption marker."""
    seen: dict[str, int] = {}
    lock = threading.Lock()

    def respond(body):
        kind = next(k for k, p in SYSTEM_PROMPTS.items() if p == body["messages"][0]["content"])
        context = body["messages"][-1]["content"]
        with lock:
            seen[kind + context] = attempt = seen.get(kind + context, 0) + 1
        if "[[429]]" in context and attempt <= 2:
            return 429
        if "[[500]]" in context and attempt <= 1:
            return 500
        if "[[empty]]" in context:
            return "   "
        if "[[malformed]]" in context:
            return "Sorry, I cannot help with that."
        if "[[unbalanced]]" in context:
            return "Question:\nWhat is on the sofa?\n===\nQuestion:\nAnd next to it?"
        if kind == "detail":
            return ("The photo shows a small cat sitting on a large couch that fills the whole picture. The cat is "
                    "on the left half, looking relaxed, and the soft cushions around it make the room feel cosy.")
        first = context.splitlines()[0].split(".")[0]
        if kind == "reasoning":
            return (f"Question:\nWhy might the cat choose this spot?\n===\nAnswer:\n{first}. Cats like soft, "
                    "warm places where they can rest safely, and a couch offers both.")
        return (f"Question:\nWhat do you see?\n===\nAnswer:\n{first}.\n===\nQuestion:\nIs the cat relaxed?\n"
                "===\nAnswer:\nYes, it looks calm and comfortable.")

    return respond


@dataclass
class Endpoint:
    url: str
    model: str
    stub: StubServer | None  # None for a real server: only structural checks
    extra_args: tuple[str, ...] = ()  # e.g. ("--max-tokens", "32") for a tiny served model


@pytest.fixture(params=["stub", "served"])
def llm_endpoint(request):
    """The scripted stub, and a real `llavakit serve` running a tiny random model."""
    if request.param == "served":
        url, model = request.getfixturevalue("served_tiny_model")
        yield Endpoint(url, model, None, extra_args=("--max-tokens", "32"))
        return
    with StubServer(scripted_reply()) as server:
        yield Endpoint(server.url, "stub-llm", server)


# --- symbolic context and parsing ------------------------------------------------------------------
def test_context_has_captions_and_normalised_boxes(tmp_path):
    paths = write_coco(tmp_path, 3, merged=True)
    images = load_coco(paths["annotations"])
    assert [im.record_id for im in images] == ["000000000001", "000000000002", "000000000003"]
    assert normalise_box([20, 10, 50, 80], 200, 100) == (0.1, 0.1, 0.35, 0.9)
    assert normalise_box([10, 0, 300, 101], 200, 100) == (0.05, 0.0, 1.0, 1.0)  # clamped
    assert normalise_box([1, 1, 1, 1], 3, 3) == (0.333, 0.333, 0.667, 0.667)  # 3 decimals
    text = images[0].describe(with_boxes=True)
    assert text.splitlines()[5:] == ["", "cat: [0.1, 0.1, 0.35, 0.9]", "couch: [0.0, 0.0, 1.0, 1.0]"]
    assert "cat:" not in images[0].describe(with_boxes=False)
    split = write_coco(tmp_path / "split", 3)
    assert load_coco(split["annotations"], split["captions"])[1].captions == images[1].captions
    conversation = build_messages("conversation", images[0])
    assert conversation[0]["role"] == "system" and len(conversation) == 2 + 2 * len(FEW_SHOT["conversation"])
    assert "couch:" not in conversation[-1]["content"] and "couch:" in build_messages("detail", images[0])[-1]["content"]


@pytest.mark.parametrize("reply", [
    "Question:\nWhat is it?\n===\nAnswer:\nA cat.\n===\nQuestion:\nWhere?\n===\nAnswer:\nOn a sofa.",
    "Sure, here it is.\nQ: What is it?\nA: A cat.\nQ: Where?\nA: On a sofa.",
    "**Question 1:** What is it?\n**Answer 1:** A cat.\n\n**Question 2:** Where?\n**Answer 2:** On a sofa.",
    '{"question": "What is it?", "answer": "A cat."}\n{"question": "Where?", "answer": "On a sofa."}',
    "User: What is it?\nAssistant: A cat.\n---\nUser: Where?\nAssistant: On a sofa.",
])
def test_dialogue_formats_are_accepted(reply):
    assert parse_dialogue(reply) == [("What is it?", "A cat."), ("Where?", "On a sofa.")]
    record = parse_reply("conversation", reply, "42", "42.jpg")
    assert record["conversations"][0] == {"from": "human", "value": "<image>\nWhat is it?"}
    assert [t["from"] for t in record["conversations"]] == ["human", "gpt", "human", "gpt"]


@pytest.mark.parametrize("kind, reply, reason", [
    ("conversation", "", "empty"),
    ("conversation", "I cannot do that.", "no_qa_pairs"),
    ("reasoning", "Answer:\nYes.\n===\nQuestion:\nWhy?", "unbalanced_turns"),
    ("conversation", "Question:\nWhat?\n===\nQuestion:\nWho?\n===\nAnswer:\nMe.", "unbalanced_turns"),
    ("conversation", "Question:\n\n===\nAnswer:\nA cat.", "empty_turn"),
    ("detail", "A cat.", "too_short"),
    ("reasoning", "Question:\nWhat is it?\n===\nAnswer:\nAs the caption says, a cat.", "mentions_source"),
])
def test_bad_replies_are_rejected_by_reason(kind, reply, reason):
    with pytest.raises(Rejected) as err:
        parse_reply(kind, reply, "1", "1.jpg")
    assert err.value.reason == reason


def test_cut_replies_and_image_tags_in_text():
    with pytest.raises(Rejected, match="truncated"):
        parse_reply("detail", "word " * 40, "1", "1.jpg", finish_reason="length")
    record = parse_reply("detail", "The <image> shows " + "a cat " * 20, "1", "1.jpg")
    assert sum(t["value"].count("<image>") for t in record["conversations"]) == 1


# --- whole runs ---------------------------------------------------------------------------------------
def _generate(paths, endpoint, out, kind, *extra):
    args = ["data", "generate", "--annotations", str(paths["annotations"]), "--images", str(paths["images"]),
            "--kind", kind, "--endpoint", endpoint.url, "--model", endpoint.model, "--out", str(out),
            "--backoff", "0.01", "--concurrency", "3", "--no-progress", *extra]
    if paths["captions"]:
        args += ["--captions", str(paths["captions"])]
    return main(args + list(endpoint.extra_args))


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []


@pytest.mark.parametrize("kind", ["conversation", "detail", "reasoning"])
def test_generate_against_endpoint(llm_endpoint, tmp_path, kind, capsys):
    paths = write_coco(tmp_path, 10)
    out = tmp_path / f"{kind}.jsonl"
    status = _generate(paths, llm_endpoint, out, kind, "--temperature", "0")
    printed = capsys.readouterr().out
    assert "tokens: prompt" in printed and "image file missing 1" in printed and "no captions 1" in printed
    records = _records(out)
    for record in records:  # whatever was written is valid LLaVA data
        assert set(record) == {"id", "image", "conversations"} and (paths["images"] / record["image"]).is_file()
        messages = from_llava_conversations(record["conversations"])
        assert messages[0].role == "user" and messages[0].content.startswith("<image>\n")
        assert sum(m.content.count("<image>") for m in messages) == 1
    assert check_dataset(out, paths["images"]).clean
    assert len({r["id"] for r in records}) == len(records)
    rejects = tmp_path / f"{kind}.jsonl.rejects.jsonl"
    rejected = [json.loads(line) for line in rejects.read_text().splitlines()] if rejects.exists() else []
    assert len(records) + len(rejected) == 8  # every requested image is written or logged with a reason
    failed = sum(r["reason"] == "request_failed" for r in rejected)
    assert status == (1 if failed else 0) and f"failed: {failed}" in printed
    if llm_endpoint.stub is None:  # a real model: gibberish is rejected and counted, nothing more to know
        assert f"rejected: {len(rejected) - failed}" in printed
        return
    stub = llm_endpoint.stub
    assert {r["id"] for r in records} == {f"{i:012d}" for i in (1, 2, 4, 9, 10)}
    bad_dialogue = {"no_qa_pairs": 1, "empty": 1, "unbalanced_turns": 1}
    expected = {"too_short": 2, "empty": 1} if kind == "detail" else bad_dialogue
    assert {r["reason"]: sum(x["reason"] == r["reason"] for x in rejected) for r in rejected} == expected
    assert f"rejected: {sum(expected.values())}" in printed
    assert stub.statuses[429] == 2 and stub.statuses[500] == 1 and stub.errors_sent == 3
    assert "(retries 3," in printed and len(stub.bodies) == 8 + 3
    assert all(b["temperature"] == 0 and b["max_tokens"] == 1024 for b in stub.bodies)

    # A rerun only asks again for the images that were rejected: nothing is duplicated.
    assert _generate(paths, llm_endpoint, out, kind) == 0
    assert "already done 5" in capsys.readouterr().out
    assert len(stub.bodies) == 11 + 3 and len(_records(out)) == 5


def test_endpoint_failures_are_counted_or_stop_the_run(tmp_path, capsys):
    paths = write_coco(tmp_path, 3, behaviour={})
    with StubServer(lambda body: 503) as down:
        endpoint = Endpoint(down.url, "m", down)
        assert _generate(paths, endpoint, tmp_path / "a.jsonl", "detail", "--max-retries", "2") == 1
        assert "failed: 3" in capsys.readouterr().out and down.statuses[503] == 6
    with StubServer(lambda body: 401) as refusing:
        assert _generate(paths, Endpoint(refusing.url, "m", refusing), tmp_path / "b.jsonl", "detail") == 1
        assert "refused" in capsys.readouterr().err and len(refusing.bodies) <= 3


def test_killed_run_resumes_without_duplicates(tmp_path):
    """SIGKILL a generating subprocess mid-run, resume it, and compare with an uninterrupted run."""
    paths = write_coco(tmp_path, 30, behaviour={3: "[[malformed]]", 17: "[[unbalanced]]"})
    with StubServer(scripted_reply(), delay=0.15) as stub:
        endpoint = Endpoint(stub.url, "stub-llm", stub)
        out = tmp_path / "killed.jsonl"
        args = [sys.executable, "-m", "llavakit.cli", "data", "generate", "--annotations", str(paths["annotations"]),
                "--captions", str(paths["captions"]), "--images", str(paths["images"]), "--kind", "conversation",
                "--endpoint", stub.url, "--model", "stub-llm", "--out", str(out), "--concurrency", "2",
                "--no-progress"]
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
        proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and proc.poll() is None:
                if out.exists() and out.read_text().count("\n") >= 4:
                    break
                time.sleep(0.02)
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            proc.wait(timeout=30)
        assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
        written_before = len(_records(out))
        assert 4 <= written_before < 26, "the run finished before it could be killed"
        with open(out, "a") as f:
            f.write('{"id": "0000000000')  # as if the kill had landed mid-write

        assert _generate(paths, endpoint, out, "conversation") == 0
        assert _generate(paths, endpoint, tmp_path / "clean.jsonl", "conversation") == 0
    resumed = [r["id"] for r in _records(out)]
    clean = [r["id"] for r in _records(tmp_path / "clean.jsonl")]
    assert len(resumed) == len(set(resumed)) == 26  # 30 - no captions - no file - 2 rejected
    assert set(resumed) == set(clean)
