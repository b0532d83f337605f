"""VizWiz-VQA (Gurari et al. 2018): blind people's photos, some of them unanswerable.

LLaVA-1.5 reports the test split, scored by the EvalAI server; `test` writes the upload file
(``[{"image", "answer"}]`` with EvalAI-processed answers, as convert_vizwiz_for_submission.py).
`val` is scored locally with the VQA accuracy (leave-one-out over the ten human answers).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from llavakit.eval.base import Benchmark, EvalRequest, ScoreContext, answered, percent, read_json
from llavakit.eval.prompts import VIZWIZ_UNANSWERABLE, short_answer, with_image
from llavakit.eval.vqa_metrics import evalai_process, vqa_accuracy


class VizWiz(Benchmark):
    name = "vizwiz"
    title = "VizWiz"
    splits = ("test", "val")
    default_split = "test"
    reported = 50.0

    def _annotations(self) -> list[dict]:
        return read_json(self.file(f"{self.split}.json", f"Annotations/{self.split}.json"))

    def requests(self) -> list[EvalRequest]:
        images = self.image_dir(self.split)
        # Each image has exactly one question, so the image name is the question's id.
        return [EvalRequest(item["image"], with_image(short_answer(f"{item['question']}\n{VIZWIZ_UNANSWERABLE}")),
                            (images / item["image"],), self.max_new_tokens)
                for item in self._annotations()]

    def score(self, predictions: dict[str, str], requests: Sequence[EvalRequest],
              context: ScoreContext) -> dict[str, Any]:
        have, missing = answered(requests, predictions)
        if self.split != "val":
            return {"accuracy": None, "status": "submission only: upload answers_upload.json to EvalAI",
                    "answered": len(have), "missing": missing}
        gold = {item["image"]: [a["answer"] for a in item["answers"]] for item in self._annotations()}
        total = sum(vqa_accuracy(evalai_process(predictions[r.id]), gold[r.id]) for r in have)
        return {"accuracy": percent(total, len(have)), "count": len(have), "missing": missing}

    def write_submission(self, predictions: dict[str, str], requests: Sequence[EvalRequest],
                         out_dir: Path) -> list[Path]:
        if self.split == "val":
            return []
        rows = [{"image": r.id, "answer": evalai_process(predictions.get(r.id, ""))} for r in requests]
        path = out_dir / "answers_upload.json"
        path.write_text(json.dumps(rows), encoding="utf-8")
        return [path]
