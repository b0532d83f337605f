"""A small client for an OpenAI-compatible chat endpoint, used as the LLM judge.

LLaVA-Bench-in-the-Wild, MM-Vet and the ScienceQA judge ensemble ask a language model to grade or
pick answers.  Any server speaking the OpenAI ``/chat/completions`` protocol works (OpenAI itself,
vLLM, `llavakit serve`, ...).  The client

* retries 429, 5xx, connection errors and timeouts with exponential backoff (honouring
  ``Retry-After``), and gives up with `JudgeError` after ``max_retries`` attempts;
* caches every reply on disk, keyed by a hash of the model, the messages and the sampling
  settings, so a rerun (or a crash halfway through) costs nothing for what was already judged;
* counts replies a benchmark could not parse (`note_unparseable`), for the report.

Only the standard library is used (urllib), so the judge adds no dependency.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from llavakit.eval.store import JsonlStore

API_KEY_VARIABLES = ("LLAVAKIT_JUDGE_API_KEY", "OPENAI_API_KEY")
_RETRYABLE_STATUS = frozenset({408, 409, 429}) | frozenset(range(500, 600))


class JudgeError(RuntimeError):
    """The judge endpoint could not be reached or kept failing."""


def api_key_from_environment() -> str | None:
    for name in API_KEY_VARIABLES:
        if os.environ.get(name):
            return os.environ[name]
    return None


def cache_key(model: str, messages: list[dict], temperature: float, max_tokens: int | None) -> str:
    """A stable hash of everything that determines a reply."""
    payload = json.dumps({"model": model, "messages": messages, "temperature": temperature,
                          "max_tokens": max_tokens}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


@dataclass
class JudgeStats:
    requests: int = 0  # replies asked for (cached or not)
    cache_hits: int = 0
    http_calls: int = 0  # POSTs sent, retries included
    retries: int = 0
    unparseable: dict[str, int] = field(default_factory=dict)  # per benchmark

    def as_dict(self) -> dict:
        return {"requests": self.requests, "cache_hits": self.cache_hits, "http_calls": self.http_calls,
                "retries": self.retries, "unparseable": dict(self.unparseable)}


class Judge:
    """``Judge(url, model).chat(messages)`` -> the reply text."""

    def __init__(self, url: str, model: str, *, api_key: str | None = None, cache_path: str | Path | None = None,
                 timeout: float = 120.0, max_retries: int = 6, backoff: float = 1.0, max_backoff: float = 60.0) -> None:
        self.url = url.rstrip("/")
        self.model = model
        self.api_key = api_key if api_key is not None else api_key_from_environment()
        self.cache = JsonlStore(cache_path) if cache_path else None
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.stats = JudgeStats()

    def chat(self, messages: list[dict], *, temperature: float = 0.0, max_tokens: int | None = None) -> str:
        """The assistant's reply to `messages` (from the cache when this exact call was made before)."""
        self.stats.requests += 1
        key = cache_key(self.model, messages, temperature, max_tokens)
        if self.cache is not None and key in self.cache:
            self.stats.cache_hits += 1
            return str(self.cache.get(key)["reply"])
        body = {"model": self.model, "messages": messages, "temperature": temperature}
        if max_tokens is not None:
            body["max_tokens"] = max_tokens
        reply = self._post(body)
        if self.cache is not None:
            self.cache.append([{"id": key, "model": self.model, "reply": reply}])
        return reply

    def note_unparseable(self, benchmark: str, count: int = 1) -> None:
        self.stats.unparseable[benchmark] = self.stats.unparseable.get(benchmark, 0) + count

    # --- transport ----------------------------------------------------------------------------
    def _post(self, body: dict) -> str:
        data = json.dumps(body).encode("utf-8")
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        last_error = "no attempt made"
        for attempt in range(self.max_retries):
            if attempt:
                self.stats.retries += 1
            self.stats.http_calls += 1
            request = urllib.request.Request(f"{self.url}/chat/completions", data=data, headers=headers, method="POST")
            retry_after = None
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    return _reply_text(json.loads(response.read().decode("utf-8")))
            except urllib.error.HTTPError as err:
                detail = err.read().decode("utf-8", "replace")[:300]
                if err.code not in _RETRYABLE_STATUS:
                    raise JudgeError(f"judge endpoint {self.url} answered HTTP {err.code}: {detail}") from err
                last_error = f"HTTP {err.code}: {detail}"
                retry_after = _retry_after_seconds(err.headers.get("Retry-After"))
            except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as err:
                last_error = f"{type(err).__name__}: {err}"
            except (json.JSONDecodeError, KeyError, IndexError, TypeError) as err:
                last_error = f"malformed reply ({type(err).__name__}: {err})"
            if attempt + 1 < self.max_retries:
                time.sleep(self._delay(attempt, retry_after))
        raise JudgeError(f"judge endpoint {self.url} failed {self.max_retries} times; last error: {last_error}")

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self.max_backoff)
        # Exponential backoff with a little jitter so parallel evaluations do not retry in lockstep.
        return min(self.backoff * (2 ** attempt), self.max_backoff) * (1 + 0.1 * random.random())


def _reply_text(payload: dict) -> str:
    content = payload["choices"][0]["message"]["content"]
    if content is None:
        return ""
    if isinstance(content, list):  # some servers return content parts
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return str(content)


def _retry_after_seconds(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None
