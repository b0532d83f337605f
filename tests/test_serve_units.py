"""Serving pieces without a server: request parsing, message conversion, image guards and the
remote-image fetcher's protection against server-side request forgery (no network is used:
a fake resolver and httpx's MockTransport stand in for DNS and the remote host)."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from test_serve_helpers import data_url, encoded, image_part, picture, png_header_only, user

from llavakit.serve import APIError, Limits
from llavakit.serve.images import data_url_bytes, decode_image, fetch_image, forbidden_address
from llavakit.serve.prompt import sampling_params, to_conversation
from llavakit.serve.schema import parse_request


def parsed(**body):
    import json

    body.setdefault("messages", [user("Hi")])
    return parse_request(json.dumps(body).encode())


def test_parts_become_placeholders_where_the_images_are():
    request = parsed(messages=[
        {"role": "developer", "content": "Be brief."},
        user("First", image_part("data:image/png;base64,AAAA"), "then", image_part("data:image/png;base64,BBBB")),
        {"role": "assistant", "content": "Two pictures."},
        {"role": "system", "content": "Really brief."},
        {"role": "user", "content": "Which"},
        {"role": "user", "content": [image_part("data:image/png;base64,CCCC")]},
    ])
    turns, images = to_conversation(request, Limits())
    assert turns == [
        {"role": "system", "content": "Be brief.\n\nReally brief."},
        {"role": "user", "content": "First\n<image>\nthen\n<image>"},
        {"role": "assistant", "content": "Two pictures."},
        {"role": "user", "content": "Which\n\n<image>"},  # consecutive user turns merge
    ]
    assert [i.url[-4:] for i in images] == ["AAAA", "BBBB", "CCCC"]
    assert [i.where for i in images] == ["messages.1.content.1", "messages.1.content.3", "messages.5.content.0"]


@pytest.mark.parametrize("body, where", [
    (b"\xff\xfe", None),
    (b"[" * 100_000 + b"]" * 100_000, None),
    (b'{"messages": [{"role": "user", "content": 5}]}', "messages.0.content"),
    (b'{"messages": [{"role": "user", "content": "x"}], "temperature": NaN}', "temperature"),
    (b'{"messages": [{"role": "user", "content": "x"}], "max_tokens": 1e400}', "max_tokens"),
    (b'{"messages": [{"role": "user", "content": "x"}], "stream": 1}', "stream"),
    (b'{"messages": [{"role": "user", "content": "x"}], "seed": 99999999999999999999}', "seed"),
    (b'{"messages": [{"role": "user", "content": "x"}], "logprobs": true}', "logprobs"),
])
def test_malformed_bodies_are_400_with_the_place(body, where):
    with pytest.raises(APIError) as caught:
        parse_request(body)
    assert caught.value.status == 400 and caught.value.param == where


def test_lone_surrogates_are_replaced_not_crashing():
    request = parse_request(b'{"messages": [{"role": "user", "content": "a\\ud800b"}], "model": "\\udfff"}')
    assert request.messages[0].content == "a?b" and request.model == "?"


def test_sampling_params_per_choice():
    params = sampling_params(parsed(n=3, seed=2**63 - 1, temperature=0.5, stop="END"), 10, Limits())
    assert [p.seed for p in params] == [2**63 - 1, -(2**63), -(2**63) + 1]  # wraps within int64
    assert params[0].stop == ("END",) and params[0].max_new_tokens == 10
    assert sampling_params(parsed(top_p=0), 5, Limits())[0].greedy
    assert sampling_params(parsed(temperature=1e-40), 5, Limits())[0].greedy  # 1/1e-40 overflows
    assert sampling_params(parsed(), 5, Limits())[0].temperature == 1.0  # OpenAI's default


def test_image_guards():
    limits = Limits(max_image_bytes=50_000, max_image_pixels=10_000, max_image_side=64)
    ok = decode_image(encoded(picture(1, (90, 30))), limits, "img")
    assert ok.size == (64, 21) and ok.mode == "RGB"  # long side scaled down to max_image_side
    cases = {
        b"GIF89a" + b"\x00" * 10: 400,
        png_header_only(200, 200): 413,
        png_header_only(10**6, 10**6): 413,
        encoded(picture(1), "BMP"): 400,
        encoded(picture(1, (80, 80)))[:-30]: 400,  # truncated
    }
    for data, status in cases.items():
        with pytest.raises(APIError) as caught:
            decode_image(data, limits, "img")
        assert caught.value.status == status, data[:20]
    with pytest.raises(APIError) as caught:
        data_url_bytes(data_url(b"x" * 100_000), limits, "img")
    assert caught.value.status == 413
    with pytest.raises(APIError):
        data_url_bytes("data:text/plain;base64,aGk=", limits, "img")


@pytest.mark.parametrize("address", ["127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254",
                                     "100.64.0.1", "0.0.0.0", "224.0.0.1", "::1", "fe80::1%eth0", "fc00::1",
                                     "::ffff:127.0.0.1", "::ffff:10.0.0.1", "2002:7f00:1::1", "not an ip"])
def test_internal_addresses_are_forbidden(address):
    assert forbidden_address(address)


@pytest.mark.parametrize("address", ["93.184.216.34", "8.8.8.8", "2606:4700:4700::1111", "::ffff:8.8.8.8"])
def test_public_addresses_are_allowed(address):
    assert not forbidden_address(address)


def _fake_dns(table: dict[str, list[str]]):
    async def resolve(host: str, port: int) -> list[str]:
        if host not in table:
            raise OSError("no such host")
        return table[host]
    return resolve


def test_fetch_checks_every_hop_and_limits_size():
    png = encoded(picture(2))
    seen = []

    def remote(request: httpx.Request) -> httpx.Response:
        seen.append((str(request.url), request.headers["host"], request.extensions.get("sni_hostname")))
        path = request.url.path
        if path == "/ok.png":
            return httpx.Response(200, content=png)
        if path == "/to-internal":
            return httpx.Response(302, headers={"location": "http://metadata.internal/latest"})
        if path == "/to-ok":
            return httpx.Response(301, headers={"location": "/ok.png"})
        if path == "/loop":
            return httpx.Response(302, headers={"location": "/loop"})
        if path == "/huge":
            return httpx.Response(200, content=b"\0" * 300_000)
        return httpx.Response(404)

    dns = _fake_dns({"images.example": ["93.184.216.34"], "metadata.internal": ["169.254.169.254"],
                     "mixed.example": ["93.184.216.34", "10.0.0.5"], "secure.example": ["2606:4700::1"]})
    limits = Limits(allow_remote_images=True, max_image_bytes=100_000)

    def fetch(url: str) -> bytes:
        return asyncio.run(fetch_image(url, limits, "img", resolver=dns, transport=httpx.MockTransport(remote)))

    assert fetch("http://images.example/ok.png") == png
    # The connection goes to the checked address, the Host header keeps the name.
    assert seen[-1] == ("http://93.184.216.34/ok.png", "images.example", None)
    assert fetch("https://secure.example/ok.png") == png
    assert seen[-1] == ("https://[2606:4700::1]/ok.png", "secure.example", "secure.example")
    assert fetch("http://images.example/to-ok") == png
    expectations = {
        "http://images.example/to-internal": (400, "image_url_forbidden"),  # redirect inwards
        "http://metadata.internal/": (400, "image_url_forbidden"),
        "http://mixed.example/ok.png": (400, "image_url_forbidden"),  # one inward address is enough
        "http://127.0.0.1/ok.png": (400, "image_url_forbidden"),
        "http://[::1]/ok.png": (400, "image_url_forbidden"),
        "http://user:pw@images.example/ok.png": (400, "invalid_image"),
        "ftp://images.example/ok.png": (400, "invalid_image"),
        "http://nowhere.example/x": (400, "image_fetch_failed"),
        "http://images.example/loop": (400, "image_fetch_failed"),
        "http://images.example/missing": (400, "image_fetch_failed"),
        "http://images.example/huge": (413, "image_too_large"),
    }
    for url, (status, code) in expectations.items():
        before = len(seen)
        with pytest.raises(APIError) as caught:
            fetch(url)
        assert (caught.value.status, caught.value.code) == (status, code), url
        if code in ("image_url_forbidden", "invalid_image"):
            assert all("169.254" not in s[0] and "127.0.0.1" not in s[0] for s in seen[before:])
