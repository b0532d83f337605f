"""The instruction strings LLaVA-1.5's evaluation appended to each benchmark's questions.

Each constant is checked against the original LLaVA repository (``docs/Evaluation.md``,
``llava/eval/model_vqa_mmbench.py``, ``llava/eval/model_vqa_science.py``) or against the question files
of its ``eval.zip`` (see docs/evaluation.md for the exact provenance of every string).
"""

from __future__ import annotations

# Short-answer benchmarks (VQAv2, GQA, VizWiz, TextVQA, POPE, MME): "<question>\n" + this.
SHORT_ANSWER = "Answer the question using a single word or phrase."

# Multiple-choice benchmarks (ScienceQA, MMBench, SEED-Bench): options, then "\n" + this.
MULTIPLE_CHOICE = "Answer with the option's letter from the given choices directly."

# MMBench-CN's single-prediction prompt (model_vqa_mmbench.py with --lang cn).
MULTIPLE_CHOICE_CN = "请直接回答选项字母。"

# VizWiz: inserted between the question and the short-answer instruction.
VIZWIZ_UNANSWERABLE = "When the provided information is insufficient, respond with 'Unanswerable'."

# TextVQA (llava_textvqa_val_v051_ocr.jsonl): a line between question and instruction, tokens
# joined by ", "; the line is left out when the image has no OCR tokens.
TEXTVQA_OCR_PREFIX = "Reference OCR token: "

# MME's own question files end every question with this; LLaVA-1.5 replaced it with SHORT_ANSWER.
MME_YES_NO = "Please answer yes or no."

# LLaVA answer letters: ScienceQA allows five options, MMBench and SEED-Bench four.
LETTERS = "ABCDE"


def short_answer(question: str) -> str:
    """``<question>\\nAnswer the question using a single word or phrase.``"""
    return f"{question}\n{SHORT_ANSWER}"


def with_image(text: str, images: int = 1) -> str:
    """LLaVA puts the image placeholder(s) first, each followed by a newline."""
    return "<image>\n" * images + text


def options_block(options: list[str], letters: str = LETTERS) -> str:
    """``A. first\\nB. second ...`` (no trailing newline)."""
    return "\n".join(f"{letter}. {option}" for letter, option in zip(letters, options))
