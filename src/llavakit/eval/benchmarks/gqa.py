"""GQA (Hudson & Manning 2019) test-dev balanced, scored like the official eval.py.

The official script compares strings exactly over the balanced questions; LLaVA first cleans each
answer with convert_gqa_for_eval.py (trailing periods removed, lower-cased).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from llavakit.eval.base import Benchmark, EvalRequest, ScoreContext, answered, percent, read_json
from llavakit.eval.prompts import short_answer, with_image
from llavakit.eval.vqa_metrics import gqa_clean


class GQA(Benchmark):
    name = "gqa"
    title = "GQA"
    splits = ("testdev",)
    default_split = "testdev"
    reported = 62.0

    def _questions(self) -> dict[str, dict]:
        return read_json(self.file("testdev_balanced_questions.json", "data/testdev_balanced_questions.json",
                                   "questions/testdev_balanced_questions.json"))

    def requests(self) -> list[EvalRequest]:
        images = self.image_dir("images", "data/images")
        return [EvalRequest(str(qid), with_image(short_answer(q["question"])),
                            (images / f"{q['imageId']}.jpg",), self.max_new_tokens)
                for qid, q in self._questions().items()]

    def score(self, predictions: dict[str, str], requests: Sequence[EvalRequest],
              context: ScoreContext) -> dict[str, Any]:
        questions = self._questions()
        # eval.py's "accuracy" only counts balanced questions (all of the testdev_balanced file).
        have, missing = answered([r for r in requests if questions[r.id].get("isBalanced", True)], predictions)
        hits = sum(gqa_clean(predictions[r.id]) == questions[r.id]["answer"] for r in have)
        return {"accuracy": percent(hits, len(have)), "count": len(have), "missing": missing}
