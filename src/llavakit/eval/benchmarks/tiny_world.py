"""tiny-world: the held-out benchmark of llavakit's synthetic world (the embedded model's test set).

Reads ``bench.jsonl`` and the ``images/`` folder that `llavakit.world.write_world` writes (see
docs/embedded-model.md). Each question is scored the way the real benchmark of its format is:

* ``short`` (colour, shape, count, position): VQA accuracy over the ten reference answers after
  the VQA challenge's answer normalisation, like VQAv2;
* ``mc``: the option letter, read with MMBench's rule-based matching (a bare letter, a decorated
  letter, or the option's text), like MMBench/SEED-Bench;
* ``yesno`` (presence): POPE's yes/no parsing and metrics per split (random, adversarial); a
  positive question belongs to the split of its image's negative one.

The prompt is the question file's ``text``, which already ends with LLaVA's short-answer or
multiple-choice instruction. There is no paper number to compare with.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from llavakit.eval.base import (
    Benchmark,
    BenchmarkError,
    EvalRequest,
    ScoreContext,
    answered,
    percent,
    read_jsonl,
)
from llavakit.eval.benchmarks.pope import pope_metrics
from llavakit.eval.parsing import mmbench_letter, pope_label
from llavakit.eval.prompts import LETTERS, with_image
from llavakit.eval.vqa_metrics import evalai_process, vqa_accuracy

QUESTION_TYPES = ("short", "mc", "yesno")


class TinyWorld(Benchmark):
    name = "tiny-world"
    title = "tiny-world"
    splits = ("bench",)
    default_split = "bench"
    headline = "average"
    max_new_tokens = 16

    def _questions(self) -> dict[str, dict]:
        rows = {}
        for row in read_jsonl(self.file("bench.jsonl")):
            if row.get("type") not in QUESTION_TYPES:
                raise BenchmarkError(f"{self.name}: question {row.get('question_id')!r} has type "
                                     f"{row.get('type')!r}; expected one of {', '.join(QUESTION_TYPES)}")
            rows[str(row["question_id"])] = row
        return rows

    def requests(self) -> list[EvalRequest]:
        images = self.image_dir("images")
        # The seven questions of one image form a group, so --limit counts images.
        return [EvalRequest(qid, with_image(row["text"]), (images / row["image"],), self.max_new_tokens,
                            group=row["image"])
                for qid, row in self._questions().items()]

    def score(self, predictions: dict[str, str], requests: Sequence[EvalRequest],
              context: ScoreContext) -> dict[str, Any]:
        rows = self._questions()
        have, missing = answered(requests, predictions)
        short: dict[str, list[float]] = defaultdict(list)
        choice: dict[str, list[bool]] = defaultdict(list)
        pope_split = {row["image"]: row["pope_split"] for row in rows.values()
                      if row["type"] == "yesno" and row.get("pope_split", "positive") != "positive"}
        presence: dict[str, list[tuple[str, str]]] = defaultdict(list)
        for request in have:
            row, answer = rows[request.id], predictions[request.id]
            if row["type"] == "short":
                short[row["category"]].append(vqa_accuracy(evalai_process(answer), row["answers"]))
            elif row["type"] == "mc":
                options = dict(zip(LETTERS, row["options"]))
                choice[row["category"]].append(mmbench_letter(answer, options) == row["answer"])
            else:
                pair = (pope_label(answer), row["label"])
                presence[pope_split.get(row["image"], "unknown")].append(pair)
        short_all = [x for values in short.values() for x in values]
        choice_all = [x for values in choice.values() for x in values]
        per_split = {split: pope_metrics(pairs) for split, pairs in sorted(presence.items())}
        f1s = [m["f1"] for m in per_split.values()]
        result: dict[str, Any] = {
            "short_accuracy": percent(sum(short_all), len(short_all)),
            "short": {k: percent(sum(v), len(v)) for k, v in sorted(short.items())},
            "mc_accuracy": percent(sum(choice_all), len(choice_all)),
            "mc": {k: percent(sum(v), len(v)) for k, v in sorted(choice.items())},
            "pope_f1": sum(f1s) / len(f1s) if f1s else 0.0,
            "pope": per_split,
            "count": len(have), "missing": missing,
        }
        parts = [result["short_accuracy"] if short_all else None, result["mc_accuracy"] if choice_all else None,
                 result["pope_f1"] if f1s else None]
        scored = [p for p in parts if p is not None]
        result["average"] = sum(scored) / len(scored) if scored else 0.0
        return result
