"""`llavakit ask`, `chat` and `batch` end to end on the tiny checkpoint, through real processes."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from llavakit import cli

# One torch thread per process: the test workers already use both cores.
COMMON = ("--threads", "1", "--max-new-tokens", "6")


def llavakit_cmd(*args: str) -> list[str]:
    # What the `llavakit` console script runs (not `python -m llavakit.cli`, which would make a
    # second copy of the cli module whose UserError the commands' errors are not instances of).
    return [sys.executable, "-c", "import sys; from llavakit.cli import main; sys.exit(main())", *args]


def run_cli(*args: str, stdin: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(llavakit_cmd(*args), input=stdin, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("images") / "photo.png"
    Image.fromarray((np.random.default_rng(0).random((30, 40, 3)) * 255).astype("uint8")).save(path)
    return path


def test_ask_prints_an_answer(tiny_checkpoint, image):
    done = run_cli("ask", "--model", str(tiny_checkpoint), "--image", str(image), "What is shown?", *COMMON)
    assert done.returncode == 0, done.stderr
    assert done.stdout.endswith("\n") and done.stdout.strip()
    assert done.stdout.count("\n") == 1


def test_ask_missing_image_is_one_line_error(tiny_checkpoint, tmp_path):
    missing = tmp_path / "nowhere.png"
    done = run_cli("ask", "--model", str(tiny_checkpoint), "--image", str(missing), "What?", *COMMON)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("llavakit ask: error:") and "nowhere.png" in lines[0]


def test_ask_without_model_and_without_an_embedded_one_explains(capsys, monkeypatch):
    # A installation without llavakit/assets/tiny-world (e.g. a trimmed wheel) says what to do.
    monkeypatch.setattr("llavakit.world.ship.package_model_dir", lambda: Path("/nonexistent/tiny-world"))
    assert cli.main(["ask", "hello"]) == 1
    err = capsys.readouterr().err
    assert "no embedded model" in err and "--model" in err and "llavakit train tiny-world" in err


def test_chat_through_stdin(tiny_checkpoint, image, tmp_path):
    script = "\n".join([
        "Hello there",
        f"/image {image}",
        "What is in the picture?",
        f"/image {tmp_path / 'nowhere.png'}",
        "/bogus",
        "And now?",
        "/reset",
        "Start again",
        "/quit",
        "never read",
    ]) + "\n"
    done = run_cli("chat", "--model", str(tiny_checkpoint), *COMMON, stdin=script)
    assert done.returncode == 0, done.stderr
    out = done.stdout.splitlines()
    assert f"[image added: {image}]" in out
    assert any(line.startswith("error: Cannot load image") and "nowhere.png" in line for line in out)
    assert any(line.startswith("error: unknown command /bogus") for line in out)
    assert "[conversation reset]" in out
    answers = [line for line in out if not line.startswith(("[", "error:"))]
    assert len(answers) == 4  # one per question; the chat survived the bad image and command
    assert "Traceback" not in done.stderr


def test_chat_ends_at_eof(tiny_checkpoint, monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.StringIO("Hi\n\nHow are you?\n"))
    assert cli.main(["chat", "--model", str(tiny_checkpoint), *COMMON]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2


def write_requests(path: Path, image: Path, count: int) -> tuple[set, list[int]]:
    """`count` lines with a bad JSON line and a missing image; returns good ids and bad line numbers."""
    good, bad = set(), []
    with open(path, "w") as f:
        for i in range(count):
            lineno = i + 1
            if i == 3:
                f.write('{"id": "broken", "question": \n')
                bad.append(lineno)
            elif i == 7:
                f.write(json.dumps({"id": "r7", "question": "where?", "image": "missing.png"}) + "\n")
                bad.append(lineno)
            else:
                record = {"id": f"r{i}", "question": f"Question number {i}?", "max_new_tokens": 2 + i % 3}
                if i % 4 == 0:
                    record["image"] = image.name  # relative to the input file's folder
                f.write(json.dumps(record) + "\n")
                good.add(f"r{i}")
    return good, bad


def read_answers(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_batch_reports_bad_lines_and_resumes_after_kill(tiny_checkpoint, image, tmp_path):
    requests = image.parent / "requests.jsonl"
    good, bad = write_requests(requests, image, 500)
    args = ["batch", "--model", str(tiny_checkpoint), "--input", str(requests), "--threads", "1",
            "--batch-size", "4"]

    clean = tmp_path / "clean.jsonl"
    assert cli.main([*args, "--output", str(clean)]) == 1  # 1: some lines were bad
    clean_answers = {a["id"]: a for a in read_answers(clean)}
    assert set(clean_answers) == good and len(read_answers(clean)) == len(good)

    resumed = tmp_path / "resumed.jsonl"
    process = subprocess.Popen(llavakit_cmd(*args, "--output", str(resumed)),
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while time.time() < deadline and process.poll() is None:
        if resumed.exists() and resumed.read_text().count("\n") >= 20:
            break
        time.sleep(0.02)
    assert process.poll() is None, "the run ended before it could be killed; make the input larger"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    first_stderr = process.stderr.read()
    assert "line 4: not valid JSON" in first_stderr
    written = resumed.read_text().count("\n")
    assert 20 <= written < len(good)
    with open(resumed, "a") as f:
        f.write('{"id": "r499", "answer": "half a li')  # what a kill during a write leaves

    done = run_cli(*args, "--output", str(resumed))
    assert done.returncode == 1
    assert "resuming" in done.stderr and "Traceback" not in done.stderr
    summary = done.stderr[done.stderr.index("bad lines were skipped"):]
    assert all(f"line {n}:" in summary for n in bad)
    assert "missing.png" in summary

    answers = read_answers(resumed)  # every line parses: the half line was cut off
    ids = [a["id"] for a in answers]
    assert len(ids) == len(set(ids)) == len(good)  # no duplicates, no gaps
    assert {a["id"]: a for a in answers} == clean_answers


def test_batch_all_good_exits_zero(tiny_checkpoint, image, tmp_path):
    requests = tmp_path / "r.jsonl"
    requests.write_text(
        json.dumps({"id": 1, "question": "Hi", "image": str(image)}) + "\n"
        + json.dumps({"id": 2, "messages": [{"role": "user", "content": "Hello"}], "options": {"seed": 3}}) + "\n"
    )
    out = tmp_path / "a.jsonl"
    assert cli.main(["batch", "--model", str(tiny_checkpoint), "--input", str(requests), "--output", str(out),
                     "--threads", "1", "--max-new-tokens", "3"]) == 0
    answers = read_answers(out)
    assert sorted(a["id"] for a in answers) == [1, 2]
    assert all(a["completion_tokens"] <= 3 and a["finish_reason"] in ("stop", "length") for a in answers)
