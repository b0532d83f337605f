"""Evaluation on LLaVA-1.5's twelve benchmarks with their official prompts and scorers.

    from llavakit.eval import get_benchmark, run_benchmark, answer_fn_from_model
    bench = get_benchmark("pope")("data/pope")
    result = run_benchmark(bench, answer_fn_from_model(llavakit.load("...")), "eval_results")

See docs/evaluation.md for where each benchmark's files come from.
"""

from llavakit.eval.base import AnswerFn, Benchmark, BenchmarkError, EvalRequest, ScoreContext
from llavakit.eval.judge import Judge, JudgeError
from llavakit.eval.registry import BENCHMARKS, get_benchmark
from llavakit.eval.report import write_report
from llavakit.eval.runner import RunResult, answer_fn_from_model, run_benchmark

__all__ = [
    "BENCHMARKS", "AnswerFn", "Benchmark", "BenchmarkError", "EvalRequest", "Judge", "JudgeError", "RunResult",
    "ScoreContext", "answer_fn_from_model", "get_benchmark", "run_benchmark", "write_report",
]
