"""A Llama-family decoder in plain PyTorch, with an explicit KV cache.

Covers Llama 1/2/3, Vicuna, Mistral (no sliding window) and Qwen2 (q/k/v bias): RMSNorm, RoPE
(plain, linear or llama3 scaling), grouped-query attention through
`scaled_dot_product_attention`, SwiGLU MLP, tied or untied output embeddings. Parameter names
are those of transformers' `LlamaForCausalLM` (`model.layers.N.self_attn.q_proj`, `lm_head`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from llavakit.config import LanguageConfig


class RMSNorm(nn.Module):
    def __init__(self, width: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(width))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in fp32 as the reference does; bf16 variance loses too much.
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


def rope_inverse_frequencies(config: LanguageConfig) -> torch.Tensor:
    dim = config.head_dim
    inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
    scaling = config.rope_scaling or {}
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind == "default":
        pass
    elif kind == "linear":
        inv_freq = inv_freq / scaling["factor"]
    elif kind == "llama3":
        factor = scaling["factor"]
        low, high = scaling.get("low_freq_factor", 1.0), scaling.get("high_freq_factor", 4.0)
        original = scaling.get("original_max_position_embeddings", 8192)
        wavelength = 2 * math.pi / inv_freq
        # Long wavelengths are slowed down by `factor`, short ones kept, the band between blended.
        blend = ((original / wavelength - low) / (high - low)).clamp(0.0, 1.0)
        inv_freq = (1 - blend) * inv_freq / factor + blend * inv_freq
    else:
        raise ValueError(
            f"unsupported rope scaling {kind!r}; llavakit implements 'default', 'linear' and 'llama3'"
        )
    return inv_freq.float()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class KVCache:
    """Keys and values of past positions for every layer, in buffers that grow by doubling.

    The model calls `update` once per layer and `advance` once per forward pass. Any object with
    the same three members can stand in (the serving engine keeps its own).
    """

    def __init__(self, config: LanguageConfig, batch_size: int, capacity: int = 256,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> None:
        self.shape = (batch_size, config.num_kv_heads, capacity, config.head_dim)
        self.keys = [torch.empty(self.shape, dtype=dtype, device=device) for _ in range(config.num_layers)]
        self.values = [torch.empty(self.shape, dtype=dtype, device=device) for _ in range(config.num_layers)]
        self.length = 0

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        end = self.length + k.shape[2]
        if end > self.keys[layer].shape[2]:
            grow = max(end, 2 * self.keys[layer].shape[2])
            for buffers in (self.keys, self.values):
                old = buffers[layer]
                new = old.new_empty((*old.shape[:2], grow, old.shape[3]))
                new[:, :, : self.length] = old[:, :, : self.length]
                buffers[layer] = new
        self.keys[layer][:, :, self.length : end] = k
        self.values[layer][:, :, self.length : end] = v
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]

    def advance(self, steps: int) -> None:
        self.length += steps

    def select(self, rows: torch.Tensor) -> None:
        """Keep only the given batch rows (finished sequences leave the batch)."""
        self.keys = [k[rows] for k in self.keys]
        self.values = [v[rows] for v in self.values]


class Attention(nn.Module):
    def __init__(self, config: LanguageConfig, layer_index: int) -> None:
        super().__init__()
        self.layer_index = layer_index
        self.num_heads, self.num_kv_heads, self.head_dim = config.num_heads, config.num_kv_heads, config.head_dim
        bias = config.attention_bias
        self.q_proj = nn.Linear(config.hidden_size, self.num_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(config.hidden_size, self.num_kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(config.hidden_size, self.num_kv_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, config.hidden_size, bias=config.attention_out_bias)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                mask: torch.Tensor | None, cache: KVCache | None) -> torch.Tensor:
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, t, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.num_kv_heads, self.head_dim).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        if cache is not None:
            k, v = cache.update(self.layer_index, k, v)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=mask is None and t > 1,
            enable_gqa=self.num_kv_heads != self.num_heads,
        )
        return self.o_proj(out.transpose(1, 2).reshape(b, t, -1))


class MLP(nn.Module):
    def __init__(self, config: LanguageConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, config: LanguageConfig, layer_index: int) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config, layer_index)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MLP(config)

    def forward(self, x, cos, sin, mask, cache):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, cache)
        return x + self.mlp(self.post_attention_layernorm(x))


class Decoder(nn.Module):
    def __init__(self, config: LanguageConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config, i) for i in range(config.num_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)


def attention_mask_4d(padding_mask: torch.Tensor, query_length: int) -> torch.Tensor:
    """Boolean [B, 1, T, S] mask (True = attend) from a [B, S] padding mask over all positions.

    The T queries are the last T positions. A query may see keys at or before itself that are
    not padding; padded queries also see themselves so that no row is empty (an empty row
    makes attention NaN, and those rows' outputs are ignored anyway).
    """
    s = padding_mask.shape[1]
    query_pos = torch.arange(s - query_length, s, device=padding_mask.device)
    key_pos = torch.arange(s, device=padding_mask.device)
    causal = key_pos[None, :] <= query_pos[:, None]
    mask = causal[None] & padding_mask.bool()[:, None, :]
    mask |= (key_pos[None, :] == query_pos[:, None])[None]
    return mask[:, None]


def positions_from_padding(padding_mask: torch.Tensor, query_length: int) -> torch.Tensor:
    """Position ids that start at 0 on each row's first real token (left padding)."""
    positions = padding_mask.long().cumsum(-1) - 1
    return positions.clamp(min=0)[:, -query_length:]


class LanguageModel(nn.Module):
    """Decoder plus output head; `forward` returns logits (optionally only for some positions)."""

    def __init__(self, config: LanguageConfig) -> None:
        super().__init__()
        self.config = config
        self.model = Decoder(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        # A plain attribute, not a buffer: `model.to(bf16)` must not round the RoPE frequencies.
        self.inv_freq = rope_inverse_frequencies(config)
        self.gradient_checkpointing = False

    def finish_loading(self) -> None:
        """After weights were assigned into a meta-device model: re-tie the head, rebuild RoPE."""
        if self.config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        with torch.device("cpu"):
            self.inv_freq = rope_inverse_frequencies(self.config)

    def rope(self, position_ids: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        if self.inv_freq.device != position_ids.device:
            self.inv_freq = self.inv_freq.to(position_ids.device)
        freqs = position_ids[:, :, None].float() * self.inv_freq[None, None, :]
        emb = torch.cat((freqs, freqs), dim=-1)[:, None]  # [B, 1, T, head_dim]
        return emb.cos().to(dtype), emb.sin().to(dtype)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        *,
        inputs_embeds: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cache: KVCache | None = None,
        logits_positions: slice | torch.Tensor | None = None,
        return_hidden: bool = False,
    ) -> torch.Tensor:
        """Logits [B, T, V] for the new tokens.

        attention_mask: [B, past+T] padding mask (1 = real token), or a ready [B, 1, T, past+T]
        boolean mask, or None for unpadded causal attention. `logits_positions` picks positions
        before the output head (e.g. `slice(-1, None)` while generating) to skip wasted work.
        """
        x = self.model.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        t = x.shape[1]
        past = cache.length if cache is not None else 0
        mask = None
        if attention_mask is not None and attention_mask.dim() == 4:
            mask = attention_mask
        elif attention_mask is not None:
            if position_ids is None:
                position_ids = positions_from_padding(attention_mask, t)
            if not bool(attention_mask.all()) or past:
                mask = attention_mask_4d(attention_mask, t)
        elif past:
            mask = torch.ones(1, 1, t, past + t, dtype=torch.bool, device=x.device).tril(past)
        if position_ids is None:
            position_ids = torch.arange(past, past + t, device=x.device)[None].expand(x.shape[0], -1)
        cos, sin = self.rope(position_ids, x.dtype)
        for layer in self.model.layers:
            if self.gradient_checkpointing and self.training:
                x = torch.utils.checkpoint.checkpoint(layer, x, cos, sin, mask, cache, use_reentrant=False)
            else:
                x = layer(x, cos, sin, mask, cache)
        if cache is not None:
            cache.advance(t)
        x = self.model.norm(x)
        if logits_positions is not None:
            x = x[:, logits_positions]
        return x if return_hidden else self.lm_head(x)
