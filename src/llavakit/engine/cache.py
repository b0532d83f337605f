"""A slot-based KV cache for continuous batching.

Every layer has one key and one value buffer [slots, kv_heads, capacity, head_dim]; running
request i owns slot i. Slots stay packed (a finished request's slot is refilled with the last
one), so a decode step reads `buffer[:n, :, :longest]` as a view, with no gather. Buffers grow
by doubling, in slots and in positions, so small jobs never allocate for the worst case.

LanguageModel talks to a cache through `length`, `update(layer, k, v)` and `advance(steps)`;
`prefill_view` and `decode_view` are such objects for one slot and for all running slots.
"""

from __future__ import annotations

import torch

from llavakit.config import LanguageConfig


class SlotCache:
    def __init__(self, config: LanguageConfig, max_slots: int, *, dtype: torch.dtype,
                 device: torch.device, capacity: int = 256, slots: int = 1) -> None:
        self.max_slots = max_slots
        self.num_layers = config.num_layers
        self._kv_shape = (config.num_kv_heads, config.head_dim)
        self.dtype, self.device = dtype, device
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self._allocate(min(slots, max_slots), capacity)

    @property
    def slots(self) -> int:
        return self.keys[0].shape[0]

    @property
    def capacity(self) -> int:
        return self.keys[0].shape[2]

    def _allocate(self, slots: int, capacity: int) -> None:
        shape = (slots, self._kv_shape[0], capacity, self._kv_shape[1])
        old_k, old_v = self.keys, self.values
        self.keys = [torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in range(self.num_layers)]
        self.values = [torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in range(self.num_layers)]
        for new, old in ((self.keys, old_k), (self.values, old_v)):
            for layer, buf in enumerate(old):
                s, c = min(buf.shape[0], slots), min(buf.shape[2], capacity)
                new[layer][:s, :, :c] = buf[:s, :, :c]

    def reserve(self, slots: int, length: int) -> None:
        """Make room for `slots` running requests of up to `length` positions (grows by doubling)."""
        if slots > self.max_slots:
            raise ValueError(f"{slots} slots requested, the cache has at most {self.max_slots}")
        if slots <= self.slots and length <= self.capacity:
            return
        new_slots = self.slots if slots <= self.slots else min(self.max_slots, max(slots, 2 * self.slots))
        new_capacity = self.capacity if length <= self.capacity else max(length, 2 * self.capacity)
        self._allocate(new_slots, new_capacity)

    def move(self, src: int, dst: int, length: int) -> None:
        """Copy the first `length` positions of slot `src` into slot `dst` (packing after a finish)."""
        for buffers in (self.keys, self.values):
            for buf in buffers:
                buf[dst, :, :length] = buf[src, :, :length]

    def prefill_view(self, slot: int) -> PrefillView:
        return PrefillView(self, slot)

    def decode_view(self, positions: torch.Tensor, width: int, first: int | None = None) -> DecodeView:
        return DecodeView(self, positions, width, first)


class PrefillView:
    """The whole prompt of one request, written into its slot from position 0."""

    length = 0  # nothing before the prompt: the model uses plain causal attention

    def __init__(self, cache: SlotCache, slot: int) -> None:
        self.cache, self.slot = cache, slot

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = k.shape[2]
        self.cache.keys[layer][self.slot, :, :t] = k[0]
        self.cache.values[layer][self.slot, :, :t] = v[0]
        return k, v  # the prompt attends only to itself: the fresh tensors are exactly the cache

    def advance(self, steps: int) -> None:
        pass


class DecodeView:
    """One new token for each of the first n slots, written at that slot's own position.

    `length` is 0 on purpose: the engine always passes position ids, and a mask whenever rows
    differ in length, so the model must not derive either from a shared past length.
    """

    length = 0

    def __init__(self, cache: SlotCache, positions: torch.Tensor, width: int, first: int | None = None) -> None:
        self.cache, self.width = cache, width
        self.n = positions.shape[0]
        self.positions = positions
        # Batch 1 (the latency case) writes through a plain slice: no index tensors per layer.
        # `first` is row 0's position as a Python int, so that reading it costs no device sync.
        self._single = None
        if self.n == 1:
            self._single = first if first is not None else int(positions[0])
        else:
            self.rows = torch.arange(self.n, device=positions.device)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        keys, values = self.cache.keys[layer], self.cache.values[layer]
        if self._single is not None:
            keys[0, :, self._single] = k[0, :, 0]
            values[0, :, self._single] = v[0, :, 0]
        else:
            keys[self.rows, :, self.positions] = k[:, :, 0]
            values[self.rows, :, self.positions] = v[:, :, 0]
        return keys[: self.n, :, : self.width], values[: self.n, :, : self.width]

    def advance(self, steps: int) -> None:
        pass
