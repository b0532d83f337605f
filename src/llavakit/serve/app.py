"""The OpenAI-compatible HTTP API over one engine: `create_app(engine, model_name, ...)`.

Every request, streamed or not, is submitted to the same `Engine`, whose loop thread batches all
running requests together (continuous batching). The event loop never blocks: decoding images,
tokenizing and submitting run in worker threads (a few at a time), and answers are read through
the handle's asyncio iteration. A client that goes away has its requests cancelled, which frees
their engine slots at the next step.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from starlette.background import BackgroundTask
from starlette.requests import ClientDisconnect
from starlette.responses import Response, StreamingResponse

from llavakit.engine import GenerationResult, Handle, QueueFull
from llavakit.engine import Request as EngineRequest
from llavakit.serve.errors import APIError, clip, error_body, install_error_handlers, json_response
from llavakit.serve.images import data_url_bytes, decode_image, fetch_image
from llavakit.serve.limits import Limits
from llavakit.serve.prompt import (
    ImageRef,
    check_text_size,
    completion_budget,
    prepare,
    sampling_params,
    to_conversation,
)
from llavakit.serve.schema import ChatCompletionRequest, parse_request

log = logging.getLogger("llavakit.serve")


class Service:
    """The state behind the routes: the engine, the requests in flight and the limits."""

    def __init__(self, engine, model_name: str, api_key: str | None, limits: Limits) -> None:
        self.engine, self.llava = engine, engine.llava
        self.model_name, self.api_key, self.limits = model_name, api_key, limits
        self.context = int(engine.max_seq_len)
        self.created = int(time.time())
        self.closing = False
        self._in_flight: set[Handle] = set()
        self._lock = threading.Lock()  # done callbacks run on the engine thread
        self._prepare_slots = asyncio.Semaphore(limits.prepare_concurrency)

    # ---- bookkeeping ------------------------------------------------------------------------
    @property
    def in_flight(self) -> int:
        with self._lock:
            return len(self._in_flight)

    def _track(self, handle: Handle) -> None:
        with self._lock:
            self._in_flight.add(handle)
        handle.add_done_callback(self._untrack)

    def _untrack(self, handle: Handle) -> None:
        with self._lock:
            self._in_flight.discard(handle)

    async def drain(self, timeout: float) -> None:
        """Wait (up to `timeout`) for every submitted request to finish."""
        deadline = time.monotonic() + timeout
        while self.in_flight and time.monotonic() < deadline:
            await asyncio.sleep(0.05)

    def health(self) -> dict:
        engine = self.engine
        return {"status": "shutting_down" if self.closing else "ok", "model": self.model_name,
                "in_flight": self.in_flight, **engine.stats(),
                "max_batch_size": engine.max_batch_size, "max_queue": engine.max_queue,
                "context_length": self.context}

    def authorize(self, request: Request) -> None:
        if self.api_key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self.api_key.encode()):
            raise APIError(401, "Incorrect or missing API key: send 'Authorization: Bearer <key>'",
                           code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})

    # ---- a chat completion ------------------------------------------------------------------
    async def chat(self, request: Request) -> Response:
        self.authorize(request)
        body = await _read_body(request, self.limits.max_body_bytes)
        chat = parse_request(body)
        if chat.model is not None and chat.model != self.model_name:
            raise APIError(404, f"The model {clip(chat.model)!r} does not exist; this server serves "
                           f"{self.model_name!r}", param="model", code="model_not_found")
        turns, refs = to_conversation(chat, self.limits)
        check_text_size(turns, self.context)
        sampling_params(chat, 1, self.limits)  # cheap checks before the expensive preparation
        fetched = [await fetch_image(r.url, self.limits, r.where) if _remote(r.url, self.limits, r.where) else None
                   for r in refs]
        async with self._prepare_slots:
            sample = await asyncio.to_thread(self._prepare, turns, refs, fetched)
        prompt_tokens = len(sample.input_ids)
        params = sampling_params(chat, completion_budget(chat, prompt_tokens, self.context, self.limits),
                                 self.limits)
        request_id = f"chatcmpl-{uuid.uuid4().hex}"
        handles = await asyncio.to_thread(self._submit, sample, params, request_id)
        if chat.stream:
            include_usage = bool(chat.stream_options and chat.stream_options.include_usage)
            stream = self._sse(handles, request_id, prompt_tokens, include_usage)
            # The background task also runs when the client left before the stream even started.
            return StreamingResponse(stream, media_type="text/event-stream", background=BackgroundTask(_cancel, handles),
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        results = await self._results(request, handles)
        return json_response({
            "id": request_id, "object": "chat.completion", "created": int(time.time()),
            "model": self.model_name, "system_fingerprint": None,
            "choices": [{"index": i, "message": {"role": "assistant", "content": r.text, "refusal": None},
                         "logprobs": None, "finish_reason": r.finish_reason} for i, r in enumerate(results)],
            "usage": _usage(prompt_tokens, results),
        })

    def _prepare(self, turns: list[dict], refs: list[ImageRef], fetched: list[bytes | None]):
        images = []
        for ref, data in zip(refs, fetched):
            if data is None:
                data = data_url_bytes(ref.url, self.limits, ref.where)
            images.append(decode_image(data, self.limits, ref.where))
        return prepare(self.llava, turns, images, self.context)

    def _submit(self, sample, params: list, request_id: str) -> list[Handle]:
        handles: list[Handle] = []
        try:
            for i, p in enumerate(params):
                handle = self.engine.submit(EngineRequest(input_ids=sample.input_ids, pixel_values=sample.pixel_values,
                                                          params=p, id=f"{request_id}-{i}"))
                self._track(handle)
                handles.append(handle)
        except QueueFull:
            _cancel(handles)
            raise APIError(429, f"The server is busy ({self.engine.max_queue} requests are already waiting); "
                           "retry shortly", code="queue_full", headers={"Retry-After": "1"}) from None
        except RuntimeError:  # the engine is closed: we are shutting down
            _cancel(handles)
            raise APIError(503, "The server is shutting down", code="shutting_down") from None
        except ValueError as err:
            _cancel(handles)
            raise APIError(400, clip(err, 500), param="messages") from None
        return handles

    async def _results(self, request: Request, handles: list[Handle]) -> list[GenerationResult]:
        """All results, or cancel everything when the client disconnects first."""
        waiter = asyncio.ensure_future(asyncio.gather(*(h.aresult() for h in handles)))
        watcher = asyncio.ensure_future(_disconnected(request))
        try:
            await asyncio.wait({waiter, watcher}, return_when=asyncio.FIRST_COMPLETED)
            if waiter.done():
                try:
                    return waiter.result()
                except RuntimeError:
                    if self.closing:
                        raise APIError(503, "The server shut down before the answer was finished",
                                       code="shutting_down") from None
                    raise
            raise APIError(499, "the client closed the request", code="client_closed_request")
        finally:
            watcher.cancel()
            waiter.cancel()
            _cancel(handles)

    async def _sse(self, handles: list[Handle], request_id: str, prompt_tokens: int,
                   include_usage: bool) -> AsyncIterator[str]:
        created = int(time.time())

        def event(choices: list, usage: dict | None = None) -> str:
            chunk = {"id": request_id, "object": "chat.completion.chunk", "created": created,
                     "model": self.model_name, "system_fingerprint": None, "choices": choices}
            if include_usage:
                chunk["usage"] = usage
            return f"data: {json.dumps(chunk, ensure_ascii=True)}\n\n"

        def choice(index: int, delta: dict, finish: str | None = None) -> dict:
            return {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}

        results: list[GenerationResult] = []
        try:
            for i in range(len(handles)):
                yield event([choice(i, {"role": "assistant", "content": ""})])
            async for index, delta, end in _merged(handles):
                if end is None:
                    yield event([choice(index, {"content": delta})])
                elif isinstance(end, GenerationResult):
                    results.append(end)
                    yield event([choice(index, {}, end.finish_reason)])
                else:  # the engine failed this request: tell the client, as OpenAI does mid-stream
                    if not self.closing:
                        log.error("generation failed for %s", request_id, exc_info=end)
                    status, message = (503, "The server shut down") if self.closing else (500, "generation failed")
                    yield f"data: {json.dumps(error_body(status, message, code='generation_failed'))}\n\n"
                    return
            if include_usage:
                yield event([], _usage(prompt_tokens, results))
            yield "data: [DONE]\n\n"
        finally:  # also on disconnect: Starlette cancels this generator
            _cancel(handles)


async def _merged(handles: list[Handle]) -> AsyncIterator[tuple[int, str | None, object]]:
    """(choice index, delta, None) for text and (index, None, result or error) at each end."""
    queue: asyncio.Queue = asyncio.Queue()

    async def pump(index: int, handle: Handle) -> None:
        try:
            async for delta in handle:
                queue.put_nowait((index, delta, None))
            queue.put_nowait((index, None, handle.result()))
        except Exception as err:
            queue.put_nowait((index, None, err))

    tasks = [asyncio.ensure_future(pump(i, h)) for i, h in enumerate(handles)]
    try:
        remaining = len(handles)
        while remaining:
            item = await queue.get()
            remaining -= item[2] is not None
            yield item
    finally:
        for task in tasks:
            task.cancel()


def _cancel(handles: list[Handle]) -> None:
    for handle in handles:
        if not handle.done:
            handle.cancel()


def _usage(prompt_tokens: int, results: list[GenerationResult]) -> dict:
    completion = sum(r.completion_tokens for r in results)
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion,
            "total_tokens": prompt_tokens + completion}


def _remote(url: str, limits: Limits, where: str) -> bool:
    """True for an http(s) URL we may fetch; APIError for one we may not; False for data: URLs."""
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme == "data":
        return False
    if scheme in ("http", "https"):
        if limits.allow_remote_images:
            return True
        raise APIError(400, f"{where}: remote image URLs are disabled on this server; send the image as a "
                       "base64 data: URL (or start the server with --allow-remote-images)", param=where,
                       code="remote_images_disabled")
    raise APIError(400, f"{where}: image_url must be a data: URL" +
                   (" or an http(s) URL" if limits.allow_remote_images else ""), param=where, code="invalid_image")


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise APIError(413, f"the request body has {declared} bytes; the limit is {limit}", code="request_too_large")
    body = bytearray()
    try:
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise APIError(413, f"the request body exceeds the limit of {limit} bytes", code="request_too_large")
    except ClientDisconnect:
        raise APIError(499, "the client closed the request", code="client_closed_request") from None
    return bytes(body)


async def _disconnected(request: Request) -> None:
    """Return when the client disconnects (the body is already read, so nothing else arrives)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def create_app(engine, model_name: str, api_key: str | None = None, limits: Limits | None = None, *,
               close_engine: bool = True, drain_timeout: float = 60.0) -> FastAPI:
    """The FastAPI app serving `engine` as `model_name`. On shutdown it waits (up to
    `drain_timeout`) for the requests in flight, then closes the engine (unless `close_engine`
    is False, for callers that own it)."""
    service = Service(engine, model_name, api_key, limits or Limits())

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        service.closing = True
        await service.drain(drain_timeout)
        if close_engine:
            await asyncio.to_thread(engine.close)

    app = FastAPI(title="llavakit", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.service = service
    install_error_handlers(app)

    @app.get("/health")
    async def health() -> Response:
        return json_response(service.health())

    @app.get("/v1/models")
    async def models(request: Request) -> Response:
        service.authorize(request)
        return json_response({"object": "list", "data": [_model_card(service)]})

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str, request: Request) -> Response:
        service.authorize(request)
        if model_id != service.model_name:
            raise APIError(404, f"The model {clip(model_id)!r} does not exist", param="model", code="model_not_found")
        return json_response(_model_card(service))

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await service.chat(request)

    return app


def _model_card(service: Service) -> dict:
    return {"id": service.model_name, "object": "model", "created": service.created, "owned_by": "llavakit",
            "context_length": service.context}


__all__ = ["ChatCompletionRequest", "Limits", "Service", "create_app"]
