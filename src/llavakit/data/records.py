"""Reading and writing LLaVA datasets: a JSON array of records, or JSON Lines (one record a line).

`read_records` streams either kind (a 665K-record JSON array is never held as text in memory) and
says where each record came from -- its JSONL line number -- so problems can be reported with a
location.  A JSONL line that is not JSON is yielded with its error (one bad line does not end the
file); a JSON array that stops parsing cannot be resynchronised and raises `DataFormatError`.
"""

from __future__ import annotations

import codecs
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class DataFormatError(ValueError):
    """The file is neither a JSON array of records nor JSON Lines."""


@dataclass
class RawRecord:
    index: int  # position in the file, from 0 (unparseable JSONL lines count too)
    line: int | None  # JSONL line number (from 1); None for a JSON array
    value: Any = None  # the decoded JSON value (not necessarily a dict)
    error: str | None = None  # set when the line is not valid JSON

    @property
    def where(self) -> str:
        return f"line {self.line}" if self.line is not None else f"record {self.index}"


def is_json_array(path: str | Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(4096).removeprefix(codecs.BOM_UTF8).lstrip()
    return head[:1] == b"["


def read_records(path: str | Path) -> Iterator[RawRecord]:
    """Every record of a LLaVA JSON or JSONL file, in order."""
    path = Path(path)
    if is_json_array(path):
        for index, value in enumerate(_json_array(path)):
            yield RawRecord(index, None, value)
        return
    index = 0
    with open(path, encoding="utf-8-sig", errors="replace") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                yield RawRecord(index, number, json.loads(line))
            except json.JSONDecodeError as err:
                yield RawRecord(index, number, None, f"not valid JSON: {err}")
            index += 1


def _json_array(path: Path, chunk: int = 1 << 22) -> Iterator[Any]:
    """The items of a top-level JSON array, decoded a few MB at a time."""
    decoder = json.JSONDecoder()
    buf, pos, started, eof, consumed = "", 0, False, False, 0
    with open(path, encoding="utf-8-sig") as f:
        while True:
            while pos < len(buf) and buf[pos] in " \t\r\n,":
                pos += 1
            if pos < len(buf) and not started:
                if buf[pos] != "[":
                    raise DataFormatError(f"{path}: expected a JSON array of records")
                started, pos = True, pos + 1
                continue
            if pos < len(buf) and buf[pos] == "]":
                return
            if pos >= len(buf) or not eof and len(buf) - pos < chunk // 2:
                if eof:
                    raise DataFormatError(f"{path}: the JSON array is not closed (file cut short?)")
                data = f.read(chunk)
                eof = not data
                consumed += pos
                buf, pos = buf[pos:] + data, 0
                continue
            try:
                value, end = decoder.raw_decode(buf, pos)
            except json.JSONDecodeError as err:
                if not eof:  # the record may continue in the next chunk
                    data = f.read(chunk)
                    eof = not data
                    consumed += pos
                    buf, pos = buf[pos:] + data, 0
                    continue
                raise DataFormatError(f"{path}: invalid JSON near character {consumed + err.pos}: {err.msg}") from None
            yield value
            pos = end


def load_records(path: str | Path) -> list[dict]:
    """All records of a file, which must all be JSON objects (for mixing)."""
    out = []
    for raw in read_records(path):
        if raw.error or not isinstance(raw.value, dict):
            raise DataFormatError(f"{path} {raw.where}: {raw.error or 'a record must be a JSON object'}; "
                                  "run `llavakit data check` (and --fix) first")
        out.append(raw.value)
    return out


def write_records(path: str | Path, records: Iterable[dict]) -> int:
    """Write records atomically (temp file + rename): a JSON array when `path` ends in ``.json``,
    JSON Lines otherwise.  Returns how many were written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    array = path.suffix.lower() == ".json"
    n = 0
    with open(tmp, "w", encoding="utf-8") as f:
        f.write("[\n" if array else "")
        for record in records:
            text = json.dumps(record, ensure_ascii=False)
            f.write((",\n" if array and n else "") + text + ("" if array else "\n"))
            n += 1
        f.write("\n]\n" if array else "")
    os.replace(tmp, path)
    return n
