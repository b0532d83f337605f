"""`llavakit eval`: score a model on LLaVA-1.5's benchmarks from their official files."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "eval",
        help="evaluate a model on VQAv2, GQA, POPE, MME, MMBench, ... with the official prompts and scorers",
        description="Run a model on one or more of LLaVA-1.5's twelve benchmarks, read from their official files "
        "in a local folder (see docs/evaluation.md), and score the answers the way each official scorer does. "
        "Answers are appended to <output>/<benchmark>/<split>/predictions.jsonl as they come, so an interrupted "
        "run continues where it stopped. A report (JSON, markdown, PNG) of everything in --output is written at the end.",
    )
    p.add_argument("--model", help="checkpoint folder or hub id (llavakit, llava-hf or original LLaVA format); "
                   "default: the embedded model")
    p.add_argument("--benchmark", nargs="+", metavar="NAME", help="benchmark name(s), or 'all' for the paper's twelve (see --list)")
    p.add_argument("--data", help="folder with the benchmark's official files; with several benchmarks, a folder "
                   "with one subfolder per benchmark name (default: ./eval_data)")
    p.add_argument("--split", nargs="+", metavar="SPLIT", help="split to evaluate (default: the one LLaVA-1.5 "
                   "reports); with several benchmarks, NAME=SPLIT pairs, e.g. vqav2=val vizwiz=val")
    p.add_argument("--limit", type=int, help="only the first N questions (quick runs)")
    p.add_argument("--output", default="eval_results", help="output folder (default: ./eval_results)")
    p.add_argument("--batch-size", type=int, default=8, help="prompts per generate call (default 8)")
    p.add_argument("--max-new-tokens", type=int, help="override the benchmarks' answer length limits")
    p.add_argument("--dtype", default="auto", help="auto, fp32, bf16 or fp16")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    p.add_argument("--template", help="override the model's chat template")
    p.add_argument("--judge-url", help="OpenAI-compatible endpoint for LLM-judged benchmarks, e.g. http://host:8000/v1 "
                   "(key from LLAVAKIT_JUDGE_API_KEY or OPENAI_API_KEY)")
    p.add_argument("--judge-model", help="model name to ask at --judge-url (the papers used GPT-4)")
    p.add_argument("--judge-cache", help="judge reply cache (default: <output>/judge_cache.jsonl)")
    p.add_argument("--judge-ensemble", action="store_true",
                   help="scienceqa_img: also score the LLaVA paper's model + judge-LLM ensemble")
    p.add_argument("--score-only", action="store_true", help="do not run the model; score the stored predictions")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    p.set_defaults(func=run)


def _list() -> int:
    from llavakit.eval.registry import BENCHMARKS

    for name, cls in BENCHMARKS.items():
        judge = ", LLM judge" if cls.needs_judge else ""
        print(f"{name:18} {cls.title:18} splits: {', '.join(cls.splits)} (default {cls.default_split}){judge}")
    return 0


def _data_dir(root: Path, name: str, several: bool) -> Path:
    if several or (root / name).is_dir():
        return root / name
    return root


def _splits(values: list[str], names: list[str]) -> dict[str, str]:
    """--split values: one bare split for every benchmark, and/or NAME=SPLIT pairs."""
    from llavakit.cli import UserError

    out: dict[str, str] = {}
    for value in values:
        name, sep, split = value.partition("=")
        if not sep:
            out.update(dict.fromkeys(names, value))
        elif name in names:
            out[name] = split
        else:
            raise UserError(f"--split {value}: {name!r} is not among the benchmarks being run")
    return out


def run(args: argparse.Namespace) -> int:
    from llavakit.cli import UserError

    if args.list:
        return _list()
    from llavakit.eval.base import BenchmarkError
    from llavakit.eval.judge import Judge, JudgeError
    from llavakit.eval.registry import PAPER_BENCHMARKS, get_benchmark
    from llavakit.eval.report import write_report
    from llavakit.eval.runner import answer_fn_from_engine, lazy_answer_fn, run_benchmark

    if not args.benchmark:
        raise UserError("give --benchmark NAME (or 'all'); --list shows the names")
    names = [cls.name for cls in PAPER_BENCHMARKS] if args.benchmark == ["all"] else args.benchmark
    if args.limit is not None and args.limit < 1:
        raise UserError("--limit must be at least 1")
    if not args.score_only and not args.model:
        from llavakit.defaults import default_model_reference

        args.model = default_model_reference()  # the embedded model
    if args.judge_url and not args.judge_model:
        raise UserError("--judge-url needs --judge-model")
    root = Path(args.data or "eval_data")
    output = Path(args.output)
    splits = _splits(args.split or [], names)
    try:
        benchmarks = [get_benchmark(name)(_data_dir(root, name, len(names) > 1), splits.get(name)) for name in names]
    except BenchmarkError as err:
        raise UserError(str(err)) from None

    judge = None
    if args.judge_url:
        judge = Judge(args.judge_url, args.judge_model, cache_path=args.judge_cache or output / "judge_cache.jsonl")

    def load():
        import llavakit

        print(f"loading {args.model}", file=sys.stderr)
        from llavakit.engine import Engine

        model = llavakit.load(args.model, dtype=args.dtype, device=args.device, template=args.template)
        engine = Engine(model, max_batch_size=args.batch_size, max_queue=max(64, args.batch_size))
        return answer_fn_from_engine(engine, max_new_tokens=args.max_new_tokens)

    answer_fn = None if args.score_only else lazy_answer_fn(load)
    options = {"judge_ensemble": args.judge_ensemble}
    for bench in benchmarks:
        try:
            result = run_benchmark(bench, answer_fn, output, limit=args.limit, batch_size=args.batch_size,
                                   judge=judge, options=options, progress=not args.no_progress)
        except (BenchmarkError, JudgeError) as err:
            raise UserError(str(err)) from None
        value = result.headline
        shown = "—" if value is None else f"{value:.2f}"
        status = result.record["scores"].get("status")
        print(f"{bench.name} ({bench.split}): {bench.headline} = {shown}" + (f" [{status}]" if status else ""))
    paths = write_report(output, model=args.model)
    print(f"report: {paths['markdown']}")
    return 0
