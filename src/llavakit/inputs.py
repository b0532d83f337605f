"""From a conversation and its images to model inputs: the one path every entry point takes.

images.py makes pixels, conversation.py renders the template, tokenize.py makes ids (with one
slot per image feature) and labels; this module joins them for one sample and pads samples
into a batch. Inference, serving, training and evaluation all call `prepare_sample`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from llavakit.config import LlavaConfig
from llavakit.conversation import IMAGE_PLACEHOLDER, ChatTemplate, Message, normalise_image_placeholders
from llavakit.images import ImageProcessor
from llavakit.tokenize import IGNORE_INDEX, encode


@dataclass
class Sample:
    input_ids: list[int]
    labels: list[int] | None
    pixel_values: torch.Tensor | None  # [images, 3, S, S]
    prompt: str


@dataclass
class Batch:
    input_ids: torch.Tensor  # [B, T]
    attention_mask: torch.Tensor  # [B, T], 1 = real token
    pixel_values: torch.Tensor | None  # all images of the batch in prompt order
    labels: torch.Tensor | None = None

    def to(self, device: torch.device | str) -> Batch:
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return Batch(move(self.input_ids), move(self.attention_mask), move(self.pixel_values), move(self.labels))


def as_messages(messages: Sequence[Message | dict]) -> list[Message]:
    """Accept Message objects or {"role", "content"} dicts."""
    out = []
    for i, m in enumerate(messages):
        if isinstance(m, Message):
            out.append(m)
        elif isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str):
            out.append(Message(m["role"], m["content"]))
        else:
            raise ValueError(f"message {i} must be a Message or a dict with string 'role' and 'content', got {m!r}")
    return out


def prepare_sample(
    messages: Sequence[Message | dict],
    images: Sequence = (),
    *,
    config: LlavaConfig,
    template: ChatTemplate,
    tokenizer,
    image_processor: ImageProcessor,
    add_generation_prompt: bool = True,
    with_labels: bool = False,
) -> Sample:
    """Render, tokenize and preprocess one conversation.

    Images go where the `<image>` placeholders are; with images but no placeholder, they are put
    at the front of the first user turn (what LLaVA does with a plain question).
    """
    messages = as_messages(messages)
    placeholders = sum(m.content.count(IMAGE_PLACEHOLDER) for m in messages)
    if images and placeholders == 0:
        first_user = next((i for i, m in enumerate(messages) if m.role == "user"), None)
        if first_user is None:
            raise ValueError("images were given but the conversation has no user message to attach them to")
        m = messages[first_user]
        messages[first_user] = Message(m.role, IMAGE_PLACEHOLDER * len(images) + m.content)
        placeholders = len(images)
    if placeholders != len(images):
        raise ValueError(
            f"the conversation has {placeholders} {IMAGE_PLACEHOLDER} placeholders but {len(images)} images "
            "were given; use one placeholder per image"
        )
    rendered = template.render(normalise_image_placeholders(messages), add_generation_prompt=add_generation_prompt)
    encoded = encode(rendered, tokenizer, image_token_id=config.image_token_id,
                     tokens_per_image=config.tokens_per_image, with_labels=with_labels)
    pixels = torch.stack([image_processor.preprocess(image) for image in images]) if images else None
    return Sample(encoded.input_ids, encoded.labels, pixels, rendered.text)


def collate(samples: Sequence[Sample], pad_id: int, padding_side: str = "left") -> Batch:
    """Pad to the longest sample: left for generation (new tokens line up), right for training."""
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    length = max(len(s.input_ids) for s in samples)
    ids = torch.full((len(samples), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(samples), length), dtype=torch.long)
    with_labels = all(s.labels is not None for s in samples)
    labels = torch.full((len(samples), length), IGNORE_INDEX, dtype=torch.long) if with_labels else None
    for row, s in enumerate(samples):
        n = len(s.input_ids)
        span = slice(length - n, length) if padding_side == "left" else slice(0, n)
        ids[row, span] = torch.tensor(s.input_ids, dtype=torch.long)
        mask[row, span] = 1
        if labels is not None:
            labels[row, span] = torch.tensor(s.labels, dtype=torch.long)
    pixels = [s.pixel_values for s in samples if s.pixel_values is not None]
    return Batch(ids, mask, torch.cat(pixels) if pixels else None, labels)
