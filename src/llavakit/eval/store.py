"""An append-only JSON Lines store keyed by id: what makes evaluation (and judging) resumable.

Each record is written as one line and flushed at once, so an interrupted run loses at most the
line being written.  Opening the store again reads every complete line, cuts off a torn last line
(a crash mid-write leaves one without its newline), and `done` tells which ids to skip.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from llavakit.jsonl import records_by_id, reopen_jsonl


class JsonlStore:
    """Records ``{"id": ..., **fields}`` in a JSONL file; the last record for an id wins."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.records: dict[str, dict[str, Any]] = {}
        self.repaired = 0  # bytes of torn tail removed when opening
        self.skipped = 0  # complete but unreadable lines (left in place, ignored)
        self._load()

    def _load(self) -> None:
        values, self.repaired, unreadable = reopen_jsonl(self.path)
        if self.repaired:
            print(f"{self.path}: removed a torn last line ({self.repaired} bytes)", file=sys.stderr)
        self.records, missing = records_by_id(values)
        self.skipped = unreadable + missing

    def __contains__(self, key: str) -> bool:
        return key in self.records

    def __len__(self) -> int:
        return len(self.records)

    def get(self, key: str) -> dict[str, Any] | None:
        return self.records.get(key)

    def append(self, records: Iterable[dict[str, Any]]) -> None:
        """Write records (each needs an "id"), flushed and fsynced before returning."""
        lines = []
        for record in records:
            record = {**record, "id": str(record["id"])}
            self.records[record["id"]] = record
            lines.append(json.dumps(record, ensure_ascii=False) + "\n")
        if not lines:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write("".join(lines))
            f.flush()
            os.fsync(f.fileno())


class PredictionStore(JsonlStore):
    """Model answers: ``{"id", "prompt", "answer"}`` per line."""

    def answers(self) -> dict[str, str]:
        return {key: str(record.get("answer", "")) for key, record in self.records.items()}
