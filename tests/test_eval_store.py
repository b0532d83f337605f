"""Resumable predictions: the JSONL store, --limit, and skipping what is already answered."""

import json
from pathlib import Path

from llavakit.eval.base import EvalRequest
from llavakit.eval.registry import get_benchmark
from llavakit.eval.runner import first_groups, run_benchmark
from llavakit.eval.store import JsonlStore, PredictionStore

FIXTURES = Path(__file__).parent / "fixtures" / "eval"


def test_store_appends_and_reloads(tmp_path):
    path = tmp_path / "p.jsonl"
    store = PredictionStore(path)
    store.append([{"id": 1, "answer": "yes"}, {"id": "b", "answer": "no"}])
    store.append([{"id": "b", "answer": "maybe"}])  # the last record for an id wins
    again = PredictionStore(path)
    assert again.answers() == {"1": "yes", "b": "maybe"}
    assert path.read_text().endswith("\n") and len(path.read_text().splitlines()) == 3


def test_store_repairs_a_torn_last_line(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"id": "a", "answer": "x"}\n{"id": "b", "ans')  # crashed mid-write
    store = JsonlStore(path)
    assert list(store.records) == ["a"] and store.repaired == len('{"id": "b", "ans')
    assert path.read_text() == '{"id": "a", "answer": "x"}\n'
    store.append([{"id": "b", "answer": "y"}])
    assert JsonlStore(path).records["b"]["answer"] == "y"


def test_store_skips_garbage_lines(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"id": "a", "answer": "x"}\nnot json\n\n{"no_id": 1}\n')
    store = JsonlStore(path)
    assert list(store.records) == ["a"] and store.skipped == 2


def test_first_groups_counts_questions_not_requests():
    requests = [EvalRequest("0", "p"), EvalRequest("0@1", "p", group="0"), EvalRequest("1", "p"), EvalRequest("2", "p")]
    assert [r.id for r in first_groups(requests, 1)] == ["0", "0@1"]
    assert [r.id for r in first_groups(requests, 2)] == ["0", "0@1", "1"]
    assert first_groups(requests, None) == requests


class Recorder:
    """An AnswerFn that answers "yes" and remembers what it was asked."""

    def __init__(self):
        self.asked = []

    def __call__(self, batch):
        self.asked.append([r.id for r in batch])
        return ["yes"] * len(batch)


def test_run_benchmark_resumes(tmp_path):
    bench = get_benchmark("pope")(FIXTURES / "pope")
    first = Recorder()
    result = run_benchmark(bench, first, tmp_path, limit=1, batch_size=4, progress=False)
    assert first.asked == [["adversarial/1"]]
    assert result.record["requests"] == 1 and result.record["generated"] == 1

    second = Recorder()
    result = run_benchmark(bench, second, tmp_path, batch_size=4, progress=False)
    # The first answer is not asked again; the rest comes in batches of four.
    assert second.asked == [["adversarial/2", "popular/1", "popular/2", "random/1"], ["random/2"]]
    assert result.record["reused"] == 1 and result.record["generated"] == 5
    lines = (tmp_path / "pope" / "all" / "predictions.jsonl").read_text().splitlines()
    assert [json.loads(line)["id"] for line in lines][:2] == ["adversarial/1", "adversarial/2"]
    assert len(lines) == 6
    # All "yes": per split TP 1, FP 1 -> precision 1/2, recall 1, F1 2/3; yes-ratio 100.
    scores = json.loads((tmp_path / "pope" / "all" / "scores.json").read_text())
    assert abs(scores["headline"] - 200 / 3) < 1e-9 and scores["scores"]["per_split"]["random"]["yes_ratio"] == 100

    third = Recorder()
    run_benchmark(bench, third, tmp_path, progress=False)
    assert third.asked == []


def test_run_benchmark_without_model_scores_what_is_stored(tmp_path):
    bench = get_benchmark("gqa")(FIXTURES / "gqa")
    result = run_benchmark(bench, None, tmp_path, progress=False)
    assert result.record["scores"]["count"] == 0 and result.record["scores"]["missing"] == 3
