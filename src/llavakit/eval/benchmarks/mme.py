"""MME (Fu et al. 2023): 14 yes/no subtasks, two questions per image.

Reads MME_Benchmark_release_version directly: a category folder holds either images plus
same-named .txt files, or ``images/`` plus ``questions_answers_YN/``; each .txt line is
``question<TAB>Yes|No``.  LLaVA-1.5 (docs/Evaluation.md, "Short-answer (e.g. VQAv2, MME)") replaces
MME's trailing "Please answer yes or no." with the short-answer instruction, which is what its
convert_answer_to_mme.py undoes to find the ground truth.

Scoring is MME's eval_tool/calculation.py: per subtask, accuracy over questions plus accuracy+
over images (both questions right), each in %, summed -> up to 200; perception sums 10 subtasks
(max 2000), cognition 4 (max 800).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from llavakit.eval.base import Benchmark, BenchmarkError, EvalRequest, ScoreContext, answered, percent
from llavakit.eval.parsing import mme_label
from llavakit.eval.prompts import MME_YES_NO, short_answer, with_image

PERCEPTION = ("existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark", "artwork", "OCR")
COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")
_IMAGE_SUFFIXES = (".jpg", ".png", ".jpeg", ".JPG", ".PNG")


def llava_question(question: str) -> str:
    """MME's question with its yes/no instruction swapped for LLaVA's short-answer one."""
    text = question.strip()
    if text.endswith(MME_YES_NO):
        text = text[: -len(MME_YES_NO)].rstrip()
    return short_answer(text)


class MME(Benchmark):
    name = "mme"
    title = "MME"
    splits = ("test",)
    headline = "perception"
    reported = 1510.7
    scale = 2000.0

    def _root(self):
        nested = self.data_dir / "MME_Benchmark_release_version"
        return nested if nested.is_dir() else self.data_dir

    def _questions(self) -> dict[str, dict]:
        """``category/image#n`` -> {category, image, question, answer}, in the official order."""
        root = self._root()
        out = {}
        for category in PERCEPTION + COGNITION:
            folder = root / category
            if not folder.is_dir():
                continue
            nested = (folder / "images").is_dir()
            image_dir = folder / "images" if nested else folder
            qa_dir = folder / "questions_answers_YN" if nested else folder
            for txt in sorted(qa_dir.glob("*.txt")):
                image = next((image_dir / (txt.stem + s) for s in _IMAGE_SUFFIXES
                              if (image_dir / (txt.stem + s)).exists()), None)
                if image is None:
                    raise BenchmarkError(f"mme: no image for {txt}")
                lines = [line for line in txt.read_text(encoding="utf-8").splitlines() if line.strip()]
                for n, line in enumerate(lines):
                    question, answer = line.split("\t")[:2]
                    out[f"{category}/{image.name}#{n}"] = {"category": category, "image": image,
                                                            "question": question, "answer": answer.strip()}
        if not out:
            raise BenchmarkError(f"mme: no MME category folders found in {root} (see docs/evaluation.md)")
        return out

    def requests(self) -> list[EvalRequest]:
        return [EvalRequest(key, with_image(llava_question(q["question"])), (q["image"],), self.max_new_tokens)
                for key, q in self._questions().items()]

    def score(self, predictions: dict[str, str], requests: Sequence[EvalRequest],
              context: ScoreContext) -> dict[str, Any]:
        questions = self._questions()
        have, missing = answered(requests, predictions)
        per_category: dict[str, dict] = {}
        for r in have:
            q = questions[r.id]
            right = mme_label(predictions[r.id]) == q["answer"].lower()
            cat = per_category.setdefault(q["category"], {"right": 0, "questions": 0, "images": {}})
            cat["right"] += right
            cat["questions"] += 1
            cat["images"].setdefault(q["image"].name, []).append(right)
        scores = {}
        for category, cat in per_category.items():
            acc = percent(cat["right"], cat["questions"])
            both = sum(len(v) == 2 and all(v) for v in cat["images"].values())
            acc_plus = percent(both, len(cat["images"]))
            scores[category] = {"accuracy": acc, "accuracy_plus": acc_plus, "score": acc + acc_plus}
        return {"perception": sum(scores[c]["score"] for c in PERCEPTION if c in scores),
                "cognition": sum(scores[c]["score"] for c in COGNITION if c in scores),
                "per_category": scores, "count": len(have), "missing": missing}
