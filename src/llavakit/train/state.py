"""Resumable training checkpoints and the run's final outputs.

A checkpoint is `OUTPUT/checkpoints/step-00000100/`: `state/` (trainable weights and optimizer
states via torch.distributed.checkpoint, sharded by process, loadable on any world size),
`trainer_state.json` (step, skipped records, counters) and `rank-N.pt` (each process's RNG
states). It is written to a temporary folder and renamed, so a folder named `step-*` is
always complete; older ones beyond `keep_last` are removed.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path
from typing import Any

import torch

from llavakit.checkpoints.io import atomic_save_safetensors, without_tied_head, write_state_dict
from llavakit.config import LlavaConfig
from llavakit.train.dist import DistContext, load_sharded, save_sharded

_STEP_DIR = re.compile(r"^step-(\d+)$")


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoints(output: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    folder = output / "checkpoints"
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _STEP_DIR.match(p.name))
             and (p / "trainer_state.json").is_file()]
    return [p for _, p in sorted(found)]


def save_checkpoint_dir(output: Path, step: int, root, optimizer, trainer_state: dict[str, Any],
                        ctx: DistContext, keep_last: int) -> Path:
    folder = output / "checkpoints"
    final = folder / f"step-{step:08d}"
    tmp = folder / f".tmp-step-{step:08d}"
    if ctx.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    ctx.barrier()
    save_sharded(str(tmp / "state"), root, optimizer)
    torch.save(rng_state(), tmp / f"rank-{ctx.rank:05d}.pt")
    ctx.barrier()
    if ctx.is_main:
        (tmp / "trainer_state.json").write_text(json.dumps(trainer_state) + "\n")
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)  # the checkpoint exists from here on
        for old in checkpoints(output)[:-keep_last] if keep_last > 0 else []:
            trash = old.with_name(".del-" + old.name)
            old.rename(trash)
            shutil.rmtree(trash, ignore_errors=True)
    ctx.barrier()
    return final


def load_checkpoint_dir(folder: Path, root, optimizer, ctx: DistContext) -> dict[str, Any]:
    """Restore weights, optimizer and this process's RNG; returns the trainer state."""
    load_sharded(str(folder / "state"), root, optimizer)
    trainer_state = json.loads((folder / "trainer_state.json").read_text())
    rank_file = folder / f"rank-{ctx.rank:05d}.pt"
    if rank_file.is_file():  # resuming on more processes than before: the new ones keep their seed
        set_rng_state(torch.load(rank_file, weights_only=True))
    return trainer_state


def _cast(state: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    return {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}


def save_projector_output(output: Path, state: dict[str, torch.Tensor], config: LlavaConfig,
                          model_spec: dict[str, Any], dtype: torch.dtype) -> Path:
    """A stage-1 result as the original LLaVA writes it: mm_projector weights + a config.json.

    The config.json has the original's `mm_*` keys, so `llavakit.load_projector_only` and the
    original code read it; `llavakit_projector.json` records the full config and the base model.
    """
    output.mkdir(parents=True, exist_ok=True)
    projector = {"model.mm_projector." + k.removeprefix("projector."): v for k, v in state.items()
                 if k.startswith("projector.")}
    atomic_save_safetensors(_cast(projector, dtype), output / "mm_projector.safetensors")
    original = {
        "mm_projector_type": config.projector.type, "mm_hidden_size": config.vision.hidden_size,
        "hidden_size": config.language.hidden_size, "mm_vision_select_layer": config.vision_feature_layer,
        "mm_vision_select_feature": config.vision_feature_select, "image_aspect_ratio": config.image_aspect,
        "mm_use_im_start_end": False, "mm_use_im_patch_token": False, "mm_patch_merge_type": "flat",
    }
    (output / "llavakit_projector.json").write_text(json.dumps(
        {"format": "llavakit-projector", "base": model_spec, "config": config.to_dict()}, indent=2) + "\n")
    (output / "config.json").write_text(json.dumps(original, indent=2) + "\n")
    return output


def save_full_output(output: Path, state: dict[str, torch.Tensor], config: LlavaConfig, tokenizer,
                     dtype: torch.dtype) -> Path:
    """A complete llavakit checkpoint (what `checkpoints.save_checkpoint` writes), from a state dict."""
    output.mkdir(parents=True, exist_ok=True)
    write_state_dict(_cast(without_tied_head(state, config.language.tie_word_embeddings), dtype), output)
    if tokenizer is not None:
        tokenizer.save_pretrained(output)
    config.save(output / "config.json")  # last: a folder with a config is complete
    return output
