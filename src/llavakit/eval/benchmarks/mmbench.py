"""MMBench (Liu et al. 2023), English, with circular evaluation.

Reads the official TSV (index, question, hint, A-D, answer, category, l2-category, image as base64).
The prompt is LLaVA's model_vqa_mmbench.py --single-pred-prompt: ``<image>\\n[hint\\n]question\\nA. ..
\\nB. ..`` + the multiple-choice instruction.  Cells pandas reads as missing ("", "nan", "None",
"NA", "N/A", ...) count as absent, and the options stop at the first absent one, as there.

Circular evaluation: a question with n options is asked n times, the options rotated one place
each time (the letters stay A, B, ... in order), and counts as right only if every rotation is
answered right.  Rows whose index is >= 1,000,000 are MMBench's own circular copies of the question
``index % 1,000,000``: if the file has them, each row is asked as it is; if not, the rotations are
built here.  Answers are matched to letters by MMBench's rules (`parsing.mmbench_letter`); the
official evaluator would ask ChatGPT about the few answers those rules miss, which count as wrong
here (reported as "unmatched").
"""

from __future__ import annotations

import base64
import csv
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

from llavakit.eval.base import Benchmark, BenchmarkError, EvalRequest, ScoreContext, percent
from llavakit.eval.parsing import mmbench_letter, rotate
from llavakit.eval.prompts import MULTIPLE_CHOICE, options_block, with_image

# pandas.read_table's default missing-value strings (LLaVA reads the TSV with pandas).
_PANDAS_NA = frozenset({"", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN",
                        "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null"})
_COPY_OFFSET = 1_000_000
# LLaVA's convert_mmbench_for_submission.py drops these before writing the upload file.
_NOT_UPLOADED = ("hint", "category", "source", "image", "comment", "l2-category")


def is_missing(value: str | None) -> bool:
    """LLaVA's is_none on a pandas-read cell: NaN, or the strings "nan"/"none" in any case."""
    return value is None or value in _PANDAS_NA or value.lower() in ("nan", "none")


def read_tsv(path: Path) -> list[dict[str, str]]:
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # base64 images exceed csv's default limit
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


class MMBench(Benchmark):
    name = "mmbench"
    title = "MMBench"
    splits = ("dev", "test")
    default_split = "dev"
    reported = 64.3
    max_new_tokens = 1024  # model_vqa_mmbench.py's limit
    instruction: ClassVar[str] = MULTIPLE_CHOICE
    file_patterns: ClassVar[tuple[str, ...]] = ("mmbench_{split}_en*.tsv", "mmbench_{split}_2*.tsv", "MMBench_{SPLIT}_EN*.tsv")

    def _tsv(self) -> Path:
        for pattern in self.file_patterns:
            found = sorted(self.data_dir.glob(pattern.format(split=self.split, SPLIT=self.split.upper())))
            if found:
                return found[-1]  # the newest release when several are present
        wanted = ", ".join(p.format(split=self.split, SPLIT=self.split.upper()) for p in self.file_patterns)
        raise BenchmarkError(f"{self.name}: no TSV matching {wanted} in {self.data_dir} (see docs/evaluation.md)")

    def _rows(self) -> list[dict[str, str]]:
        rows = read_tsv(self._tsv())
        for row in rows:  # the column is "L2-category" in newer files
            if "L2-category" in row and "l2-category" not in row:
                row["l2-category"] = row.pop("L2-category")
        return rows

    @staticmethod
    def _options(row: dict[str, str]) -> list[str]:
        options = []
        for letter in "ABCD":
            if is_missing(row.get(letter)):
                break
            options.append(row[letter])
        return options

    def _prompt(self, row: dict[str, str], options: list[str]) -> str:
        question = row["question"]
        if not is_missing(row.get("hint")):
            question = f"{row['hint']}\n{question}"
        return with_image(f"{question}\n{options_block(options)}\n{self.instruction}")

    def _plan(self, with_images: bool = True) -> list[tuple[EvalRequest, dict[str, str], int]]:
        """(request, row, rotation) for every prompt, grouped by question (images decoded if asked)."""
        rows = self._rows()
        has_copies = any(int(float(r["index"])) >= _COPY_OFFSET for r in rows)
        plan = []
        for row in rows:
            index = int(float(row["index"]))
            image = (base64.b64decode(row["image"]),) if with_images else ()
            options = self._options(row)
            if has_copies or len(options) < 2:
                group = str(index % _COPY_OFFSET)
                plan.append((EvalRequest(str(index), self._prompt(row, options), image, self.max_new_tokens, group), row, 0))
                continue
            for shift in range(len(options)):
                key = str(index) if shift == 0 else f"{index}@{shift}"
                request = EvalRequest(key, self._prompt(row, rotate(options, shift)), image, self.max_new_tokens, str(index))
                plan.append((request, row, shift))
        plan.sort(key=lambda item: int(item[0].group))  # a question's copies may be far apart in the file
        return plan

    def requests(self) -> list[EvalRequest]:
        return [request for request, _, _ in self._plan()]

    def score(self, predictions: dict[str, str], requests: Sequence[EvalRequest],
              context: ScoreContext) -> dict[str, Any]:
        wanted = {r.id for r in requests}
        groups: dict[str, list[bool | None]] = {}
        info: dict[str, dict[str, str]] = {}
        unmatched = 0
        for request, row, shift in self._plan(with_images=False):
            if request.id not in wanted:
                continue
            if is_missing(row.get("answer")):
                return {"accuracy": None, "status": "no answers in this split: upload the submission file"}
            options = rotate(self._options(row), shift)
            shown = dict(zip("ABCD", options))
            # Where the right option landed after the rotation.
            gold = row["answer"]
            if gold and gold in "ABCD"[: len(options)]:
                gold = "ABCD"[("ABCD".index(gold) - shift) % len(options)]
            verdict = None
            if request.id in predictions:
                letter = mmbench_letter(predictions[request.id], shown)
                unmatched += letter is None
                verdict = letter == gold
            groups.setdefault(request.group, []).append(verdict)
            if int(float(row["index"])) < _COPY_OFFSET:
                info[request.group] = row
        complete = {g: all(v) for g, v in groups.items() if None not in v}
        per_category: dict[str, list[bool]] = {}
        per_l2: dict[str, list[bool]] = {}
        for group, right in complete.items():
            row = info.get(group, {})
            per_category.setdefault(row.get("category", "uncategorized"), []).append(right)
            per_l2.setdefault(row.get("l2-category", "uncategorized"), []).append(right)
        return {"accuracy": percent(sum(complete.values()), len(complete)), "count": len(complete),
                "missing": len(groups) - len(complete), "unmatched": unmatched,
                "per_category": {k: percent(sum(v), len(v)) for k, v in sorted(per_category.items())},
                "per_l2_category": {k: percent(sum(v), len(v)) for k, v in sorted(per_l2.items())}}

    def write_submission(self, predictions: dict[str, str], requests: Sequence[EvalRequest],
                         out_dir: Path) -> list[Path]:
        """The upload table of convert_mmbench_for_submission.py (TSV; .xlsx too if openpyxl is there)."""
        rows = self._rows()
        columns = [c for c in rows[0] if c not in _NOT_UPLOADED] if rows else []
        columns.insert(min(6, len(columns)), "prediction")
        table = [[predictions.get(str(int(float(r["index"]))), "") if c == "prediction" else r.get(c, "")
                  for c in columns] for r in rows]
        stem = out_dir / f"{self._tsv().stem}_submission"
        with open(stem.with_suffix(".tsv"), "w", encoding="utf-8", newline="") as f:
            writer = csv.writer(f, delimiter="\t")
            writer.writerow(columns)
            writer.writerows(table)
        paths = [stem.with_suffix(".tsv")]
        try:
            import openpyxl
        except ImportError:
            return paths
        book = openpyxl.Workbook()
        sheet = book.active
        sheet.append(columns)
        for line in table:
            sheet.append(line)
        book.save(stem.with_suffix(".xlsx"))
        return paths + [stem.with_suffix(".xlsx")]
