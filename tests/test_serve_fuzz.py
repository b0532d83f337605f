"""Hardening of `llavakit serve`: bearer-token auth, remote images that point inwards, and a
hypothesis fuzz run of malformed requests and images that must find no 500 and no crash."""

from __future__ import annotations

import json

import openai
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
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

KEY = "test-key-123"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def server(tiny_checkpoint, tmp_path_factory):
    log = tmp_path_factory.mktemp("fuzz") / "server.log"
    args = ["--model", str(tiny_checkpoint), "--model-name", "tiny", "--api-key", KEY, "--allow-remote-images",
            "--remote-timeout", "2", "--default-max-tokens", "8", "--max-image-mb", "1",
            "--max-image-pixels", "1000000", "--max-body-mb", "2", "--max-batch-size", "4", "--max-queue", "16"]
    with running_server(args, log) as (process, url):
        yield url, process, log


@pytest.fixture(scope="module")
def http(server):
    with http_client(server[0]) as c:
        yield c


def test_bearer_auth(server, http):
    url = server[0]
    for client in (openai_client(url, "wrong"), openai_client(url, KEY + "x")):
        with pytest.raises(openai.AuthenticationError):
            client.chat.completions.create(model="tiny", messages=[user("Hi")], max_tokens=2)
        with pytest.raises(openai.AuthenticationError):
            client.models.list()
    response = http.post("/v1/chat/completions", json={"messages": [user("Hi")]})
    assert response.status_code == 401 and error_of(response)["code"] == "invalid_api_key"
    assert response.headers["www-authenticate"] == "Bearer"
    assert http.get("/health").status_code == 200  # open, for load balancers
    reply = openai_client(url, KEY).chat.completions.create(model="tiny", messages=[user("Hi")])
    assert reply.usage.completion_tokens <= 8  # --default-max-tokens


@pytest.mark.parametrize("target", ["http://127.0.0.1:{port}/health", "http://localhost:{port}/health",
                                    "http://[::1]:{port}/", "http://169.254.169.254/latest/meta-data/",
                                    "http://10.0.0.1/x.png", "http://0.0.0.0:{port}/health"])
def test_remote_images_pointing_inwards_are_refused(server, http, target):
    port = server[0].rsplit(":", 1)[1]
    body = {"messages": [user(image_part(target.format(port=port)), "What is it?")]}
    response = http.post("/v1/chat/completions", json=body, headers=AUTH)
    assert response.status_code == 400 and error_of(response)["code"] == "image_url_forbidden", response.text


# ---- fuzz ------------------------------------------------------------------------------------
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
good_png = encoded(picture(1))
image_payloads = st.one_of(
    st.just(good_png),
    st.binary(max_size=200),
    st.integers(0, len(good_png)).map(lambda n: good_png[:n]),  # truncated
    st.tuples(st.integers(0, 2**31 - 1), st.integers(0, 2**31 - 1)).map(lambda wh: png_header_only(*wh)),
    st.sampled_from([encoded(picture(2), f) for f in ("JPEG", "GIF", "WEBP", "BMP", "TIFF")]),
)
image_urls = st.one_of(
    image_payloads.map(data_url),
    image_payloads.map(lambda b: data_url(b, "image/jpeg").replace("base64,", "base64,!")),  # bad base64
    st.sampled_from(["data:image/png,raw", "data:;base64,", "data:text/html;base64,PGI+", "", "file:///etc/passwd",
                     "http://127.0.0.1:1/x.png", "gopher://x", "http://[::1", "https://user@10.0.0.1/"]),
    st.text(max_size=40),
)
parts = st.one_of(
    st.builds(lambda t: {"type": "text", "text": t}, st.text(max_size=60)),
    st.builds(lambda u: {"type": "image_url", "image_url": {"url": u}}, image_urls),
    st.builds(lambda u: {"type": "image_url", "image_url": u}, image_urls),
    st.dictionaries(st.sampled_from(["type", "text", "image_url"]), json_values, max_size=3),
)
messages = st.lists(st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "assistant", "system", "developer", "tool", "", "USER"]),
     "content": st.one_of(st.text(max_size=80), st.lists(parts, max_size=3), json_values)}), max_size=4)
numbers = st.one_of(st.integers(-(2**66), 2**66), st.floats(allow_nan=False), st.integers(-3, 40),
                    st.text(max_size=5), st.none())
requests = st.fixed_dictionaries({"messages": messages}, optional={
    "model": st.sampled_from(["tiny", "other", ""]) | json_values,
    "temperature": numbers, "top_p": numbers, "top_k": numbers, "max_tokens": numbers,
    "max_completion_tokens": numbers, "n": numbers, "seed": numbers, "repetition_penalty": numbers,
    "stop": st.one_of(st.text(max_size=5), st.lists(st.text(max_size=5), max_size=10), json_values),
    "stream": st.booleans() | json_values,
    "stream_options": st.fixed_dictionaries({"include_usage": st.booleans()}) | json_values,
})
# Plausible requests get past validation, so images, prompts and sampling options are exercised too.
good_urls = st.one_of(st.sampled_from([data_url(good_png), data_url(encoded(picture(3, (5, 300)), "JPEG"))]),
                      image_urls)
valid_parts = st.one_of(st.builds(lambda t: {"type": "text", "text": t}, st.text(max_size=60)),
                        st.builds(lambda u: {"type": "image_url", "image_url": {"url": u}}, good_urls))
history = st.lists(st.tuples(st.text(max_size=40), st.text(max_size=40)), max_size=2).map(
    lambda pairs: [m for q, a in pairs for m in ({"role": "user", "content": q}, {"role": "assistant", "content": a})])
last = st.fixed_dictionaries({"role": st.just("user"), "content": st.lists(valid_parts, min_size=1, max_size=3)})
plausible = st.fixed_dictionaries({"messages": st.tuples(history, last).map(lambda t: [*t[0], t[1]])}, optional={
    "temperature": st.floats(0, 2) | st.sampled_from([1e-40, 5e-324, 1e-5]), "top_p": st.floats(0, 1), "top_k": st.integers(0, 10**6),
    "max_tokens": st.integers(1, 40) | st.integers(-2, 300), "n": st.integers(1, 3) | st.integers(0, 9),
    "seed": st.integers(-(2**63), 2**63 - 1) | st.integers(-(2**65), 2**65),
    "stop": st.lists(st.text(min_size=1, max_size=3), max_size=4) | st.lists(st.text(max_size=3), max_size=9),
    "repetition_penalty": st.floats(0.5, 2) | st.floats(0, 200) | st.sampled_from([1e-300, 0.01]),
    "stream": st.booleans(), "stream_options": st.fixed_dictionaries({"include_usage": st.booleans()}),
})
bodies = st.one_of(
    plausible.map(lambda r: json.dumps(r).encode()),
    requests.map(lambda r: json.dumps(r).encode()),  # NaN and Infinity are written as such
    json_values.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=100),
    requests.map(lambda r: json.dumps(r).encode()[: len(json.dumps(r)) // 2]),  # cut short
)


@settings(max_examples=150, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(body=bodies)
def test_fuzz_finds_no_500(http, body):
    response = http.post("/v1/chat/completions", content=body, headers={**AUTH, "content-type": "application/json"})
    assert response.status_code < 500, (body[:300], response.text[:500])
    event(f"status {response.status_code}")  # shown by --hypothesis-show-statistics
    if response.status_code == 200:
        if response.headers["content-type"].startswith("text/event-stream"):
            assert response.text.rstrip().endswith("data: [DONE]")
        else:
            assert response.json()["object"] == "chat.completion"
    else:
        error_of(response)


def test_server_survived_the_fuzz(server, http):
    url, process, log = server
    assert process.poll() is None
    health = http.get("/health").json()
    assert health["status"] == "ok" and health["in_flight"] == 0
    assert "Traceback" not in log.read_text() and "internal error" not in log.read_text()
