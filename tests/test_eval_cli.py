"""`llavakit eval` end to end on the tiny random checkpoint over every benchmark fixture."""

import json
from pathlib import Path

from PIL import Image

from llavakit.cli import main
from llavakit.eval.registry import PAPER_BENCHMARKS

PAPER_NAMES = [cls.name for cls in PAPER_BENCHMARKS]

FIXTURES = Path(__file__).parent / "fixtures" / "eval"


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_eval_all_benchmarks_resumably(tiny_checkpoint, tmp_path, capsys):
    base = ["eval", "--model", str(tiny_checkpoint), "--benchmark", "all", "--data", str(FIXTURES),
            "--output", str(tmp_path), "--max-new-tokens", "2", "--batch-size", "4", "--no-progress"]
    assert main(base + ["--limit", "1"]) == 0
    folders = {name: next((tmp_path / name).iterdir()) for name in PAPER_NAMES}
    for name, folder in folders.items():
        first = _lines(folder / "predictions.jsonl")
        # One question each; MMBench asks its first question in all four option orders.
        assert len(first) == {"mmbench": 4, "mmbench_cn": 4}.get(name, 1), name
        assert json.loads((folder / "scores.json").read_text())["limit"] == 1

    # Mark one stored answer and tear the file's end, as a crash mid-write would.
    pope = folders["pope"] / "predictions.jsonl"
    marked = _lines(pope)[0] | {"answer": "SENTINEL"}
    pope.write_text(json.dumps(marked) + '\n{"id": "adversarial/2", "answ')

    assert main(base) == 0
    out = capsys.readouterr().out
    assert "vqav2 (test-dev): accuracy = —" in out and "report:" in out
    predictions = _lines(pope)
    assert predictions[0] == marked  # not recomputed
    assert [p["id"] for p in predictions] == ["adversarial/1", "adversarial/2", "popular/1", "popular/2", "random/1",
                                              "random/2"]
    scores = json.loads((folders["pope"] / "scores.json").read_text())
    assert scores["reused"] == 1 and scores["generated"] == 5 and scores["limit"] is None
    assert set(scores["scores"]["per_split"]) == {"adversarial", "popular", "random"}
    assert 0 <= scores["headline"] <= 100

    # Every benchmark has a score record; the judge-free ones have a number, the others say why not.
    for name, folder in folders.items():
        record = json.loads((folder / "scores.json").read_text())
        assert record["benchmark"] == name and record["requests"] == len(_lines(folder / "predictions.jsonl"))
        if name in ("llava_bench_wild", "mm_vet", "vqav2", "vizwiz"):
            assert record["headline"] is None and record["scores"]["status"]
        else:
            assert isinstance(record["headline"], float), name
    # Server submissions for the splits without public answers.
    upload = json.loads((folders["vqav2"] / "answers_upload.json").read_text())
    assert [row["question_id"] for row in upload] == [11000, 11001]
    assert len(json.loads((folders["vizwiz"] / "answers_upload.json").read_text())) == 2
    assert (folders["mmbench"] / "mmbench_dev_20230712_submission.tsv").exists()

    report = json.loads((tmp_path / "report.json").read_text())
    assert [r["benchmark"] for r in report["results"]] == PAPER_NAMES
    assert report["table"]["mme/test"]["paper_llava_1_5_7b"] == 1510.7
    table = (tmp_path / "report.md").read_text()
    assert "| POPE | all | f1_avg |" in table and "| 85.9 |" in table
    with Image.open(tmp_path / "report.png") as chart:
        assert chart.format == "PNG" and chart.width > 500


def test_score_only_and_errors(tmp_path, capsys):
    # No model needed to (re)score; nothing stored yet, so nothing is counted.
    assert main(["eval", "--score-only", "--benchmark", "gqa", "--data", str(FIXTURES / "gqa"),
                 "--output", str(tmp_path)]) == 0
    record = json.loads((tmp_path / "gqa" / "testdev" / "scores.json").read_text())
    assert record["scores"]["missing"] == 3 and record["generated"] == 0
    # Per-benchmark splits with NAME=SPLIT.
    assert main(["eval", "--score-only", "--benchmark", "vqav2", "vizwiz", "--split", "vqav2=val",
                 "--data", str(FIXTURES), "--output", str(tmp_path)]) == 0
    assert (tmp_path / "vqav2" / "val" / "scores.json").exists() and (tmp_path / "vizwiz" / "test" / "scores.json").exists()
    assert main(["eval", "--benchmark", "nope", "--score-only"]) == 1
    assert "unknown benchmark 'nope'" in capsys.readouterr().err
    assert main(["eval", "--benchmark", "gqa", "--score-only", "--data", str(tmp_path / "missing")]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert main(["eval", "--benchmark", "gqa"]) == 1  # no --model
    assert main(["eval", "--list"]) == 0
    assert "mmbench_cn" in capsys.readouterr().out


def test_eval_tiny_world(tiny_checkpoint, tmp_path, capsys):
    # The synthetic world's benchmark is registered by name but is not one of the paper's twelve.
    assert main(["eval", "--model", str(tiny_checkpoint), "--benchmark", "tiny-world",
                 "--data", str(FIXTURES / "tiny-world"), "--output", str(tmp_path), "--max-new-tokens", "2",
                 "--no-progress"]) == 0
    assert "tiny-world (bench): average = " in capsys.readouterr().out
    record = json.loads((tmp_path / "tiny-world" / "bench" / "scores.json").read_text())
    assert record["requests"] == 14 and record["scores"]["count"] == 14
    assert set(record["scores"]["short"]) == {"colour", "shape", "count", "position"}
    assert "| tiny-world | bench | average |" in (tmp_path / "report.md").read_text()
