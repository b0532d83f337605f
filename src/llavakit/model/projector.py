"""The vision-to-language projector: `linear`, `mlpNx_gelu` or `identity`.

Built as an `nn.Sequential` so parameter names (`0.weight`, `2.weight`, ...) are those of the
original LLaVA's `mm_projector`; llava-hf's `linear_1` / `linear_2` map onto indices 0 and 2.
"""

from __future__ import annotations

from torch import nn

from llavakit.config import ProjectorConfig


def build_projector(config: ProjectorConfig, vision_width: int, text_width: int) -> nn.Module:
    if config.type == "identity":
        if vision_width != text_width:
            raise ValueError(
                f"an identity projector needs equal widths, got vision {vision_width} and "
                f"language {text_width}"
            )
        return nn.Sequential()
    layers: list[nn.Module] = [nn.Linear(vision_width, text_width, bias=config.bias)]
    for _ in range(config.depth - 1):
        layers += [nn.GELU(), nn.Linear(text_width, text_width, bias=config.bias)]
    return nn.Sequential(*layers)
