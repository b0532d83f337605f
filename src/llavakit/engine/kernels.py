"""Small CPU speed-ups the engine applies to a loaded model (same weights, same results' dtype).

At batch 1 a decode step multiplies every weight matrix by one vector. For bf16/fp16 on the CPU,
`F.linear` sends that through the general matrix-matrix path, which on the benchmark machine was
1.6x slower than `torch.mv` on the same weights (e.g. 150 us against 89 us for 1728x640, single
thread) and made a whole bf16 decode step 1.3x slower. fp32 and CUDA are left alone: there the
two paths measured the same.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class RowLinear(nn.Linear):
    """nn.Linear that computes a single input row as a matrix-vector product."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.numel() != x.shape[-1]:
            return F.linear(x, self.weight, self.bias)
        out = torch.mv(self.weight, x.reshape(-1))
        if self.bias is not None:
            out = out + self.bias
        return out.view(*x.shape[:-1], out.shape[-1])


def use_row_linears(model) -> int:
    """Switch the language model's plain Linear layers to RowLinear where it helps; returns how many.

    The class is swapped in place: parameters, state-dict names and every other behaviour stay.
    """
    weight = model.language_model.lm_head.weight
    if weight.device.type != "cpu" or weight.dtype not in (torch.bfloat16, torch.float16):
        return 0
    count = 0
    for module in model.language_model.modules():
        if type(module) is nn.Linear:
            module.__class__ = RowLinear
            count += 1
    return count
