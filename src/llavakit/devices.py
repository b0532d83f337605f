"""Device and dtype choice from user-facing names ("auto", "cuda", "bf16", ...)."""

from __future__ import annotations

import torch

_DTYPES = {
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
}


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """`auto` picks CUDA, then Apple's MPS, then the CPU."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        return torch.device(device)
    except RuntimeError as err:
        raise ValueError(f"unknown device {device!r}; use auto, cpu, cuda, cuda:N or mps") from err


def resolve_dtype(dtype: str | torch.dtype = "auto", device: torch.device | None = None) -> torch.dtype:
    """`auto` is bf16 on CUDA, fp16 on MPS and fp32 on the CPU (where bf16 matmuls are slow on many chips)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        kind = device.type if device is not None else "cpu"
        return {"cuda": torch.bfloat16, "mps": torch.float16}.get(kind, torch.float32)
    try:
        return _DTYPES[dtype]
    except KeyError as err:
        raise ValueError(f"unknown dtype {dtype!r}; use one of auto, {', '.join(_DTYPES)}") from err
