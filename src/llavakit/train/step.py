"""What one micro-batch costs: the loss module, the learning-rate schedule, the padded batches."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from llavakit.model import LlavaModel
from llavakit.tokenize import IGNORE_INDEX


class LossModule(nn.Module):
    """Summed next-token loss over the target tokens of a micro-batch.

    Logits are computed only where a label is a target (an LLaVA batch is mostly image slots
    and prompt), which saves most of the output head's time and memory. With `features_cached`
    the `images` are the tower's cached outputs; otherwise pixels, run through the tower without
    autograd unless the tower trains. A `dummy_image` keeps the projector (and a trainable
    tower) in the graph of a text-only micro-batch, which FSDP needs on every process.

    With `share_prefix`, the tokens that open every row of a micro-batch (a chat template's
    system prompt) run through the LLM once instead of once per row; the rows then attend to
    that one copy's keys and values (`SharedPrefix`). The loss and gradients are the same.
    """

    def __init__(self, model: LlavaModel, *, tower_trainable: bool, features_cached: bool,
                 share_prefix: bool = False) -> None:
        super().__init__()
        self.model = model
        self.tower_trainable, self.features_cached = tower_trainable, features_cached
        self.share_prefix = share_prefix

    def _image_features(self, images: torch.Tensor) -> torch.Tensor:
        m = self.model
        if self.features_cached:
            tower = images.to(m.device)
        else:
            with torch.set_grad_enabled(self.tower_trainable and torch.is_grad_enabled()):
                tower = m.vision_features(images)
        weight = next(m.projector.parameters(), None)
        return m.projector(tower if weight is None else tower.to(weight.dtype))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor,
                images: torch.Tensor | None = None, dummy_image: torch.Tensor | None = None) -> torch.Tensor:
        m = self.model
        extra = None
        if images is not None:
            features = self._image_features(images)
        elif dummy_image is not None:  # before the LLM, so every process calls the FSDP units in one order
            features, extra = None, 0.0 * self._image_features(dummy_image).float().sum()
        else:
            features = None
        input_ids, labels = input_ids.to(m.device), labels.to(m.device)
        embeds = m.embed(input_ids, features)
        mask = attention_mask.to(m.device)
        shared = shared_prefix_length(input_ids, labels, mask, m.config.image_token_id) if self.share_prefix else 0
        if shared:
            prefix = SharedPrefix()
            m.language_model(inputs_embeds=embeds[:1, :shared], cache=prefix, return_hidden=True)
            prefix.recording = False
            hidden = m.language_model(inputs_embeds=embeds[:, shared:], attention_mask=mask, cache=prefix,
                                      return_hidden=True)
            labels = labels[:, shared:]
        else:
            hidden = m.language_model(inputs_embeds=embeds, attention_mask=mask, return_hidden=True)
        targets = labels[:, 1:]
        keep = targets != IGNORE_INDEX
        logits = m.language_model.lm_head(hidden[:, :-1][keep])
        loss = F.cross_entropy(logits.float(), targets[keep], reduction="sum")
        return loss if extra is None else loss + extra


class SharedPrefix:
    """A stand-in for the LLM's KV cache (`length`, `update`, `advance`) that lets a batch share one
    run of its common first tokens: while `recording` it keeps each layer's keys and values of the
    one-row prefix pass; afterwards it puts them, expanded to the batch, in front of the rows' own.
    Autograd sums the rows' gradients into the shared copy."""

    def __init__(self) -> None:
        self.length = 0
        self.recording = True
        self.layers: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.recording:
            self.layers[layer] = (k, v)
            return k, v
        pk, pv = self.layers[layer]
        rows = k.shape[0]
        return (torch.cat([pk.expand(rows, -1, -1, -1), k], dim=2),
                torch.cat([pv.expand(rows, -1, -1, -1), v], dim=2))

    def advance(self, steps: int) -> None:
        self.length += steps


def shared_prefix_length(input_ids: torch.Tensor, labels: torch.Tensor, attention_mask: torch.Tensor,
                         image_token_id: int, minimum: int = 8) -> int:
    """How many first tokens all rows share and can run once: the same real, non-image tokens,
    none of them (nor the token after them) a target. 0 for one row or fewer than `minimum`."""
    if input_ids.shape[0] < 2:
        return 0
    same = ((input_ids == input_ids[:1]).all(0) & (input_ids[0] != image_token_id)
            & attention_mask.bool().all(0))
    # The token right after the prefix is predicted from the prefix's last position, which the
    # split leaves out of the rows' logits: it must not be a target either.
    no_target = (labels == IGNORE_INDEX).all(0)
    ok = same & torch.cat([no_target[1:], no_target.new_zeros(1)])
    length = int(ok.long().cumprod(0).sum())
    return length if length >= minimum else 0


def lr_factor(step: int, total_steps: int, warmup_ratio: float, schedule: str) -> float:
    """transformers' schedules: linear warm-up over ceil(ratio * total) steps, then cosine/linear/constant."""
    warmup = math.ceil(total_steps * warmup_ratio)
    if step < warmup:
        return step / max(1, warmup)
    if schedule == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total_steps - warmup)
    if schedule == "linear":
        return max(0.0, 1.0 - progress)
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))


def target_count(labels: torch.Tensor) -> int:
    return int((labels[:, 1:] != IGNORE_INDEX).sum())


@torch.no_grad()
def dataset_loss(model: LlavaModel, dataset, *, batch_size: int = 8, pad_id: int = 0) -> float:
    """Mean next-token loss over every target token of a dataset (skipped records left out)."""
    from llavakit.train.data import Collator

    module = LossModule(model, tower_trainable=False, features_cached=dataset.features is not None)
    collate = Collator(pad_id)
    total = count = 0.0
    for start in range(0, len(dataset), batch_size):
        mb = collate([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
        if mb.batch is not None:
            b = mb.batch
            total += float(module(b.input_ids, b.attention_mask, b.labels, b.pixel_values))
            count += target_count(b.labels)
    return total / max(count, 1.0)
