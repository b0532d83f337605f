"""SEED-Bench (Li et al. 2023), image questions (the paper's "SEED-Bench (image)" column).

Reads SEED-Bench.json; images are ``SEED-Bench-image/<data_id>`` (no extension).  Prompt (LLaVA's
llava-seed-bench.jsonl): ``<question>\\nA. ..\\nB. ..\\nC. ..\\nD. ..`` + the multiple-choice
instruction.  Scored like LLaVA's convert_seed_for_submission.py: the answer must be exactly the
letter; per question type and overall.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from llavakit.eval.base import Benchmark, EvalRequest, ScoreContext, answered, percent, read_json
from llavakit.eval.parsing import seed_correct
from llavakit.eval.prompts import MULTIPLE_CHOICE, options_block, with_image


def _image_file(folder: Path, data_id: str) -> Path:
    """SEED-Bench's image files are named by data_id, without extension; accept copies saved with one."""
    path = folder / data_id
    if not path.exists():
        for suffix in (".jpg", ".png"):
            if (folder / (data_id + suffix)).exists():
                return folder / (data_id + suffix)
    return path


class SEEDBench(Benchmark):
    name = "seed_bench"
    title = "SEED (image)"
    splits = ("image",)
    default_split = "image"
    reported = 58.6

    def _data(self) -> tuple[dict[str, dict], dict[int, str]]:
        data = read_json(self.file("SEED-Bench.json"))
        questions = {str(q["question_id"]): q for q in data["questions"] if q.get("data_type") == "image"}
        type_names = {int(v): k for k, v in data.get("question_type", {}).items()}
        return questions, type_names

    def requests(self) -> list[EvalRequest]:
        questions, _ = self._data()
        images = self.image_dir("SEED-Bench-image")
        out = []
        for qid, q in questions.items():
            options = [q[f"choice_{c}"] for c in "abcd"]
            out.append(EvalRequest(qid, with_image(f"{q['question']}\n{options_block(options)}\n{MULTIPLE_CHOICE}"),
                                   (_image_file(images, q["data_id"]),), self.max_new_tokens))
        return out

    def score(self, predictions: dict[str, str], requests: Sequence[EvalRequest],
              context: ScoreContext) -> dict[str, Any]:
        questions, type_names = self._data()
        have, missing = answered(requests, predictions)
        per_type: dict[str, list[bool]] = {}
        for r in have:
            q = questions[r.id]
            name = type_names.get(int(q["question_type_id"]), str(q["question_type_id"]))
            per_type.setdefault(name, []).append(seed_correct(predictions[r.id], q["answer"]))
        hits = sum(sum(v) for v in per_type.values())
        return {"accuracy": percent(hits, len(have)), "count": len(have), "missing": missing,
                "per_question_type": {k: percent(sum(v), len(v)) for k, v in sorted(per_type.items())}}

    def write_submission(self, predictions: dict[str, str], requests: Sequence[EvalRequest],
                         out_dir: Path) -> list[Path]:
        """The leaderboard's JSON Lines: ``{"question_id", "prediction"}`` per answered question."""
        path = out_dir / "answers_upload.jsonl"
        lines = [json.dumps({"question_id": r.id, "prediction": predictions[r.id]}) for r in requests if r.id in predictions]
        path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        return [path]
