"""The synthetic visual world: scenes of 1-5 coloured shapes on a 3 x 3 grid, and their pixels.

A scene is symbolic first (`Scene`, a list of `WorldObject`s) and rendered second, so every
question about an image can be answered exactly from its annotation. Objects sit in distinct
cells of a 3 x 3 grid, which makes them non-overlapping by construction and gives every object
an unambiguous position name ("top left", "centre", ...). Size, colour and placement are jittered
inside their category so the vision tower learns categories, not exact pixel values.

Everything is drawn from a numpy Generator seeded with (seed, split, index[, attempt]), so image
`i` depends only on those numbers and not on how many images are generated or in which order.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 40, 40),
    "green": (40, 165, 60),
    "blue": (40, 85, 220),
    "yellow": (240, 205, 30),
    "purple": (135, 60, 185),
    "orange": (245, 135, 25),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross")
SIZES: tuple[str, ...] = ("small", "large")
ROWS: tuple[str, ...] = ("top", "middle", "bottom")
COLUMNS: tuple[str, ...] = ("left", "centre", "right")
GRID = 3
MAX_OBJECTS = 5


def cell_name(row: int, col: int) -> str:
    """'top left', 'top', 'left', 'centre', ... for a grid cell (row, col)."""
    vertical = "" if row == 1 else ROWS[row]
    horizontal = "" if col == 1 else COLUMNS[col]
    return " ".join(p for p in (vertical, horizontal) if p) or "centre"


POSITIONS: tuple[str, ...] = tuple(cell_name(r, c) for r in range(GRID) for c in range(GRID))

# Side of an object as a fraction of its cell; the two ranges are far apart so "small" and
# "large" stay distinguishable after jitter.
_SIDE_FRACTION = {"small": (0.45, 0.55), "large": (0.78, 0.90)}
# Centres move at most this fraction of a cell: enough to look hand-placed, small enough that an
# object always covers its cell's patches in a similar way, which keeps shapes easy to learn.
_MAX_SHIFT = 0.08
_COLOUR_JITTER = 22  # per channel, uniform +-
_SUPERSAMPLE = 4  # draw at 4x and downsample: cheap anti-aliasing


@dataclass(frozen=True)
class WorldObject:
    shape: str
    colour: str
    size: str
    row: int
    col: int
    box: tuple[float, float, float, float]  # x0, y0, x1, y1, normalised to [0, 1]
    rgb: tuple[int, int, int] = (0, 0, 0)  # the jittered colour actually drawn

    @property
    def position(self) -> str:
        return cell_name(self.row, self.col)

    @property
    def cell(self) -> int:
        return self.row * GRID + self.col

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["position"] = self.position
        d["box"] = [round(v, 4) for v in self.box]
        d["rgb"] = list(self.rgb)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> WorldObject:
        return cls(d["shape"], d["colour"], d["size"], d["row"], d["col"], tuple(d["box"]), tuple(d["rgb"]))


@dataclass(frozen=True)
class Scene:
    objects: tuple[WorldObject, ...]  # in reading order (top-left to bottom-right)
    background: tuple[int, int, int] = (235, 235, 235)
    image_size: int = 96

    @property
    def signature(self) -> frozenset:
        """The symbolic content, ignoring jitter: used to keep benchmark scenes out of training."""
        return frozenset((o.shape, o.colour, o.size, o.cell) for o in self.objects)

    def to_dict(self) -> dict[str, Any]:
        return {"objects": [o.to_dict() for o in self.objects], "background": list(self.background),
                "image_size": self.image_size}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Scene:
        objects = tuple(WorldObject.from_dict(o) for o in d["objects"])
        return cls(objects, tuple(d["background"]), d["image_size"])


def scene_rng(seed: int, split: int, index: int, attempt: int = 0) -> np.random.Generator:
    """An independent stream per (seed, split, image, attempt)."""
    return np.random.default_rng([seed, split, index, attempt])


def sample_scene(rng: np.random.Generator, image_size: int = 96, n_objects: int | None = None) -> Scene:
    """A random scene: 1-5 objects (uniform), attributes uniform and independent, distinct cells."""
    n = int(rng.integers(1, MAX_OBJECTS + 1)) if n_objects is None else n_objects
    if not 1 <= n <= GRID * GRID:
        raise ValueError(f"a scene holds 1..{GRID * GRID} objects, got {n}")
    cells = sorted(rng.choice(GRID * GRID, size=n, replace=False).tolist())
    cell_px = image_size / GRID
    colour_names = list(COLOURS)
    objects = []
    for cell in cells:
        row, col = divmod(cell, GRID)
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        colour = colour_names[int(rng.integers(len(colour_names)))]
        size = SIZES[int(rng.integers(len(SIZES)))]
        lo, hi = _SIDE_FRACTION[size]
        side = cell_px * float(rng.uniform(lo, hi))
        # Centre jittered, staying 1 px inside its cell: objects never touch.
        slack = min(max(0.0, (cell_px - side) / 2 - 1), _MAX_SHIFT * cell_px)
        cx = (col + 0.5) * cell_px + float(rng.uniform(-slack, slack))
        cy = (row + 0.5) * cell_px + float(rng.uniform(-slack, slack))
        box = ((cx - side / 2) / image_size, (cy - side / 2) / image_size,
               (cx + side / 2) / image_size, (cy + side / 2) / image_size)
        base = np.array(COLOURS[colour])
        rgb = tuple(int(v) for v in np.clip(base + rng.integers(-_COLOUR_JITTER, _COLOUR_JITTER + 1, 3), 0, 255))
        objects.append(WorldObject(shape, colour, size, row, col, box, rgb))
    grey = int(rng.integers(222, 248))
    background = tuple(int(v) for v in np.clip(grey + rng.integers(-8, 9, 3), 0, 255))
    return Scene(tuple(objects), background, image_size)


def _star(cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    points = []
    for k in range(10):
        radius = r if k % 2 == 0 else r * 0.45
        angle = -math.pi / 2 + k * math.pi / 5
        points.append((cx + radius * math.cos(angle), cy + radius * math.sin(angle)))
    return points


def _cross(x0: float, y0: float, x1: float, y1: float) -> list[tuple[float, float]]:
    a, b = x0 + (x1 - x0) / 3, x0 + 2 * (x1 - x0) / 3
    c, d = y0 + (y1 - y0) / 3, y0 + 2 * (y1 - y0) / 3
    return [(a, y0), (b, y0), (b, c), (x1, c), (x1, d), (b, d), (b, y1), (a, y1), (a, d), (x0, d), (x0, c), (a, c)]


def _draw(draw: ImageDraw.ImageDraw, obj: WorldObject, scale: float) -> None:
    x0, y0, x1, y1 = (v * scale for v in obj.box)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    if obj.shape == "circle":
        draw.ellipse((x0, y0, x1, y1), fill=obj.rgb)
    elif obj.shape == "square":
        # Inset a little: a square filling its box looks bigger than a circle of the same box.
        m = (x1 - x0) * 0.07
        draw.rectangle((x0 + m, y0 + m, x1 - m, y1 - m), fill=obj.rgb)
    elif obj.shape == "triangle":
        draw.polygon([(cx, y0), (x1, y1), (x0, y1)], fill=obj.rgb)
    elif obj.shape == "star":
        draw.polygon(_star(cx, cy + (y1 - y0) * 0.04, (x1 - x0) / 2), fill=obj.rgb)
    elif obj.shape == "cross":
        draw.polygon(_cross(x0, y0, x1, y1), fill=obj.rgb)
    else:
        raise ValueError(f"unknown shape {obj.shape!r}")


def render(scene: Scene) -> np.ndarray:
    """The scene as an H x W x 3 uint8 array (deterministic: no randomness at this stage)."""
    big = scene.image_size * _SUPERSAMPLE
    image = Image.new("RGB", (big, big), scene.background)
    draw = ImageDraw.Draw(image)
    for obj in scene.objects:
        _draw(draw, obj, big)
    image = image.resize((scene.image_size, scene.image_size), Image.Resampling.BOX)
    return np.asarray(image)
