"""TextVQA (Singh et al. 2019) validation, with the OCR-token hint LLaVA-1.5 used.

Prompt (llava_textvqa_val_v051_ocr.jsonl): the question with its first letter capitalised, then
"Reference OCR token: t1, t2, ..." (Rosetta OCR v0.2 tokens; the line is absent when there are none),
then the short-answer instruction.  Scored like LLaVA's eval_textvqa.py: m4c's TextVQA accuracy,
i.e. the VQA soft accuracy with both sides run through the EvalAI answer processor.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from llavakit.eval.base import Benchmark, EvalRequest, ScoreContext, answered, percent, read_json
from llavakit.eval.prompts import TEXTVQA_OCR_PREFIX, short_answer, with_image
from llavakit.eval.vqa_metrics import textvqa_accuracy


class TextVQA(Benchmark):
    name = "textvqa"
    title = "TextVQA"
    splits = ("val",)
    default_split = "val"
    reported = 58.2

    def _entries(self) -> list[dict]:
        return read_json(self.file("TextVQA_0.5.1_val.json"))["data"]

    def _ocr_tokens(self) -> dict[str, list[str]]:
        path = self.data_dir / "TextVQA_Rosetta_OCR_v0.2_val.json"
        if not path.exists():
            return {}
        return {str(e["image_id"]): list(e.get("ocr_tokens", [])) for e in read_json(path)["data"]}

    def requests(self) -> list[EvalRequest]:
        ocr = self._ocr_tokens()
        images = self.image_dir("train_images")
        out = []
        for e in self._entries():
            tokens = ocr.get(str(e["image_id"]), e.get("ocr_tokens", []))
            question = e["question"].capitalize()  # str.capitalize also lower-cases the rest
            if tokens:
                question += "\n" + TEXTVQA_OCR_PREFIX + ", ".join(tokens)
            out.append(EvalRequest(str(e["question_id"]), with_image(short_answer(question)),
                                   (images / f"{e['image_id']}.jpg",), self.max_new_tokens))
        return out

    def score(self, predictions: dict[str, str], requests: Sequence[EvalRequest],
              context: ScoreContext) -> dict[str, Any]:
        gold = {str(e["question_id"]): e["answers"] for e in self._entries()}
        have, missing = answered(requests, predictions)
        total = sum(textvqa_accuracy(predictions[r.id], gold[r.id]) for r in have)
        return {"accuracy": percent(total, len(have)), "count": len(have), "missing": missing}
