"""ViT image encoders (CLIP and SigLIP) in plain PyTorch.

Parameter names follow transformers' `CLIPVisionTransformer` / `SiglipVisionTransformer`
(`embeddings.*`, `pre_layrnorm` [sic], `encoder.layers.N.*`, `post_layernorm`), so their
weights load by stripping a prefix. LLaVA reads a hidden state from the middle of the stack, so
the forward pass stops at the requested layer instead of running the whole tower.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from llavakit.config import VisionConfig


def activation(name: str):
    """The activation functions used by the towers and projectors we load."""
    if name == "quick_gelu":
        return lambda x: x * torch.sigmoid(1.702 * x)
    if name == "gelu":
        return F.gelu
    if name in ("gelu_pytorch_tanh", "gelu_new", "gelu_fast"):
        return lambda x: F.gelu(x, approximate="tanh")
    if name == "silu":
        return F.silu
    raise ValueError(f"unsupported activation {name!r}")


class VisionEmbeddings(nn.Module):
    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        self.has_class_token = config.has_class_token
        if self.has_class_token:
            self.class_embedding = nn.Parameter(torch.zeros(config.hidden_size))
        self.patch_embedding = nn.Conv2d(
            config.num_channels,
            config.hidden_size,
            kernel_size=config.patch_size,
            stride=config.patch_size,
            bias=not self.has_class_token,  # CLIP's patch conv has no bias; SigLIP's has one
        )
        num_positions = config.num_patches + (1 if self.has_class_token else 0)
        self.position_embedding = nn.Embedding(num_positions, config.hidden_size)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        dtype = self.patch_embedding.weight.dtype
        patches = self.patch_embedding(pixel_values.to(dtype)).flatten(2).transpose(1, 2)
        if self.has_class_token:
            cls = self.class_embedding.to(dtype).expand(patches.shape[0], 1, -1)
            patches = torch.cat([cls, patches], dim=1)
        return patches + self.position_embedding.weight.to(dtype)


class VisionAttention(nn.Module):
    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        d = config.hidden_size
        self.num_heads = config.num_heads
        self.q_proj = nn.Linear(d, d)
        self.k_proj = nn.Linear(d, d)
        self.v_proj = nn.Linear(d, d)
        self.out_proj = nn.Linear(d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        shape = (b, t, self.num_heads, d // self.num_heads)
        q = self.q_proj(x).view(shape).transpose(1, 2)
        k = self.k_proj(x).view(shape).transpose(1, 2)
        v = self.v_proj(x).view(shape).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v)  # bidirectional: every patch sees every patch
        return self.out_proj(out.transpose(1, 2).reshape(b, t, d))


class VisionMLP(nn.Module):
    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        self.act = activation(config.hidden_act)
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class VisionLayer(nn.Module):
    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.self_attn = VisionAttention(config)
        self.layer_norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = VisionMLP(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class VisionEncoder(nn.Module):
    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(VisionLayer(config) for _ in range(config.num_layers))


class VisionTower(nn.Module):
    """A CLIP or SigLIP vision transformer that returns the hidden state of one layer."""

    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        self.config = config
        self.embeddings = VisionEmbeddings(config)
        if config.kind == "clip":
            self.pre_layrnorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.encoder = VisionEncoder(config)
        # Unused by LLaVA (it reads an inner layer) but part of every checkpoint.
        self.post_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.gradient_checkpointing = False

    def forward(self, pixel_values: torch.Tensor, layer: int = -2) -> torch.Tensor:
        """Hidden state number `layer` as in transformers' `hidden_states` tuple.

        Index 0 is the embedding output (after the pre-norm for CLIP) and index N the output of
        the N-th layer; negative indices count from the end (-1: last layer, -2: the one before).
        """
        n = len(self.encoder.layers)
        stop = layer if layer >= 0 else n + 1 + layer
        if not 0 <= stop <= n:
            raise ValueError(f"layer {layer} is outside a tower with {n} layers")
        x = self.embeddings(pixel_values)
        if self.config.kind == "clip":
            x = self.pre_layrnorm(x)
        for block in self.encoder.layers[:stop]:
            if self.gradient_checkpointing and self.training:
                x = torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return x
