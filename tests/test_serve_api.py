"""`llavakit serve` end to end: a real server in a subprocess, spoken to by the official `openai`
package (and by httpx for what that package cannot send). Completions, streaming, images, n,
stop, seed, usage, and every refusal with its status and an OpenAI-style JSON error."""

from __future__ import annotations

import json
import time

import openai
import pytest
from test_serve_helpers import (
    data_url,
    encoded,
    error_of,
    http_client,
    image_part,
    openai_client,
    picture,
    png_header_only,
    running_server,
    user,
)

import llavakit
from llavakit.engine import Engine, Request, SamplingParams

MODEL = "tiny"


@pytest.fixture(scope="module")
def server(tiny_checkpoint, tmp_path_factory):
    log = tmp_path_factory.mktemp("serve") / "server.log"
    # Small limits so that the refusals are cheap to provoke; batch 2 + queue 3 makes n=8 overflow.
    args = ["--model", str(tiny_checkpoint), "--model-name", MODEL, "--max-batch-size", "2", "--max-queue", "3",
            "--max-image-mb", "1", "--max-image-pixels", "1000000", "--max-body-mb", "4"]
    with running_server(args, log) as (process, url):
        yield url
        assert process.poll() is None, log.read_text()[-3000:]


@pytest.fixture(scope="module")
def client(server):
    return openai_client(server)


@pytest.fixture(scope="module")
def http(server):
    with http_client(server) as c:
        yield c


def test_models_and_health(client, http):
    assert [m.id for m in client.models.list().data] == [MODEL]
    health = http.get("/health").json()
    assert health["status"] == "ok" and health["model"] == MODEL
    assert {"in_flight", "running", "waiting", "context_length"} <= set(health)
    assert health["context_length"] == 256


def test_streamed_text_equals_plain_text(client, http):
    messages = [{"role": "system", "content": "Be brief."}, user(image_part(data_url(picture(1))), "What is this?")]
    plain = client.chat.completions.create(model=MODEL, messages=messages, temperature=0, max_tokens=24)
    choice = plain.choices[0]
    assert plain.object == "chat.completion" and choice.index == 0 and choice.message.role == "assistant"
    assert choice.finish_reason in ("stop", "length") and choice.message.content
    usage = plain.usage
    assert usage.completion_tokens <= 24 and usage.total_tokens == usage.prompt_tokens + usage.completion_tokens

    chunks = list(client.chat.completions.create(model=MODEL, messages=messages, temperature=0, max_tokens=24,
                                                 stream=True, stream_options={"include_usage": True}))
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == choice.message.content
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals == [choice.finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.model_dump() == usage.model_dump()

    # The wire format itself: SSE events, ending with data: [DONE].
    body = {"model": MODEL, "messages": messages, "temperature": 0, "max_tokens": 4, "stream": True}
    with http.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line for line in response.iter_lines() if line]
    assert all(e.startswith("data: ") for e in events) and events[-1] == "data: [DONE]"
    assert json.loads(events[0][6:])["choices"][0]["delta"]["role"] == "assistant"


def test_two_images_answer_like_the_engine_in_process(client, tiny_checkpoint):
    """Images land where their parts are: the server's answer is the engine's for the same prompt."""
    a, b = picture(2), picture(3, (24, 48))
    messages = [user("Compare", image_part(data_url(a)), "with", image_part(data_url(b)))]
    served = client.chat.completions.create(model=MODEL, messages=messages, temperature=0, max_tokens=16)
    engine = Engine(llavakit.load(tiny_checkpoint, dtype="fp32", device="cpu"))
    try:
        expected = engine.generate([Request(messages=[{"role": "user", "content": "Compare\n<image>\nwith\n<image>"}],
                                            images=[a, b], params=SamplingParams(max_new_tokens=16))])[0]
    finally:
        engine.close()
    assert served.choices[0].message.content == expected.text
    assert served.usage.prompt_tokens == expected.prompt_tokens


def test_n_seed_stop_and_formats(client):
    messages = [user(image_part(data_url(encoded(picture(4), "JPEG"), "image/jpeg")), "Describe it.")]
    sampled = [client.chat.completions.create(model=MODEL, messages=messages, n=3, temperature=1.0, top_p=0.9,
                                              seed=7, max_tokens=12) for _ in range(2)]
    assert [c.index for c in sampled[0].choices] == [0, 1, 2]
    assert [c.message.content for c in sampled[0].choices] == [c.message.content for c in sampled[1].choices]
    assert len({c.message.content for c in sampled[0].choices}) > 1  # seed, seed+1, ...: different samples
    assert 3 <= sampled[0].usage.completion_tokens <= 36  # summed over the choices

    full = client.chat.completions.create(model=MODEL, messages=messages, temperature=0, max_tokens=20)
    text = full.choices[0].message.content
    stop = text[6:9]
    cut = client.chat.completions.create(model=MODEL, messages=messages, temperature=0, max_tokens=20, stop=[stop])
    assert cut.choices[0].message.content == text[:text.index(stop)]
    assert cut.choices[0].finish_reason == "stop"

    for fmt, mime in (("WEBP", "image/webp"), ("GIF", "image/gif")):
        url = data_url(encoded(picture(5), fmt), mime)
        reply = client.chat.completions.create(model=MODEL, messages=[user(image_part(url), "Hi")], max_tokens=2,
                                               max_completion_tokens=2)
        assert reply.usage.completion_tokens <= 2


def _chat(http, **body):
    body.setdefault("messages", [user("Hello")])
    body.setdefault("max_tokens", 4)
    return http.post("/v1/chat/completions", json=body)


ERROR_CASES = {
    "not json": (400, dict(content=b'{"messages": [')),
    "json array": (400, dict(content=b"[1, 2]")),
    "no messages": (400, dict(json={"model": MODEL})),
    "empty messages": (400, dict(json={"messages": []})),
    "temperature as text": (400, dict(json={"messages": [user("Hi")], "temperature": "hot"})),
    "negative max_tokens": (400, dict(json={"messages": [user("Hi")], "max_tokens": -3})),
    "huge n": (400, dict(json={"messages": [user("Hi")], "n": 10**30})),
    "n over the limit": (400, dict(json={"messages": [user("Hi")], "n": 9})),
    "too many stops": (400, dict(json={"messages": [user("Hi")], "stop": ["a"] * 9})),
    "tool role": (400, dict(json={"messages": [{"role": "tool", "content": "x"}]})),
    "ends with assistant": (400, dict(json={"messages": [user("Hi"), {"role": "assistant", "content": "Yo"}]})),
    "literal placeholder": (400, dict(json={"messages": [user("look: <image>")]})),
    "image in assistant turn": (400, dict(json={"messages": [
        user("Hi"), {"role": "assistant", "content": [image_part(data_url(picture(1)))]}, user("So?")]})),
    "unknown part type": (400, dict(json={"messages": [user({"type": "input_audio", "input_audio": {}})]})),
    "bad base64": (400, dict(json={"messages": [user(image_part("data:image/png;base64,@@@@"), "x")]})),
    "truncated png": (400, dict(json={"messages": [user(image_part(data_url(encoded(picture(1))[:60])), "x")]})),
    "not an image": (400, dict(json={"messages": [user(image_part(data_url(b"hello world")), "x")]})),
    "bmp format": (400, dict(json={"messages": [user(image_part(data_url(encoded(picture(1), "BMP"))), "x")]})),
    "remote url disabled": (400, dict(json={"messages": [user(image_part("http://127.0.0.1:9/x.png"), "x")]})),
    "file url": (400, dict(json={"messages": [user(image_part("file:///etc/passwd"), "x")]})),
    "prompt over context": (400, dict(json={"messages": [user("tell me more " * 200)]})),
    "max_tokens over context": (400, dict(json={"messages": [user("Hi")], "max_tokens": 5000})),
    "unknown model": (404, dict(json={"model": "gpt-4o", "messages": [user("Hi")]})),
    "image bytes": (413, dict(json={"messages": [user(image_part(data_url(picture(6, (700, 700)))), "x")]})),
    "image pixels": (413, dict(json={"messages": [user(image_part(data_url(png_header_only(5000, 5000))), "x")]})),
    "decompression bomb": (413, dict(json={"messages": [
        user(image_part(data_url(png_header_only(100_000, 100_000))), "x")]})),
    "body too large": (413, dict(content=b'{"messages": "' + b"x" * (5 * 2**20) + b'"}')),
}


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_refusals_have_status_and_openai_error_json(http, case):
    status, request = ERROR_CASES[case]
    response = http.post("/v1/chat/completions", headers={"content-type": "application/json"}, **request)
    assert response.status_code == status, response.text
    error = error_of(response)
    if case == "prompt over context":
        assert "256" in error["message"] and error["code"] == "context_length_exceeded"
    if case == "max_tokens over context":
        assert "5000" in error["message"] and "256" in error["message"]


def test_queue_full_is_429_and_the_server_keeps_serving(http, client):
    # Batch 2 + queue 3: a sixth simultaneous choice cannot be admitted while the first ones run.
    response = _chat(http, n=8, max_tokens=100)
    assert response.status_code == 429 and error_of(response)["code"] == "queue_full"
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model=MODEL, messages=[user("Hi")], n=8, max_tokens=100)
    for path, method in (("/v1/chat/completions", "GET"), ("/nowhere", "GET")):
        assert http.request(method, path).status_code in (404, 405) and error_of(http.request(method, path))
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4o", messages=[user("Hi")])
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=MODEL, messages=[user("Hi")], max_tokens=5000)
    assert _chat(http).status_code == 200
    deadline = time.monotonic() + 10
    while http.get("/health").json()["in_flight"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert http.get("/health").json()["in_flight"] == 0
