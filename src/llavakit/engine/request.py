"""What callers hand the engine (`Request`) and get back (`Handle`, `GenerationResult`).

A `Handle` is shared between the engine's loop thread, which pushes text deltas and the final
result, and any number of readers: plain threads (iterate it, or call `result()`) and asyncio
code (`async for delta in handle`, `await handle.aresult()`). The loop thread never blocks on a
reader; asyncio readers are woken with `call_soon_threadsafe`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from llavakit.engine.sampling import SamplingParams


class QueueFull(RuntimeError):
    """The engine's waiting queue is at its limit; retry later (a server answers 429/503)."""


@dataclass
class Request:
    """One generation job.

    Give `messages` (chat turns, Message objects or {"role", "content"} dicts) and `images`
    (paths, bytes, PIL images; one per `<image>` placeholder, or put in front of the first user
    turn when there is none). Alternatively `input_ids` and `pixel_values` give an already
    prepared prompt (bypassing the chat template), as benchmarks and tests do.
    """

    messages: Sequence[Any] | None = None
    images: Sequence[Any] = ()
    params: SamplingParams = field(default_factory=SamplingParams)
    id: Any = None
    input_ids: Sequence[int] | None = None
    pixel_values: torch.Tensor | None = None  # [images, 3, S, S], with input_ids

    @classmethod
    def question(cls, text: str, images: Sequence[Any] = (), *, id: Any = None, **params) -> Request:
        """A single user question about zero or more images."""
        return cls(messages=[{"role": "user", "content": text}], images=list(images),
                   params=SamplingParams(**params), id=id)


@dataclass
class GenerationResult:
    id: Any
    text: str
    token_ids: list[int]
    finish_reason: str  # "stop" | "length" | "cancelled"
    prompt_tokens: int
    completion_tokens: int


class Handle:
    """A submitted request: stream its deltas, wait for its result, or cancel it."""

    def __init__(self, request: Request) -> None:
        self.request = request
        self._cond = threading.Condition()
        self._deltas: list[str] = []
        self._result: GenerationResult | None = None
        self._error: BaseException | None = None
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future]] = []
        self._callbacks: list[Callable[[Handle], None]] = []
        self._cancel: Callable[[Handle], None] | None = None  # set by the engine
        self.cancel_requested = False

    # ---- the engine's side ------------------------------------------------------------------
    def _push(self, delta: str) -> None:
        with self._cond:
            self._deltas.append(delta)
            self._wake()

    def _finish(self, result: GenerationResult | None, error: BaseException | None = None) -> None:
        with self._cond:
            if self.done:
                return
            self._result, self._error = result, error
            self._wake()
            callbacks = list(self._callbacks)
        for callback in callbacks:
            try:
                callback(self)
            except Exception:  # a caller's bug must not break the engine loop that runs it
                logging.getLogger(__name__).exception("done callback of a request failed")

    def _wake(self) -> None:
        self._cond.notify_all()
        waiters, self._waiters = self._waiters, []
        for loop, future in waiters:
            # RuntimeError: that event loop is closed, so nobody is listening any more.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_resolve, future)

    # ---- the caller's side ------------------------------------------------------------------
    @property
    def done(self) -> bool:
        return self._result is not None or self._error is not None

    def cancel(self) -> None:
        """Stop generating; the slot is freed and the result's finish_reason is "cancelled"."""
        self.cancel_requested = True
        if self._cancel is not None:
            self._cancel(self)

    def add_done_callback(self, callback: Callable[[Handle], None]) -> None:
        """Call `callback(handle)` when finished (at once if already done), from the loop thread."""
        with self._cond:
            if not self.done:
                self._callbacks.append(callback)
                return
        callback(self)

    def result(self, timeout: float | None = None) -> GenerationResult:
        """Block until done; raise the request's error if it failed."""
        with self._cond:
            if not self._cond.wait_for(lambda: self.done, timeout):
                raise TimeoutError("the request is still running")
        if self._error is not None:
            raise self._error
        return self._result

    def __iter__(self) -> Iterator[str]:
        """Text deltas as they are produced; raises the request's error at the end if it failed."""
        read = 0
        while True:
            with self._cond:
                self._cond.wait_for(lambda seen=read: seen < len(self._deltas) or self.done)
                new = self._deltas[read:]
                finished = self.done
            read += len(new)
            yield from new
            if finished and read == len(self._deltas):
                break
        if self._error is not None:
            raise self._error

    def __aiter__(self):
        return _AsyncDeltas(self)

    async def aresult(self) -> GenerationResult:
        async for _ in self:
            pass
        return self.result()

    async def _wait(self, seen: int) -> None:
        with self._cond:
            if seen < len(self._deltas) or self.done:
                return
            future = asyncio.get_running_loop().create_future()
            self._waiters.append((asyncio.get_running_loop(), future))
        await future


class _AsyncDeltas:
    def __init__(self, handle: Handle) -> None:
        self.handle, self.read = handle, 0

    def __aiter__(self):
        return self

    async def __anext__(self) -> str:
        h = self.handle
        while True:
            await h._wait(self.read)
            with h._cond:
                if self.read < len(h._deltas):
                    self.read += 1
                    return h._deltas[self.read - 1]
                if h.done:
                    break
        if h._error is not None:
            raise h._error
        raise StopAsyncIteration


def _resolve(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)
