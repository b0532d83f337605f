"""LLaVA training data: generate it with an LLM, check and clean it, mix datasets.

    from llavakit.data import load_coco, generate, check_dataset, mix
    from llavakit.llm import ChatClient

See docs/data.md; the command line is `llavakit data generate|check|mix`.
"""

from llavakit.data.check import FIX_RULES, PROBLEMS, CheckReport, check_dataset, fix_dataset
from llavakit.data.coco import ImageContext, load_coco
from llavakit.data.generate import GenerateReport, GenerationAborted, generate
from llavakit.data.mix import Source, mix, parse_source
from llavakit.data.parse import REJECT_REASONS, Rejected, parse_reply
from llavakit.data.records import DataFormatError, read_records, write_records

__all__ = [
    "FIX_RULES", "PROBLEMS", "REJECT_REASONS", "CheckReport", "DataFormatError", "GenerateReport",
    "GenerationAborted", "ImageContext", "Rejected", "Source", "check_dataset", "fix_dataset", "generate",
    "load_coco", "mix", "parse_reply", "parse_source", "read_records", "write_records",
]
