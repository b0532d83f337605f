"""One client for OpenAI-compatible chat endpoints: the LLM judge and data generation both use it.

Any server speaking ``POST {base_url}/chat/completions`` works (OpenAI, vLLM, `llavakit serve`, ...).
`ChatClient.complete` is thread-safe and

* bounds the requests in flight (``max_concurrency``) and paces them with a token bucket
  (``requests_per_minute``), so a large generation run stays inside a provider's rate limits;
* retries 408/409/429, 5xx, timeouts, connection errors and unreadable replies with exponential
  backoff plus jitter, honouring ``Retry-After``, and raises `LLMError` (URL, status, body
  snippet) after ``max_retries`` attempts; other 4xx fail at once;
* optionally caches every reply on disk, keyed by a hash of the model, the messages and the sampling
  settings, so a rerun costs nothing for what was already answered;
* sums requests, retries and token usage in `ClientStats`.

Only the standard library is used (urllib), so the client adds no dependency.
"""

from __future__ import annotations

import email.utils
import hashlib
import json
import os
import random
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from llavakit.jsonl import records_by_id, reopen_jsonl

API_KEY_VARIABLES = ("LLAVAKIT_LLM_API_KEY", "OPENAI_API_KEY")
RETRYABLE_STATUS = frozenset({408, 409, 429}) | frozenset(range(500, 600))
CACHE_FILE_NAME = "llm_cache.jsonl"


class LLMError(RuntimeError):
    """The endpoint could not be reached, refused the request, or kept failing."""

    def __init__(self, message: str, *, url: str = "", status: int | None = None) -> None:
        super().__init__(message)
        self.url, self.status = url, status


def api_key_from_environment(names: tuple[str, ...] = API_KEY_VARIABLES) -> str | None:
    """The first of `names` that is set in the environment."""
    for name in names:
        if os.environ.get(name):
            return os.environ[name]
    return None


def request_key(model: str, messages: list[dict], sampling: dict[str, Any]) -> str:
    """A stable hash of everything that determines a reply (the cache key)."""
    payload = json.dumps({"model": model, "messages": messages, **sampling}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0

    @classmethod
    def from_payload(cls, usage: Any) -> Usage:
        if not isinstance(usage, dict):
            return cls()
        get = lambda k: int(usage.get(k) or 0)  # noqa: E731 (servers send null for unknown)
        prompt, completion = get("prompt_tokens"), get("completion_tokens")
        return cls(prompt, completion, get("total_tokens") or prompt + completion)


@dataclass(frozen=True)
class Completion:
    text: str
    usage: Usage = Usage()
    finish_reason: str | None = None  # "length" means the reply was cut at max_tokens
    cached: bool = False


@dataclass
class ClientStats:
    """Counters for a client's lifetime; updated under a lock, read with `as_dict`."""

    requests: int = 0  # completions asked for (cached or not)
    cache_hits: int = 0
    http_calls: int = 0  # POSTs sent, retries included
    retries: int = 0
    failures: int = 0  # requests that ended in LLMError
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    rate_limited_s: float = 0.0  # time spent waiting for the requests-per-minute limiter
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, **counts: float) -> None:
        with self._lock:
            for name, value in counts.items():
                setattr(self, name, getattr(self, name) + value)

    def add_usage(self, usage: Usage) -> None:
        self.add(prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens,
                 total_tokens=usage.total_tokens)

    def as_dict(self) -> dict[str, Any]:
        with self._lock:
            d = {f.name: getattr(self, f.name) for f in fields(self) if not f.name.startswith("_")}
        d["rate_limited_s"] = round(d["rate_limited_s"], 3)
        return d


class RateLimiter:
    """A token bucket: `per_minute` tokens a minute, at most `burst` saved up; `acquire` takes one.

    Tokens may go negative: each caller reserves its slot under the lock and sleeps outside it, so
    concurrent callers queue up fairly instead of all waking at once.
    """

    def __init__(self, per_minute: float, *, burst: int = 1, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if per_minute <= 0:
            raise ValueError(f"requests_per_minute must be positive, got {per_minute}")
        self.rate = per_minute / 60.0
        self.burst = max(1, int(burst))
        self._clock, self._sleep = clock, sleep
        self._tokens = float(self.burst)
        self._last = clock()
        self._lock = threading.Lock()

    def acquire(self) -> float:
        """Wait for a token; return the seconds waited."""
        with self._lock:
            now = self._clock()
            self._tokens = min(float(self.burst), self._tokens + (now - self._last) * self.rate)
            self._last = now
            self._tokens -= 1.0
            wait = 0.0 if self._tokens >= 0 else -self._tokens / self.rate
        if wait > 0:
            self._sleep(wait)
        return wait


class ReplyCache:
    """Replies on disk, one JSON line ``{"id": key, ...}`` each, flushed as written; thread-safe.

    (The same layout as `llavakit.eval.store.JsonlStore`, so existing judge caches stay valid.)  A torn
    last line, left by a crash mid-write, is cut off on open; unreadable lines are ignored.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._records, _ = records_by_id(reopen_jsonl(self.path)[0])

    def get(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            return self._records.get(key)

    def put(self, key: str, record: dict[str, Any]) -> None:
        record = {"id": key, **record}
        with self._lock:
            self._records[key] = record
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record, ensure_ascii=False) + "\n")


class ChatClient:
    """``ChatClient(url, model).complete(messages, temperature=0.2)`` -> `Completion`."""

    def __init__(self, base_url: str, model: str, api_key: str | None = None, *, timeout: float = 120.0,
                 max_retries: int = 6, backoff: float = 1.0, max_backoff: float = 60.0,
                 cache_dir: str | Path | None = None, cache_file: str | Path | None = None,
                 max_concurrency: int = 8, requests_per_minute: float | None = None) -> None:
        if max_retries < 1 or max_concurrency < 1:
            raise ValueError("max_retries and max_concurrency must be at least 1")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.api_key = api_key if api_key is not None else api_key_from_environment()
        self.timeout, self.max_retries = timeout, max_retries
        self.backoff, self.max_backoff = backoff, max_backoff
        if cache_file is None and cache_dir is not None:
            cache_file = Path(cache_dir) / CACHE_FILE_NAME
        self.cache = ReplyCache(cache_file) if cache_file is not None else None
        self.max_concurrency = max_concurrency
        self._slots = threading.BoundedSemaphore(max_concurrency)
        self.limiter = (RateLimiter(requests_per_minute, burst=max_concurrency)
                        if requests_per_minute else None)
        self.stats = ClientStats()
        self._sleep = time.sleep  # tests swap this to see the backoff delays without waiting

    @property
    def url(self) -> str:
        return f"{self.base_url}/chat/completions"

    def complete(self, messages: list[dict], **sampling: Any) -> Completion:
        """The assistant's reply to `messages`; sampling options (temperature, max_tokens, top_p,
        ...) go into the request body as given (None values are left out of the body)."""
        self.stats.add(requests=1)
        key = request_key(self.model, messages, sampling) if self.cache is not None else ""
        if self.cache is not None:
            hit = self.cache.get(key)
            if hit is not None:
                self.stats.add(cache_hits=1)
                return Completion(str(hit["reply"]), Usage(), hit.get("finish_reason"), cached=True)
        body = {"model": self.model, "messages": messages,
                **{k: v for k, v in sampling.items() if v is not None}}
        try:
            completion = self._post(body)
        except LLMError:
            self.stats.add(failures=1)
            raise
        self.stats.add_usage(completion.usage)
        if self.cache is not None:
            self.cache.put(key, {"model": self.model, "reply": completion.text,
                                 "finish_reason": completion.finish_reason})
        return completion

    # --- transport ------------------------------------------------------------------------------
    def _post(self, body: dict) -> Completion:
        data = json.dumps(body).encode("utf-8")
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        last_error, last_status = "no attempt made", None
        for attempt in range(self.max_retries):
            if attempt:
                self.stats.add(retries=1)
            if self.limiter is not None:
                self.stats.add(rate_limited_s=self.limiter.acquire())
            retry_after = None
            try:
                with self._slots:
                    self.stats.add(http_calls=1)
                    request = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
                    with urllib.request.urlopen(request, timeout=self.timeout) as response:
                        return _completion(json.loads(response.read().decode("utf-8")))
            except urllib.error.HTTPError as err:
                detail = _snippet(err)
                if err.code not in RETRYABLE_STATUS:
                    raise LLMError(f"LLM endpoint {self.url} answered HTTP {err.code}: {detail}",
                                   url=self.url, status=err.code) from err
                last_error, last_status = f"HTTP {err.code}: {detail}", err.code
                retry_after = retry_after_seconds(err.headers.get("Retry-After"))
            except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as err:
                last_error, last_status = f"{type(err).__name__}: {getattr(err, 'reason', err)}", None
            except (json.JSONDecodeError, UnicodeDecodeError, KeyError, IndexError, TypeError) as err:
                last_error, last_status = f"malformed reply ({type(err).__name__}: {err})", None
            if attempt + 1 < self.max_retries:
                self._sleep(self._delay(attempt, retry_after))
        raise LLMError(f"LLM endpoint {self.url} failed {self.max_retries} times; last error: {last_error}",
                       url=self.url, status=last_status)

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self.max_backoff)
        # Jitter keeps parallel workers (and parallel runs) from retrying in lockstep.
        return min(self.backoff * (2 ** attempt), self.max_backoff) * random.uniform(1.0, 1.25)


def _completion(payload: dict) -> Completion:
    choice = payload["choices"][0]
    content = choice["message"]["content"]
    if content is None:
        text = ""
    elif isinstance(content, list):  # some servers return content parts
        text = "".join(part.get("text", "") for part in content if isinstance(part, dict))
    else:
        text = str(content)
    return Completion(text, Usage.from_payload(payload.get("usage")), choice.get("finish_reason"))


def _snippet(err: urllib.error.HTTPError, limit: int = 300) -> str:
    try:
        body = err.read().decode("utf-8", "replace")
    except OSError:
        body = ""
    body = " ".join(body.split())
    return (body[:limit] + "...") if len(body) > limit else (body or "(empty body)")


def retry_after_seconds(value: str | None) -> float | None:
    """A Retry-After header in seconds (it may be a number or an HTTP date), or None."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())
