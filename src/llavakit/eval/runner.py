"""Running a benchmark: ask the model what is not answered yet, store the answers, score them.

Everything a run produces lives in ``<output>/<benchmark>/<split>/``: ``predictions.jsonl`` (one
line per request id, appended and flushed batch by batch, so a rerun skips what is done),
``scores.json`` and any server submission file.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llavakit.eval.base import AnswerFn, Benchmark, EvalRequest, ScoreContext
from llavakit.eval.store import PredictionStore


def answer_fn_from_model(model, *, max_new_tokens: int | None = None) -> AnswerFn:
    """The reference `AnswerFn`: one greedy `Llava.generate` call per batch.

    `max_new_tokens` overrides the benchmarks' own limits (LLaVA uses 128 for short answers and
    1024 for open-ended ones).
    """

    def answer(batch: list[EvalRequest]) -> list[str]:
        conversations = [[{"role": "user", "content": r.prompt}] for r in batch]
        images = [list(r.images) for r in batch]
        limit = max_new_tokens or max(r.max_new_tokens for r in batch)
        return model.generate(conversations, images, max_new_tokens=limit, temperature=0.0)

    return answer


def answer_fn_from_engine(engine, *, max_new_tokens: int | None = None) -> AnswerFn:
    """Greedy answers through the batching engine: a whole batch decodes together."""
    from llavakit.engine import Request, SamplingParams

    def answer(batch: list[EvalRequest]) -> list[str]:
        requests = [
            Request(messages=[{"role": "user", "content": r.prompt}], images=list(r.images),
                    params=SamplingParams(max_new_tokens=max_new_tokens or r.max_new_tokens, temperature=0.0))
            for r in batch
        ]
        answers = [""] * len(requests)
        for index, outcome in engine.run_many(requests):
            if isinstance(outcome, Exception):
                # One unanswerable question (e.g. longer than the model's context) must not end
                # the run: it scores as a wrong (empty) answer, and says so.
                print(f"warning: {batch[index].id}: no answer: {outcome}", file=sys.stderr)
            else:
                answers[index] = outcome.text.strip()
        return answers

    return answer


def lazy_answer_fn(make: Callable[[], AnswerFn]) -> AnswerFn:
    """An AnswerFn that builds the real one (e.g. loads the model) only when first called."""
    real: list[AnswerFn] = []

    def answer(batch: list[EvalRequest]) -> list[str]:
        if not real:
            real.append(make())
        return real[0](batch)

    return answer


def first_groups(requests: Sequence[EvalRequest], limit: int | None) -> list[EvalRequest]:
    """The requests of the first `limit` questions (groups), all of them when limit is None."""
    if limit is None:
        return list(requests)
    kept, groups = [], set()
    for r in requests:
        if r.group not in groups:
            if len(groups) >= limit:
                continue
            groups.add(r.group)
        kept.append(r)
    return kept


@dataclass
class RunResult:
    benchmark: str
    split: str
    output_dir: Path
    record: dict[str, Any] = field(default_factory=dict)  # what scores.json holds

    @property
    def headline(self) -> float | None:
        return self.record.get("headline")


def output_dir_for(output: str | Path, benchmark: Benchmark) -> Path:
    return Path(output) / benchmark.name / benchmark.split


def run_benchmark(benchmark: Benchmark, answer_fn: AnswerFn | None, output: str | Path, *,
                  limit: int | None = None, batch_size: int = 8, judge=None,
                  options: dict[str, Any] | None = None, progress: bool = True) -> RunResult:
    """Answer the missing requests of `benchmark` (unless `answer_fn` is None), then score."""
    out = output_dir_for(output, benchmark)
    out.mkdir(parents=True, exist_ok=True)
    store = PredictionStore(out / "predictions.jsonl")
    requests = first_groups(benchmark.requests(), limit)
    pending = [r for r in requests if r.id not in store]
    reused = len(requests) - len(pending)
    started = time.time()
    if pending and answer_fn is not None:
        _generate(benchmark.name, pending, answer_fn, store, batch_size, progress)
    elapsed = time.time() - started

    context = ScoreContext(judge=judge, output_dir=out, options=dict(options or {}))
    predictions = store.answers()
    scores = benchmark.score(predictions, requests, context)
    submission = [str(p) for p in benchmark.write_submission(predictions, requests, out)]
    record = {
        "benchmark": benchmark.name, "title": benchmark.title, "split": benchmark.split,
        "headline_metric": benchmark.headline, "headline": scores.get(benchmark.headline),
        "reported_llava_1_5_7b": benchmark.reported, "scale": benchmark.scale,
        "limit": limit, "requests": len(requests), "generated": len(pending) if answer_fn else 0,
        "reused": reused, "generation_seconds": round(elapsed, 3), "submission_files": submission,
        "scores": scores,
    }
    if judge is not None:
        record["judge"] = {"url": judge.url, "model": judge.model, **judge.stats.as_dict()}
    (out / "scores.json").write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return RunResult(benchmark.name, benchmark.split, out, record)


def _generate(name: str, pending: list[EvalRequest], answer_fn: AnswerFn, store: PredictionStore,
              batch_size: int, progress: bool) -> None:
    from tqdm import tqdm

    batch_size = max(1, batch_size)
    with tqdm(total=len(pending), desc=name, unit="q", disable=not progress, file=sys.stderr) as bar:
        for start in range(0, len(pending), batch_size):
            batch = pending[start:start + batch_size]
            answers = answer_fn(batch)
            if len(answers) != len(batch):
                raise RuntimeError(f"the answer function returned {len(answers)} answers for {len(batch)} requests")
            # LLaVA's scripts strip every output; the parsers (exact letters, yes/no) rely on it.
            store.append({"id": r.id, "prompt": r.prompt, "answer": str(a).strip()} for r, a in zip(batch, answers))
            bar.update(len(batch))
