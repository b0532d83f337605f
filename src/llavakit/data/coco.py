"""COCO annotations -> the symbolic context a text-only LLM sees instead of the image.

LLaVA-Instruct-158K was written by a text-only GPT-4 that never saw pixels: for each COCO image it
read the five captions and, for detailed descriptions and reasoning, the object boxes normalised to
[0, 1] as ``class: [x1, y1, x2, y2]`` (rounded to 3 decimals).  This module builds exactly that.

Accepted inputs: an instances-style JSON (``images``, ``annotations`` with ``bbox``/``category_id``,
``categories``) and a captions-style JSON (``annotations`` with ``caption``), as two files or merged
into one (caption entries and box entries in the same ``annotations`` list, or a top-level
``captions`` list).
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class AnnotationError(ValueError):
    """The annotation file is not COCO-shaped; the message says what is missing."""


@dataclass
class ImageContext:
    image_id: int | str
    file_name: str
    width: int
    height: int
    captions: list[str] = field(default_factory=list)
    boxes: list[tuple[str, tuple[float, float, float, float]]] = field(default_factory=list)

    @property
    def record_id(self) -> str:
        """The id written into the dataset: the file name without extension, as LLaVA does."""
        return Path(self.file_name).stem

    def describe(self, *, with_boxes: bool) -> str:
        """Captions one per line; with boxes, a blank line and one ``class: [x1, y1, x2, y2]`` per line."""
        lines = [c.strip() for c in self.captions if c.strip()]
        if with_boxes and self.boxes:
            lines.append("")
            lines += [f"{name}: [{', '.join(repr(v) for v in box)}]" for name, box in self.boxes]
        return "\n".join(lines)


def normalise_box(bbox: list[float], width: int, height: int) -> tuple[float, float, float, float]:
    """COCO ``[x, y, w, h]`` in pixels -> ``(x1, y1, x2, y2)`` in [0, 1], rounded to 3 decimals."""
    x, y, w, h = (float(v) for v in bbox)
    clamp = lambda v: min(1.0, max(0.0, v))  # noqa: E731 (COCO boxes can poke a pixel outside)
    return (round(clamp(x / width), 3), round(clamp(y / height), 3),
            round(clamp((x + w) / width), 3), round(clamp((y + h) / height), 3))


def _read(path: str | Path) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise AnnotationError(f"{path} is not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise AnnotationError(f"{path}: expected a COCO JSON object, got {type(data).__name__}")
    return data


def load_coco(annotations: str | Path, captions: str | Path | None = None) -> list[ImageContext]:
    """Every image of `annotations` with its captions and normalised boxes, in file order."""
    main = _read(annotations)
    extra = _read(captions) if captions else {}
    images_raw = main.get("images") or extra.get("images")
    if not isinstance(images_raw, list):
        raise AnnotationError(f"{annotations} has no 'images' list (expected COCO instances format)")
    categories = {c["id"]: c["name"] for c in main.get("categories", []) + extra.get("categories", [])
                  if isinstance(c, dict) and "id" in c and "name" in c}
    entries = [*main.get("annotations", []), *main.get("captions", []),
               *extra.get("annotations", []), *extra.get("captions", [])]
    caps: dict[Any, list[str]] = defaultdict(list)
    boxes: dict[Any, list[tuple[str, tuple[float, float, float, float]]]] = defaultdict(list)
    sizes = {im["id"]: (im.get("width"), im.get("height")) for im in images_raw if isinstance(im, dict)}
    for a in entries:
        if not isinstance(a, dict) or "image_id" not in a:
            continue
        if isinstance(a.get("caption"), str):
            caps[a["image_id"]].append(a["caption"])
        elif "bbox" in a and a.get("category_id") in categories:
            w, h = sizes.get(a["image_id"], (None, None))
            if w and h and len(a["bbox"]) == 4:
                boxes[a["image_id"]].append((categories[a["category_id"]], normalise_box(a["bbox"], w, h)))
    out = []
    for im in images_raw:
        if not isinstance(im, dict) or "id" not in im or "file_name" not in im:
            raise AnnotationError(f"{annotations}: every image needs 'id' and 'file_name', got {im!r}")
        out.append(ImageContext(im["id"], str(im["file_name"]), int(im.get("width") or 0),
                                int(im.get("height") or 0), caps.get(im["id"], []), boxes.get(im["id"], [])))
    return out
