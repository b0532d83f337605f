"""The generation engine: continuous batching over a slot KV cache, driven by one loop thread.

Callers (any thread, or asyncio through `Handle`) `submit` requests; the request is tokenized and
its images preprocessed right there, so bad input fails at once in the caller. A background
thread owns the model: it admits waiting requests into free slots (encoding each distinct image
once, prefilling the prompt alone so no padding is ever computed), then runs one decode step for
all running requests together, hands each its token, and frees the slots of finished ones, which
the next waiting requests take over in the same iteration.
"""

from __future__ import annotations

import hashlib
import queue
import threading
from collections import OrderedDict, deque
from collections.abc import Iterable, Iterator

import torch

from llavakit.engine.cache import SlotCache
from llavakit.engine.detokenize import TextStream
from llavakit.engine.kernels import use_row_linears
from llavakit.engine.request import GenerationResult, Handle, QueueFull, Request
from llavakit.engine.sampling import make_generator, next_token
from llavakit.inputs import prepare_sample


class FeatureCache:
    """A small LRU of projected image features, keyed by a hash of the pixel tensor."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: OrderedDict[str, torch.Tensor] = OrderedDict()

    @staticmethod
    def key(pixels: torch.Tensor) -> str:
        data = pixels.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()
        return f"{tuple(pixels.shape)}:{hashlib.blake2b(data, digest_size=16).hexdigest()}"

    def get(self, key: str) -> torch.Tensor | None:
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    def put(self, key: str, features: torch.Tensor) -> None:
        if self.size <= 0:
            return
        self._items[key] = features
        self._items.move_to_end(key)
        while len(self._items) > self.size:
            self._items.popitem(last=False)


class _Job:
    """A request on its way through the engine (owned by the loop thread once admitted)."""

    def __init__(self, handle: Handle, ids: list[int], pixels: torch.Tensor | None, image_keys: list[str],
                 stop_ids: frozenset[int], stream: TextStream, max_new: int, generator, history: list[int]) -> None:
        self.handle, self.ids, self.pixels, self.image_keys = handle, ids, pixels, image_keys
        self.params = handle.request.params
        self.stop_ids, self.stream, self.max_new = stop_ids, stream, max_new
        self.generator, self.history = generator, history
        self.tokens: list[int] = []
        self.length = 0  # positions in the slot's cache
        self.last = -1  # the token to feed next
        self.finish_reason: str | None = None


class Engine:
    """Fast batched generation for a loaded model (`llavakit.load(...)`).

    max_batch_size: requests decoded together (slots). max_queue: requests allowed to wait for a
    slot; `submit` raises QueueFull beyond it. max_seq_len: prompt plus answer, per request.
    """

    def __init__(self, llava, *, max_batch_size: int = 8, max_queue: int = 64, max_seq_len: int | None = None,
                 feature_cache_size: int = 32) -> None:
        if max_batch_size < 1 or max_queue < 1:  # every request waits in the queue, if only briefly
            raise ValueError("max_batch_size and max_queue must be >= 1")
        self.llava = llava
        self.model = llava.model.eval()
        self.lm = self.model.language_model
        use_row_linears(self.model)  # bf16/fp16 on CPU: matrix-vector kernels at batch 1
        embed = self.lm.model.embed_tokens.weight
        self.dtype, self.device = embed.dtype, embed.device
        self.max_batch_size, self.max_queue = max_batch_size, max_queue
        self.max_seq_len = max_seq_len or self.model.config.language.max_position_embeddings
        self.eos_ids = frozenset(llava.eos_token_ids())
        self.features = FeatureCache(feature_cache_size)
        self._cache: SlotCache | None = None
        self._pending: deque[_Job] = deque()
        self._active: list[_Job] = []
        self._lock = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closing = False

    @classmethod
    def load(cls, reference, *, dtype: str | torch.dtype = "auto", device: str | torch.device = "auto",
             quantize: str | None = None, **options) -> Engine:
        """Load a checkpoint (any format `llavakit.load` reads), optionally quantize, wrap it."""
        from llavakit.api import load
        from llavakit.engine.quantize import quantize_model

        llava = load(reference, dtype=dtype, device=device)
        if quantize:
            quantize_model(llava.model, quantize)
        return cls(llava, **options)

    # ---- public API (thread-safe) -----------------------------------------------------------
    def submit(self, request: Request, *, block: bool = False, timeout: float | None = None) -> Handle:
        """Queue a request and return its handle. Raises QueueFull when the queue is at its
        limit (after waiting up to `timeout` if `block`), ValueError / ImageError for bad input."""
        if self._closing:
            raise RuntimeError("the engine is closed")
        if not block and len(self._pending) >= self.max_queue:
            raise QueueFull(f"{len(self._pending)} requests are already waiting (max_queue={self.max_queue})")
        handle = Handle(request)
        job = self._prepare(handle)
        with self._lock:
            full = lambda: len(self._pending) >= self.max_queue and not self._closing  # noqa: E731
            if full() and not (block and self._lock.wait_for(lambda: not full(), timeout)):
                raise QueueFull(f"{len(self._pending)} requests are already waiting (max_queue={self.max_queue})")
            if self._closing:
                raise RuntimeError("the engine is closed")
            handle._cancel = self._cancel
            handle._job = job
            self._pending.append(job)
            self._start_thread()
            self._lock.notify_all()
        return handle

    def stream(self, request: Request) -> Iterator[str]:
        """Text deltas of one request (blocking iterator)."""
        yield from self.submit(request, block=True)

    def generate(self, requests: Iterable[Request]) -> list[GenerationResult]:
        """Results in request order; raises the first request error."""
        requests = list(requests)
        results: list[GenerationResult | None] = [None] * len(requests)
        for index, outcome in self.run_many(requests):
            if isinstance(outcome, BaseException):
                raise outcome
            results[index] = outcome
        return results

    def run_many(self, requests: Iterable[Request]) -> Iterator[tuple[int, GenerationResult | Exception]]:
        """(index, result or error) in completion order; requests are taken lazily from the
        iterable as queue space frees up, so a long input never sits in memory at once."""
        finished: queue.SimpleQueue = queue.SimpleQueue()
        in_flight = 0

        def outcome(item: tuple[int, Handle]) -> tuple[int, GenerationResult | Exception]:
            index, handle = item
            try:
                return index, handle.result()
            except Exception as err:  # the request's own error, handed to the caller
                return index, err

        for index, request in enumerate(requests):
            while not self._wait_for_space(0.05):
                while not finished.empty():
                    in_flight -= 1
                    yield outcome(finished.get())
            try:
                handle = self.submit(request, block=True)
            except (ValueError, TypeError, OSError) as err:
                yield index, err
                continue
            in_flight += 1
            handle.add_done_callback(lambda h, i=index: finished.put((i, h)))
            while not finished.empty():
                in_flight -= 1
                yield outcome(finished.get())
        while in_flight:
            in_flight -= 1
            yield outcome(finished.get())

    def stats(self) -> dict[str, int]:
        """Requests decoding now (`running`) and waiting for a slot (`waiting`)."""
        with self._lock:
            return {"running": len(self._active), "waiting": len(self._pending)}

    def close(self) -> None:
        """Stop the loop thread; unfinished requests fail with RuntimeError."""
        with self._lock:
            self._closing = True
            self._lock.notify_all()
        if self._thread is not None:
            self._thread.join()
        error = RuntimeError("the engine was closed")
        for job in [*self._pending, *self._active]:
            job.handle._finish(None, error)
        self._pending.clear()
        self._active.clear()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- preparation (caller's thread) ------------------------------------------------------
    def _prepare(self, handle: Handle) -> _Job:
        request, llava, config = handle.request, self.llava, self.model.config
        if request.input_ids is not None:
            ids, pixels = [int(i) for i in request.input_ids], request.pixel_values
        elif request.messages is not None:
            sample = prepare_sample(request.messages, list(request.images), config=config,
                                    template=llava.template, tokenizer=llava.tokenizer,
                                    image_processor=llava.image_processor)
            ids, pixels = sample.input_ids, sample.pixel_values
        else:
            raise ValueError("a request needs `messages` (or a prepared `input_ids`)")
        slots = sum(1 for i in ids if i == config.image_token_id)
        images = 0 if pixels is None else pixels.shape[0]
        if slots != images * config.tokens_per_image:
            raise ValueError(f"the prompt has {slots} image slots but {images} images were given "
                             f"({config.tokens_per_image} slots per image)")
        if not ids or len(ids) >= self.max_seq_len:
            raise ValueError(f"the prompt has {len(ids)} tokens; the engine allows 1 to {self.max_seq_len - 1}")
        params = request.params
        stop_ids = frozenset(params.stop_token_ids) | (frozenset() if params.ignore_eos else self.eos_ids)
        stop_strings = tuple(params.stop) + (() if params.ignore_eos else llava.template.stop_strings)
        keys = [FeatureCache.key(p) for p in pixels] if images else []
        generator = None if params.greedy else make_generator(params.seed, self.device)
        history = [i for i in ids if i != config.image_token_id] if params.repetition_penalty != 1.0 else []
        return _Job(handle, ids, pixels, keys, stop_ids, TextStream(llava.tokenizer, stop_strings),
                    min(params.max_new_tokens, self.max_seq_len - len(ids)), generator, history)

    def _wait_for_space(self, timeout: float) -> bool:
        with self._lock:
            return self._lock.wait_for(lambda: len(self._pending) < self.max_queue or self._closing, timeout)

    def _cancel(self, handle: Handle) -> None:
        with self._lock:
            job = handle._job
            waiting = job in self._pending
            if waiting:
                self._pending.remove(job)
                self._lock.notify_all()
        if waiting:  # never admitted: finish here; a running job is finished by the loop
            job.finish_reason = "cancelled"
            self._deliver(job)

    def _start_thread(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="llavakit-engine", daemon=True)
            self._thread.start()

    # ---- the loop (engine thread) -----------------------------------------------------------
    def _loop(self) -> None:
        with torch.inference_mode():
            while True:
                with self._lock:
                    self._lock.wait_for(lambda: self._pending or self._active or self._closing)
                    if self._closing:
                        return
                    admit = []
                    while self._pending and len(self._active) + len(admit) < self.max_batch_size:
                        admit.append(self._pending.popleft())
                    if admit:
                        self._lock.notify_all()  # room in the queue for blocked submitters
                try:
                    for job in admit:
                        self._admit(job)
                    self._reap()
                    if self._active:
                        self._step()
                        self._reap()
                except Exception as err:  # a failed step fails the running requests, not the engine
                    for job in self._active:
                        job.handle._finish(None, err)
                    self._active.clear()

    def _image_features(self, job: _Job) -> torch.Tensor | None:
        if not job.image_keys:
            return None
        found = {k: f for k in job.image_keys if (f := self.features.get(k)) is not None}
        missing = [i for i, k in enumerate(job.image_keys) if k not in found]
        if missing:
            encoded = self.model.encode_images(job.pixels[missing])
            for i, features in zip(missing, encoded):
                found[job.image_keys[i]] = features
                self.features.put(job.image_keys[i], features)
        return torch.stack([found[k] for k in job.image_keys])

    def _admit(self, job: _Job) -> None:
        try:
            slot = len(self._active)
            if self._cache is None:
                self._cache = SlotCache(self.model.config.language, self.max_batch_size, dtype=self.dtype,
                                        device=self.device, capacity=max(256, len(job.ids) + job.max_new))
            self._cache.reserve(slot + 1, len(job.ids) + job.max_new)
            ids = torch.tensor([job.ids], device=self.device)
            embeds = self.model.embed(ids, self._image_features(job))
            logits = self.lm(inputs_embeds=embeds, cache=self._cache.prefill_view(slot),
                             logits_positions=slice(-1, None))
        except Exception as err:
            job.handle._finish(None, err)
            return
        job.pixels = None  # the features are cached or no longer needed
        job.length = len(job.ids)
        self._active.append(job)
        self._accept(job, self._sample([job], logits[:, -1])[0])

    def _step(self) -> None:
        """One new token for every running request."""
        active = self._active
        lengths = [job.length for job in active]
        positions = torch.tensor(lengths, device=self.device)
        width = max(lengths) + 1
        mask = None
        if min(lengths) != width - 1:  # rows of equal length need no mask (all positions valid)
            mask = (torch.arange(width, device=self.device)[None] <= positions[:, None])[:, None, None, :]
        ids = torch.tensor([[job.last] for job in active], device=self.device)
        logits = self.lm(ids, attention_mask=mask, position_ids=positions[:, None],
                         cache=self._cache.decode_view(positions, width, lengths[0]))
        for job in active:
            job.length += 1
        for job, token in zip(active, self._sample(active, logits[:, -1])):
            self._accept(job, token)

    def _sample(self, jobs: list[_Job], logits: torch.Tensor) -> list[int]:
        if all(job.generator is None and job.params.repetition_penalty == 1.0 for job in jobs):
            return logits.argmax(-1).tolist()  # all greedy: one op for the batch
        logits = logits.float()
        return [next_token(logits[row], job.params, job.history, job.generator) for row, job in enumerate(jobs)]

    def _accept(self, job: _Job, token: int) -> None:
        if job.handle.cancel_requested:
            job.finish_reason = "cancelled"
            return
        if token in job.stop_ids:
            job.finish_reason = "stop"
            return
        job.tokens.append(token)
        job.last = token
        if job.history or job.params.repetition_penalty != 1.0:
            job.history.append(token)
        delta = job.stream.push(token)
        if delta:
            job.handle._push(delta)
        if job.stream.stopped:
            job.finish_reason = "stop"
        elif len(job.tokens) >= job.max_new:
            job.finish_reason = "length"

    def _reap(self) -> None:
        """Hand out finished (or cancelled) requests and pack the remaining ones into low slots."""
        for index in range(len(self._active) - 1, -1, -1):
            job = self._active[index]
            if job.finish_reason is None and job.handle.cancel_requested:
                job.finish_reason = "cancelled"
            if job.finish_reason is None:
                continue
            last = self._active.pop()
            if index < len(self._active):
                self._cache.move(len(self._active), index, last.length)
                self._active[index] = last
            self._deliver(job)

    def _deliver(self, job: _Job) -> None:
        tail = job.stream.finish()
        if tail:
            job.handle._push(tail)
        result = GenerationResult(job.handle.request.id, job.stream.text, job.tokens, job.finish_reason,
                                  len(job.ids), len(job.tokens))
        job.handle._finish(result)
