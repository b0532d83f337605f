"""Sampling options and the logits processing that turns one row of logits into the next token.

Every request carries its own `SamplingParams` and its own `torch.Generator`, so a seeded request
samples the same tokens whether it runs alone or next to others in a batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields, replace

import torch

MIN_TEMPERATURE = 1e-4  # below this, sampling is greedy decoding in all but name
MIN_PENALTY, MAX_PENALTY = 0.01, 100.0  # beyond these, penalised logits overflow


@dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens and when to stop.

    temperature 0 is greedy (top_p / top_k are then irrelevant). `stop` strings end the answer
    before them; `stop_token_ids` are added to the model's end-of-sequence tokens. With
    `ignore_eos` only max_new_tokens, `stop` and explicit `stop_token_ids` end generation
    (benchmarks use it to time a fixed number of tokens).
    """

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False

    def __post_init__(self) -> None:
        # Accept lists from JSON; keep the dataclass hashable-ish and immutable in spirit.
        object.__setattr__(self, "stop", tuple([self.stop] if isinstance(self.stop, str) else self.stop))
        object.__setattr__(self, "stop_token_ids", tuple(int(t) for t in self.stop_token_ids))
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be a positive int, got {self.max_new_tokens!r}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.temperature < MIN_TEMPERATURE:
            # Dividing logits by a near-zero temperature overflows to inf/NaN, which would fail
            # every request sharing the batch; such a temperature is greedy decoding anyway.
            object.__setattr__(self, "temperature", 0.0)
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        if not MIN_PENALTY <= self.repetition_penalty <= MAX_PENALTY:
            raise ValueError(
                f"repetition_penalty must be in [{MIN_PENALTY}, {MAX_PENALTY}], got {self.repetition_penalty}"
            )
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise ValueError(f"stop strings must be non-empty strings, got {self.stop!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0 or self.top_k == 1

    @classmethod
    def from_dict(cls, options: dict) -> SamplingParams:
        """From JSON-ish options (unknown keys are an error, so typos do not pass silently)."""
        known = {f.name for f in fields(cls)}
        unknown = set(options) - known
        if unknown:
            raise ValueError(f"unknown generation option(s) {sorted(unknown)}; known: {sorted(known)}")
        return cls(**options)

    def with_defaults(self, **overrides) -> SamplingParams:
        return replace(self, **overrides)


def apply_repetition_penalty(logits: torch.Tensor, previous: Sequence[int] | torch.Tensor,
                             penalty: float) -> torch.Tensor:
    """CTRL-style penalty on every token seen so far (prompt and output), in place on a 1-D row.

    A seen token's logit is divided by `penalty` when positive and multiplied by it when
    negative, so penalty > 1 always makes repeats less likely (the definition transformers uses).
    """
    if penalty == 1.0 or len(previous) == 0:
        return logits
    ids = torch.as_tensor(previous, dtype=torch.long, device=logits.device).unique()
    ids = ids[(ids >= 0) & (ids < logits.shape[-1])]  # image slots may use out-of-vocabulary ids
    seen = logits[ids]
    logits[ids] = torch.where(seen > 0, seen / penalty, seen * penalty)
    return logits


def filter_top_k_top_p(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Set logits outside the top-k and outside the top-p nucleus to -inf (1-D row)."""
    if 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = logits.sort(descending=True)
        probs = sorted_logits.softmax(-1)
        # Drop a token when the mass before it already reaches top_p; the first always stays.
        drop = probs.cumsum(-1) - probs >= top_p
        drop[..., 0] = False  # explicitly: a top_p below float32's range rounds to 0 in the comparison
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.empty_like(logits).scatter_(-1, order, sorted_logits)
    return logits


def next_token(logits: torch.Tensor, params: SamplingParams, history: Sequence[int] | torch.Tensor,
               generator: torch.Generator | None) -> int:
    """The next token of one request from its fp32 logits row [V]."""
    if params.repetition_penalty != 1.0:
        logits = apply_repetition_penalty(logits.clone(), history, params.repetition_penalty)
    if params.greedy:
        return int(logits.argmax())
    logits = filter_top_k_top_p(logits / params.temperature, params.top_k, params.top_p)
    probs = logits.softmax(-1)
    return int(torch.multinomial(probs, 1, generator=generator))


def make_generator(seed: int | None, device: torch.device) -> torch.Generator | None:
    """A private generator per seeded request; unseeded requests draw from a fresh random seed."""
    generator = torch.Generator(device=device)
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    return generator
