"""llavakit.llm.ChatClient against a scripted OpenAI-compatible server on 127.0.0.1.

`StubServer` is reused by tests/test_data_generate.py: its `respond(body)` decides each reply and it
counts, on the server side, every request, every error status it sent and the peak concurrency.
"""

import json
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from llavakit.llm import ChatClient, LLMError, RateLimiter, Usage, request_key, retry_after_seconds


class StubServer:
    """A chat-completions server; `script` (a list) is consumed first, then `respond(body)` answers.

    A scripted or returned item is a reply text (200), an int status (error with Retry-After: 0),
    ``("raw", bytes)`` for a broken body, or ``("sleep", seconds, item)``.
    """

    def __init__(self, respond=None, delay: float = 0.0):
        self.respond = respond or (lambda body: "ok")
        self.delay = delay
        self.script: list = []
        self.bodies: list[dict] = []
        self.headers: list[dict] = []
        self.statuses = Counter()  # status sent -> count
        self.in_flight = self.peak = 0
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    @property
    def errors_sent(self) -> int:
        return sum(n for status, n in self.statuses.items() if status != 200)

    def _handler(self):
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's naming)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with stub.lock:
                    stub.bodies.append(body)
                    stub.headers.append(dict(self.headers))
                    stub.in_flight += 1
                    stub.peak = max(stub.peak, stub.in_flight)
                    item = stub.script.pop(0) if stub.script else None
                try:
                    if stub.delay:
                        time.sleep(stub.delay)
                    if item is None:
                        item = stub.respond(body)
                    if isinstance(item, tuple) and item[0] == "sleep":
                        time.sleep(item[1])
                        item = item[2]
                finally:
                    # Before replying: once the client has the reply it may send the next request,
                    # which must not be counted as overlapping this one.
                    with stub.lock:
                        stub.in_flight -= 1
                self._send(body, item)

            def _send(self, body, item):
                if isinstance(item, int):
                    status, data, extra = item, b'{"error": {"message": "slow down please"}}', {"Retry-After": "0"}
                elif isinstance(item, tuple) and item[0] == "raw":
                    status, data, extra = 200, item[1], {}
                else:
                    words = len(str(item).split())
                    payload = {"id": "x", "object": "chat.completion", "model": body["model"],
                               "choices": [{"index": 0, "message": {"role": "assistant", "content": item},
                                            "finish_reason": "stop"}],
                               "usage": {"prompt_tokens": 10, "completion_tokens": words,
                                         "total_tokens": 10 + words}}
                    status, data, extra = 200, json.dumps(payload).encode(), {}
                with stub.lock:
                    stub.statuses[status] += 1
                try:
                    self.send_response(status)
                    for k, v in {"Content-Type": "application/json", "Content-Length": str(len(data)),
                                 **extra}.items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout test) or was killed (resume test)

            def log_message(self, *args):
                pass

        return Handler


@pytest.fixture
def stub():
    with StubServer() as server:
        yield server


MESSAGES = [{"role": "user", "content": "hello"}]


def test_retries_429_5xx_and_broken_bodies_then_sums_usage(stub):
    stub.script = [429, 503, ("raw", b"{not json"), "four words in reply"]
    client = ChatClient(stub.url, "m", api_key="k", backoff=0.01)
    delays = []
    client._sleep = delays.append
    completion = client.complete(MESSAGES, temperature=0.3, max_tokens=7, top_p=None)
    assert completion.text == "four words in reply" and completion.finish_reason == "stop"
    assert completion.usage == Usage(10, 4, 14)
    assert stub.statuses == {429: 1, 503: 1, 200: 2}
    assert stub.bodies[-1] == {"model": "m", "messages": MESSAGES, "temperature": 0.3, "max_tokens": 7}
    assert stub.headers[-1]["Authorization"] == "Bearer k"
    assert delays[:2] == [0.0, 0.0]  # Retry-After: 0 wins over the backoff
    assert 0.04 <= delays[2] <= 0.05  # third attempt: 0.01 * 2**2, plus up to 25% jitter
    client.complete(MESSAGES)
    stats = client.stats.as_dict()
    assert stats["http_calls"] == 5 and stats["retries"] == 3 and stats["requests"] == 2
    assert stats["prompt_tokens"] == 20 and stats["completion_tokens"] == 5 and stats["total_tokens"] == 25


def test_gives_up_with_url_status_and_body(stub):
    stub.script = [500, 502, 503]
    client = ChatClient(stub.url, "m", max_retries=3, backoff=0.001)
    with pytest.raises(LLMError, match="failed 3 times") as err:
        client.complete(MESSAGES)
    assert err.value.status == 503 and stub.url in str(err.value) and "slow down please" in str(err.value)
    stub.script = [401]  # not retryable: one request, at once
    with pytest.raises(LLMError, match="HTTP 401") as err:
        client.complete(MESSAGES)
    assert err.value.status == 401 and len(stub.bodies) == 4
    assert client.stats.failures == 2


def test_timeouts_and_refused_connections_are_retried():
    with StubServer() as slow:
        slow.script = [("sleep", 1.0, "late"), "on time"]
        client = ChatClient(slow.url, "m", timeout=0.3, backoff=0.001)
        assert client.complete(MESSAGES).text == "on time"
        assert client.stats.retries == 1
    refused = ChatClient("http://127.0.0.1:9", "m", max_retries=2, backoff=0.001, timeout=2)
    with pytest.raises(LLMError, match="failed 2 times"):
        refused.complete(MESSAGES)
    assert refused.stats.http_calls == 2


def test_concurrency_is_bounded_and_thread_safe():
    with StubServer(lambda body: body["messages"][0]["content"], delay=0.05) as server:
        client = ChatClient(server.url, "m", max_concurrency=2)
        results = {}

        def ask(i):
            results[i] = client.complete([{"role": "user", "content": f"q{i}"}]).text

        threads = [threading.Thread(target=ask, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert results == {i: f"q{i}" for i in range(8)}
        assert server.peak <= 2 and client.stats.http_calls == 8
        assert client.stats.completion_tokens == 8


def test_rate_limiter_paces_requests():
    now = [0.0]
    slept = []

    def sleep(s):
        slept.append(s)
        now[0] += s

    limiter = RateLimiter(60, burst=2, clock=lambda: now[0], sleep=sleep)  # one a second, two saved up
    waits = [limiter.acquire() for _ in range(5)]
    assert waits == [0.0, 0.0, 1.0, 1.0, 1.0]
    now[0] += 10  # idle: the bucket refills, but only up to the burst
    assert [limiter.acquire() for _ in range(3)] == [0.0, 0.0, 1.0]
    with pytest.raises(ValueError):
        RateLimiter(0)


def test_requests_per_minute_limits_a_real_client(stub):
    client = ChatClient(stub.url, "m", max_concurrency=1, requests_per_minute=600)  # 0.1 s apart
    start = time.monotonic()
    for _ in range(4):
        client.complete(MESSAGES)
    assert time.monotonic() - start >= 0.28
    assert client.stats.rate_limited_s >= 0.28


def test_disk_cache(stub, tmp_path):
    client = ChatClient(stub.url, "m", cache_dir=tmp_path)
    first = client.complete(MESSAGES, temperature=0.0)
    again = ChatClient(stub.url, "m", cache_dir=tmp_path).complete(MESSAGES, temperature=0.0)
    assert again.text == first.text and again.cached and len(stub.bodies) == 1
    client.complete(MESSAGES, temperature=0.5)  # other sampling settings: another request
    assert len(stub.bodies) == 2
    assert request_key("m", MESSAGES, {"temperature": 0.0}) != request_key("m", MESSAGES, {"temperature": 0.5})
    with open(tmp_path / "llm_cache.jsonl", "a") as f:
        f.write('{"id": "torn')  # a crash mid-write
    assert ChatClient(stub.url, "m", cache_dir=tmp_path).complete(MESSAGES, temperature=0.0).cached


def test_retry_after_header_forms():
    assert retry_after_seconds("2.5") == 2.5 and retry_after_seconds(None) is None
    assert retry_after_seconds("soon") is None
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # a date in the past
    assert 0 < retry_after_seconds(time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 30))) <= 30


def test_api_key_from_environment(stub, monkeypatch):
    monkeypatch.setenv("LLAVAKIT_LLM_API_KEY", "from-env")
    ChatClient(stub.url, "m").complete(MESSAGES)
    assert stub.headers[-1]["Authorization"] == "Bearer from-env"
