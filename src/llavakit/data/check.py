"""Validate a LLaVA dataset, measure its lengths, and write a cleaned copy.

`check_dataset` reads the file once (streamed), checks every record's structure, then every distinct
image once (in parallel), and counts problems by kind with a few example ids and locations.
`fix_dataset` reads it again and writes what `--fix` keeps; `FIX_RULES` says what happens to each
kind of problem.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llavakit.conversation import IMAGE_PLACEHOLDER
from llavakit.data.lengths import LengthStats, character_length
from llavakit.data.records import read_records, write_records

PROBLEMS = {
    "malformed_record": "not JSON, not an object, no non-empty 'conversations' list, a turn that is not "
                        "{'from': str, 'value': str}, or an 'id'/'image' field of the wrong type",
    "unknown_role": "a turn whose 'from' is not human, gpt or system",
    "role_order": "turns do not alternate human, gpt, human, ... (after an optional leading system turn) "
                  "or the last turn is not a gpt answer",
    "empty_turn": "a turn without text (a human turn holding only <image> is fine)",
    "image_tag_mismatch": "some <image> tags, but not one per image (or tags without any image)",
    "missing_image_tag": "images but no <image> tag at all",
    "misplaced_image_tag": "an <image> tag that is not at the front of the first human turn",
    "missing_image": "an image file that does not exist under --images",
    "unreadable_image": "an image file that cannot be decoded",
    "duplicate_id": "an id used by an earlier record with different content",
    "duplicate_content": "the same image(s) and turns as an earlier record",
}
FIX_RULES = {
    "missing_image_tag": "fixed: <image>\\n tags inserted at the front of the first human turn",
    "misplaced_image_tag": "fixed: every tag moved to the front of the first human turn",
    "duplicate_id": "fixed: renamed <id>_<n> (the first record keeps the id)",
    "duplicate_content": "dropped (the first copy is kept)",
}  # every other problem: the record is dropped
FIXABLE = frozenset({"missing_image_tag", "misplaced_image_tag", "duplicate_id"})
_SPEAKERS = ("human", "gpt", "system")
EXAMPLES_PER_PROBLEM = 5


@dataclass
class CheckReport:
    path: str
    records: int = 0
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(PROBLEMS, 0))
    examples: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    problems: dict[int, set[str]] = field(default_factory=dict)  # record index -> its problems
    images_checked: int = 0
    lengths: LengthStats | None = None
    length_values: list[int] = field(default_factory=list, repr=False)
    unmeasured: int = 0  # records whose length could not be computed

    @property
    def clean(self) -> bool:
        return not any(self.counts.values())

    def add(self, problem: str, index: int, where: str, detail: str = "") -> None:
        self.counts[problem] += 1
        self.problems.setdefault(index, set()).add(problem)
        if len(self.examples[problem]) < EXAMPLES_PER_PROBLEM:
            self.examples[problem].append(where + (f" ({detail})" if detail else ""))

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "records": self.records, "records_with_problems": len(self.problems),
                "problems": {k: v for k, v in self.counts.items() if v}, "examples": dict(self.examples),
                "images_checked": self.images_checked, "unmeasured": self.unmeasured,
                "lengths": self.lengths.as_dict() if self.lengths else None}

    def summary(self) -> str:
        lines = [f"{self.path}: {self.records} records, {len(self.problems)} with problems, "
                 f"{self.images_checked} distinct images checked"]
        for problem, n in self.counts.items():
            if n:
                lines.append(f"  {problem}: {n}  e.g. {'; '.join(self.examples[problem])}")
        if self.clean:
            lines.append("  no problems found")
        return "\n".join(lines)


def _id_of(value: Any) -> str | None:
    if isinstance(value, dict) and isinstance(value.get("id"), (str, int)) and not isinstance(value["id"], bool):
        return str(value["id"])
    return None


def _images_of(record: dict) -> list[str] | None:
    """The record's image paths, or None when the field is malformed."""
    image = record.get("image")
    if image is None:
        return []
    if isinstance(image, str) and image:
        return [image]
    if isinstance(image, list) and all(isinstance(i, str) and i for i in image):
        return list(image)
    return None


def _tags_in_place(turns: list[dict], n: int) -> bool:
    """All `n` tags open the first human turn (whitespace between them allowed)."""
    first = next(i for i, t in enumerate(turns) if t["from"] == "human")
    prefix = re.match(rf"\s*(?:{re.escape(IMAGE_PLACEHOLDER)}\s*){{{n}}}", turns[first]["value"])
    return prefix is not None and sum(t["value"].count(IMAGE_PLACEHOLDER) for t in turns) == n


def content_key(images: list[str], turns: list[dict]) -> str:
    text = json.dumps([images, [[t["from"], t["value"].strip()] for t in turns]], ensure_ascii=False)
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


def structural_problems(value: Any) -> list[tuple[str, str]]:
    """What is wrong with one record before images and duplicates are looked at."""
    if not isinstance(value, dict):
        return [("malformed_record", f"a {type(value).__name__}, not an object")]
    turns = value.get("conversations")
    if not isinstance(turns, list) or not turns:
        return [("malformed_record", "no non-empty 'conversations' list")]
    if any(not isinstance(t, dict) or not isinstance(t.get("from"), str) or not isinstance(t.get("value"), str)
           for t in turns):
        return [("malformed_record", "a turn is not {'from': str, 'value': str}")]
    if _id_of(value) is None:
        return [("malformed_record", "no string or integer 'id'")]
    images = _images_of(value)
    if images is None:
        return [("malformed_record", "'image' must be a path or a list of paths")]
    unknown = sorted({t["from"] for t in turns} - set(_SPEAKERS))
    if unknown:
        return [("unknown_role", ", ".join(repr(u) for u in unknown))]
    out = []
    roles = [t["from"] for t in turns]
    body = roles[1:] if roles[0] == "system" else roles
    if not body or any(r != ("human" if i % 2 == 0 else "gpt") for i, r in enumerate(body)) or body[-1] != "gpt":
        out.append(("role_order", "-".join(roles)[:60]))
    for i, t in enumerate(turns):
        text = t["value"].replace(IMAGE_PLACEHOLDER, "").strip()
        if not text and not (t["from"] == "human" and IMAGE_PLACEHOLDER in t["value"]):
            out.append(("empty_turn", f"turn {i}"))
            break
    tags = sum(t["value"].count(IMAGE_PLACEHOLDER) for t in turns)
    if images and tags == 0:
        out.append(("missing_image_tag", f"{len(images)} image(s)"))
    elif tags != len(images):
        out.append(("image_tag_mismatch", f"{tags} <image> tags for {len(images)} image(s)"))
    elif tags and "human" in body and not _tags_in_place(turns, tags):
        out.append(("misplaced_image_tag", ""))
    return out


def _image_problem(path: Path, decode: bool) -> tuple[str, str] | None:
    if not path.is_file():
        return ("missing_image", str(path))
    if decode:
        from llavakit.images import ImageError, load_image

        try:
            load_image(path)
        except (ImageError, OSError) as err:
            return ("unreadable_image", f"{path.name}: {str(err).replace(str(path), '')[:120]}")
    return None


def check_dataset(path: str | Path, image_dir: str | Path | None = None, *,
                  length_fn: Callable[[list[dict], int], int] | None = None, max_length: int | None = None,
                  decode_images: bool = True, workers: int = 4) -> CheckReport:
    """Every problem of the file at `path`; lengths in tokens with `length_fn`, else in characters."""
    path = Path(path)
    image_dir = Path(image_dir) if image_dir is not None else path.parent
    report = CheckReport(str(path))
    ids: dict[str, str] = {}  # id -> content key of its first record
    contents: set[str] = set()
    uses: dict[str, list[tuple[int, str]]] = defaultdict(list)  # image name -> records using it
    for raw in read_records(path):
        report.records += 1
        rid = _id_of(raw.value)
        where = f"{rid} ({raw.where})" if rid is not None else raw.where
        problems = [("malformed_record", raw.error)] if raw.error else structural_problems(raw.value)
        for problem, detail in problems:
            report.add(problem, raw.index, where, detail)
        if any(p in ("malformed_record", "unknown_role") for p, _ in problems):
            continue
        images, turns = _images_of(raw.value) or [], raw.value["conversations"]
        for name in images:
            uses[name].append((raw.index, where))
        key = content_key(images, turns)
        if key in contents:
            report.add("duplicate_content", raw.index, where)
        elif rid in ids:
            report.add("duplicate_id", raw.index, where)
        contents.add(key)
        ids.setdefault(rid, key)
        if any(p in ("role_order", "image_tag_mismatch") for p, _ in problems):
            report.unmeasured += 1
            continue
        try:
            report.length_values.append(length_fn(turns, len(images)) if length_fn else character_length(turns))
        except ValueError:  # e.g. the stage-1 template cannot render a text-only record
            report.unmeasured += 1
    names = sorted(uses)
    with ThreadPoolExecutor(max(1, workers)) as pool:  # decoding releases the GIL
        results = pool.map(lambda n: _image_problem(image_dir / n, decode_images), names)
        for name, result in zip(names, results):
            report.images_checked += 1
            if result is not None:
                for index, where in uses[name]:
                    report.add(result[0], index, where, result[1])
    report.lengths = LengthStats.of(report.length_values, "tokens" if length_fn else "characters",
                                    max_length if length_fn else None)
    return report


def move_image_tags(turns: list[dict], count: int) -> list[dict]:
    """Tags removed wherever they are; `count` of them open the first human turn, LLaVA style."""
    first = next(i for i, t in enumerate(turns) if t["from"] == "human")
    out = []
    for i, t in enumerate(turns):
        text = t["value"].replace(IMAGE_PLACEHOLDER, "").strip()
        if i == first:  # like normalise_image_placeholders: a tag-only turn ends up as "<image>"
            text = ((IMAGE_PLACEHOLDER + "\n") * count + text).strip()
        out.append({**t, "value": text})
    return out


@dataclass
class FixReport:
    kept: int = 0
    dropped: dict[str, int] = field(default_factory=dict)  # first drop reason of each record -> count
    tags_moved: int = 0
    ids_renamed: int = 0

    def summary(self) -> str:
        dropped = ", ".join(f"{k} {v}" for k, v in sorted(self.dropped.items())) or "none"
        return (f"kept {self.kept} records; dropped {sum(self.dropped.values())} ({dropped}); "
                f"<image> tags moved or inserted in {self.tags_moved}; ids renamed {self.ids_renamed}")


def fix_dataset(path: str | Path, report: CheckReport, out: str | Path) -> FixReport:
    """Write the records `report` allows to `out`, repaired; see FIX_RULES."""
    fix = FixReport()
    all_ids = {rid for raw in read_records(path) if (rid := _id_of(raw.value)) is not None}
    emitted_ids: set[str] = set()
    emitted_content: set[str] = set()

    def drop(reason: str) -> None:
        fix.dropped[reason] = fix.dropped.get(reason, 0) + 1

    def records():
        for raw in read_records(path):
            problems = report.problems.get(raw.index, set())
            # Duplicates are decided again below, on the repaired records that are actually kept.
            fatal = problems - FIXABLE - {"duplicate_content"}
            if fatal:
                drop(min(fatal, key=list(PROBLEMS).index))
                continue
            record = dict(raw.value)
            images = _images_of(record) or []
            if problems & {"missing_image_tag", "misplaced_image_tag"}:
                record["conversations"] = move_image_tags(record["conversations"], len(images))
                fix.tags_moved += 1
            key = content_key(images, record["conversations"])
            if key in emitted_content:
                drop("duplicate_content")
                continue
            emitted_content.add(key)
            rid = str(record["id"])
            if rid in emitted_ids:
                n = 2
                while f"{rid}_{n}" in emitted_ids or f"{rid}_{n}" in all_ids:
                    n += 1
                record["id"], fix.ids_renamed = f"{rid}_{n}", fix.ids_renamed + 1
            emitted_ids.add(str(record["id"]))
            fix.kept += 1
            yield record

    write_records(out, records())
    return fix
