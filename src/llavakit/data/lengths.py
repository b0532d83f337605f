"""Length statistics of a LLaVA dataset, and a histogram PNG drawn with Pillow (no matplotlib).

With a model, a record's length is the number of tokens `llavakit.inputs.prepare_sample` makes of
it -- the model's chat template, its tokenizer and its image-token count -- which is what training
sees.  Without one, it is the number of characters in the turns (the ``<image>`` tags left out).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from llavakit.conversation import IMAGE_PLACEHOLDER


@dataclass
class LengthStats:
    unit: str  # "tokens" or "characters"
    count: int
    min: int = 0
    mean: float = 0.0
    p50: float = 0.0
    p95: float = 0.0
    max: int = 0
    over_max: int | None = None  # records longer than max_length (tokens only)
    max_length: int | None = None

    @classmethod
    def of(cls, values: Sequence[int], unit: str, max_length: int | None = None) -> LengthStats:
        if not len(values):
            return cls(unit, 0, max_length=max_length)
        a = np.asarray(values, dtype=np.int64)
        over = int((a > max_length).sum()) if max_length is not None else None
        return cls(unit, len(a), int(a.min()), round(float(a.mean()), 1), float(np.percentile(a, 50)),
                   float(np.percentile(a, 95)), int(a.max()), over, max_length)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def summary(self) -> str:
        if not self.count:
            return f"lengths ({self.unit}): no records to measure"
        line = (f"lengths in {self.unit} over {self.count} records: min {self.min}, mean {self.mean}, "
                f"p50 {self.p50:g}, p95 {self.p95:g}, max {self.max}")
        if self.over_max is not None:
            line += f"; {self.over_max} over --max-length {self.max_length}"
        return line


class _NoPixels:
    """Stands in for the image processor: token counts do not depend on pixels, so skip decoding."""

    def preprocess(self, image: Any) -> Any:
        import torch

        return torch.zeros(3, 1, 1)


class TokenCounter:
    """Token lengths the way training computes them: `prepare_sample` with the model's template."""

    def __init__(self, model: str | Path) -> None:
        from llavakit.api import load_tokenizer
        from llavakit.checkpoints import detect_format, read_checkpoint, resolve
        from llavakit.checkpoints.original import read_config_json
        from llavakit.config import LlavaConfig
        from llavakit.conversation import get_template

        directory = resolve(model)
        raw = read_config_json(directory)
        if detect_format(raw) == "llavakit":  # config and tokenizer only: no need to read the weights
            self.config, tokenizer_dir = LlavaConfig.from_dict(raw), directory
        else:  # llava-hf / original LLaVA: the config is derived while reading the checkpoint
            checkpoint = read_checkpoint(directory)
            self.config, tokenizer_dir = checkpoint.config, checkpoint.tokenizer_dir
            del checkpoint
        self.template = get_template(self.config.template)
        self.tokenizer = load_tokenizer(tokenizer_dir)
        self.tokens_per_image = self.config.tokens_per_image

    def __call__(self, turns: list[dict], num_images: int) -> int:
        from llavakit.conversation import from_llava_conversations
        from llavakit.inputs import prepare_sample

        sample = prepare_sample(from_llava_conversations(turns), [None] * num_images, config=self.config,
                                template=self.template, tokenizer=self.tokenizer, image_processor=_NoPixels(),
                                add_generation_prompt=False, with_labels=True)
        return len(sample.input_ids)


def character_length(turns: list[dict]) -> int:
    return sum(len(t["value"].replace(IMAGE_PLACEHOLDER, "")) for t in turns)


def draw_histogram(values: Sequence[int], path: str | Path, *, title: str, unit: str,
                   max_length: int | None = None, bins: int = 40) -> Path:
    """A bar chart of `values` as a PNG; a red line marks `max_length` when given."""
    from PIL import Image, ImageDraw, ImageFont

    width, height, left, right, top, bottom = 900, 480, 70, 20, 50, 60
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    draw.text((left, 15), title, fill="black", font=font)
    a = np.asarray(values, dtype=np.int64)
    plot_w, plot_h = width - left - right, height - top - bottom
    draw.rectangle([left, top, left + plot_w, top + plot_h], outline="black")
    if len(a):
        lo, hi = int(a.min()), int(a.max())
        if max_length is not None:
            hi = max(hi, max_length)
        counts, edges = np.histogram(a, bins=bins, range=(lo, hi if hi > lo else lo + 1))
        peak = max(1, int(counts.max()))
        bar_w = plot_w / len(counts)
        for i, c in enumerate(counts):
            h = plot_h * c / peak
            x0 = left + i * bar_w
            draw.rectangle([x0 + 1, top + plot_h - h, x0 + bar_w - 1, top + plot_h], fill=(70, 110, 180))
        for frac in (0.0, 0.25, 0.5, 0.75, 1.0):  # x ticks
            x = left + frac * plot_w
            draw.line([x, top + plot_h, x, top + plot_h + 5], fill="black")
            draw.text((x - 15, top + plot_h + 8), f"{edges[0] + frac * (edges[-1] - edges[0]):.0f}",
                      fill="black", font=font)
        draw.text((5, top), f"{peak}", fill="black", font=font)
        draw.text((5, top + plot_h - 10), "0", fill="black", font=font)
        if max_length is not None and edges[-1] > edges[0]:
            x = left + plot_w * (max_length - edges[0]) / (edges[-1] - edges[0])
            draw.line([x, top, x, top + plot_h], fill="red", width=2)
            draw.text((x + 4, top + 4), f"max-length {max_length}", fill="red", font=font)
    draw.text((left + plot_w // 2 - 60, height - 22), f"record length ({unit}), n={len(a)}",
              fill="black", font=font)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG")
    return path
