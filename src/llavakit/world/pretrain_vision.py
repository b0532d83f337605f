"""Pretrain a small CLIP vision tower contrastively on the world's images and captions.

The tower is llavakit's own `VisionTower` (kind "clip"); a small text encoder is trained beside
it with a symmetric InfoNCE loss and a learnable temperature, then thrown away. The result is
saved in the layout of transformers' `CLIPVisionModel` (config.json + model.safetensors +
preprocessor_config.json), which `llavakit.checkpoints.original.read_vision_tower` reads.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from llavakit.checkpoints.hf_configs import vision_to_hf
from llavakit.checkpoints.io import atomic_save_safetensors
from llavakit.config import VisionConfig
from llavakit.model.vision import VisionTower
from llavakit.world.contrastive import (
    PERTURBATIONS,
    PHRASES,
    ImageHead,
    TextEncoder,
    cell_phrase_targets,
    clip_loss,
    perturb,
    phrase_loss,
)
from llavakit.world.dataset import WorldFiles, load_images, normalise
from llavakit.world.language import compact_caption
from llavakit.world.probe import linear_probe
from llavakit.world.scenes import GRID, Scene


@dataclass
class VisionPretrainConfig:
    image_size: int = 96
    patch_size: int = 16
    hidden_size: int = 192
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 768
    text_width: int = 128
    text_layers: int = 2
    embed_dim: int = 128
    steps: int = 600
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_steps: int = 40
    local_weight: float = 1.0  # weight of the cell-phrase loss beside the global caption loss
    eval_images: int = 500  # held-out (benchmark) images used for the retrieval numbers
    probe_images: int = 2000  # training images that fit the linear probe of patch features

    def __post_init__(self) -> None:
        side = self.image_size // self.patch_size
        if self.image_size % self.patch_size or side % GRID:
            raise ValueError(f"{self.image_size} px / {self.patch_size} px patches must give a patch grid "
                             f"divisible by the world's {GRID} x {GRID} cells")

    def tower_config(self) -> VisionConfig:
        return VisionConfig(kind="clip", image_size=self.image_size, patch_size=self.patch_size,
                            hidden_size=self.hidden_size, intermediate_size=self.intermediate_size,
                            num_layers=self.num_layers, num_heads=self.num_heads, hidden_act="quick_gelu")


@dataclass
class PretrainResult:
    path: Path
    losses: list[float]
    metrics: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


def lr_at(step: int, total: int, peak: float, warmup: int) -> float:
    """Linear warm-up, then cosine decay to a tenth of the peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def param_groups(module: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on matrices only, not on norms, biases, embeddings' single vectors or scales."""
    decay, keep = [], []
    for p in module.parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else keep).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": keep, "weight_decay": 0.0}]


class _Captions:
    """Token ids and mask of a list of captions, padded to the longest."""

    def __init__(self, tokenizer, max_length: int) -> None:
        self.tokenizer, self.max_length = tokenizer, max_length

    def __call__(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        enc = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        return enc["input_ids"], enc["attention_mask"].bool()


def save_vision_tower(tower: VisionTower, out_dir: str | Path) -> Path:
    """transformers' CLIPVisionModel layout: bare `embeddings.*`/`encoder.*` keys, as 5.x saves them."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config = tower.config
    atomic_save_safetensors({k: v.detach().contiguous() for k, v in tower.state_dict().items()},
                            out_dir / "model.safetensors")
    size = config.image_size
    processor = {
        "image_processor_type": "CLIPImageProcessor", "do_resize": True, "size": {"shortest_edge": size},
        "do_center_crop": True, "crop_size": {"height": size, "width": size}, "do_rescale": True,
        "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": list(config.image_mean),
        "image_std": list(config.image_std), "do_convert_rgb": True, "resample": 3,
    }
    (out_dir / "preprocessor_config.json").write_text(json.dumps(processor, indent=2) + "\n")
    hf = {"architectures": ["CLIPVisionModel"], **vision_to_hf(config), "dtype": "float32",
          "attention_dropout": 0.0, "initializer_range": 0.02, "initializer_factor": 1.0}
    (out_dir / "config.json").write_text(json.dumps(hf, indent=2) + "\n")  # last: the folder is complete
    return out_dir


@torch.no_grad()
def retrieval_metrics(head: ImageHead, text: TextEncoder, encode, pixels: torch.Tensor, scenes: list[Scene],
                      seed: int) -> dict[str, Any]:
    """Zero-shot image->caption retrieval among all held-out captions, and accuracy against one
    hard negative of each kind (the true caption must outscore the changed one)."""
    head.eval()
    text.eval()
    captions = [compact_caption(s) for s in scenes]

    def embed_texts(texts: list[str]) -> torch.Tensor:
        out = [text(*encode(texts[i : i + 256])) for i in range(0, len(texts), 256)]
        return torch.nn.functional.normalize(torch.cat(out), dim=-1)

    outputs = [head(normalise(pixels[i : i + 256])) for i in range(0, len(pixels), 256)]
    images = torch.nn.functional.normalize(torch.cat([o[0] for o in outputs]), dim=-1)
    cells = torch.nn.functional.normalize(torch.cat([o[1] for o in outputs]), dim=-1)
    texts = embed_texts(captions)
    sims = images @ texts.T
    ranked = sims.topk(min(5, len(captions)), dim=1).indices
    # A retrieved caption counts as right if its text is the true one (identical scenes repeat).
    hit = [[captions[j] == captions[i] for j in row.tolist()] for i, row in enumerate(ranked)]
    metrics: dict[str, Any] = {
        "images": len(scenes),
        "retrieval_top1": float(np.mean([h[0] for h in hit])),
        "retrieval_top5": float(np.mean([any(h) for h in hit])),
    }
    rng = np.random.default_rng([seed, 99])
    hard = {}
    for kind in PERTURBATIONS:
        pairs = [(i, perturb(s, rng, kind)) for i, s in enumerate(scenes)]
        pairs = [(i, p) for i, p in pairs if p is not None]
        negatives = embed_texts([compact_caption(p) for _, p in pairs])
        rows = torch.tensor([i for i, _ in pairs])
        wins = (images[rows] * texts[rows]).sum(-1) > (images[rows] * negatives).sum(-1)
        hard[kind] = float(wins.float().mean())
    metrics["hard_negative_accuracy"] = hard
    metrics["cell_phrase_accuracy"] = region_accuracy(cells, embed_texts(list(PHRASES)), scenes)
    return metrics


def region_accuracy(cells: torch.Tensor, phrases: torch.Tensor, scenes: list[Scene]) -> dict[str, float]:
    """Zero-shot region classification: each cell [N, 9, E] against every phrase [P, E] (both
    normalised); accuracy of the predicted phrase's size, colour and shape on occupied cells."""
    predicted = (cells @ phrases.T).argmax(-1).flatten()
    truth = cell_phrase_targets(scenes).flatten()
    occupied = truth != len(PHRASES) - 1
    words = [p.split(" ") for p in PHRASES[:-1]] + [["empty"] * 3]
    pairs = list(zip(predicted[occupied].tolist(), truth[occupied].tolist()))
    out = {name: float(np.mean([words[p][k] == words[t][k] for p, t in pairs]))
           for k, name in enumerate(("size", "colour", "shape"))}
    out["all"] = float((predicted == truth)[occupied].float().mean())
    out["empty_cells"] = float((predicted == truth)[~occupied].float().mean())
    return out


def hard_negatives(scenes: list[Scene], rng: np.random.Generator) -> list[str]:
    """One changed caption per scene, of a random kind that applies to it."""
    out = []
    for scene in scenes:
        changed = None
        while changed is None:
            changed = perturb(scene, rng)
        out.append(compact_caption(changed))
    return out


def pretrain_vision(world_dir: str | Path, tokenizer, out_dir: str | Path, config: VisionPretrainConfig,
                    seed: int = 0, progress: bool = True, max_seconds: float | None = None) -> PretrainResult:
    """Train the tower with InfoNCE against a small text encoder, save it, and measure retrieval."""
    start = time.time()
    world = WorldFiles(Path(world_dir))
    torch.manual_seed(seed)
    rng = np.random.default_rng([seed, 17])
    pixels, scenes = load_images(world, "train")
    if pixels.shape[-1] != config.image_size:
        raise ValueError(f"world images are {pixels.shape[-1]} px but the tower expects {config.image_size}")
    captions = [compact_caption(s) for s in scenes]
    encode = _Captions(tokenizer, max_length=64)

    tower = VisionTower(config.tower_config())
    head = ImageHead(tower, config.embed_dim)
    text = TextEncoder(len(tokenizer), config.text_width, config.text_layers, 4, 64, config.embed_dim)
    logit_scale = torch.nn.Parameter(torch.tensor(math.log(1 / 0.07)))
    cell_scale = torch.nn.Parameter(torch.tensor(math.log(1 / 0.07)))
    params = param_groups(head, config.weight_decay) + param_groups(text, config.weight_decay)
    params.append({"params": [logit_scale, cell_scale], "weight_decay": 0.0})
    cell_targets = cell_phrase_targets(scenes)
    phrase_ids = encode(list(PHRASES))
    optimizer = torch.optim.AdamW(params, lr=config.lr, betas=(0.9, 0.98))

    losses: list[float] = []
    local_losses: list[float] = []
    order = rng.permutation(len(scenes))
    cursor = 0
    bar = tqdm(range(config.steps), desc="vision", disable=not progress, leave=False)
    for step in bar:
        if cursor + config.batch_size > len(order):
            order, cursor = rng.permutation(len(scenes)), 0
        idx = order[cursor : cursor + config.batch_size]
        cursor += config.batch_size
        batch_caps = [captions[i] for i in idx]
        negatives = hard_negatives([scenes[i] for i in idx], rng)
        same = torch.tensor([[a == b for b in batch_caps] for a in batch_caps])
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, config.steps, config.lr, config.warmup_steps)
        head.train()
        text.train()
        image_emb, cell_emb = head(normalise(pixels[torch.from_numpy(idx)]))
        text_emb = text(*encode(batch_caps))
        negative_emb = text(*encode(negatives))
        loss = clip_loss(image_emb, text_emb, negative_emb, logit_scale, same)
        if config.local_weight:
            local = phrase_loss(cell_emb, text(*phrase_ids), cell_targets[torch.from_numpy(idx)], cell_scale)
            loss = loss + config.local_weight * local
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for g in params for p in g["params"]], 1.0)
        optimizer.step()
        losses.append(loss.item())
        local_losses.append(local.item() if config.local_weight else 0.0)
        bar.set_postfix(loss=f"{losses[-1]:.3f}", scale=f"{logit_scale.detach().exp().item():.1f}")
        if max_seconds is not None and time.time() - start > max_seconds:
            break
    bar.close()

    path = save_vision_tower(tower, out_dir)
    bench_pixels, bench_scenes = load_images(world, "bench")
    n = min(config.eval_images, len(bench_scenes))
    metrics: dict[str, Any] = {}
    if n:
        metrics = retrieval_metrics(head, text, encode, bench_pixels[:n], bench_scenes[:n], seed)
        k = min(config.probe_images, len(scenes))
        metrics["cell_probe"] = linear_probe(tower, pixels[:k], scenes[:k], bench_pixels[:n], bench_scenes[:n])
    metrics.update(steps=len(losses), stopped_early=len(losses) < config.steps, first_loss=losses[0],
                   final_loss=float(np.mean(losses[-20:])), final_cell_loss=float(np.mean(local_losses[-20:])),
                   temperature=float(1 / logit_scale.detach().exp()), config=asdict(config))
    return PretrainResult(path, losses, metrics, time.time() - start)
