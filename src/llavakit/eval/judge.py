"""The LLM judge: a `llavakit.llm.ChatClient` with the judge's defaults and bookkeeping.

LLaVA-Bench-in-the-Wild, MM-Vet and the ScienceQA judge ensemble ask a language model to grade or
pick answers.  Any server speaking the OpenAI ``/chat/completions`` protocol works (OpenAI itself,
vLLM, `llavakit serve`, ...).  The transport (retries with backoff honouring ``Retry-After``, the
on-disk reply cache keyed by model, messages and sampling settings) is `llavakit.llm`'s; this module
adds the judge's API-key variables, `JudgeError`, and the count of replies a benchmark could not
parse (`note_unparseable`), for the report.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from llavakit.llm import ChatClient, LLMError, request_key
from llavakit.llm import api_key_from_environment as _key_from

API_KEY_VARIABLES = ("LLAVAKIT_JUDGE_API_KEY", "OPENAI_API_KEY")


class JudgeError(LLMError):
    """The judge endpoint could not be reached or kept failing."""


def api_key_from_environment() -> str | None:
    return _key_from(API_KEY_VARIABLES)


def cache_key(model: str, messages: list[dict], temperature: float, max_tokens: int | None) -> str:
    """A stable hash of everything that determines a reply (the same key `ChatClient` caches under)."""
    return request_key(model, messages, {"temperature": temperature, "max_tokens": max_tokens})


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
        self.client = ChatClient(url, model, api_key if api_key is not None else api_key_from_environment(),
                                 timeout=timeout, max_retries=max_retries, backoff=backoff,
                                 max_backoff=max_backoff, cache_file=cache_path)
        self.url, self.model = self.client.base_url, model
        self._unparseable: dict[str, int] = {}

    @property
    def stats(self) -> JudgeStats:
        """A snapshot of the client's counters plus the unparseable counts."""
        s = self.client.stats
        return JudgeStats(s.requests, s.cache_hits, s.http_calls, s.retries, dict(self._unparseable))

    def chat(self, messages: list[dict], *, temperature: float = 0.0, max_tokens: int | None = None) -> str:
        """The assistant's reply to `messages` (from the cache when this exact call was made before)."""
        try:
            # max_tokens is always part of the key (None included) so caches written before stay valid.
            return self.client.complete(messages, temperature=temperature, max_tokens=max_tokens).text
        except JudgeError:
            raise
        except LLMError as err:
            raise JudgeError(str(err).replace("LLM endpoint", "judge endpoint", 1),
                             url=err.url, status=err.status) from err

    def note_unparseable(self, benchmark: str, count: int = 1) -> None:
        self._unparseable[benchmark] = self._unparseable.get(benchmark, 0) + count
