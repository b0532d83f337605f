"""POPE (Li et al. 2023): object hallucination as yes/no questions on COCO val2014.

Reads the official ``coco_pope_{adversarial,popular,random}.json`` files (one JSON object per line:
question_id, image, text, label).  Prompt: the question + the short-answer instruction (LLaVA's
llava_pope_test.jsonl).  Answers are parsed and scored per split like LLaVA's eval_pope.py:
accuracy, precision, recall, F1 and yes-ratio, "yes" being the positive class.  The paper's POPE
number is the F1 averaged over the three splits.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from llavakit.eval.base import Benchmark, EvalRequest, ScoreContext, answered, read_jsonl
from llavakit.eval.parsing import pope_label
from llavakit.eval.prompts import short_answer, with_image

CATEGORIES = ("adversarial", "popular", "random")


def pope_metrics(pairs: Sequence[tuple[str, str]]) -> dict[str, float | int]:
    """Metrics (in %) from (predicted label, gold label) pairs, as eval_pope.py prints them.

    Where eval_pope.py would divide by zero (no "yes" predicted or no "yes" label) the value is 0.
    """
    tp = sum(p == "yes" and g == "yes" for p, g in pairs)
    fp = sum(p == "yes" and g != "yes" for p, g in pairs)
    tn = sum(p == "no" and g == "no" for p, g in pairs)
    fn = sum(p == "no" and g != "no" for p, g in pairs)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    n = len(pairs)
    return {"accuracy": 100 * (tp + tn) / n if n else 0.0, "precision": 100 * precision,
            "recall": 100 * recall, "f1": 100 * f1, "yes_ratio": 100 * (tp + fp) / n if n else 0.0,
            "tp": tp, "fp": fp, "tn": tn, "fn": fn, "count": n}


class POPE(Benchmark):
    name = "pope"
    title = "POPE"
    splits = ("all",) + CATEGORIES
    default_split = "all"
    headline = "f1_avg"
    reported = 85.9

    def _categories(self) -> tuple[str, ...]:
        return CATEGORIES if self.split == "all" else (self.split,)

    def _rows(self) -> dict[str, dict]:
        rows = {}
        for category in self._categories():
            path = self.file(f"coco/coco_pope_{category}.json", f"coco_pope_{category}.json")
            for row in read_jsonl(path):
                rows[f"{category}/{row['question_id']}"] = {**row, "category": category}
        return rows

    def requests(self) -> list[EvalRequest]:
        images = self.image_dir("val2014", "images")
        return [EvalRequest(key, with_image(short_answer(row["text"])), (images / row["image"],), self.max_new_tokens)
                for key, row in self._rows().items()]

    def score(self, predictions: dict[str, str], requests: Sequence[EvalRequest],
              context: ScoreContext) -> dict[str, Any]:
        rows = self._rows()
        have, missing = answered(requests, predictions)
        per_split = {}
        for category in self._categories():
            pairs = [(pope_label(predictions[r.id]), rows[r.id]["label"]) for r in have
                     if rows[r.id]["category"] == category]
            if pairs:
                per_split[category] = pope_metrics(pairs)
        f1s = [m["f1"] for m in per_split.values()]
        accs = [m["accuracy"] for m in per_split.values()]
        return {"f1_avg": sum(f1s) / len(f1s) if f1s else 0.0, "accuracy_avg": sum(accs) / len(accs) if accs else 0.0,
                "per_split": per_split, "count": len(have), "missing": missing}
