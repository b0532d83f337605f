"""LLaVA: vision tower -> projector -> image features written into the LLM's token embeddings.

The prompt already holds one position per image feature (tokenize.py expands every `<image>`
into `config.tokens_per_image` copies of `config.image_token_id`), so merging is a masked write
and sequence lengths, padding and KV-cache positions are known before the model runs.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from llavakit.config import LlavaConfig
from llavakit.model.language import KVCache, LanguageModel
from llavakit.model.projector import build_projector
from llavakit.model.vision import VisionTower


class LlavaModel(nn.Module):
    def __init__(self, config: LlavaConfig) -> None:
        super().__init__()
        if config.image_aspect == "anyres":
            raise NotImplementedError(
                "anyres (LLaVA-1.6) models are not supported by the model yet; images.py can "
                "tile images, but the model merges one feature grid per image"
            )
        self.config = config
        self.vision_tower = VisionTower(config.vision)
        self.projector = build_projector(config.projector, config.vision.hidden_size, config.language.hidden_size)
        self.language_model = LanguageModel(config.language)

    @property
    def device(self) -> torch.device:
        return self.language_model.model.embed_tokens.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.language_model.model.embed_tokens.weight.dtype

    def vision_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[N, 3, S, S] pixels -> [N, tokens_per_image, tower width]: the selected layer, before the projector.

        Separate from `encode_images` so training can cache a frozen tower's output.
        """
        tower_dtype = self.vision_tower.embeddings.patch_embedding.weight.dtype
        hidden = self.vision_tower(pixel_values.to(self.device, tower_dtype), self.config.vision_feature_layer)
        if self.config.vision_feature_select == "patch" and self.config.vision.has_class_token:
            hidden = hidden[:, 1:]
        return hidden

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[N, 3, S, S] pixels -> [N, tokens_per_image, text width] features."""
        return self.projector(self.vision_features(pixel_values))

    def embed(self, input_ids: torch.Tensor, image_features: torch.Tensor | None) -> torch.Tensor:
        """Token embeddings with image features written at the image-slot positions, in order."""
        slots = input_ids == self.config.image_token_id
        embed_tokens = self.language_model.model.embed_tokens
        embeds = embed_tokens(input_ids.masked_fill(slots, 0))
        n_slots = int(slots.sum())
        n_features = 0 if image_features is None else image_features.shape[0] * image_features.shape[1]
        if n_slots != n_features:
            per_image = self.config.tokens_per_image
            raise ValueError(
                f"the prompt has {n_slots} image slots ({n_slots / per_image:g} images of {per_image} "
                f"tokens) but {n_features // per_image} images were given; put one <image> in the "
                "prompt per image"
            )
        if n_slots:
            features = image_features.reshape(-1, image_features.shape[-1]).to(embeds.dtype)
            embeds = embeds.masked_scatter(slots[..., None], features)
        return embeds

    def forward(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        *,
        image_features: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cache: KVCache | None = None,
        logits_positions: slice | torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits for `input_ids` [B, T].

        Images are given as `pixel_values` [N, 3, S, S] (all images of the batch, in prompt order)
        or as precomputed `image_features` [N, tokens, width]; a batch without images needs
        neither.
        """
        if image_features is None and pixel_values is not None and len(pixel_values):
            image_features = self.encode_images(pixel_values)
        embeds = self.embed(input_ids.to(self.device), image_features)
        return self.language_model(
            inputs_embeds=embeds,
            attention_mask=None if attention_mask is None else attention_mask.to(self.device),
            position_ids=position_ids,
            cache=cache,
            logits_positions=logits_positions,
        )

    def new_cache(self, batch_size: int, capacity: int = 256) -> KVCache:
        return KVCache(self.config.language, batch_size, capacity, dtype=self.dtype, device=self.device)

    @torch.inference_mode()
    def generate(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        *,
        attention_mask: torch.Tensor | None = None,
        max_new_tokens: int = 32,
        temperature: float = 0.0,
        top_p: float = 1.0,
        eos_token_ids: Sequence[int] | None = None,
        generator: torch.Generator | None = None,
    ) -> list[list[int]]:
        """Plain KV-cached decoding of a left-padded batch; returns the new tokens of each row.

        Greedy when temperature is 0. A row stops at its first end-of-sequence token (which is
        not returned). The fast engine lives in `llavakit.engine`; this is the reference loop.
        """
        input_ids = input_ids.to(self.device)
        b, t = input_ids.shape
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask.to(self.device)
        eos = set(self.config.language.eos_token_ids if eos_token_ids is None else eos_token_ids)
        cache = self.new_cache(b, t + max_new_tokens)
        logits = self(input_ids, pixel_values, attention_mask=mask, cache=cache, logits_positions=slice(-1, None))
        out: list[list[int]] = [[] for _ in range(b)]
        done = torch.zeros(b, dtype=torch.bool, device=self.device)
        for _ in range(max_new_tokens):
            next_ids = sample_next(logits[:, -1].float(), temperature, top_p, generator)
            for row, token in enumerate(next_ids.tolist()):
                if not done[row]:
                    if token in eos:
                        done[row] = True
                    else:
                        out[row].append(token)
            if bool(done.all()):
                break
            mask = torch.cat([mask, torch.ones(b, 1, dtype=mask.dtype, device=self.device)], dim=1)
            logits = self.language_model(next_ids[:, None], attention_mask=mask, cache=cache)
        return out


def sample_next(logits: torch.Tensor, temperature: float, top_p: float,
                generator: torch.Generator | None) -> torch.Tensor:
    """Greedy (temperature 0) or nucleus sampling over [B, V] logits, with the engine's filter."""
    from llavakit.engine.sampling import filter_top_k_top_p  # lazy: the engine imports this module

    if temperature <= 0:
        return logits.argmax(-1)
    rows = [filter_top_k_top_p(row / temperature, 0, top_p) for row in logits]
    return torch.multinomial(torch.stack(rows).softmax(-1), 1, generator=generator).squeeze(-1)
