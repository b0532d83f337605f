"""Reopening an append-only JSON Lines file after an interrupted run.

Every long job here (evaluation, the LLM reply cache, data generation) appends one JSON object a
line and flushes it, so a crash mid-write leaves at most a last line without its newline.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def reopen_jsonl(path: str | Path) -> tuple[list[Any], int, int]:
    """Cut off a torn last line, then parse the complete ones.

    Returns (parsed values of the readable lines, bytes of torn tail removed, unreadable lines).
    A missing file is empty. Unreadable complete lines are left in place and only counted.
    """
    path = Path(path)
    if not path.exists():
        return [], 0, 0
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1  # everything after the last newline is a torn write
    if end < len(data):
        with open(path, "r+b") as f:
            f.truncate(end)
    values, unreadable = [], 0
    for line in data[:end].splitlines():
        if not line.strip():
            continue
        try:
            values.append(json.loads(line))
        except (json.JSONDecodeError, UnicodeDecodeError):
            unreadable += 1
    return values, len(data) - end, unreadable


def records_by_id(values: list[Any]) -> tuple[dict[str, dict[str, Any]], int]:
    """{str(id): record} from parsed lines (the last record of an id wins), and how many had no id."""
    records, missing = {}, 0
    for value in values:
        try:
            records[str(value["id"])] = value
        except (KeyError, TypeError):
            missing += 1
    return records, missing
