"""Image loading and LLaVA-style preprocessing.

`load_image` turns a path, bytes, data URL or PIL image into a fully decoded RGB image, or raises
`ImageError` naming the input. `ImageProcessor` reproduces, pixel for pixel, what LLaVA does with
transformers' `CLIPImageProcessor`: "square" (shortest edge + centre crop), "pad" (LLaVA-1.5's
expand-to-square with the mean colour first), "resize" (plain S x S) and LLaVA-NeXT's tiled "anyres".
"""

from __future__ import annotations

import base64
import binascii
import io
import math
import os
import threading
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
SIGLIP_MEAN = (0.5, 0.5, 0.5)
SIGLIP_STD = (0.5, 0.5, 0.5)

ImageSource = str | os.PathLike | bytes | bytearray | Image.Image

_BICUBIC = Image.Resampling.BICUBIC
_ASPECTS = ("pad", "square", "resize", "anyres")
# warnings.catch_warnings swaps process-global state; serialise our (cheap, header-only) opens so
# concurrent load_image calls cannot leave the filters in a mixed-up state.
_OPEN_LOCK = threading.Lock()


class ImageError(ValueError):
    """Raised for any input that cannot be turned into an image.

    The message names the input (a path, ``bytes (N bytes)``, ``data URL (N chars)`` or ``PIL image``),
    says what is wrong and what to do about it.
    """


def _err(name: str, problem: str) -> ImageError:
    return ImageError(f"Cannot load image from {name}: {problem}")


def load_image(source: ImageSource, *, max_pixels: int | None = 64_000_000) -> Image.Image:
    """Decode `source` into a fully loaded RGB image.

    Accepts a filesystem path, raw encoded bytes, a ``data:image/...;base64,`` URL string, or a PIL image
    (never modified). EXIF orientation is applied, animated images yield their first frame, transparency
    is composited onto white, and 16-bit/float images are scaled (not clipped) to 8 bit.

    `max_pixels` rejects images whose width*height exceeds it, checked from the header before any pixel
    data is decoded. ``None`` disables this check; Pillow's own ``Image.MAX_IMAGE_PIXELS`` guard still
    applies (and is reported as `ImageError` too).
    """
    if max_pixels is not None and max_pixels <= 0:
        raise ValueError(f"max_pixels must be positive or None, got {max_pixels}")

    if isinstance(source, Image.Image):
        return _decode_pil(source, "PIL image", max_pixels)
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        name = f"bytes ({len(data)} bytes)"
        if not data:
            raise _err(name, "the data is empty. Pass the encoded file contents.")
        return _decode_stream(io.BytesIO(data), name, max_pixels)
    if isinstance(source, str) and source.startswith("data:"):
        name = f"data URL ({len(source)} chars)"
        return _decode_stream(io.BytesIO(_parse_data_url(source, name)), name, max_pixels)
    if isinstance(source, (str, os.PathLike)):
        return _load_path(source, max_pixels)
    raise ImageError(
        f"Cannot load image from {type(source).__name__} object: expected a path, bytes, a data URL or a "
        "PIL.Image.Image."
    )


def _load_path(source: str | os.PathLike, max_pixels: int | None) -> Image.Image:
    path = os.fspath(source)
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    name = f"'{path}'"
    if path.startswith(("http://", "https://")):
        raise _err(name, "URLs are not downloaded; fetch the bytes first.")
    if os.path.isdir(path):
        raise _err(name, "it is a directory, not an image file.")
    try:
        fp = open(path, "rb")  # noqa: SIM115 - closed below, after decoding has finished
    except FileNotFoundError as exc:
        raise _err(name, "file not found. Check the path.") from exc
    except OSError as exc:
        raise _err(name, f"cannot open file ({exc.strerror or exc}).") from exc
    with fp:
        return _decode_stream(fp, name, max_pixels)


def _parse_data_url(url: str, name: str) -> bytes:
    header, sep, payload = url[len("data:") :].partition(",")
    params = [p.strip().lower() for p in header.split(";")]
    if not sep:
        raise _err(name, "malformed data URL (no ',' separator).")
    if params[0] and not params[0].startswith("image/"):
        raise _err(name, f"media type {params[0]!r} is not an image.")
    if "base64" not in params[1:]:
        raise _err(name, "only base64 data URLs are supported (';base64,').")
    payload = "".join(payload.split())  # line breaks are common in pasted base64
    payload += "=" * (-len(payload) % 4)  # tolerate stripped padding
    try:
        altchars = b"-_" if ("-" in payload or "_" in payload) else None
        data = base64.b64decode(payload, altchars=altchars, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise _err(name, f"invalid base64 payload ({exc}).") from exc
    if not data:
        raise _err(name, "the data URL carries no data.")
    return data


def _decode_stream(fp: Any, name: str, max_pixels: int | None) -> Image.Image:
    try:
        # Bomb warnings become errors so an oversized header never reaches the decoder.
        with _OPEN_LOCK, warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(fp)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise _err(
            name,
            f"too many pixels for Pillow's decompression-bomb guard ({exc}). "
            "Downscale the image, or raise PIL.Image.MAX_IMAGE_PIXELS if you trust it.",
        ) from exc
    except Image.UnidentifiedImageError as exc:
        raise _err(name, "not a recognised image format (corrupt, or not an image).") from exc
    except Exception as exc:  # Pillow plugins raise many exception types for bad headers
        raise _err(name, f"cannot read image header ({exc}).") from exc
    with im:
        return _decode_pil(im, name, max_pixels)


def _decode_pil(im: Image.Image, name: str, max_pixels: int | None) -> Image.Image:
    width, height = im.size
    if width <= 0 or height <= 0:
        raise _err(name, f"it has zero size ({width}x{height}).")
    if max_pixels is not None and width * height > max_pixels:
        raise _err(
            name,
            f"{width}x{height} = {width * height} pixels exceeds max_pixels={max_pixels}. "
            "Downscale it first, or pass a larger max_pixels.",
        )
    try:
        im.load()  # an animated file is positioned on its first frame after open
        out = _to_rgb(ImageOps.exif_transpose(im))
        if out is im:
            out = im.copy()  # never hand back the caller's object or one tied to a closing file
        out.load()
    except Exception as exc:  # truncated data, broken EXIF, unsupported modes ...
        raise _err(name, f"cannot decode pixel data ({exc}).") from exc
    return out


def _to_rgb(im: Image.Image) -> Image.Image:
    """Convert any Pillow mode to RGB; transparency goes onto white (as LLaVA/transformers do)."""
    mode = im.mode
    if mode == "RGB" and "transparency" not in im.info:
        return im
    if mode in ("I", "F") or mode.startswith("I;16"):
        return Image.fromarray(np.repeat(_high_depth_to_u8(im)[..., None], 3, axis=2))
    has_alpha = (
        any(band in ("A", "a") for band in im.getbands())
        or "transparency" in im.info
        or (mode == "P" and im.palette is not None and im.palette.mode == "RGBA")
    )
    if has_alpha:
        rgba = (im.convert("LA") if mode == "La" else im).convert("RGBA")  # Pillow has no La -> RGBA
        white = Image.new("RGBA", im.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return im.convert("RGB")


def _high_depth_to_u8(im: Image.Image) -> np.ndarray:
    """Map a 16/32-bit integer or float single-band image to uint8 without clipping its range.

    Pillow's own convert() clips everything above 255 to white, which destroys 16-bit scans.
    """
    arr = np.asarray(im)
    if im.mode.startswith("I;16"):
        return _scale_u16(arr)
    if im.mode == "I":
        lo, hi = int(arr.min()), int(arr.max())
        if lo >= 0 and hi <= 255:  # e.g. an 8-bit image converted to "I"
            return arr.astype(np.uint8)
        if lo >= 0 and hi <= 65535:  # how 16-bit TIFF/PGM data commonly arrives
            return _scale_u16(arr)
        return _stretch(arr.astype(np.float64), lo, hi)
    # mode "F": treat [0, 1] as normalised, [0, 255] as 8-bit, anything else gets stretched
    arr = np.nan_to_num(arr.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = float(arr.min()), float(arr.max())
    if lo >= 0.0 and hi <= 1.0:
        return np.rint(arr * 255.0).astype(np.uint8)
    if lo >= 0.0 and hi <= 255.0:
        return np.rint(arr).astype(np.uint8)
    return _stretch(arr, lo, hi)


def _scale_u16(arr: np.ndarray) -> np.ndarray:
    # round(v * 255 / 65535) in integer arithmetic: 0 -> 0, 65535 -> 255
    return ((arr.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)


def _stretch(arr: np.ndarray, lo: float, hi: float) -> np.ndarray:
    if hi <= lo:
        return np.clip(np.rint(arr), 0, 255).astype(np.uint8)
    return np.rint((arr - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def select_best_resolution(
    image_size_wh: tuple[int, int], grid_pinpoints: Sequence[Sequence[int]]
) -> tuple[int, int]:
    """Pick the (height, width) pinpoint LLaVA-NeXT would use for an image of size (width, height).

    Maximises the effective resolution (pixels of the image kept after fitting it inside the pinpoint,
    capped at the original pixel count); ties go to the pinpoint that wastes the least area, then to
    the earliest one.
    """
    orig_w, orig_h = image_size_wh
    if orig_w <= 0 or orig_h <= 0:
        raise ValueError(f"image size must be positive, got {image_size_wh}")
    if not grid_pinpoints:
        raise ValueError("grid_pinpoints is empty")
    best: tuple[int, int] | None = None
    best_effective, best_wasted = -1, math.inf
    for pin_h, pin_w in grid_pinpoints:
        scale = min(pin_w / orig_w, pin_h / orig_h)
        effective = min(int(orig_w * scale) * int(orig_h * scale), orig_w * orig_h)
        wasted = pin_w * pin_h - effective
        if effective > best_effective or (effective == best_effective and wasted < best_wasted):
            best, best_effective, best_wasted = (int(pin_h), int(pin_w)), effective, wasted
    assert best is not None
    return best


def _resize_and_pad(img: Image.Image, target_hw: tuple[int, int]) -> Image.Image:
    """Fit `img` inside target_hw keeping aspect ratio, then centre it on a black canvas (LLaVA-NeXT)."""
    target_h, target_w = target_hw
    scale_w, scale_h = target_w / img.width, target_h / img.height
    if scale_w < scale_h:
        new_w, new_h = target_w, min(math.ceil(img.height * scale_w), target_h)
    else:
        new_w, new_h = min(math.ceil(img.width * scale_h), target_w), target_h
    canvas = Image.new("RGB", (target_w, target_h), (0, 0, 0))
    canvas.paste(img.resize((new_w, new_h), _BICUBIC), ((target_w - new_w) // 2, (target_h - new_h) // 2))
    return canvas


@dataclass
class ImageProcessor:
    """Turns images into normalised CHW float32 tensors the way LLaVA feeds its vision tower."""

    image_size: int = 336  # square side the tower expects
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD
    aspect: str = "pad"  # "pad" | "square" | "resize" | "anyres"
    grid_pinpoints: tuple[tuple[int, int], ...] | None = None  # anyres only, (height, width) pairs
    patch_size: int = 14  # ViT patch size; recorded for anyres token counting by the model

    def __post_init__(self) -> None:
        # Normalise container types so from_dict(JSON lists) and the constructor build equal objects.
        self.image_size, self.patch_size = int(self.image_size), int(self.patch_size)
        self.mean = tuple(float(m) for m in self.mean)  # type: ignore[assignment]
        self.std = tuple(float(v) for v in self.std)  # type: ignore[assignment]
        if self.grid_pinpoints is not None:
            self.grid_pinpoints = tuple((int(h), int(w)) for h, w in self.grid_pinpoints)
        s, pins = self.image_size, self.grid_pinpoints or ()
        if s <= 0 or self.patch_size <= 0:
            raise ValueError(f"image_size and patch_size must be positive, got {s}, {self.patch_size}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError(f"mean/std need 3 values with std > 0, got {self.mean}, {self.std}")
        if self.aspect not in _ASPECTS:
            raise ValueError(f"aspect must be one of {_ASPECTS}, got {self.aspect!r}")
        if self.aspect == "anyres" and not pins:
            raise ValueError(
                "aspect='anyres' needs grid_pinpoints, e.g. ((336, 672), (672, 336), (672, 672))"
            )
        if any(h <= 0 or w <= 0 or h % s or w % s for h, w in pins):
            raise ValueError(f"grid_pinpoints must be positive multiples of image_size={s}, got {pins}")

    def preprocess(self, image: ImageSource) -> torch.Tensor:
        """Return float32 [3, S, S], or [1 + tiles, 3, S, S] for anyres (global view first)."""
        img = load_image(image)
        if self.aspect == "anyres":
            views = self._anyres_views(img)
            return torch.from_numpy(np.ascontiguousarray(np.stack([self._normalize(v) for v in views])))
        if self.aspect == "pad":
            img = self._square(self._expand_to_square(img))
        elif self.aspect == "square":
            img = self._square(img)
        else:  # "resize"
            img = self._resize(img)
        return torch.from_numpy(self._normalize(img))

    def __call__(self, images: Sequence[ImageSource] | ImageSource) -> list[torch.Tensor]:
        """Preprocess each image; a single image (a str is one path, not a sequence) gives a 1-item list."""
        if isinstance(images, (str, bytes, bytearray, os.PathLike, Image.Image)):
            images = [images]
        return [self.preprocess(im) for im in images]

    def anyres_grid_shape(self, image_size_wh: tuple[int, int]) -> tuple[int, int]:
        """(rows, cols) of S x S tiles anyres cuts an image of size (width, height) into."""
        if not self.grid_pinpoints:
            raise ValueError("anyres_grid_shape needs grid_pinpoints")
        height, width = select_best_resolution(image_size_wh, self.grid_pinpoints)
        return height // self.image_size, width // self.image_size

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict; `from_dict` inverts it."""
        return {
            "image_size": self.image_size,
            "mean": list(self.mean),
            "std": list(self.std),
            "aspect": self.aspect,
            "grid_pinpoints": None if self.grid_pinpoints is None else [list(p) for p in self.grid_pinpoints],
            "patch_size": self.patch_size,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ImageProcessor:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:  # a typo here would otherwise silently change preprocessing
            raise ValueError(f"unknown ImageProcessor keys {unknown}; expected a subset of {sorted(known)}")
        return cls(**d)

    def to_hf_preprocessor_config(self) -> dict[str, Any]:
        """A transformers `CLIPImageProcessor` preprocessor_config.json dict for the per-view processing.

        For "pad" and "anyres" the expand-to-square / tiling happens before this step (as in LLaVA), so the
        config describes the shortest-edge resize + centre crop; "resize" maps to a direct S x S resize.
        "pad" also sets do_pad: a no-op for CLIPImageProcessor (it only pads batches to equal size), but
        it is how LlavaImageProcessor and llavakit's own llava-hf reader recognise LLaVA-1.5 padding.
        """
        size = self.image_size
        direct = self.aspect == "resize"
        pad = {"do_pad": True} if self.aspect == "pad" else {}
        return {
            "image_processor_type": "CLIPImageProcessor",
            "do_resize": True,
            "size": {"height": size, "width": size} if direct else {"shortest_edge": size},
            "crop_size": {"height": size, "width": size},
            "do_center_crop": not direct,
            "resample": int(_BICUBIC),
            "do_rescale": True,
            "rescale_factor": 1 / 255,
            "do_normalize": True,
            "image_mean": list(self.mean),
            "image_std": list(self.std),
            "do_convert_rgb": True,
            **pad,
        }

    def _expand_to_square(self, img: Image.Image) -> Image.Image:
        """LLaVA-1.5's expand2square: centre on a canvas of the mean colour (int(m * 255), truncated)."""
        w, h = img.size
        if w == h:
            return img
        side = max(w, h)
        canvas = Image.new("RGB", (side, side), tuple(int(m * 255) for m in self.mean))
        canvas.paste(img, ((side - w) // 2, (side - h) // 2))
        return canvas

    def _square(self, img: Image.Image) -> Image.Image:
        """Shortest edge -> S (long edge int(S * long / short), as CLIPImageProcessor), then centre crop."""
        s = self.image_size
        w, h = img.size
        if w <= h:
            new_w, new_h = s, int(s * h / w)
        else:
            new_w, new_h = int(s * w / h), s
        if (new_w, new_h) != (w, h):
            img = img.resize((new_w, new_h), _BICUBIC)
        top, left = (new_h - s) // 2, (new_w - s) // 2
        return img.crop((left, top, left + s, top + s))

    def _resize(self, img: Image.Image) -> Image.Image:
        s = self.image_size
        return img if img.size == (s, s) else img.resize((s, s), _BICUBIC)

    def _anyres_views(self, img: Image.Image) -> list[Image.Image]:
        s = self.image_size
        assert self.grid_pinpoints
        target_h, target_w = select_best_resolution(img.size, self.grid_pinpoints)
        canvas = _resize_and_pad(img, (target_h, target_w))
        tiles = [
            canvas.crop((x, y, x + s, y + s)) for y in range(0, target_h, s) for x in range(0, target_w, s)
        ]
        return [self._resize(img), *tiles]

    def _normalize(self, img: Image.Image) -> np.ndarray:
        """uint8 HWC -> normalised float32 CHW with the same op order/dtypes as transformers (bit-exact)."""
        arr = np.asarray(img, dtype=np.uint8)
        x = (arr.astype(np.float64) * (1 / 255)).astype(np.float32)
        x = (x - np.asarray(self.mean, dtype=np.float32)) / np.asarray(self.std, dtype=np.float32)
        return np.ascontiguousarray(x.transpose(2, 0, 1))
