"""Shared helpers for the training tests (no tests here): tiny datasets and recipes.

The datasets are written by the test: small random Pillow images and LLaVA-style records,
captions for stage 1 and multi-turn conversations (with text-only ones) for stage 2.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
from PIL import Image
from tokenizers_for_tests import english_lines

from llavakit.train.recipe import load_recipe


def write_images(folder: Path, n: int, seed: int = 0) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    names = []
    for i in range(n):
        w, h = int(rng.integers(20, 48)), int(rng.integers(20, 48))
        colour = rng.integers(0, 255, 3)
        pixels = (colour + rng.integers(-30, 30, (h, w, 3))).clip(0, 255).astype(np.uint8)
        name = f"img{i:03d}.png"
        Image.fromarray(pixels).save(folder / name)
        names.append(name)
    return names


def caption_records(images: list[str], seed: int = 0) -> list[dict]:
    lines = english_lines(len(images), seed=seed)
    return [{"id": f"cap{i}", "image": name,
             "conversations": [{"from": "human", "value": "<image>\nDescribe the image briefly."},
                               {"from": "gpt", "value": lines[i]}]}
            for i, name in enumerate(images)]


def chat_records(images: list[str], n_text: int, seed: int = 1) -> list[dict]:
    rng = random.Random(seed)
    lines = english_lines(3 * (len(images) + n_text), seed=seed)
    records = []
    for i, name in enumerate(images):
        turns = [{"from": "human", "value": "<image>\nWhat is in the picture?"}, {"from": "gpt", "value": lines[3 * i]}]
        if rng.random() < 0.5:
            turns += [{"from": "human", "value": "And then?"}, {"from": "gpt", "value": lines[3 * i + 1]}]
        records.append({"id": f"img{i}", "image": name, "conversations": turns})
    for j in range(n_text):
        k = 3 * (len(images) + j)
        records.append({"id": f"txt{j}", "conversations": [
            {"from": "human", "value": "Tell me something."}, {"from": "gpt", "value": lines[k] + " " + lines[k + 1]}]})
    rng.shuffle(records)
    return records


def write_json(path: Path, records: list, jsonl: bool = False) -> Path:
    if jsonl:
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
    else:
        path.write_text(json.dumps(records, indent=1))
    return path


def tiny_recipe(checkpoint: Path, data: Path, output: Path, *overrides: str):
    """A recipe for the tiny model: fp32 on the CPU, no workers, no progress bar, no warm-up."""
    base = [
        f"model.init={checkpoint}", f"data.path={data}", f"output.dir={output}", "data.num_workers=0",
        "data.max_length=256", "train.precision=fp32", "train.device=cpu", "train.gradient_checkpointing=false",
        "train.warmup_ratio=0", "train.global_batch_size=8", "train.micro_batch_size=4", "output.progress=false",
    ]
    return load_recipe("llava-v1.5-7b-finetune", [*base, *overrides])
