"""MMBench-CN: MMBench's questions in Chinese, same circular evaluation.

The only prompt difference (model_vqa_mmbench.py --lang cn) is the instruction "请直接回答选项字母。".
"""

from __future__ import annotations

from llavakit.eval.benchmarks.mmbench import MMBench
from llavakit.eval.prompts import MULTIPLE_CHOICE_CN


class MMBenchCN(MMBench):
    name = "mmbench_cn"
    title = "MMBench-CN"
    reported = 58.3
    instruction = MULTIPLE_CHOICE_CN
    file_patterns = ("mmbench_{split}_cn*.tsv", "MMBench_{SPLIT}_CN*.tsv")
