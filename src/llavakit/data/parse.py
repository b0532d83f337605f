"""LLM replies -> LLaVA conversation records, or a rejection with a reason.

Dialogue kinds (``conversation``, ``reasoning``) expect labelled blocks::

    Question:
    What is the man holding?
    ===
    Answer:
    A red umbrella.

Near misses are accepted too: labels with the text on the same line, ``Q:``/``A:``,
``User:``/``Assistant:``, ``Human:``/``GPT:``, markdown bold labels, numbered labels
(``Question 2:``), a chatty first line before the first label, or one JSON object per line with
``question`` and ``answer`` keys.  Anything else is rejected with one of `REJECT_REASONS`.
"""

from __future__ import annotations

import json
import re

from llavakit.conversation import IMAGE_PLACEHOLDER
from llavakit.data.prompts import detail_instruction

REJECT_REASONS = (
    "empty",  # nothing but whitespace
    "truncated",  # the endpoint stopped at max_tokens (finish_reason "length"): the last turn is cut
    "no_qa_pairs",  # a dialogue kind without any Question/Answer labels
    "unbalanced_turns",  # labels that do not alternate question, answer, ..., ending with an answer
    "empty_turn",  # a label with no text after it
    "too_short",  # a detail description under MIN_DETAIL_WORDS words
    "mentions_source",  # talks about captions / boxes / coordinates instead of the image
)
MIN_DETAIL_WORDS = 15

_LABEL = re.compile(
    r"^[ \t]*[*_#]*[ \t]*(question|answer|q|a|user|human|assistant|gpt)(?:[ \t]*\d+)?[ \t]*[*_]*[ \t]*:[ \t]*[*_]*",
    re.IGNORECASE | re.MULTILINE,
)
_QUESTION_LABELS = {"question", "q", "user", "human"}
_SEPARATOR = re.compile(r"^[ \t]*(?:={3,}|-{3,})[ \t]*$", re.MULTILINE)
# The paper asked GPT-4 never to reveal its sources; replies that do would teach the model to talk
# about captions it never receives.
_SOURCE_WORDS = re.compile(r"\bbounding box(?:es)?\b|\bcoordinates\b|\bcaptions?\b|\bthe (?:given|provided) "
                           r"(?:sentences|descriptions?|information)\b", re.IGNORECASE)


class Rejected(ValueError):
    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason, self.detail = reason, detail


def _clean(text: str) -> str:
    # A literal <image> in generated text would break the one-tag-per-image rule of the record.
    return text.replace(IMAGE_PLACEHOLDER, "image").strip().strip("*_").strip()


def _json_pairs(text: str) -> list[tuple[str, str]] | None:
    """One ``{"question": ..., "answer": ...}`` per line, or None when the reply is not like that."""
    pairs = []
    for line in text.splitlines():
        line = line.strip().rstrip(",")
        if not line:
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError:
            return None
        if not isinstance(item, dict) or not {"question", "answer"} <= set(item):
            return None
        pairs.append((str(item["question"]), str(item["answer"])))
    return pairs or None


def parse_dialogue(text: str) -> list[tuple[str, str]]:
    """(question, answer) pairs from a dialogue reply, or `Rejected`."""
    if not text.strip():
        raise Rejected("empty")
    pairs = _json_pairs(text)
    if pairs is None:
        labels = list(_LABEL.finditer(text))
        if not labels:
            raise Rejected("no_qa_pairs", "no Question:/Answer: labels")
        blocks = []
        for i, m in enumerate(labels):
            end = labels[i + 1].start() if i + 1 < len(labels) else len(text)
            body = _SEPARATOR.sub("", text[m.end():end])
            blocks.append((m.group(1).lower() in _QUESTION_LABELS, body))
        kinds = [is_q for is_q, _ in blocks]
        if len(blocks) % 2 or any(is_q != (i % 2 == 0) for i, is_q in enumerate(kinds)):
            order = "".join("Q" if q else "A" for q in kinds)
            raise Rejected("unbalanced_turns", f"label order {order[:40]}")
        pairs = [(blocks[i][1], blocks[i + 1][1]) for i in range(0, len(blocks), 2)]
    pairs = [(_clean(q), _clean(a)) for q, a in pairs]
    if any(not q or not a for q, a in pairs):
        raise Rejected("empty_turn")
    return pairs


def parse_reply(kind: str, text: str, record_id: str, image: str, *,
                finish_reason: str | None = None) -> dict:
    """A LLaVA record ``{"id", "image", "conversations"}`` from one reply, or `Rejected`."""
    if not text.strip():
        raise Rejected("empty")
    if finish_reason == "length":
        raise Rejected("truncated", "the reply hit max_tokens")
    if kind == "detail":
        description = _clean(_SEPARATOR.sub("", text))
        if len(description.split()) < MIN_DETAIL_WORDS:
            raise Rejected("too_short", f"{len(description.split())} words")
        pairs = [(detail_instruction(record_id), description)]
    else:
        pairs = parse_dialogue(text)
    leak = next((m.group(0) for q, a in pairs for m in [_SOURCE_WORDS.search(q + "\n" + a)] if m), None)
    if leak:
        raise Rejected("mentions_source", repr(leak))
    turns = []
    for i, (question, answer) in enumerate(pairs):
        # LLaVA's layout: the image tag opens the first human turn, on a line of its own.
        turns.append({"from": "human", "value": (IMAGE_PLACEHOLDER + "\n" if i == 0 else "") + question})
        turns.append({"from": "gpt", "value": answer})
    return {"id": record_id, "image": image, "conversations": turns}
