"""Helpers shared by the serving tests (this module has no tests of its own)."""

from __future__ import annotations

import base64
import io
import os
import struct
import zlib
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from llavakit.serve.server import spawn_server


def picture(seed: int, size: tuple[int, int] = (40, 30)) -> Image.Image:
    return Image.fromarray((np.random.default_rng(seed).random((size[1], size[0], 3)) * 255).astype("uint8"))


def encoded(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def data_url(data: bytes | Image.Image, mime: str = "image/png") -> str:
    if isinstance(data, Image.Image):
        data = encoded(data)
    return f"data:{mime};base64," + base64.b64encode(data).decode()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares width x height but carries no pixel data (a decompression-bomb header)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IEND", b""))


def image_part(url: str) -> dict:
    return {"type": "image_url", "image_url": {"url": url}}


def user(*parts) -> dict:
    """A user message; strings become text parts, others are taken as parts."""
    content = [{"type": "text", "text": p} if isinstance(p, str) else p for p in parts]
    return {"role": "user", "content": content}


def http_client(base_url: str, **kwargs) -> httpx.Client:
    # trust_env=False: loopback only, whatever proxy the environment names.
    return httpx.Client(base_url=base_url, trust_env=False, timeout=60, **kwargs)


def openai_client(base_url: str, api_key: str = "unused"):
    from openai import OpenAI

    return OpenAI(base_url=base_url + "/v1", api_key=api_key, max_retries=0,
                  http_client=httpx.Client(trust_env=False, timeout=60))


@contextmanager
def running_server(arguments: list[str], log_path: Path | None = None):
    """`llavakit serve ARGUMENTS` on a free loopback port: yields (process, url); stops it after."""
    log = open(log_path, "wb") if log_path else None  # noqa: SIM115 - closed below
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process, url = spawn_server(["--threads", "1", *arguments], env=env, log=log)
    try:
        yield process, url
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(30)
            except Exception:
                process.kill()
        if log:
            log.close()


def error_of(response: httpx.Response) -> dict:
    """The OpenAI-style error object of a response, checking its shape."""
    body = response.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"message", "type", "param", "code"}, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return body["error"]
