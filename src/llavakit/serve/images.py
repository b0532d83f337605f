"""Images from requests: `data:` URLs, and (when enabled) http(s) URLs without request forgery.

Decoding is guarded twice before any pixel is decoded: the encoded size (413) and the pixel
count read from the header (413, decompression bombs). Only PNG, JPEG, WebP and GIF (first
frame) are accepted, which keeps Pillow's many rarely used decoders out of reach.

Remote URLs: the host is resolved once, every address must be public (no loopback, private,
link-local, multicast, reserved...), and the connection goes to that checked address (so a DNS
answer that changes between check and connect cannot redirect it). Redirects are followed by
hand, each target checked the same way; the body is read with a byte limit and a timeout.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import ipaddress
import socket
import threading
import warnings
from collections.abc import Awaitable, Callable

import httpx
from PIL import Image

from llavakit.images import ImageError, load_image
from llavakit.serve.errors import APIError, clip
from llavakit.serve.limits import Limits

FORMATS = ("PNG", "JPEG", "MPO", "WEBP", "GIF")  # MPO: how Pillow names many camera JPEGs
_OPEN_LOCK = threading.Lock()  # warnings.catch_warnings is process-global state

Resolver = Callable[[str, int], Awaitable[list[str]]]


def data_url_bytes(url: str, limits: Limits, where: str) -> bytes:
    """The bytes of a base64 `data:image/...` URL (413 when over the byte limit)."""
    header, sep, payload = url[len("data:"):].partition(",")
    params = [p.strip().lower() for p in header.split(";")]
    if not sep or "base64" not in params[1:]:
        raise APIError(400, f"{where}: only base64 data URLs are supported ('data:image/png;base64,...')",
                       param=where, code="invalid_image")
    if params[0] and not params[0].startswith("image/"):
        raise APIError(400, f"{where}: media type {clip(params[0])!r} is not an image", param=where,
                       code="invalid_image")
    if len(payload) * 3 // 4 > limits.max_image_bytes + 3:  # checked before decoding anything
        raise _too_big(where, len(payload) * 3 // 4, limits)
    payload = "".join(payload.split())
    payload += "=" * (-len(payload) % 4)
    try:
        altchars = b"-_" if ("-" in payload or "_" in payload) else None
        data = base64.b64decode(payload, altchars=altchars, validate=True)
    except (binascii.Error, ValueError):
        raise APIError(400, f"{where}: the data URL is not valid base64", param=where,
                       code="invalid_image") from None
    if not data:
        raise APIError(400, f"{where}: the data URL carries no data", param=where, code="invalid_image")
    return data


def _too_big(where: str, size: int, limits: Limits) -> APIError:
    return APIError(413, f"{where}: the image has {size} bytes; the limit is {limits.max_image_bytes}",
                    param=where, code="image_too_large")


def decode_image(data: bytes, limits: Limits, where: str) -> Image.Image:
    """Checked, decoded RGB image; long sides beyond `max_image_side` are scaled down."""
    if len(data) > limits.max_image_bytes:
        raise _too_big(where, len(data), limits)
    try:
        with _OPEN_LOCK, warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as header:  # reads the header only
                kind, (width, height) = header.format, header.size
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise APIError(413, f"{where}: the image declares too many pixels (decompression bomb guard)",
                       param=where, code="image_too_large") from None
    except Exception:  # Pillow raises many types for garbage headers
        raise APIError(400, f"{where}: not a readable PNG, JPEG, WebP or GIF image", param=where,
                       code="invalid_image") from None
    if kind not in FORMATS:
        raise APIError(400, f"{where}: image format {kind} is not accepted (PNG, JPEG, WebP, GIF)",
                       param=where, code="invalid_image")
    if width * height > limits.max_image_pixels:
        raise APIError(413, f"{where}: {width}x{height} = {width * height} pixels; the limit is "
                       f"{limits.max_image_pixels}", param=where, code="image_too_large")
    try:
        image = load_image(data, max_pixels=limits.max_image_pixels)
    except ImageError as err:
        raise APIError(400, f"{where}: {clip(err, 300)}", param=where, code="invalid_image") from None
    side = limits.max_image_side
    if max(image.size) > side:
        # The model sees 224-672 px anyway; this bounds the square canvas LLaVA pads onto.
        scale = side / max(image.size)
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image = image.resize(size, Image.Resampling.BICUBIC)
    return image


# ---- remote images ---------------------------------------------------------------------------
def forbidden_address(address: str) -> bool:
    """True unless `address` is a public unicast address (what a server may fetch from)."""
    try:
        ip = ipaddress.ip_address(address.split("%")[0])  # drop an IPv6 zone id
    except ValueError:
        return True
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        elif ip.sixtofour is not None or ip.teredo is not None:
            return True  # tunnels that embed another (possibly private) IPv4 address
    return (not ip.is_global or ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_multicast
            or ip.is_reserved or ip.is_unspecified)


async def system_resolver(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({info[4][0] for info in infos})


async def fetch_image(url: str, limits: Limits, where: str, *, resolver: Resolver = system_resolver,
                      transport: httpx.AsyncBaseTransport | None = None) -> bytes:
    """The bytes at an http(s) URL, refusing internal addresses, over-size bodies and slowness."""
    try:
        return await asyncio.wait_for(_fetch(url, limits, where, resolver, transport), limits.remote_timeout)
    except asyncio.TimeoutError:
        raise APIError(400, f"{where}: fetching the image took longer than {limits.remote_timeout:g} s",
                       param=where, code="image_fetch_failed") from None


async def _fetch(url: str, limits: Limits, where: str, resolver: Resolver,
                 transport: httpx.AsyncBaseTransport | None) -> bytes:
    # trust_env=False: a proxy from the environment would connect on our behalf, unchecked.
    async with httpx.AsyncClient(transport=transport, trust_env=False, follow_redirects=False,
                                 timeout=limits.remote_timeout) as client:
        for _ in range(limits.remote_max_redirects + 1):
            target, host, address = await _checked_target(url, where, resolver)
            extensions = {"sni_hostname": host} if target.scheme == "https" else {}
            request = client.build_request("GET", target.copy_with(host=address), extensions=extensions,
                                           headers={"Host": target.netloc.decode("ascii")})
            try:
                response = await client.send(request, stream=True)
            except httpx.HTTPError as err:
                raise APIError(400, f"{where}: cannot fetch the image ({type(err).__name__})", param=where,
                               code="image_fetch_failed") from None
            try:
                if response.is_redirect:
                    url = str(target.join(response.headers.get("location", "")))
                    continue
                if response.status_code != 200:
                    raise APIError(400, f"{where}: fetching the image gave HTTP {response.status_code}",
                                   param=where, code="image_fetch_failed")
                declared = response.headers.get("content-length", "")
                if declared.isdigit() and int(declared) > limits.max_image_bytes:
                    raise _too_big(where, int(declared), limits)
                data = bytearray()
                async for chunk in response.aiter_bytes():
                    data += chunk
                    if len(data) > limits.max_image_bytes:
                        raise _too_big(where, len(data), limits)
                return bytes(data)
            except httpx.HTTPError as err:
                raise APIError(400, f"{where}: cannot fetch the image ({type(err).__name__})", param=where,
                               code="image_fetch_failed") from None
            finally:
                await response.aclose()
    raise APIError(400, f"{where}: more than {limits.remote_max_redirects} redirects", param=where,
                   code="image_fetch_failed")


async def _checked_target(url: str, where: str, resolver: Resolver) -> tuple[httpx.URL, str, str]:
    """(URL, host name, a checked public address of it) or APIError(400)."""
    try:
        target = httpx.URL(url)
    except Exception:
        raise APIError(400, f"{where}: malformed image URL", param=where, code="invalid_image") from None
    host = target.host
    if target.scheme not in ("http", "https") or not host:
        raise APIError(400, f"{where}: image URLs must be http(s) or data: URLs", param=where,
                       code="invalid_image")
    if target.userinfo:
        raise APIError(400, f"{where}: image URLs may not carry credentials", param=where, code="invalid_image")
    try:
        ipaddress.ip_address(host)
        addresses = [host]  # a literal address needs no lookup
    except ValueError:
        addresses = None
    try:
        addresses = addresses or await resolver(host, target.port or (443 if target.scheme == "https" else 80))
    except (OSError, UnicodeError):
        raise APIError(400, f"{where}: cannot resolve host {clip(host)!r}", param=where,
                       code="image_fetch_failed") from None
    if not addresses or any(forbidden_address(a) for a in addresses):
        # Every address is checked: a name that also points inward is refused outright.
        raise APIError(400, f"{where}: refusing to fetch from {clip(host)!r}: it resolves to a loopback, "
                       "private, link-local or otherwise non-public address", param=where,
                       code="image_url_forbidden")
    return target, host, addresses[0]
