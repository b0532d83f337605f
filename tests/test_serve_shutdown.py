"""Lifecycle of `llavakit serve`: a client that disconnects mid-stream frees its slot, and SIGTERM
during a streamed answer lets it finish before the process exits with status 0.

The tiny test model answers in milliseconds, too fast to interrupt; these tests use a wider one
(about 12M parameters, a few milliseconds per token) with a long context, so a stream lasts
seconds.
"""

from __future__ import annotations

import json
import signal
import time

import httpx
import pytest
import torch
from test_serve_helpers import http_client, running_server, user


@pytest.fixture(scope="module")
def slow_checkpoint(tmp_path_factory):
    from tiny_models import our_config
    from tokenizers_for_tests import build_llama_sp_tokenizer

    from llavakit.checkpoints import save_checkpoint
    from llavakit.config import LanguageConfig
    from llavakit.model import LlavaModel

    directory = tmp_path_factory.mktemp("slow")
    tokenizer = build_llama_sp_tokenizer(directory / "tokenizer")
    config = our_config(image_token_id=-200, language=LanguageConfig(
        vocab_size=len(tokenizer), hidden_size=384, intermediate_size=1024, num_layers=6, num_heads=6,
        num_kv_heads=6, max_position_embeddings=4096, rms_norm_eps=1e-6, pad_token_id=None))
    torch.manual_seed(0)
    model = LlavaModel(config).eval()
    with torch.no_grad():  # no end-of-sequence or special token ever wins: answers run to max_tokens
        model.language_model.lm_head.weight[:3] = 0
    return save_checkpoint(model, tokenizer, directory / "model")


@pytest.fixture(scope="module")
def server(slow_checkpoint, tmp_path_factory):
    log = tmp_path_factory.mktemp("lifecycle") / "server.log"
    with running_server(["--model", str(slow_checkpoint), "--model-name", "slow", "--max-batch-size", "2"],
                        log) as (process, url):
        yield process, url, log


def _stream(client: httpx.Client, max_tokens: int):
    body = {"messages": [user("Tell me a long story.")], "max_tokens": max_tokens, "temperature": 0, "stream": True}
    return client.stream("POST", "/v1/chat/completions", json=body)


def _wait_for(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_disconnect_mid_stream_frees_the_slot(server):
    _, url, _ = server
    with http_client(url) as health, http_client(url) as client:
        with _stream(client, 3000) as response:  # ~10 s of generation if left alone
            lines = response.iter_lines()
            assert next(lines).startswith("data: ")
            started = time.monotonic()
            assert health.get("/health").json()["in_flight"] == 1
        # Leaving the block closed the connection after one event.
        assert _wait_for(lambda: health.get("/health").json()["in_flight"] == 0, 5)
        freed_after = time.monotonic() - started
        assert health.get("/health").json()["running"] == 0
        assert freed_after < 5
        # The slot is usable again.
        reply = client.post("/v1/chat/completions", json={"messages": [user("Hi")], "max_tokens": 3})
        assert reply.status_code == 200 and reply.json()["usage"]["completion_tokens"] == 3


def test_sigterm_lets_the_streaming_answer_finish_and_exits_0(server):
    process, url, log = server
    max_tokens = 400
    with http_client(url) as client, _stream(client, max_tokens) as response:
        lines = (line for line in response.iter_lines() if line)
        first = next(lines)
        assert first.startswith("data: ")
        process.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        rest = list(lines)
        streamed_after_signal = time.monotonic() - signalled
    events = [json.loads(line[6:]) for line in [first, *rest[:-1]]]
    assert rest[-1] == "data: [DONE]"
    assert events[-1]["choices"][0]["finish_reason"] == "length"
    assert len([e for e in events if e["choices"][0]["delta"].get("content")]) > max_tokens // 2
    assert streamed_after_signal > 0.2  # the answer really was still being generated
    assert process.wait(30) == 0, log.read_text()[-2000:]
    with pytest.raises(httpx.TransportError):  # and it no longer listens
        httpx.get(url + "/health", timeout=2, trust_env=False)
    assert "Traceback" not in log.read_text()
