"""The benchmarks `llavakit eval` knows, by the exact name used on the command line."""

from __future__ import annotations

from llavakit.eval.base import Benchmark, BenchmarkError
from llavakit.eval.benchmarks.gqa import GQA
from llavakit.eval.benchmarks.llava_bench_wild import LLaVABenchWild
from llavakit.eval.benchmarks.mm_vet import MMVet
from llavakit.eval.benchmarks.mmbench import MMBench
from llavakit.eval.benchmarks.mmbench_cn import MMBenchCN
from llavakit.eval.benchmarks.mme import MME
from llavakit.eval.benchmarks.pope import POPE
from llavakit.eval.benchmarks.scienceqa_img import ScienceQAImg
from llavakit.eval.benchmarks.seed_bench import SEEDBench
from llavakit.eval.benchmarks.textvqa import TextVQA
from llavakit.eval.benchmarks.tiny_world import TinyWorld
from llavakit.eval.benchmarks.vizwiz import VizWiz
from llavakit.eval.benchmarks.vqav2 import VQAv2

# The paper's twelve, in the order of the LLaVA-1.5 paper's Table 4 (what `--benchmark all` runs).
PAPER_BENCHMARKS: tuple[type[Benchmark], ...] = (VQAv2, GQA, VizWiz, ScienceQAImg, TextVQA, POPE, MME, MMBench,
                                                 MMBenchCN, SEEDBench, LLaVABenchWild, MMVet)

# Everything `--benchmark NAME` accepts: the paper's twelve, then the embedded model's synthetic world.
BENCHMARKS: dict[str, type[Benchmark]] = {cls.name: cls for cls in (*PAPER_BENCHMARKS, TinyWorld)}


def get_benchmark(name: str) -> type[Benchmark]:
    """The benchmark class registered as exactly `name`."""
    try:
        return BENCHMARKS[name]
    except KeyError:
        raise BenchmarkError(f"unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)}") from None
