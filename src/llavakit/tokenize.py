"""Prompt text -> token ids with image slots, plus exact training labels.

Text is tokenised the way LLaVA's ``tokenizer_image_token`` does it: split on ``"<image>"``, tokenise each
chunk on its own with the Hugging Face tokenizer (so every chunk gets the tokenizer's usual leading-space
and BOS handling), keep the BOS once at the very start, and put the image between chunks.  Where LLaVA puts
one ``-200`` marker per image, we put ``tokens_per_image`` copies of a real ``image_token_id``: the model
later overwrites exactly those positions with the projected image features, so sequence lengths are final
here and batching/truncation need no special cases.

Labels are derived from the character spans of a :class:`~llavakit.conversation.RenderedPrompt` using the
fast tokenizer's offset mapping, so they are exact for any tokenizer: no round counting, no per-tokenizer
"-2 / legacy" adjustments and no "tokenization mismatch" fallback that silently masks a whole sample.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import accumulate
from typing import Any

from llavakit.conversation import IMAGE_PLACEHOLDER, RenderedPrompt

IGNORE_INDEX = -100


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int] | None  # None unless encoded with_labels
    image_positions: list[tuple[int, int]]  # (start, length) of each image's run of slot tokens


def image_slot_counts(tokens_per_image: int | Sequence[int], num_images: int) -> list[int]:
    """One slot count per image: an int applies to every image, a sequence must match one-to-one."""
    if isinstance(tokens_per_image, int) and not isinstance(tokens_per_image, bool):
        counts = [tokens_per_image] * num_images
    elif isinstance(tokens_per_image, Sequence) and not isinstance(tokens_per_image, str):
        counts = list(tokens_per_image)
        if len(counts) != num_images:
            raise ValueError(
                f"the prompt has {num_images} {IMAGE_PLACEHOLDER} placeholder(s) but {len(counts)} "
                "tokens_per_image count(s) were given"
            )
    else:
        raise TypeError(f"tokens_per_image must be an int or a sequence of ints, got {tokens_per_image!r}")
    for c in counts:
        if isinstance(c, bool) or not isinstance(c, int) or c < 1:
            raise ValueError(f"tokens_per_image counts must be positive ints, got {c!r}")
    return counts


def plain_backend(tokenizer: Any) -> Any | None:
    """A copy of a fast tokenizer's Rust backend with truncation and padding off, or None for a
    slow tokenizer. For encoding many texts without a Python dict per text: the tokenizer's own
    backend keeps the truncation and padding of its last call that asked for them, which a
    transformers call resets and a direct backend call would apply."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    from tokenizers import Tokenizer

    copy = Tokenizer.from_str(backend.to_str())
    copy.no_truncation()
    copy.no_padding()
    return copy


def _target_prefix_sums(text_len: int, spans: Sequence[tuple[int, int]]) -> list[int]:
    """sums[i] = number of target characters in text[:i], for O(1) overlap tests."""
    is_target = [0] * text_len
    for start, end in spans:
        if not 0 <= start <= end <= text_len:
            raise ValueError(f"target span {(start, end)} lies outside the text (length {text_len})")
        is_target[start:end] = [1] * (end - start)
    return [0, *accumulate(is_target)]


def _tokenize_chunk(tokenizer: Any, chunk: str, with_offsets: bool) -> tuple[list[int], list[int], list]:
    """ids, special-token mask (1 = added by the tokenizer, e.g. BOS) and offsets of one chunk."""
    enc = tokenizer(
        chunk,
        add_special_tokens=True,
        return_special_tokens_mask=True,
        return_offsets_mapping=with_offsets,
    )
    ids = list(enc["input_ids"])
    special = list(enc.get("special_tokens_mask") or [0] * len(ids))
    offsets = list(enc["offset_mapping"]) if with_offsets else [(0, 0)] * len(ids)
    return ids, special, offsets


def encode(
    rendered: RenderedPrompt | str,
    tokenizer: Any,
    *,
    image_token_id: int,
    tokens_per_image: int | Sequence[int],
    with_labels: bool = False,
    add_bos: bool = True,
) -> Encoded:
    """Tokenise a prompt, expanding each ``"<image>"`` into a run of ``image_token_id`` slots.

    ``tokens_per_image`` is the slot count for every image, or one count per image in order.  With
    ``with_labels`` (needs a :class:`RenderedPrompt` and a fast tokenizer) a token is a target, labelled
    with its own id, iff its character range overlaps a target span; everything else, including the
    BOS and the image slots, is ``IGNORE_INDEX``.  ``add_bos=False`` drops the tokenizer's BOS; with
    ``add_bos=True`` it is kept only if the tokenizer adds one.
    """
    if isinstance(rendered, RenderedPrompt):
        text, spans = rendered.text, rendered.target_spans
    elif isinstance(rendered, str):
        text, spans = rendered, None
    else:
        raise TypeError(f"expected a RenderedPrompt or str, got {type(rendered).__name__}")
    if with_labels:
        if spans is None:
            raise ValueError("with_labels=True needs a RenderedPrompt (a plain str has no target spans)")
        if not getattr(tokenizer, "is_fast", False):
            raise TypeError(
                f"labels need character offsets, which only fast (Rust `tokenizers`-backed) Hugging Face "
                f"tokenizers provide; got {type(tokenizer).__name__}"
            )
        target_sums = _target_prefix_sums(len(text), spans)

    chunks = text.split(IMAGE_PLACEHOLDER)
    counts = image_slot_counts(tokens_per_image, len(chunks) - 1)
    bos_id = getattr(tokenizer, "bos_token_id", None)

    input_ids: list[int] = []
    labels: list[int] = []
    image_positions: list[tuple[int, int]] = []
    chunk_start = 0  # character offset of the current chunk within `text`
    for i, chunk in enumerate(chunks):
        if i > 0:
            n = counts[i - 1]
            image_positions.append((len(input_ids), n))
            input_ids += [image_token_id] * n
            labels += [IGNORE_INDEX] * n
            chunk_start += len(IMAGE_PLACEHOLDER)
        ids, special, offsets = _tokenize_chunk(tokenizer, chunk, with_labels)
        # Every chunk comes back with the tokenizer's BOS; like LLaVA keep only the first chunk's.
        if ids and bos_id is not None and ids[0] == bos_id and special[0]:
            if i == 0 and add_bos:
                input_ids.append(bos_id)
                labels.append(IGNORE_INDEX)
            ids, special, offsets = ids[1:], special[1:], offsets[1:]
        input_ids += ids
        if with_labels:
            for tok_id, is_special, (start, end) in zip(ids, special, offsets, strict=True):
                if is_special:  # added by the tokenizer (e.g. an EOS it appends), not part of the text
                    labels.append(IGNORE_INDEX)
                    continue
                start, end = chunk_start + start, chunk_start + end
                # A zero-width token (one the tokenizer inserted) belongs to the character after it.
                end = max(end, min(start + 1, len(text)))
                labels.append(tok_id if target_sums[end] > target_sums[start] else IGNORE_INDEX)
        chunk_start += len(chunk)

    return Encoded(input_ids, labels if with_labels else None, image_positions)
