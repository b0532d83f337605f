"""What one request may ask of the server. Every limit is refused with a clear 4xx, never a crash."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int = 48 * 2**20  # whole request, base64 images included
    max_image_bytes: int = 20 * 2**20  # one encoded image
    max_image_pixels: int = 40_000_000  # width * height, checked from the header (decompression bombs)
    max_image_side: int = 2048  # longer sides are downscaled first (bounds LLaVA's pad-to-square canvas)
    max_images: int = 8  # per request
    max_n: int = 8  # choices per request
    max_stop: int = 8  # stop strings per request
    default_max_tokens: int | None = None  # None: up to the end of the context
    allow_remote_images: bool = False  # http(s) image URLs (with SSRF protection)
    remote_timeout: float = 10.0  # seconds for one remote image, redirects included
    remote_max_redirects: int = 3
    prepare_concurrency: int = 4  # image decoding / tokenizing at once (each may hold ~100 MB)

    def __post_init__(self) -> None:
        for name in ("max_body_bytes", "max_image_bytes", "max_image_pixels", "max_image_side", "max_images",
                     "max_n", "max_stop", "prepare_concurrency"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.default_max_tokens is not None and self.default_max_tokens < 1:
            raise ValueError("default_max_tokens must be >= 1 (or None)")
