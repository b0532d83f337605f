"""VQAv2 (Goyal et al. 2017), scored with the VQA challenge's accuracy.

LLaVA-1.5 reports test-dev, which only the EvalAI server can score: the `test-dev` split writes the
upload file (answers run through the EvalAI processor, like LLaVA's convert_vqav2_for_submission.py).
The `val` split is scored locally with vqaEval.py's rules on those same processed answers.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from llavakit.eval.base import Benchmark, EvalRequest, ScoreContext, answered, percent, read_json
from llavakit.eval.prompts import short_answer, with_image
from llavakit.eval.vqa_metrics import evalai_process, vqa_accuracy

_QUESTIONS = {
    "val": "v2_OpenEnded_mscoco_val2014_questions.json",
    "test-dev": "v2_OpenEnded_mscoco_test-dev2015_questions.json",
    "test": "v2_OpenEnded_mscoco_test2015_questions.json",
}
_IMAGES = {"val": ("val2014", "COCO_val2014"), "test-dev": ("test2015", "COCO_test2015"),
           "test": ("test2015", "COCO_test2015")}
_ANNOTATIONS = "v2_mscoco_val2014_annotations.json"


class VQAv2(Benchmark):
    name = "vqav2"
    title = "VQAv2"
    splits = ("test-dev", "val", "test")
    default_split = "test-dev"
    reported = 78.5

    def requests(self) -> list[EvalRequest]:
        questions = read_json(self.file(_QUESTIONS[self.split]))["questions"]
        folder, prefix = _IMAGES[self.split]
        images = self.image_dir(folder)
        return [
            EvalRequest(str(q["question_id"]), with_image(short_answer(q["question"])),
                        (images / f"{prefix}_{int(q['image_id']):012d}.jpg",), self.max_new_tokens)
            for q in questions
        ]

    def score(self, predictions: dict[str, str], requests: Sequence[EvalRequest],
              context: ScoreContext) -> dict[str, Any]:
        if self.split != "val":
            have, missing = answered(requests, predictions)
            return {"accuracy": None, "status": "submission only: upload answers_upload.json to EvalAI",
                    "answered": len(have), "missing": missing}
        annotations = {str(a["question_id"]): a for a in read_json(self.file(_ANNOTATIONS))["annotations"]}
        have, missing = answered(requests, predictions)
        total, by_type = 0.0, {}
        for r in have:
            ann = annotations[r.id]
            acc = vqa_accuracy(evalai_process(predictions[r.id]), [a["answer"] for a in ann["answers"]])
            total += acc
            by_type.setdefault(ann.get("answer_type", "other"), []).append(acc)
        return {"accuracy": percent(total, len(have)), "count": len(have), "missing": missing,
                "per_answer_type": {k: percent(sum(v), len(v)) for k, v in sorted(by_type.items())}}

    def write_submission(self, predictions: dict[str, str], requests: Sequence[EvalRequest],
                         out_dir: Path) -> list[Path]:
        if self.split == "val":
            return []
        # The server wants every test2015 id; LLaVA answers test-dev and leaves the rest empty.
        ids = [r.id for r in requests]
        full = self.data_dir / _QUESTIONS["test"]
        if full.exists():
            ids = [str(q["question_id"]) for q in read_json(full)["questions"]]
        rows = [{"question_id": int(i), "answer": evalai_process(predictions[i]) if i in predictions else ""}
                for i in ids]
        path = out_dir / "answers_upload.json"
        path.write_text(json.dumps(rows), encoding="utf-8")
        return [path]
