"""The LLM-judge client and the judged benchmarks, against an OpenAI-compatible HTTP endpoint.

`judge_endpoint` is a tiny stub server (canned replies, some unparseable, a 429 first); it can be
swapped for a real server (e.g. `llavakit serve`): the end-to-end test only checks structure unless
the endpoint is the stub.
"""

import json
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from llavakit.cli import main
from llavakit.eval.judge import Judge, JudgeError, cache_key

FIXTURES = Path(__file__).parent / "fixtures" / "eval"


class StubJudge:
    """Canned judge: answers by looking at the prompt; `failures` lists statuses to send first."""

    def __init__(self):
        self.bodies, self.headers, self.failures = [], [], []
        self.lock = threading.Lock()

    def reply(self, content: str) -> str:
        if content.startswith("Compare the ground truth"):  # MM-Vet grader
            if content.endswith("(digit): "):
                return "0.4"
            return "The prediction is right" if "Who is the person" in content else "0.7"
        if "[Assistant 1]" in content:  # LLaVA-Bench review
            return "Both are good." if "Describe this photo" in content else "8 4\nAssistant 1 is more detailed."
        if "Two answers were proposed" in content:  # ScienceQA ensemble, second round
            return "The answer is B."
        if "The answer is X." in content:  # ScienceQA ensemble, first round
            return "Let me think. The answer is C."
        return "ok"


class _Handler(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 (http.server's naming)
        stub: StubJudge = self.server.stub
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with stub.lock:
            stub.bodies.append(body)
            stub.headers.append(dict(self.headers))
            status = stub.failures.pop(0) if stub.failures else 200
        if not self.path.endswith("/chat/completions"):
            status = 404
        if status != 200:
            self.send_response(status)
            self.send_header("Retry-After", "0")
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b'{"error": {"message": "try later"}}')
            return
        content = body["messages"][-1]["content"]
        payload = {"id": "x", "object": "chat.completion", "model": body["model"],
                   "choices": [{"index": 0, "message": {"role": "assistant", "content": stub.reply(content)},
                                "finish_reason": "stop"}]}
        data = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@dataclass
class Endpoint:
    url: str
    model: str
    stub: StubJudge | None  # None for a real server


@pytest.fixture
def judge_endpoint():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.stub = StubJudge()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield Endpoint(f"http://127.0.0.1:{server.server_address[1]}/v1", "stub-judge", server.stub)
    server.shutdown()
    server.server_close()


def test_retries_429_and_5xx_then_caches(judge_endpoint, tmp_path):
    stub = judge_endpoint.stub
    stub.failures = [429, 503]
    cache = tmp_path / "cache.jsonl"
    judge = Judge(judge_endpoint.url, "m", api_key="secret", cache_path=cache, backoff=0.01)
    messages = [{"role": "user", "content": "Compare the ground truth ... | x | "}]
    assert judge.chat(messages, max_tokens=3) == "0.7"
    assert judge.stats.http_calls == 3 and judge.stats.retries == 2
    assert stub.bodies[-1] == {"model": "m", "messages": messages, "temperature": 0.0, "max_tokens": 3}
    assert stub.headers[-1]["Authorization"] == "Bearer secret"
    # Same call again, and from a new client on the same cache file: no request is sent.
    assert judge.chat(messages, max_tokens=3) == "0.7"
    again = Judge(judge_endpoint.url, "m", cache_path=cache)
    assert again.chat(messages, max_tokens=3) == "0.7"
    assert len(stub.bodies) == 3 and again.stats.cache_hits == 1
    # A different temperature is a different call.
    assert cache_key("m", messages, 0.5, 3) != cache_key("m", messages, 0.0, 3)
    again.chat(messages, temperature=0.5, max_tokens=3)
    assert len(stub.bodies) == 4


def test_api_key_from_environment(judge_endpoint, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.setenv("LLAVAKIT_JUDGE_API_KEY", "from-env")
    Judge(judge_endpoint.url, "m").chat([{"role": "user", "content": "hi"}])
    assert judge_endpoint.stub.headers[-1]["Authorization"] == "Bearer from-env"


def test_gives_up(judge_endpoint):
    judge_endpoint.stub.failures = [500, 502, 503]
    judge = Judge(judge_endpoint.url, "m", max_retries=3, backoff=0.01)
    with pytest.raises(JudgeError, match="failed 3 times"):
        judge.chat([{"role": "user", "content": "hi"}])
    judge_endpoint.stub.failures = [400]  # not retryable
    with pytest.raises(JudgeError, match="HTTP 400"):
        judge.chat([{"role": "user", "content": "hi"}])
    assert len(judge_endpoint.stub.bodies) == 4


def test_unreachable_endpoint_is_retried_then_reported():
    judge = Judge("http://127.0.0.1:9", "m", max_retries=2, backoff=0.01, timeout=2)
    with pytest.raises(JudgeError, match="failed 2 times"):
        judge.chat([{"role": "user", "content": "hi"}])
    assert judge.stats.http_calls == 2


@pytest.fixture(params=["stub", "served"])
def any_judge(request):
    """The scripted stub judge, and a real `llavakit serve` (a tiny random model) as the judge."""
    if request.param == "served":
        url, model = request.getfixturevalue("served_tiny_model")
        return Endpoint(url, model, None)
    return request.getfixturevalue("judge_endpoint")


def test_judged_benchmarks_end_to_end(tiny_checkpoint, any_judge, tmp_path):
    judge_endpoint = any_judge
    if judge_endpoint.stub is not None:
        judge_endpoint.stub.failures = [429]
    args = ["eval", "--model", str(tiny_checkpoint), "--benchmark", "llava_bench_wild", "mm_vet", "scienceqa_img",
            "--data", str(FIXTURES), "--output", str(tmp_path), "--max-new-tokens", "3", "--no-progress",
            "--judge-url", judge_endpoint.url, "--judge-model", judge_endpoint.model, "--judge-ensemble"]
    assert main(args) == 0

    def record(name):
        return json.loads(next((tmp_path / name).glob("*/scores.json")).read_text())

    bench, vet, sqa = record("llava_bench_wild"), record("mm_vet"), record("scienceqa_img")
    assert isinstance(bench["headline"], float) and set(bench["scores"]["per_category"]) == {"conv", "detail", "complex"}
    assert isinstance(vet["headline"], float) and vet["scores"]["count"] == 3
    assert isinstance(sqa["scores"]["ensemble"]["accuracy"], float)
    assert vet["judge"]["model"] == judge_endpoint.model
    if judge_endpoint.stub is not None:
        # LLaVA-Bench: conv and complex "8 4" (relative 50), detail unparseable -> (-1, -1):
        # reference mean (8 + 8 - 1) / 3 = 5, model (4 + 4 - 1) / 3 = 2.333 -> 46.7
        assert bench["headline"] == 46.7 and bench["scores"]["judge_unparseable"] == 1
        # MM-Vet: v1_0 0.7, v1_1 unparseable then 0.4 on the retry, v1_2 0.7 -> 60.0
        assert vet["headline"] == pytest.approx(60.0) and vet["scores"]["judge_unparseable"] == 0
        assert sqa["judge"]["retries"] >= 1  # the 429
    assert (tmp_path / "judge_cache.jsonl").exists()

    # A rerun sends nothing: predictions and judgments come from disk.
    sent = len(judge_endpoint.stub.bodies) if judge_endpoint.stub else None
    assert main(args) == 0
    assert record("mm_vet")["judge"]["http_calls"] == 0 and record("mm_vet")["reused"] == 3
    if judge_endpoint.stub is not None:
        assert len(judge_endpoint.stub.bodies) == sent
