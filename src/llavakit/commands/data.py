"""`llavakit data`: generate instruction data with an LLM, check a dataset, mix datasets."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "data", help="LLaVA training data: generate with an LLM, check (and fix), mix",
        description="Tools for LLaVA-format training data (JSON or JSONL records with 'id', 'image' and "
        "'conversations'). See docs/data.md.")
    sub = p.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)

    g = sub.add_parser(
        "generate", help="write conversation / detail / reasoning data from COCO annotations with an LLM",
        description="For each image, show a text-only LLM its captions (and normalised object boxes for detail "
        "and reasoning), parse the reply into a LLaVA record and append it to --out. Rerunning skips ids "
        "already in --out; rejected replies and failed requests are asked again.")
    g.add_argument("--annotations", required=True, help="COCO instances JSON (images, annotations, categories)")
    g.add_argument("--captions", help="COCO captions JSON, when the captions are not in --annotations")
    g.add_argument("--images", help="image folder: images whose file is missing are skipped")
    g.add_argument("--kind", choices=("conversation", "detail", "reasoning"), default="conversation")
    g.add_argument("--endpoint", required=True, help="OpenAI-compatible base URL, e.g. http://localhost:8000/v1 "
                   "(key from LLAVAKIT_LLM_API_KEY or OPENAI_API_KEY)")
    g.add_argument("--model", required=True, help="model name to ask at --endpoint")
    g.add_argument("--out", required=True, help="output JSONL (appended to; ids already there are skipped)")
    g.add_argument("--rejects", help="log of rejected replies and failed requests (default: <out>.rejects.jsonl)")
    g.add_argument("--limit", type=int, help="only the first N images of --annotations")
    g.add_argument("--concurrency", type=int, default=4, help="requests in flight (default 4)")
    g.add_argument("--rpm", type=float, help="at most this many requests per minute, retries included")
    g.add_argument("--max-retries", type=int, default=6, help="attempts per request (default 6)")
    g.add_argument("--backoff", type=float, default=1.0, help="first retry delay in seconds, doubled each time")
    g.add_argument("--timeout", type=float, default=120.0, help="seconds per HTTP request (default 120)")
    g.add_argument("--temperature", type=float, default=0.7)
    g.add_argument("--max-tokens", type=int, default=1024, help="reply length limit; cut replies are rejected")
    g.add_argument("--cache", help="folder for an on-disk reply cache (identical requests are not re-sent)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g.set_defaults(func=run_generate)

    c = sub.add_parser(
        "check", help="validate a LLaVA dataset, report lengths, optionally write a cleaned copy",
        description="Report malformed records, bad role order, <image> tags that do not match the images, "
        "empty turns, duplicate ids and content, missing and unreadable images, and length statistics (tokens "
        "with --model, characters otherwise) with a histogram PNG. Exit status 1 when problems are found "
        "(0 with --fix once the cleaned copy is written).")
    c.add_argument("file", help="LLaVA JSON or JSONL file")
    c.add_argument("--images", help="image folder the 'image' paths are relative to (default: the file's folder)")
    c.add_argument("--model", help="checkpoint whose tokenizer, template and image-token count measure lengths")
    c.add_argument("--max-length", type=int, default=2048, help="count records over this many tokens (default 2048)")
    c.add_argument("--histogram", help="length histogram PNG (default: <file>.lengths.png)")
    c.add_argument("--no-histogram", action="store_true")
    c.add_argument("--fix", metavar="OUT", help="write a cleaned copy (JSON array if OUT ends in .json, else JSONL)")
    c.add_argument("--skip-decode", action="store_true", help="only check that image files exist (faster)")
    c.add_argument("--workers", type=int, default=4, help="threads decoding images (default 4)")
    c.add_argument("--json", metavar="PATH", help="also write the report as JSON")
    c.set_defaults(func=run_check)

    m = sub.add_parser(
        "mix", help="a reproducible weighted, shuffled mixture of LLaVA datasets",
        description="Each SOURCE is PATH[:WEIGHT] and contributes round(WEIGHT x records): WEIGHT <= 1 samples "
        "that fraction without replacement, WEIGHT > 1 repeats every record floor(WEIGHT) times (plus a sample "
        "for the fraction). --total scales the counts to exactly N. Ids found in several sources get "
        "'<file stem>:' in front. Same sources, weights and --seed give the same file.")
    m.add_argument("sources", nargs="+", metavar="SOURCE", help="PATH[:WEIGHT], e.g. llava_instruct.json:1")
    m.add_argument("--out", required=True, help="output (JSONL, or a JSON array if it ends in .json)")
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--total", type=int, help="scale the per-source counts to sum to exactly N")
    m.set_defaults(func=run_mix)


def run_generate(args: argparse.Namespace) -> int:
    from llavakit.cli import UserError
    from llavakit.data.coco import AnnotationError, load_coco
    from llavakit.data.generate import GenerationAborted, generate
    from llavakit.llm import ChatClient

    try:
        images = load_coco(args.annotations, args.captions)
    except AnnotationError as err:
        raise UserError(str(err)) from None
    if args.limit is not None:
        images = images[: args.limit]
    client = ChatClient(args.endpoint, args.model, timeout=args.timeout, max_retries=args.max_retries,
                        backoff=args.backoff, cache_dir=args.cache, max_concurrency=args.concurrency,
                        requests_per_minute=args.rpm)
    rejects = args.rejects or f"{args.out}.rejects.jsonl"
    try:
        report = generate(images, args.kind, client, args.out, image_dir=args.images,
                          temperature=args.temperature, max_tokens=args.max_tokens, rejects_path=rejects,
                          progress=not args.no_progress)
    except GenerationAborted as err:
        print(f"stopped; {client.stats.as_dict()['total_tokens']} tokens used. Fix the problem and rerun: "
              "what was written is kept.", file=sys.stderr)
        raise UserError(str(err)) from None
    print(report.summary())
    if report.rejected or report.failed:
        print(f"rejected replies and failed requests are logged in {rejects}; a rerun asks for them again")
    return 1 if report.failed else 0


def run_check(args: argparse.Namespace) -> int:
    from llavakit.cli import UserError
    from llavakit.data.check import FIX_RULES, check_dataset, fix_dataset
    from llavakit.data.lengths import TokenCounter, draw_histogram
    from llavakit.data.records import DataFormatError

    path = Path(args.file)
    if not path.is_file():
        raise FileNotFoundError(f"no data file {path}")
    counter = TokenCounter(args.model) if args.model else None
    try:
        report = check_dataset(path, args.images, length_fn=counter, max_length=args.max_length,
                               decode_images=not args.skip_decode, workers=args.workers)
    except DataFormatError as err:
        raise UserError(str(err)) from None
    print(report.summary())
    print(report.lengths.summary())
    if counter is None:
        print("  (characters, not tokens: pass --model to measure tokens with a model's tokenizer, chat "
              "template and image-token count)")
    if not args.no_histogram and report.length_values:
        png = Path(args.histogram or f"{path}.lengths.png")
        unit = report.lengths.unit
        draw_histogram(report.length_values, png, title=f"{path.name}: record lengths in {unit}", unit=unit,
                       max_length=args.max_length if counter else None)
        print(f"histogram: {png}")
    if args.json:
        Path(args.json).write_text(json.dumps(report.as_dict(), indent=2) + "\n")
    if args.fix:
        fixed = fix_dataset(path, report, args.fix)
        print(f"--fix wrote {args.fix}: {fixed.summary()}")
        for problem, rule in FIX_RULES.items():
            if report.counts.get(problem):
                print(f"  {problem}: {rule}")
        return 0
    return 0 if report.clean else 1


def run_mix(args: argparse.Namespace) -> int:
    from llavakit.cli import UserError
    from llavakit.data.mix import mix, parse_source, summary
    from llavakit.data.records import DataFormatError

    try:
        sources = [parse_source(s) for s in args.sources]
        for s in sources:
            if not s.path.is_file():
                raise FileNotFoundError(f"no data file {s.path}")
        counts = mix(sources, args.out, seed=args.seed, total=args.total)
    except (ValueError, DataFormatError) as err:
        raise UserError(str(err)) from None
    print(summary(counts, args.out, args.seed))
    return 0
