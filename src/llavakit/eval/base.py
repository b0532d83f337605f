"""What every benchmark shares: the request type, the answer-function protocol and the base class.

A benchmark reads its official files from a local folder, turns each question into one or more
`EvalRequest`s (the exact user prompt LLaVA-1.5 used, plus images), and scores a mapping
``request id -> model answer`` the way the official scorer does.  The model side is a plain
callable (`AnswerFn`), so the reference `Llava.generate` loop and a faster batched engine are
interchangeable.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar


@dataclass(frozen=True)
class EvalRequest:
    """One prompt to answer: a single user turn (with `<image>` placeholders) and its images."""

    id: str
    prompt: str
    images: tuple = ()  # paths, bytes or PIL images, one per <image> placeholder
    max_new_tokens: int = 128
    # The question this request belongs to; `--limit` counts groups (MMBench asks one question
    # in several option orders, POPE/MME questions are their own group).
    group: str = ""

    def __post_init__(self) -> None:
        if not self.group:
            object.__setattr__(self, "group", self.id)


# Answers a batch of requests, in order: one string per request.  Decoding must be greedy.
AnswerFn = Callable[[list[EvalRequest]], list[str]]


class BenchmarkError(Exception):
    """The benchmark's files are missing or malformed (shown to the user without a traceback)."""


@dataclass
class ScoreContext:
    """What `Benchmark.score` may use besides the predictions."""

    judge: Any = None  # a llavakit.eval.judge.Judge, or None when no judge endpoint was given
    output_dir: Path | None = None
    options: dict[str, Any] = field(default_factory=dict)


class Benchmark:
    """Base class: subclasses set the class attributes and implement `requests` and `score`."""

    name: ClassVar[str]
    title: ClassVar[str]  # column header in the report
    splits: ClassVar[tuple[str, ...]] = ("test",)
    default_split: ClassVar[str] = "test"
    headline: ClassVar[str] = "accuracy"  # the key of `score()`'s result that the paper reports
    # LLaVA-1.5-7B's number in the paper (Liu et al. 2023, Table 4), None if not comparable.
    reported: ClassVar[float | None] = None
    # Full scale of the headline (100 for percentages; MME perception is out of 2000).
    scale: ClassVar[float] = 100.0
    needs_judge: ClassVar[bool] = False
    max_new_tokens: ClassVar[int] = 128

    def __init__(self, data_dir: str | Path, split: str | None = None) -> None:
        self.data_dir = Path(data_dir).expanduser()
        self.split = split or self.default_split
        if self.split not in self.splits:
            raise BenchmarkError(f"{self.name}: unknown split {self.split!r}; choose one of {', '.join(self.splits)}")
        if not self.data_dir.is_dir():
            raise BenchmarkError(f"{self.name}: data folder {self.data_dir} does not exist (see docs/evaluation.md)")

    # --- to implement -------------------------------------------------------------------------
    def requests(self) -> list[EvalRequest]:
        """Every request of the split, in the official order."""
        raise NotImplementedError

    def score(self, predictions: dict[str, str], requests: Sequence[EvalRequest],
              context: ScoreContext) -> dict[str, Any]:
        """Scores for `requests` (a prefix of `self.requests()` under --limit) given the answers."""
        raise NotImplementedError

    def write_submission(self, predictions: dict[str, str], requests: Sequence[EvalRequest],
                         out_dir: Path) -> list[Path]:
        """Files for an evaluation server, where the split's answers are not public."""
        return []

    # --- helpers ------------------------------------------------------------------------------
    def file(self, *candidates: str) -> Path:
        """The first of `candidates` (paths relative to the data folder) that exists."""
        for name in candidates:
            path = self.data_dir / name
            if path.exists():
                return path
        wanted = " or ".join(candidates)
        raise BenchmarkError(f"{self.name}: {wanted} not found in {self.data_dir} (see docs/evaluation.md)")

    def image_dir(self, *candidates: str) -> Path:
        """The first existing image folder of `candidates`, else the data folder itself."""
        for name in candidates:
            if (self.data_dir / name).is_dir():
                return self.data_dir / name
        return self.data_dir


def read_json(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as err:
        raise BenchmarkError(f"{path} is not valid JSON: {err}") from err


def read_jsonl(path: Path) -> list[dict]:
    """JSON Lines, skipping blank lines (POPE's .json files are JSON Lines too)."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise BenchmarkError(f"{path}:{number} is not valid JSON: {err}") from err
    return rows


def percent(hits: float, total: int) -> float:
    """100 * hits / total, 0.0 for an empty set (the official scripts would divide by zero)."""
    return 100.0 * hits / total if total else 0.0


def answered(requests: Iterable[EvalRequest], predictions: dict[str, str]) -> tuple[list[EvalRequest], int]:
    """The requests that have a prediction, and how many do not."""
    have = [r for r in requests if r.id in predictions]
    return have, sum(1 for r in requests if r.id not in predictions)
