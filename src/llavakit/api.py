"""The Python API: `llavakit.load(...)` and the `Llava` object it returns."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from llavakit.checkpoints import (
    Checkpoint,
    build_model,
    export_llava_hf,
    read_checkpoint,
    read_projector_only,
    save_checkpoint,
)
from llavakit.conversation import ChatTemplate, Message, get_template
from llavakit.devices import resolve_device, resolve_dtype
from llavakit.images import ImageProcessor
from llavakit.inputs import Batch, collate, prepare_sample
from llavakit.model import LlavaModel


def image_processor_for(config) -> ImageProcessor:
    """The preprocessing a model was trained with, from its config alone."""
    return ImageProcessor(
        image_size=config.vision.image_size,
        mean=tuple(config.vision.image_mean),
        std=tuple(config.vision.image_std),
        aspect=config.image_aspect,
        patch_size=config.vision.patch_size,
    )


def load_tokenizer(directory: str | Path):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(directory))
    except Exception as err:
        from llavakit.checkpoints import CheckpointError

        raise CheckpointError(f"cannot load the tokenizer from {directory}: {type(err).__name__}: {err}") from err


@dataclass
class Llava:
    """A loaded model with everything needed to talk to it."""

    model: LlavaModel
    tokenizer: object
    image_processor: ImageProcessor
    template: ChatTemplate

    @property
    def config(self):
        return self.model.config

    @property
    def pad_id(self) -> int:
        pad = getattr(self.tokenizer, "pad_token_id", None)
        return pad if pad is not None else 0

    def prepare(self, conversations: Sequence[Sequence[Message | dict]], images: Sequence[Sequence] | None = None,
                *, padding_side: str = "left") -> Batch:
        """A padded batch from conversations and their images (one list of images each)."""
        images = images if images is not None else [()] * len(conversations)
        if len(images) != len(conversations):
            raise ValueError(f"{len(conversations)} conversations but {len(images)} image lists")
        samples = [
            prepare_sample(messages, imgs, config=self.config, template=self.template,
                           tokenizer=self.tokenizer, image_processor=self.image_processor)
            for messages, imgs in zip(conversations, images)
        ]
        return collate(samples, self.pad_id, padding_side)

    def eos_token_ids(self) -> list[int]:
        """Token ids that end an answer: the model's EOS and the template's single-token stops."""
        ids = set(self.config.language.eos_token_ids)
        for stop in self.template.stop_strings:
            token = self.tokenizer.convert_tokens_to_ids(stop)
            if isinstance(token, int) and token != getattr(self.tokenizer, "unk_token_id", None):
                ids.add(token)
        return sorted(ids)

    def generate(self, conversations: Sequence[Sequence[Message | dict]], images: Sequence[Sequence] | None = None,
                 *, max_new_tokens: int = 128, temperature: float = 0.0, top_p: float = 1.0,
                 seed: int | None = None) -> list[str]:
        """Answers to a batch of conversations (reference decoding; see llavakit.engine for speed)."""
        batch = self.prepare(conversations, images)
        generator = None
        if seed is not None:
            generator = torch.Generator(device=self.model.device).manual_seed(seed)
        tokens = self.model.generate(
            batch.input_ids, batch.pixel_values, attention_mask=batch.attention_mask,
            max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
            eos_token_ids=self.eos_token_ids(), generator=generator,
        )
        return [self._cut_at_stop(self.tokenizer.decode(t, skip_special_tokens=True)) for t in tokens]

    def _cut_at_stop(self, text: str) -> str:
        for stop in self.template.stop_strings:
            if stop and stop in text:
                text = text[: text.index(stop)]
        return text.strip()

    def ask(self, image, question: str, **options) -> str:
        """One answer about one image (or None for a text-only question)."""
        images = [image] if image is not None else []
        return self.generate([[Message("user", question)]], [images], **options)[0]

    def save(self, directory: str | Path) -> Path:
        return save_checkpoint(self.model, self.tokenizer, directory)

    def export_llava_hf(self, directory: str | Path) -> Path:
        return export_llava_hf(self.model, self.tokenizer, directory, self.image_processor)


def from_checkpoint(checkpoint: Checkpoint, *, dtype: str | torch.dtype = "auto",
                    device: str | torch.device = "auto", tokenizer=None) -> Llava:
    device = resolve_device(device)
    model = build_model(checkpoint, resolve_dtype(dtype, device), device)
    tokenizer = tokenizer if tokenizer is not None else load_tokenizer(checkpoint.tokenizer_dir)
    return Llava(model, tokenizer, image_processor_for(checkpoint.config), get_template(checkpoint.config.template))


def load(reference: str | Path, *, dtype: str | torch.dtype = "auto", device: str | torch.device = "auto",
         revision: str | None = None, vision_tower: str | Path | None = None, template: str | None = None) -> Llava:
    """Load a LLaVA model from a folder or hub id, in llavakit, llava-hf or original LLaVA format.

    dtype: "auto" (bf16 on CUDA, fp32 on CPU), "fp32", "bf16", "fp16" or a torch dtype.
    device: "auto" (CUDA, then MPS, then CPU), "cpu", "cuda", "cuda:1", "mps".
    vision_tower: override an original checkpoint's `mm_vision_tower` (e.g. a local CLIP copy).
    template: override the chat template recorded with the model.
    """
    checkpoint = read_checkpoint(reference, revision=revision, vision_tower=vision_tower, template=template)
    return from_checkpoint(checkpoint, dtype=dtype, device=device)


def load_projector_only(projector_file: str | Path, *, language_model: str | Path, vision_tower: str | Path,
                        dtype: str | torch.dtype = "auto", device: str | torch.device = "auto", **options) -> Llava:
    """A stage-1 `mm_projector.bin` on a base LLM and a CLIP tower (folders or hub ids)."""
    checkpoint = read_projector_only(projector_file, language_model, vision_tower, **options)
    return from_checkpoint(checkpoint, dtype=dtype, device=device)
