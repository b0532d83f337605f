"""Write LLaVA instruction data with an LLM: one request per image, one JSONL line per accepted reply.

The run is resumable: the output file is read first and every id already in it is skipped, and each
record is written as one flushed line, so a run killed at any moment loses at most the replies in
flight (a torn last line is cut off on the next start).  Rejected replies (see
`llavakit.data.parse.REJECT_REASONS`) and failed requests are counted by reason and, with
``rejects_path``, logged with the raw reply so the prompts can be improved; they are asked again on
the next run.
"""

from __future__ import annotations

import contextlib
import json
import sys
import threading
from collections import Counter
from collections.abc import Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llavakit.data.coco import ImageContext
from llavakit.data.parse import Rejected, parse_reply
from llavakit.data.prompts import build_messages
from llavakit.jsonl import records_by_id, reopen_jsonl
from llavakit.llm import ChatClient, LLMError

# Statuses that no retry or later request will fix: stop the run instead of failing every image.
FATAL_STATUS = frozenset({401, 403, 404})


class GenerationAborted(RuntimeError):
    """The endpoint refused us for good (bad key, wrong URL or model) or kept failing."""


@dataclass
class GenerateReport:
    images: int = 0  # images considered (after --limit)
    already_done: int = 0  # skipped: their id was in the output file already
    no_captions: int = 0  # skipped: nothing to build a context from
    missing_image: int = 0  # skipped: not found under the image folder
    requested: int = 0
    written: int = 0
    rejected: Counter = field(default_factory=Counter)  # reason -> count
    failed: int = 0  # requests that still failed after the client's retries
    repaired_bytes: int = 0  # torn tail removed from the output on start
    client: dict[str, Any] = field(default_factory=dict)  # ChatClient stats: retries, tokens, ...

    def as_dict(self) -> dict[str, Any]:
        return {"images": self.images, "already_done": self.already_done, "no_captions": self.no_captions,
                "missing_image": self.missing_image, "requested": self.requested, "written": self.written,
                "rejected": dict(self.rejected), "rejected_total": sum(self.rejected.values()),
                "failed": self.failed, "repaired_bytes": self.repaired_bytes, "client": dict(self.client)}

    def summary(self) -> str:
        c = self.client
        lines = [
            f"images: {self.images} (already done {self.already_done}, no captions {self.no_captions}, "
            f"image file missing {self.missing_image})",
            f"requested: {self.requested}  written: {self.written}  rejected: {sum(self.rejected.values())}  "
            f"failed: {self.failed}",
        ]
        if self.rejected:
            lines.append("rejected by reason: " + ", ".join(f"{k} {v}" for k, v in self.rejected.most_common()))
        if c:
            lines.append(f"http calls: {c.get('http_calls', 0)} (retries {c.get('retries', 0)}, cache hits "
                         f"{c.get('cache_hits', 0)}, waited {c.get('rate_limited_s', 0)} s for the rate limit)")
            lines.append(f"tokens: prompt {c.get('prompt_tokens', 0)}, completion {c.get('completion_tokens', 0)}, "
                         f"total {c.get('total_tokens', 0)}")
        return "\n".join(lines)


def done_ids(path: Path) -> tuple[set[str], int]:
    """Ids already in an output JSONL file, and the bytes of torn last line cut off (0 if none).

    Lines without an id are foreign; `llavakit data check` reports them."""
    values, torn, _ = reopen_jsonl(path)
    return set(records_by_id(values)[0]), torn


def _select(images: Iterable[ImageContext], done: set[str], image_dir: Path | None,
            report: GenerateReport) -> Iterator[ImageContext]:
    seen: set[str] = set()
    for image in images:
        report.images += 1
        rid = image.record_id
        if rid in done or rid in seen:
            report.already_done += 1
        elif not any(c.strip() for c in image.captions):
            report.no_captions += 1
        elif image_dir is not None and not (image_dir / image.file_name).is_file():
            report.missing_image += 1
        else:
            seen.add(rid)
            yield image


def generate(images: list[ImageContext], kind: str, client: ChatClient, out: str | Path, *,
             image_dir: str | Path | None = None, temperature: float = 0.7, max_tokens: int | None = 1024,
             rejects_path: str | Path | None = None, progress: bool = True,
             max_consecutive_failures: int = 20) -> GenerateReport:
    """Ask `client` about every image not yet in `out`; append accepted records to `out`."""
    out = Path(out)
    report = GenerateReport()
    done, report.repaired_bytes = done_ids(out)
    if report.repaired_bytes:
        print(f"{out}: removed a torn last line ({report.repaired_bytes} bytes) left by an interrupted run",
              file=sys.stderr)
    todo = list(_select(images, done, Path(image_dir) if image_dir else None, report))
    out.parent.mkdir(parents=True, exist_ok=True)

    def ask(image: ImageContext):
        return client.complete(build_messages(kind, image), temperature=temperature, max_tokens=max_tokens)

    from tqdm import tqdm

    workers = client.max_concurrency  # one thread per request slot of the client
    consecutive_failures = 0
    bar = tqdm(total=len(todo), desc=f"generate {kind}", unit="img", disable=not progress, dynamic_ncols=True)
    stop = threading.Event()
    try:
        with contextlib.ExitStack() as stack:
            rejects = stack.enter_context(open(rejects_path, "a", encoding="utf-8")) if rejects_path else None
            sink = stack.enter_context(open(out, "a", encoding="utf-8"))
            pool = stack.enter_context(ThreadPoolExecutor(workers))
            pending: dict[Future, ImageContext] = {}
            queue = iter(todo)
            while True:
                # Keep a bounded window in flight so a 100K-image run does not queue 100K futures.
                while not stop.is_set() and len(pending) < 2 * workers:
                    image = next(queue, None)
                    if image is None:
                        break
                    pending[pool.submit(ask, image)] = image
                    report.requested += 1
                if not pending:
                    break
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in finished:
                    image = pending.pop(future)
                    bar.update(1)
                    try:
                        completion = future.result()
                    except LLMError as err:
                        report.failed += 1
                        consecutive_failures += 1
                        _log(rejects, image, kind, "request_failed", str(err), None)
                        if err.status in FATAL_STATUS or consecutive_failures >= max_consecutive_failures:
                            stop.set()
                            report.requested -= sum(f.cancel() for f in pending)  # never sent
                            why = ("the endpoint refused the request" if err.status in FATAL_STATUS
                                   else f"{consecutive_failures} requests in a row failed")
                            raise GenerationAborted(f"{why}: {err}") from err
                        continue
                    consecutive_failures = 0
                    try:
                        record = parse_reply(kind, completion.text, image.record_id, image.file_name,
                                             finish_reason=completion.finish_reason)
                    except Rejected as rej:
                        report.rejected[rej.reason] += 1
                        _log(rejects, image, kind, rej.reason, rej.detail, completion.text)
                        continue
                    sink.write(json.dumps(record, ensure_ascii=False) + "\n")
                    sink.flush()  # one complete line per record: a kill loses nothing written
                    report.written += 1
                bar.set_postfix(written=report.written, rejected=sum(report.rejected.values()),
                                failed=report.failed, refresh=False)
    finally:
        bar.close()
        report.client = client.stats.as_dict()
    return report


def _log(sink, image: ImageContext, kind: str, reason: str, detail: str, reply: str | None) -> None:
    if sink is None:
        return
    sink.write(json.dumps({"id": image.record_id, "image": image.file_name, "kind": kind, "reason": reason,
                          "detail": detail, "reply": reply}, ensure_ascii=False) + "\n")
    sink.flush()
