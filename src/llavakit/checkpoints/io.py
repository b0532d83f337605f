"""Reading and writing tensor files, and putting a state dict into a model with clear errors."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn


class CheckpointError(ValueError):
    """A checkpoint cannot be read or does not fit the model; the message says which file and why."""


def _load_one(path: Path) -> dict[str, torch.Tensor]:
    try:
        if path.suffix == ".safetensors":
            return load_file(str(path))
        # weights_only: a pickled checkpoint may not run code on load.
        return torch.load(path, map_location="cpu", weights_only=True)
    except (SafetensorError, OSError, RuntimeError, EOFError, ValueError) as err:
        raise CheckpointError(f"cannot read weights file {path}: {err}") from err
    except Exception as err:  # pickle errors come in many types
        raise CheckpointError(f"cannot read weights file {path}: {type(err).__name__}: {err}") from err


def weight_files(directory: Path) -> list[Path]:
    """The weight files of a checkpoint directory: sharded index, single file, safetensors first."""
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = directory / index_name
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError, TypeError) as err:
                raise CheckpointError(f"{index} is not a valid shard index: {err}") from err
            files = [directory / name for name in sorted(set(weight_map.values()))]
            missing = [str(f) for f in files if not f.is_file()]
            if missing:
                raise CheckpointError(f"{index} names shard files that do not exist: {missing}")
            return files
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (directory / name).is_file():
            return [directory / name]
    raise CheckpointError(
        f"no weights in {directory}: expected model.safetensors, pytorch_model.bin or a sharded index"
    )


def read_state_dict(files: Iterable[Path]) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = {}
    for path in files:
        state.update(_load_one(Path(path)))
    return state


def write_state_dict(state: dict[str, torch.Tensor], directory: Path, max_shard_bytes: int = 5 * 2**30) -> None:
    """Write safetensors, split into shards with a transformers-style index when large."""
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, tensor in state.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = tensor.detach().contiguous().cpu()
        size += nbytes
    for stale in directory.glob("model*.safetensors*"):
        stale.unlink()
    if len(shards) == 1:
        atomic_save_safetensors(shards[0], directory / "model.safetensors")
        return
    weight_map = {}
    for i, shard in enumerate(shards, start=1):
        name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        atomic_save_safetensors(shard, directory / name)
        weight_map.update(dict.fromkeys(shard, name))
    total = sum(t.numel() * t.element_size() for t in state.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")


def without_tied_head(state: dict[str, torch.Tensor], tied: bool,
                      head_key: str = "language_model.lm_head.weight") -> dict[str, torch.Tensor]:
    """The state to write: a head tied to the input embeddings is left out (safetensors stores a
    shared tensor once, and transformers' convention is not to store it; loaders re-tie it)."""
    return {k: v for k, v in state.items() if k != head_key} if tied else state


def atomic_save_safetensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """Write to a temporary file and rename, so an interrupted save never leaves a broken file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata={"format": "pt"})
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _listing(names: Iterable[str], limit: int = 8) -> str:
    names = sorted(names)
    shown = ", ".join(names[:limit])
    return shown + (f" ... ({len(names) - limit} more)" if len(names) > limit else "")


def load_into(model: nn.Module, state: dict[str, torch.Tensor], source: str,
              optional: Iterable[str] = ()) -> None:
    """Load `state` into `model` exactly: any missing, unexpected or mis-shaped key is an error.

    The model may live on the meta device: tensors are then assigned, not copied, so a large
    model is never initialised twice. `optional` names keys that may be absent (tied heads).
    """
    expected = model.state_dict()
    optional = set(optional)
    missing = set(expected) - set(state) - optional
    unexpected = set(state) - set(expected)
    misshaped = {k: (tuple(state[k].shape), tuple(v.shape)) for k, v in expected.items()
                 if k in state and state[k].shape != v.shape}
    problems = []
    if missing:
        problems.append(f"missing keys: {_listing(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_listing(unexpected)}")
    if misshaped:
        problems.append("mis-shaped keys: " + _listing(f"{k} (file {a}, model {b})" for k, (a, b) in misshaped.items()))
    if problems:
        raise CheckpointError(
            f"the weights in {source} do not fit the model described by its config: "
            + "; ".join(problems)
            + ". Check that config.json belongs to these weights."
        )
    on_meta = any(p.is_meta for p in model.parameters())
    model.load_state_dict(state, strict=False, assign=on_meta)
