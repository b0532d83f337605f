"""`llavakit batch`: answer a JSONL file of requests, batched, resumable, never stopping on a bad line.

Each input line is a JSON object: "id" (optional, default the line number), "question" (a string)
or "messages" (chat turns), "image" (a path) or "images" (paths), and optional generation options,
either at the top level or in an "options" object (max_new_tokens, temperature, top_p, top_k,
repetition_penalty, seed, stop). Other top-level keys are ignored, so evaluation files can be
used as they are. Each answer is appended to the output as soon as it is done, as
{"id", "answer", "finish_reason", "prompt_tokens", "completion_tokens"}; a rerun skips the ids
already there (after cutting off a half-written last line), so a killed run just continues.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from llavakit.commands._generation import (
    add_model_options,
    add_sampling_options,
    check_sampling_options,
    load_engine,
    sampling_options,
)

OPTION_KEYS = ("max_new_tokens", "temperature", "top_p", "top_k", "repetition_penalty", "seed", "stop")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "batch", help="answer a JSONL file of requests (batched, resumable)",
        description=__doc__.split("\n\n", 1)[1].replace("\n", " "),
    )
    p.add_argument("--input", required=True, help="requests, one JSON object per line")
    p.add_argument("--output", required=True, help="answers (JSONL); existing answers are kept and skipped")
    p.add_argument("--image-folder", help="base folder of relative image paths (default: the input's folder)")
    p.add_argument("--batch-size", type=int, default=8, help="requests decoded together (default 8)")
    add_model_options(p, model_required=True)
    add_sampling_options(p)
    p.set_defaults(func=run)


def repair_output(path: Path) -> set:
    """Ids already answered in `path`; a partially written last line is cut off."""
    if not path.exists():
        return set()
    data = path.read_bytes()
    done, good_end, start = set(), 0, 0
    while start < len(data):
        end = data.find(b"\n", start)
        if end < 0:
            break  # no newline: the last write was interrupted
        try:
            record = json.loads(data[start:end])
            done.add(_id_key(record["id"]))
            good_end = end + 1
        except (ValueError, KeyError, TypeError):
            if data[end + 1:].strip():
                good_end = end + 1  # a damaged line in the middle: keep it, it is not ours to judge
            else:
                break
        start = end + 1
    if good_end < len(data):
        with open(path, "r+b") as f:
            f.truncate(good_end)
    return done


def _id_key(value) -> str:
    return json.dumps(value, sort_keys=True)


class BadLine(ValueError):
    pass


def parse_line(text: str, lineno: int, base: Path, defaults: dict):
    """(id, Request) from one input line; raises BadLine with a readable reason."""
    from llavakit.engine import Request, SamplingParams

    try:
        record = json.loads(text)
    except ValueError as err:
        raise BadLine(f"not valid JSON ({err})") from None
    if not isinstance(record, dict):
        raise BadLine("expected a JSON object")
    rid = record.get("id", lineno)
    if "question" in record:
        if not isinstance(record["question"], str):
            raise BadLine('"question" must be a string')
        messages = [{"role": "user", "content": record["question"]}]
    elif "messages" in record:
        messages = record["messages"]
        if not isinstance(messages, list) or not messages:
            raise BadLine('"messages" must be a non-empty list of {"role", "content"} objects')
    else:
        raise BadLine('needs "question" or "messages"')
    paths = record.get("images", [record["image"]] if "image" in record else [])
    if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
        raise BadLine('"image" must be a path and "images" a list of paths')
    options = dict(defaults)
    options.update({k: record[k] for k in OPTION_KEYS if k in record})
    extra = record.get("options", {})
    if not isinstance(extra, dict):
        raise BadLine('"options" must be an object')
    options.update(extra)
    try:
        params = SamplingParams.from_dict(options)
    except (TypeError, ValueError) as err:
        raise BadLine(f"bad generation options: {err}") from None
    images = [p if Path(p).is_absolute() else str(base / p) for p in paths]
    return rid, Request(messages=messages, images=images, params=params, id=rid)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from llavakit.cli import UserError

    check_sampling_options(args)
    source, output = Path(args.input), Path(args.output)
    if not source.is_file():
        raise UserError(f"input file {source} does not exist")
    base = Path(args.image_folder) if args.image_folder else source.parent
    done = repair_output(output)
    defaults = sampling_options(args)

    bad: list[tuple[int, str]] = []
    todo: list[tuple[int, object, object]] = []  # (line number, id, request)
    seen: set = set()
    skipped = 0
    with open(source, encoding="utf-8", errors="replace") as f:
        for lineno, text in enumerate(f, start=1):
            if not text.strip():
                continue
            try:
                rid, request = parse_line(text, lineno, base, defaults)
                key = _id_key(rid)
                if key in seen:
                    raise BadLine(f"duplicate id {rid!r}")
                seen.add(key)
            except BadLine as err:
                bad.append((lineno, str(err)))
                print(f"line {lineno}: {err}", file=sys.stderr)
                continue
            if key in done:
                skipped += 1
            else:
                todo.append((lineno, rid, request))
    if skipped:
        print(f"resuming: {skipped} requests already answered in {output}", file=sys.stderr)

    written = 0
    if todo:
        engine = load_engine(args, max_batch_size=args.batch_size, max_queue=2 * args.batch_size)
        output.parent.mkdir(parents=True, exist_ok=True)
        try:
            with open(output, "a", encoding="utf-8") as out, tqdm(total=len(todo), unit="req", file=sys.stderr) as bar:
                for index, outcome in engine.run_many(request for _, _, request in todo):
                    lineno, rid, _ = todo[index]
                    bar.update(1)
                    if isinstance(outcome, Exception):
                        bad.append((lineno, str(outcome)))
                        bar.write(f"line {lineno}: {outcome}", file=sys.stderr)
                        continue
                    record = {"id": rid, "answer": outcome.text, "finish_reason": outcome.finish_reason,
                              "prompt_tokens": outcome.prompt_tokens, "completion_tokens": outcome.completion_tokens}
                    out.write(json.dumps(record, ensure_ascii=False) + "\n")
                    out.flush()  # a killed run loses at most the line being written
                    written += 1
        finally:
            engine.close()
    print(f"wrote {written} answers to {output}" + (f", {skipped} were already there" if skipped else ""),
          file=sys.stderr)
    if bad:
        bad.sort()
        print(f"{len(bad)} bad lines were skipped:", file=sys.stderr)
        for lineno, message in bad:
            print(f"  line {lineno}: {message}", file=sys.stderr)
        return 1
    return 0


os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # no fork warnings from the tokenizer
