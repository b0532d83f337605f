"""Align the projector to the scene slots the LM was pretrained on (between LLaVA's stages 1 and 2).

The LM learnt to read a scene as nine slots, each the sum of the input embeddings of the words
naming a grid cell (`pretrain_lm.slot_texts`: " large red circle top left", an empty cell " top
left"). LLaVA's stage 1 trains the projector on captions, and its image tokens keep little of the
cell. Here the projector is fitted by least squares, from the stage-1 weights, so that each image
token is its cell's slot: the world knows every image's scene, so the target of every token is
known. Stage 2 then trains the LM with this projector frozen, and the place words in the tokens
are what it finds an object by when a question names the object's place (docs/embedded-model.md,
"Lookups by place, learnt").
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from llavakit.train.state import save_projector_output
from llavakit.world.backbones import BackbonePaths
from llavakit.world.dataset import WorldFiles
from llavakit.world.pretrain_lm import slot_texts
from llavakit.world.scenes import Scene


def slot_targets(scenes: list[Scene], tokenizer: Any, embeddings: torch.Tensor) -> torch.Tensor:
    """(images, 9, width): each cell's slot, the sum of the input embeddings of its words."""
    summed: dict[str, torch.Tensor] = {}
    rows = []
    for scene in scenes:
        cells = []
        for text in slot_texts(scene):
            if text not in summed:
                summed[text] = embeddings[tokenizer(text, add_special_tokens=False)["input_ids"]].sum(0)
            cells.append(summed[text])
        rows.append(torch.stack(cells))
    return torch.stack(rows)


def tower_features(llava: Any, files: list[str], feature_cache: str | Path | None = None,
                   progress: bool = False) -> torch.Tensor:
    """(images, tokens, width) tower features of `files`, from a stage's feature cache where it
    holds them (float32 or float16, as that stage stored them), else computed."""
    from llavakit.train.cache import OK, FeatureCache, cache_key

    model = llava.model
    caches = [FeatureCache(Path(feature_cache) / cache_key(model, llava.image_processor, dtype))
              for dtype in ("float32", "float16")] if feature_cache else []
    caches = [c for c in caches if c.directory.is_dir()]
    features = []
    with torch.no_grad():
        for i in tqdm(range(0, len(files), 256), desc="align: tower features", disable=not progress, leave=False):
            batch = files[i:i + 256]
            cache = next((c for c in caches if all(c.status(f) == OK for f in batch)), None)
            if cache is not None:
                features.append(torch.stack([cache.preprocess(f) for f in batch]))
            else:
                features.append(model.vision_features(torch.stack(llava.image_processor(batch))))
    return torch.cat(features)


def align_projector(stage1: str | Path, backbones: BackbonePaths, output: str | Path, *, images: int = 8000,
                    steps: int = 1500, batch_size: int = 4096, lr: float = 3e-3, seed: int = 0,
                    feature_cache: str | Path | None = None, progress: bool = True) -> dict[str, Any]:
    """Fit the stage-1 projector so that each image token is its cell's slot; write it to `output`
    in stage 1's format (so `model.projector_from` and `load_projector_only` read it).

    Uses the first `images` training images; the last tenth of their tokens are held out for the
    reported `held_out_unexplained` (1 - R², 0 when every token is its slot exactly). Tower
    features that stage 1 cached under `feature_cache` (its `cache.dir`) are read, not recomputed.
    """
    from llavakit.world.pipeline import load_stage1

    start = time.perf_counter()
    llava = load_stage1(stage1, backbones)
    model = llava.model
    world = WorldFiles(backbones.world)
    annotations = json.loads(world.scenes("train").read_text())[:images]
    scenes = [Scene.from_dict(a) for a in annotations]
    if not scenes:
        raise ValueError(f"{world.scenes('train')} has no training scenes to align the projector on")
    embeddings = model.language_model.model.embed_tokens.weight.detach()
    x = tower_features(llava, [str(world.image_folder / a["image"]) for a in annotations], feature_cache, progress)
    cells = x.shape[1]
    targets = slot_targets(scenes, llava.tokenizer, embeddings)
    if targets.shape[1] != cells:
        raise ValueError(f"the tower gives {cells} image tokens per image but the world has {targets.shape[1]} "
                         "cells; aligning to slots needs one token per cell (patch size = cell size)")
    x, y = x.reshape(-1, x.shape[-1]), targets.reshape(-1, targets.shape[-1])
    split = int(0.9 * len(x))
    projector = model.projector
    optimizer = torch.optim.Adam(projector.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    losses = []
    for _ in tqdm(range(steps), desc="align: projector", disable=not progress, leave=False):
        index = torch.randint(0, split, (batch_size,), generator=generator)
        loss = ((projector(x[index]) - y[index]) ** 2).sum(1).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    with torch.no_grad():
        held = y[split:]
        unexplained = ((projector(x[split:]) - held) ** 2).sum() / ((held - held.mean(0)) ** 2).sum()
    base = json.loads((Path(stage1) / "llavakit_projector.json").read_text())["base"]
    state = {f"projector.{k}": v.detach() for k, v in projector.state_dict().items()}
    save_projector_output(Path(output), state, model.config, base, torch.float32)
    metrics = {"images": len(scenes), "steps": steps, "first_loss": losses[0] if losses else None,
               "final_loss": losses[-1] if losses else None, "held_out_unexplained": float(unexplained),
               "seconds": round(time.perf_counter() - start, 2)}
    (Path(output) / "align_summary.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics
