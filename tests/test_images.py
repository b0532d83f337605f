"""Tests for llavakit.images: loading edge cases and pixel parity with transformers' processors."""

from __future__ import annotations

import base64
import io
import json
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from llavakit.images import (
    CLIP_MEAN,
    CLIP_STD,
    SIGLIP_MEAN,
    ImageError,
    ImageProcessor,
    load_image,
    select_best_resolution,
)

try:
    import transformers
except ImportError:  # pragma: no cover - transformers is a hard dependency, but keep the rest runnable
    transformers = None


# PIL/numpy ("slow") processors need no torchvision (transformers 5 names them ...Pil). Resolved at
# collection because transformers imports them lazily and the first lookup alone takes ~2 s.
_NAMES = ("CLIPImageProcessor", "LlavaImageProcessor", "LlavaNextImageProcessor")
HF_CLASSES = {n: getattr(transformers, f"{n}Pil", None) or getattr(transformers, n, None) for n in _NAMES}
HF_CLIP_FROM_CONFIG = getattr(transformers, "CLIPImageProcessor", None)  # what users load configs with
needs_hf = pytest.mark.skipif(transformers is None, reason="transformers not installed")
PINS = ((32, 64), (64, 32), (64, 64))  # (height, width)


def _hf(name: str, **kwargs):
    if HF_CLASSES[name] is None:
        pytest.skip(f"transformers has no {name}")
    return HF_CLASSES[name](**kwargs)


SIZE_32 = {"size": {"shortest_edge": 32}, "crop_size": {"height": 32, "width": 32}}


def _hf_clip():
    return _hf("CLIPImageProcessor", **SIZE_32, image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD))


def _diff(processor, image: Image.Image, ours: torch.Tensor) -> float:
    """Max abs difference between a transformers processor's output for `image` and our tensor."""
    ref = np.asarray(processor(image, return_tensors="np")["pixel_values"])[0]
    assert ref.shape == tuple(ours.shape)
    return float(np.abs(ref - ours.numpy()).max())


def _expand2square(image: Image.Image) -> Image.Image:
    """LLaVA-1.5's expand2square, done by hand."""
    side = max(image.size)
    canvas = Image.new("RGB", (side, side), tuple(int(m * 255) for m in CLIP_MEAN))
    canvas.paste(image, ((side - image.width) // 2, (side - image.height) // 2))
    return canvas


def _rand_rgb(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def _png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def _png_header_only(width: int, height: int) -> bytes:
    """A syntactically valid PNG that claims width x height but carries (almost) no pixel data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    return b"\x89PNG\r\n\x1a\n" + ihdr + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b"")


def _px(image: Image.Image, x: int = 0, y: int = 0) -> tuple[int, ...]:
    return tuple(int(v) for v in np.asarray(image)[y, x])


@needs_hf
@pytest.mark.parametrize("size", [(45, 30), (30, 47), (33, 31), (7, 100), (32, 32)])
def test_square_matches_clip_image_processor(size):
    image = _rand_rgb(*size)
    ours = ImageProcessor(image_size=32, aspect="square").preprocess(image)
    assert ours.dtype == torch.float32 and ours.shape == (3, 32, 32) and ours.is_contiguous()
    assert _diff(_hf_clip(), image, ours) <= 1e-6  # same ops, same dtypes: bit-exact in practice


@needs_hf
@pytest.mark.parametrize("size", [(45, 30), (30, 47), (20, 27)])
def test_pad_matches_manual_expand2square_then_clip(size):
    image = _rand_rgb(*size, seed=1)
    ours = ImageProcessor(image_size=32, aspect="pad").preprocess(image)
    assert _diff(_hf_clip(), _expand2square(image), ours) <= 1e-6
    # The padded border carries the mean colour, i.e. ~0 after normalisation (int(m * 255) truncates).
    border = ours[:, 0, :] if size[0] > size[1] else ours[:, :, 0]
    assert border.abs().max() < 0.05


@needs_hf
def test_pad_matches_hf_llava_processor():
    image = _rand_rgb(45, 30, seed=2)
    ours = ImageProcessor(image_size=32, aspect="pad").preprocess(image)
    assert _diff(_hf("LlavaImageProcessor", **SIZE_32, do_pad=True), image, ours) <= 1e-6


@needs_hf
@pytest.mark.parametrize("size", [(100, 50), (90, 50), (40, 100), (13, 77)])
def test_anyres_matches_hf_llava_next_processor(size):
    image = _rand_rgb(*size, seed=3)
    hf = _hf("LlavaNextImageProcessor", **SIZE_32, image_grid_pinpoints=[list(p) for p in PINS])
    ours = ImageProcessor(image_size=32, aspect="anyres", grid_pinpoints=PINS).preprocess(image)
    assert _diff(hf, image, ours) <= 1e-6


@needs_hf
def test_hf_preprocessor_config_reproduces_square(tmp_path):
    proc = ImageProcessor(image_size=32, aspect="square")
    cfg = proc.to_hf_preprocessor_config()
    assert cfg["image_processor_type"] == "CLIPImageProcessor"
    assert cfg["size"] == {"shortest_edge": 32} and cfg["crop_size"] == {"height": 32, "width": 32}
    image = _rand_rgb(45, 30, seed=4)
    ours = proc.preprocess(image)
    assert _diff(HF_CLIP_FROM_CONFIG(**cfg), image, ours) <= 1e-6
    # ... and as an actual preprocessor_config.json on disk
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(cfg))
    assert _diff(HF_CLIP_FROM_CONFIG.from_pretrained(str(tmp_path)), image, ours) <= 1e-6


@needs_hf
def test_hf_preprocessor_config_for_pad_mode():
    proc = ImageProcessor(image_size=32, aspect="pad")
    cfg = proc.to_hf_preprocessor_config()
    assert cfg["do_pad"] is True and cfg["image_processor_type"] == "CLIPImageProcessor"
    image = _rand_rgb(30, 47, seed=11)
    ours = proc.preprocess(image)
    # LlavaImageProcessor honours do_pad and reproduces LLaVA-1.5's padding from the same file ...
    assert _diff(_hf("LlavaImageProcessor", **cfg), image, ours) <= 1e-6
    # ... and CLIPImageProcessor still accepts it (do_pad only equalises batch sizes there).
    assert _diff(HF_CLIP_FROM_CONFIG(**cfg), _expand2square(image), ours) <= 1e-6


@needs_hf
def test_hf_preprocessor_config_for_resize_mode():
    proc = ImageProcessor(image_size=32, aspect="resize")
    image = _rand_rgb(45, 30, seed=5)
    hf = HF_CLIP_FROM_CONFIG(**proc.to_hf_preprocessor_config())
    assert _diff(hf, image, proc.preprocess(image)) <= 1e-6


@pytest.mark.parametrize(
    ("size_wh", "expected_hw"),
    [
        # 100x50: (32,64) and (64,64) both keep 64*32=2048 px; (32,64) wastes 0 vs 2048 -> wins the tie
        ((100, 50), (32, 64)),
        # 40x100: (32,64) keeps 12*32=384, (64,32) and (64,64) keep 25*64=1600; (64,32) wastes 448 < 2496
        ((40, 100), (64, 32)),
        # 90x50: (64,64) keeps 64*35=2240 > (32,64)'s 57*32=1824
        ((90, 50), (64, 64)),
        # 20x20: every pin keeps all 400 px; (32,64) and (64,32) waste the same -> first listed wins
        ((20, 20), (32, 64)),
    ],
)
def test_select_best_resolution_hand_worked(size_wh, expected_hw):
    assert select_best_resolution(size_wh, PINS) == expected_hw
    proc = ImageProcessor(image_size=32, aspect="anyres", grid_pinpoints=PINS)
    assert proc.anyres_grid_shape(size_wh) == (expected_hw[0] // 32, expected_hw[1] // 32)  # (rows, cols)


def test_anyres_wide_image_tiles():
    proc = ImageProcessor(image_size=32, aspect="anyres", grid_pinpoints=PINS)
    image = _rand_rgb(100, 50, seed=6)
    out = proc.preprocess(image)
    assert out.shape == (3, 3, 32, 32) and out.dtype == torch.float32 and out.is_contiguous()
    assert proc.anyres_grid_shape((100, 50)) == (1, 2)
    # global view == the plain "resize" path
    resize = ImageProcessor(image_size=32, aspect="resize").preprocess(image)
    assert torch.equal(out[0], resize)
    # tiles == left/right halves of the 64x32 bicubic resize (aspect matches, so no padding)
    halves = ImageProcessor(image_size=32, aspect="resize")
    fitted = image.resize((64, 32), Image.Resampling.BICUBIC)
    assert torch.equal(out[1], halves.preprocess(fitted.crop((0, 0, 32, 32))))
    assert torch.equal(out[2], halves.preprocess(fitted.crop((32, 0, 64, 32))))


def test_anyres_pads_with_black_and_orders_tiles_row_major():
    proc = ImageProcessor(image_size=32, aspect="anyres", grid_pinpoints=PINS)
    white = Image.new("RGB", (90, 50), (255, 255, 255))
    out = proc.preprocess(white)
    assert out.shape == (5, 3, 32, 32) and proc.anyres_grid_shape((90, 50)) == (2, 2)
    black = (0.0 - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
    # fitted to 64x36 and centred in 64x64: rows 0-13 black (top tiles 1,2), rows 50-63 black (bottom tiles)
    assert torch.allclose(out[1][:, 0, 0], black) and torch.allclose(out[2][:, 13, 31], black)
    assert out[1][:, 20, 5].min() > 1.5  # image content is white
    assert torch.allclose(out[3][:, 31, 0], black) and out[4][:, 0, 0].min() > 1.5


def test_exif_orientation_is_applied(tmp_path):
    # 40x20, left half red / right half blue; orientation 6 = rotate 90 deg clockwise for display
    arr = np.zeros((20, 40, 3), dtype=np.uint8)
    arr[:, :20] = (255, 0, 0)
    arr[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "rotated.jpg"
    Image.fromarray(arr).save(path, "JPEG", exif=exif.tobytes(), quality=95)
    image = load_image(path)
    assert image.mode == "RGB" and image.size == (20, 40)
    top, bottom = _px(image, 10, 5), _px(image, 10, 35)
    assert top[0] > 200 and top[2] < 60  # red moved to the top
    assert bottom[2] > 200 and bottom[0] < 60


def test_mode_conversions():
    assert _px(load_image(Image.new("L", (2, 2), 100))) == (100, 100, 100)
    assert _px(load_image(Image.new("1", (2, 2), 1))) == (255, 255, 255)
    assert _px(load_image(Image.new("1", (2, 2), 0))) == (0, 0, 0)
    la = Image.new("LA", (2, 1), (50, 255))
    la.putpixel((1, 0), (50, 0))
    out = load_image(la)
    assert _px(out, 0) == (50, 50, 50) and _px(out, 1) == (255, 255, 255)
    rgba = Image.new("RGBA", (3, 1), (10, 20, 30, 255))
    rgba.putpixel((1, 0), (10, 20, 30, 0))
    rgba.putpixel((2, 0), (0, 0, 0, 128))
    out = load_image(rgba)
    assert _px(out, 0) == (10, 20, 30) and _px(out, 1) == (255, 255, 255)  # white, not black
    assert all(abs(v - 127) <= 1 for v in _px(out, 2))
    cmyk = Image.new("CMYK", (3, 1), (0, 0, 0, 0))
    cmyk.putpixel((1, 0), (255, 0, 0, 0))
    cmyk.putpixel((2, 0), (0, 0, 0, 255))
    out = load_image(cmyk)
    assert [_px(out, x) for x in range(3)] == [(255, 255, 255), (0, 255, 255), (0, 0, 0)]
    assert rgba.mode == "RGBA"  # the caller's image is not modified
    assert all(abs(v - 227) <= 1 for v in _px(load_image(Image.new("La", (1, 1), (100, 128)))))


def test_palette_with_transparency_from_png(tmp_path):
    pal = Image.new("P", (2, 1), 0)
    pal.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    pal.putpixel((1, 0), 1)
    path = tmp_path / "pal.png"
    pal.save(path, transparency=1)
    out = load_image(path)
    assert out.mode == "RGB" and _px(out, 0) == (255, 0, 0) and _px(out, 1) == (255, 255, 255)
    no_alpha = Image.new("P", (1, 1), 1)
    no_alpha.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    assert _px(load_image(no_alpha)) == (0, 255, 0)


def test_16bit_png_keeps_full_range(tmp_path):
    gradient = np.array([[0, 257, 32768, 65535]], dtype=np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(gradient).save(path)
    with Image.open(path) as raw:
        assert raw.mode.startswith("I;16")
    out = load_image(path)
    assert out.mode == "RGB"
    assert [_px(out, x)[0] for x in range(4)] == [0, 1, 128, 255]  # scaled, not clipped to 255


def test_int32_and_float_modes_are_scaled():
    as_i = Image.fromarray(np.array([[0, 1000, 65535]], dtype=np.int32))
    assert as_i.mode == "I"
    assert [_px(load_image(as_i), x)[0] for x in range(3)] == [0, 4, 255]
    as_f = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32))
    assert [_px(load_image(as_f), x)[0] for x in range(3)] == [0, 128, 255]


def test_animated_gif_returns_first_frame(tmp_path):
    red, blue = Image.new("RGB", (8, 8), (255, 0, 0)), Image.new("RGB", (8, 8), (0, 0, 255))
    path = tmp_path / "anim.gif"
    red.save(path, save_all=True, append_images=[blue], duration=50, loop=0)
    with Image.open(path) as raw:
        assert raw.n_frames == 2
    out = load_image(path)
    assert out.mode == "RGB" and _px(out, 4, 4) == (255, 0, 0)


def test_load_from_bytes_path_str_and_pil_copy(tmp_path):
    image = _rand_rgb(6, 5, seed=7)
    data = _png_bytes(image)
    path = tmp_path / "img.png"
    path.write_bytes(data)
    for source in (data, bytearray(data), path, str(path)):
        assert np.array_equal(np.asarray(load_image(source)), np.asarray(image))
    copy = load_image(image)
    assert copy is not image and np.array_equal(np.asarray(copy), np.asarray(image))


def test_data_url():
    image = _rand_rgb(5, 4, seed=8)
    b64 = base64.b64encode(_png_bytes(image)).decode()
    out = load_image(f"data:image/png;base64,{b64}")
    assert np.array_equal(np.asarray(out), np.asarray(image))
    out = load_image("data:image/png;base64," + b64.rstrip("=")[:40] + "\n" + b64.rstrip("=")[40:])
    assert np.array_equal(np.asarray(out), np.asarray(image))  # wrapped, unpadded base64 is tolerated


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("data:image/png;base64,!!!not-base64!!!", "invalid base64"),
        ("data:image/png;base64", "no ','"),
        ("data:image/png,rawtext", "only base64"),
        ("data:text/plain;base64,aGVsbG8=", "not an image"),
        ("data:image/png;base64,aGVsbG8=", "not a recognised image"),
        ("data:image/png;base64,", "no data"),
    ],
)
def test_malformed_data_url(url, match):
    with pytest.raises(ImageError, match=match) as info:
        load_image(url)
    assert "data URL" in str(info.value)


def test_bad_inputs_name_the_input(tmp_path):
    missing = tmp_path / "nope.png"
    with pytest.raises(ImageError, match="not found") as info:
        load_image(missing)
    assert str(missing) in str(info.value)
    with pytest.raises(ImageError, match="directory") as info:
        load_image(tmp_path)
    assert str(tmp_path) in str(info.value)
    with pytest.raises(ImageError, match=r"bytes \(0 bytes\).*empty"):
        load_image(b"")
    junk = np.random.default_rng(0).integers(0, 256, 300, dtype=np.uint8).tobytes()
    with pytest.raises(ImageError, match=r"bytes \(300 bytes\).*not a recognised"):
        load_image(junk)
    text = tmp_path / "notes.png"
    text.write_text("definitely not a png")
    with pytest.raises(ImageError, match="notes.png"):
        load_image(text)
    with pytest.raises(ImageError, match="URLs are not downloaded"):
        load_image("https://example.com/cat.png")
    with pytest.raises(ImageError, match="int object"):
        load_image(42)  # type: ignore[arg-type]
    assert issubclass(ImageError, ValueError)


def test_truncated_png(tmp_path):
    path = tmp_path / "cut.png"
    path.write_bytes(_png_bytes(_rand_rgb(64, 64, seed=9))[:4000])
    with pytest.raises(ImageError, match="cut.png") as info:
        load_image(path)
    assert "decode" in str(info.value)


@pytest.mark.parametrize("side", [100_000, 10_000, 9_000])
def test_huge_header_rejected_before_decoding(tmp_path, side):
    # 1e10 px trips Pillow's bomb error, 1e8 its bomb warning, 8.1e7 only our 64M max_pixels default
    path = tmp_path / f"bomb{side}.png"
    path.write_bytes(_png_header_only(side, side))
    with pytest.raises(ImageError, match=f"bomb{side}.png"):
        load_image(path)


def test_max_pixels_argument():
    data = _png_bytes(_rand_rgb(20, 20))
    with pytest.raises(ImageError, match="max_pixels=100"):
        load_image(data, max_pixels=100)
    with pytest.raises(ImageError, match="PIL image.*max_pixels"):
        load_image(_rand_rgb(20, 20), max_pixels=399)
    assert load_image(data, max_pixels=400).size == (20, 20)
    assert load_image(data, max_pixels=None).size == (20, 20)


def test_resize_mode_and_call():
    proc = ImageProcessor(image_size=16, aspect="resize", mean=SIGLIP_MEAN, std=(0.5, 0.5, 0.5))
    image = _rand_rgb(40, 10, seed=10)
    out = proc.preprocess(image)
    expected = np.asarray(image.resize((16, 16), Image.Resampling.BICUBIC), dtype=np.float32) / 255
    expected = ((expected - 0.5) / 0.5).transpose(2, 0, 1)
    assert out.shape == (3, 16, 16) and np.abs(out.numpy() - expected).max() < 1e-6
    batch = proc([image, _png_bytes(image)])
    assert len(batch) == 2 and torch.equal(batch[0], batch[1])
    assert len(proc(image)) == 1  # a single image is not iterated over


def test_dict_round_trip_and_validation():
    proc = ImageProcessor(
        image_size=64, aspect="anyres", grid_pinpoints=((64, 128), (128, 64)), patch_size=16
    )
    restored = ImageProcessor.from_dict(json.loads(json.dumps(proc.to_dict())))
    assert restored == proc and isinstance(restored.grid_pinpoints[0], tuple)
    default = ImageProcessor()
    assert ImageProcessor.from_dict(default.to_dict()) == default
    assert (default.image_size, default.aspect, default.mean) == (336, "pad", CLIP_MEAN)
    assert default.preprocess(_rand_rgb(12, 7)).shape == (3, 336, 336)
    with pytest.raises(ValueError, match="unknown"):
        ImageProcessor.from_dict({"image_sise": 336})
    with pytest.raises(ValueError, match="aspect"):
        ImageProcessor(aspect="crop")
    with pytest.raises(ValueError, match="grid_pinpoints"):
        ImageProcessor(image_size=32, aspect="anyres")
    with pytest.raises(ValueError, match="multiples"):
        ImageProcessor(image_size=32, aspect="anyres", grid_pinpoints=((32, 50),))
