"""Turning a free-text model answer into the label a benchmark scores, as each official script does."""

from __future__ import annotations

import re
from collections.abc import Sequence

# --- yes / no ---------------------------------------------------------------------------------


def pope_label(answer: str) -> str:
    """LLaVA's eval_pope.py: keep the text before the first ".", drop commas, split on spaces;
    "no" if any word is exactly "No", "no" or "not", else "yes" (an empty answer counts as yes)."""
    text = answer.split(".")[0] if "." in answer else answer
    words = text.replace(",", "").split(" ")
    return "no" if ("No" in words or "not" in words or "no" in words) else "yes"


def mme_label(answer: str) -> str:
    """MME's eval_tool/calculation.py: lower-case; "yes"/"no" as is; else look for "yes", then
    "no", in the first four characters; anything else is "other" (always wrong)."""
    text = answer.lower()
    if text in ("yes", "no"):
        return text
    head = text[:4]
    if "yes" in head:
        return "yes"
    if "no" in head:
        return "no"
    return "other"


# --- option letters ---------------------------------------------------------------------------

_SQA_OPTIONS = "ABCDE"
_THE_ANSWER_IS = re.compile(r"The answer is ([A-Z]).")  # "." is any character, as in the original


def scienceqa_letter(answer: str) -> str:
    """LLaVA's eval_science_qa.py: the whole answer if it is a letter A-E, else the first letter of
    "X. ...", else the one "The answer is X." it contains; otherwise "FAILED"."""
    if answer in _SQA_OPTIONS:
        return answer
    if len(answer) >= 3 and answer[0] in _SQA_OPTIONS and answer[1:3] == ". ":
        return answer[0]
    found = _THE_ANSWER_IS.findall(answer)
    return found[0] if len(found) == 1 else "FAILED"


def the_answer_is(text: str) -> str | None:
    """The single letter of a "The answer is X." sentence (LLaVA's GPT-4 ensemble parsing)."""
    found = _THE_ANSWER_IS.findall(text)
    return found[0] if len(found) == 1 else None


def option_index(letter: str, n_choices: int) -> int:
    """0-based option of `letter`, or -1 when it is not one of the first `n_choices` letters.

    (eval_science_qa.py returns -1 before reaching its dead "random choice" fallback.)
    """
    letters = _SQA_OPTIONS[:n_choices]
    return letters.index(letter) if letter and letter in letters else -1


# MMBench: decorations around a letter that still identify it ("(B)", "B.", ":C" ...), tried in order.
_DECORATIONS = (("", "."), ("", ","), ("", ":"), ("", ")"), ("", ")."), ("(", ")"), ("(", ")."), (":", ""),
                (":", ","), (":", "."), (":", ")"), (":", ")."))


def mmbench_letter(answer: str, options: dict[str, str]) -> str | None:
    """The option an answer names, by MMBench's rule-based matching (before its GPT fallback).

    1. Exactly one of the letters A-E stands alone as a word (unless that word is "A" in a longer
       sentence, where it may be the article) -> that letter.
    2. Else, for each decoration like "(X)" or "X.", exactly one letter appears decorated -> it.
    3. Else exactly one option's text appears in the answer (case-insensitive) -> its letter.
    None when nothing matches; the letter may be "E" or one with no option (then it is wrong).
    """
    words = [w.strip() for w in answer.split()]
    candidates = "ABCDE"
    bare = [c for c in candidates if c in words]
    if len(bare) == 1 and not ("A" in words and len(words) > 3):
        return bare[0]
    for before, after in _DECORATIONS:
        hits = [c for c in candidates if before + c + after in words]
        if len(hits) == 1:
            return hits[0]
    lower = answer.lower()
    texts = [letter for letter, text in options.items() if str(text).lower() in lower]
    return texts[0] if len(texts) == 1 else None


def seed_correct(answer: str, gold: str) -> bool:
    """LLaVA's convert_seed_for_submission.py: the (stripped) answer must equal the letter exactly."""
    return answer == gold


def rotate(options: Sequence[str], shift: int) -> list[str]:
    """Options moved `shift` places to the left: the option at `shift` is shown first."""
    if not options:
        return []
    shift %= len(options)
    return list(options[shift:]) + list(options[:shift])
