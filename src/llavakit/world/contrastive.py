"""Pieces of the CLIP-style pretraining: hard-negative captions, the throw-away text encoder, the loss.

Hard negatives are captions of a scene changed in exactly one fact (one object's colour, shape,
size or cell, an object added or removed, two colours swapped). Contrasting an image with them
forces the tower to encode every object's attributes *and* which attribute goes with which object,
which is exactly what LLaVA later asks of it.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from llavakit.world.scenes import COLOURS, GRID, MAX_OBJECTS, SHAPES, SIZES, Scene, WorldObject

PERTURBATIONS = ("colour", "shape", "size", "position", "count", "swap")
# Sampling weights of the kinds: shape and binding (swap) are the hardest to learn, so more often.
PERTURBATION_WEIGHTS = (0.15, 0.25, 0.15, 0.1, 0.1, 0.25)


def _with(obj: WorldObject, **changes) -> WorldObject:
    return dataclasses.replace(obj, **changes)


def _reordered(scene: Scene, objects: list[WorldObject]) -> Scene:
    return dataclasses.replace(scene, objects=tuple(sorted(objects, key=lambda o: o.cell)))


def _free_cells(objects: list[WorldObject]) -> list[int]:
    taken = {o.cell for o in objects}
    return [c for c in range(GRID * GRID) if c not in taken]


def perturb(scene: Scene, rng: np.random.Generator, kind: str | None = None) -> Scene | None:
    """The scene with one fact changed, or None if `kind` cannot apply (e.g. swap with one colour)."""
    kind = kind or PERTURBATIONS[int(rng.choice(len(PERTURBATIONS), p=PERTURBATION_WEIGHTS))]
    objects = list(scene.objects)
    i = int(rng.integers(len(objects)))
    o = objects[i]
    if kind == "colour":
        objects[i] = _with(o, colour=str(rng.choice([c for c in COLOURS if c != o.colour])))
    elif kind == "shape":
        objects[i] = _with(o, shape=str(rng.choice([s for s in SHAPES if s != o.shape])))
    elif kind == "size":
        objects[i] = _with(o, size=SIZES[1 - SIZES.index(o.size)])
    elif kind == "position":
        row, col = divmod(int(rng.choice(_free_cells(objects))), GRID)
        objects[i] = _with(o, row=row, col=col)
    elif kind == "count":
        if len(objects) == MAX_OBJECTS or (len(objects) > 1 and rng.random() < 0.5):
            del objects[i]
        else:
            row, col = divmod(int(rng.choice(_free_cells(objects))), GRID)
            box = (col / GRID, row / GRID, (col + 1) / GRID, (row + 1) / GRID)  # only the caption matters
            objects.append(WorldObject(str(rng.choice(SHAPES)), str(rng.choice(list(COLOURS))),
                                       str(rng.choice(SIZES)), row, col, box))
    elif kind == "swap":
        others = [j for j, x in enumerate(objects) if x.colour != o.colour]
        if not others:
            return None
        j = int(rng.choice(others))
        objects[i], objects[j] = _with(o, colour=objects[j].colour), _with(objects[j], colour=o.colour)
    else:
        raise ValueError(f"unknown perturbation {kind!r}")
    return _reordered(scene, objects)


class TextEncoder(nn.Module):
    """A small bidirectional transformer over BPE ids, mean-pooled; only used during pretraining."""

    def __init__(self, vocab_size: int, width: int, layers: int, heads: int, max_length: int, embed_dim: int) -> None:
        super().__init__()
        self.tokens = nn.Embedding(vocab_size, width)
        self.positions = nn.Parameter(torch.randn(max_length, width) * 0.02)
        layer = nn.TransformerEncoderLayer(width, heads, 4 * width, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.project = nn.Linear(width, embed_dim, bias=False)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.tokens(ids) + self.positions[: ids.shape[1]]
        x = self.encoder(x, src_key_padding_mask=~mask)
        x = self.norm(x)
        m = mask.unsqueeze(-1).to(x.dtype)
        return self.project((x * m).sum(1) / m.sum(1))


# Every object description an image cell can hold, plus one for an empty cell.
PHRASES: tuple[str, ...] = tuple(f"{size} {colour} {shape}" for size in SIZES for colour in COLOURS
                                 for shape in SHAPES) + ("empty",)


def cell_phrase_targets(scenes: list[Scene]) -> torch.Tensor:
    """[N, 9] index into PHRASES of what each grid cell holds."""
    targets = torch.full((len(scenes), GRID * GRID), len(PHRASES) - 1, dtype=torch.long)
    for i, scene in enumerate(scenes):
        for o in scene.objects:
            targets[i, o.cell] = PHRASES.index(f"{o.size} {o.colour} {o.shape}")
    return targets


class ImageHead(nn.Module):
    """Two embeddings from one pass of the tower.

    Global: CLIP's, the post-layernorm class token after the last layer, projected. Local: the
    patch features of the layer LLaVA reads (-2), mean-pooled over each grid cell and projected,
    to be matched with the phrase naming that cell's object (a region-level CLIP loss).
    """

    def __init__(self, tower: nn.Module, embed_dim: int) -> None:
        super().__init__()
        self.tower = tower
        width = tower.config.hidden_size
        self.project = nn.Linear(width, embed_dim, bias=False)
        self.cell_norm = nn.LayerNorm(width)
        self.cell_project = nn.Linear(width, embed_dim, bias=False)

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        inner = self.tower(pixel_values, layer=-2)
        last = self.tower.encoder.layers[-1](inner)
        global_emb = self.project(self.tower.post_layernorm(last[:, 0]))
        side = self.tower.config.image_size // self.tower.config.patch_size
        k = side // GRID
        patches = inner[:, 1:].view(len(inner), GRID, k, GRID, k, -1).mean(dim=(2, 4)).flatten(1, 2)
        return global_emb, self.cell_project(self.cell_norm(patches))


def phrase_loss(cells: torch.Tensor, phrases: torch.Tensor, targets: torch.Tensor,
                logit_scale: torch.Tensor) -> torch.Tensor:
    """InfoNCE of every cell [B, 9, E] against all phrase embeddings [P, E]."""
    cells, phrases = F.normalize(cells, dim=-1), F.normalize(phrases, dim=-1)
    logits = logit_scale.clamp(max=np.log(100.0)).exp() * cells @ phrases.T
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten())


def clip_loss(image: torch.Tensor, text: torch.Tensor, negatives: torch.Tensor, logit_scale: torch.Tensor,
              same: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE; image->text also scores each image against the hard-negative captions.

    `same[i, j]` marks pairs whose captions are identical (two images of one symbolic scene):
    those are not negatives of each other, so they are masked out rather than pushed apart.
    """
    image, text, negatives = (F.normalize(t, dim=-1) for t in (image, text, negatives))
    scale = logit_scale.clamp(max=np.log(100.0)).exp()
    eye = torch.eye(len(image), dtype=torch.bool, device=image.device)
    false_negatives = same & ~eye
    # Scale before masking: -inf * scale would give the temperature a NaN gradient.
    i2t = (scale * image @ text.T).masked_fill(false_negatives, float("-inf"))
    i2t = torch.cat([i2t, scale * image @ negatives.T], dim=1)
    t2i = (scale * text @ image.T).masked_fill(false_negatives, float("-inf"))
    targets = torch.arange(len(image), device=image.device)
    return (F.cross_entropy(i2t, targets) + F.cross_entropy(t2i, targets)) / 2
