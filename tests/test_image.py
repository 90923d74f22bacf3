"""load_image: every Pillow mode -> RGB like the reference, EXIF orientation, alpha over a
background, every input type, and a corrupt-input corpus that must always raise InputError."""

from __future__ import annotations

import io
import re
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from minicpmv.errors import InputError
from minicpmv.processor.image import load_image

RNG = np.random.default_rng(0)
RGB_PIXELS = RNG.integers(0, 256, (24, 40, 3), dtype=np.uint8)  # (H, W, 3) noise: compresses badly


def _encode(image: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kw)
    return buf.getvalue()


def _mode_images() -> dict[str, Image.Image]:
    """One image per mode, with values that exercise each conversion (alpha, >255 greys, floats)."""
    rgb = Image.fromarray(RGB_PIXELS)
    grey16 = (RNG.integers(0, 1024, (24, 40))).astype(np.uint16)  # mostly above 255: saturates
    alpha = Image.fromarray(RNG.integers(0, 256, (24, 40), dtype=np.uint8))
    la = rgb.convert("L")
    la.putalpha(alpha)
    pa = rgb.convert("P")
    pa = pa.convert("PA")
    pa.putalpha(alpha)
    rgba = rgb.copy()
    rgba.putalpha(alpha)
    return {
        "1": rgb.convert("1"),
        "L": rgb.convert("L"),
        "P": rgb.convert("P"),
        "PA": pa,
        "LA": la,
        "RGB": rgb,
        "RGBA": rgba,
        "CMYK": rgb.convert("CMYK"),
        "YCbCr": rgb.convert("YCbCr"),
        "I;16": Image.fromarray(grey16),
        "I": Image.fromarray(grey16.astype(np.int32) * 70 - 5000),  # negatives and > 255
        "F": Image.fromarray(RNG.uniform(-20.0, 400.0, (24, 40)).astype(np.float32)),
    }


MODES = _mode_images()
# Formats that store each mode losslessly, to test decode + convert through bytes as well.
ENCODABLE = {"1": "PNG", "L": "PNG", "P": "PNG", "LA": "PNG", "RGB": "PNG", "RGBA": "PNG", "I;16": "PNG",
             "CMYK": "TIFF", "I": "TIFF", "F": "TIFF"}  # Pillow writes no PA files


@pytest.mark.parametrize("mode", sorted(MODES))
def test_every_mode_converts_like_pillow_convert_rgb(mode):
    image = MODES[mode]
    assert image.mode == mode
    out = load_image(image)
    assert out.mode == "RGB" and out.size == image.size
    assert np.array_equal(np.asarray(out), np.asarray(image.convert("RGB")))


@pytest.mark.parametrize("mode", sorted(ENCODABLE))
def test_every_mode_from_encoded_bytes(mode):
    data = _encode(MODES[mode], ENCODABLE[mode])
    expected = Image.open(io.BytesIO(data)).convert("RGB")
    assert np.array_equal(np.asarray(load_image(data)), np.asarray(expected))


def test_16bit_grey_png_saturates_like_the_reference():
    grey = np.array([[0, 100, 255, 256, 300, 65535]], dtype=np.uint16)
    data = _encode(Image.fromarray(grey), "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I")  # 16-bit grey survives the PNG round trip
    out = np.asarray(load_image(data))
    assert out[0, :, 0].tolist() == [0, 100, 255, 255, 255, 255]
    assert (out == out[:, :, :1]).all()  # grey: R = G = B


@pytest.mark.parametrize("mode", ["RGBA", "LA", "PA"])
def test_background_composites_alpha(mode):
    image = MODES[mode]
    a = np.asarray(image.convert("RGBA")).astype(np.float64)  # (H, W, 4)
    bg = (10, 200, 30)
    expected = a[:, :, :3] * a[:, :, 3:] / 255 + np.array(bg) * (1 - a[:, :, 3:] / 255)
    out = np.asarray(load_image(image, background=bg)).astype(np.float64)
    assert np.abs(out - expected).max() <= 1.0  # Pillow's integer blend rounds
    # without a background the alpha is dropped, exactly as convert("RGB")
    assert np.array_equal(np.asarray(load_image(image)), np.asarray(image.convert("RGB")))


def test_background_applies_to_palette_transparency_and_not_to_opaque_images():
    p = Image.fromarray(np.array([[0, 1], [1, 0]], dtype=np.uint8), mode="L").convert("P")
    p.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    p.info["transparency"] = 0  # palette index 0 (red) is transparent
    decoded = Image.open(io.BytesIO(_encode(p, "PNG")))
    out = np.asarray(load_image(decoded, background=(0, 255, 0)))
    assert out[0, 0].tolist() == [0, 255, 0] and out[0, 1].tolist() == [0, 0, 255]
    rgb = MODES["RGB"]
    assert load_image(rgb, background=(1, 2, 3)) is rgb  # opaque RGB: untouched, not copied


@pytest.mark.parametrize("bad", [(1, 2), (0, 0, 256), (-1, 0, 0), "white", 5, (0.5, 0, 0)])
def test_bad_background_is_input_error(bad):
    with pytest.raises(InputError, match="my picture: background"):
        load_image(MODES["RGBA"], background=bad, name="my picture")


# ---- EXIF orientation -----------------------------------------------------------------------
RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)
# Stored quadrants TL=red, TR=green, BL=blue, BR=white. Colour of the displayed top-left and
# top-right corners for each EXIF orientation (EXIF 2.3 table: 6 = rotate 90° clockwise to view).
DISPLAYED_CORNERS = {1: (RED, GREEN), 2: (GREEN, RED), 3: (WHITE, BLUE), 4: (BLUE, WHITE),
                     5: (RED, BLUE), 6: (BLUE, RED), 7: (WHITE, GREEN), 8: (GREEN, WHITE)}


def _quadrant_jpeg(orientation: int) -> bytes:
    a = np.zeros((32, 64, 3), dtype=np.uint8)  # (H, W, 3): landscape, so rotations show in the size
    a[:16, :32], a[:16, 32:], a[16:, :32], a[16:, 32:] = RED, GREEN, BLUE, WHITE
    exif = Image.Exif()
    exif[0x0112] = orientation
    return _encode(Image.fromarray(a), "JPEG", quality=95, exif=exif.tobytes())


def _nearest(pixel: np.ndarray) -> tuple[int, int, int]:
    return min((RED, GREEN, BLUE, WHITE), key=lambda c: np.abs(pixel.astype(int) - c).sum())


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied(orientation):
    data = _quadrant_jpeg(orientation)
    out = load_image(data)
    assert out.size == ((32, 64) if orientation >= 5 else (64, 32))
    px = np.asarray(out)
    assert (_nearest(px[2, 2]), _nearest(px[2, -3])) == DISPLAYED_CORNERS[orientation]
    stored = load_image(data, exif_transpose=False)  # the reference's view: stored pixels
    assert stored.size == (64, 32)
    assert (_nearest(np.asarray(stored)[2, 2]), _nearest(np.asarray(stored)[2, -3])) == (RED, GREEN)
    # the same tag on an already-opened PIL image
    assert np.array_equal(np.asarray(load_image(Image.open(io.BytesIO(data)))), px)


# ---- input types ----------------------------------------------------------------------------
def test_path_bytes_and_pil_inputs_agree(tmp_path: Path):
    data = _encode(Image.fromarray(RGB_PIXELS), "PNG")
    path = tmp_path / "x.png"
    path.write_bytes(data)
    for src in (str(path), path, data, bytearray(data), memoryview(data), Image.open(path)):
        out = load_image(src)
        assert out.mode == "RGB" and np.array_equal(np.asarray(out), RGB_PIXELS), type(src)


@pytest.mark.parametrize(
    "array, expected",
    [
        (RGB_PIXELS, RGB_PIXELS),
        (RGB_PIXELS[:, :, 0], np.repeat(RGB_PIXELS[:, :, :1], 3, axis=2)),
        (RGB_PIXELS[:, :, :1], np.repeat(RGB_PIXELS[:, :, :1], 3, axis=2)),
        (np.concatenate([RGB_PIXELS, RGB_PIXELS[:, :, :1]], axis=2), RGB_PIXELS),  # RGBA: alpha dropped
        (RGB_PIXELS.astype(np.uint16) * 257, RGB_PIXELS),  # 16-bit colour keeps the high byte
        (RGB_PIXELS.astype(np.int64), RGB_PIXELS),
        (RGB_PIXELS / 255.0, (RGB_PIXELS / 255.0 * 255).astype(np.uint8)),  # truncation, as the reference
        (np.full((3, 4), 0.5, np.float32), np.full((3, 4, 3), 127, np.uint8)),
        (np.eye(3, dtype=bool), np.repeat((np.eye(3) * 255).astype(np.uint8)[:, :, None], 3, axis=2)),
        (np.array([[0, 255, 256, 65535]], np.uint16), np.array([[[0] * 3, [255] * 3, [255] * 3, [255] * 3]], np.uint8)),
    ],
    ids=["rgb", "hw", "hw1", "rgba", "u16rgb", "int64", "float64", "float32", "bool", "u16grey"],
)
def test_numpy_inputs(array, expected):
    out = load_image(array)
    assert out.mode == "RGB" and np.array_equal(np.asarray(out), expected)


@pytest.mark.parametrize(
    "array, match",
    [
        (np.zeros((3, 20, 30), np.uint8), "channels first"),
        (np.zeros((4, 5, 2), np.uint8), r"not \(H, W\)"),
        (np.zeros((2, 3, 4, 3), np.uint8), r"not \(H, W\)"),
        (np.zeros((0, 5, 3), np.uint8), "no pixels"),
        (np.full((2, 2), 1.5), "float images must be finite, in"),
        (np.full((2, 2), np.nan), "float images must be finite, in"),
        (np.full((2, 2), -3), "must hold 0..255"),
        (np.zeros((2, 2), np.complex64), "unsupported array dtype"),
    ],
    ids=["chw", "two-channels", "4d", "empty", "float>1", "nan", "negative-int", "complex"],
)
def test_bad_arrays_are_input_errors(array, match):
    with pytest.raises(InputError, match=match):
        load_image(array, name="frame 7")


# ---- corrupt corpus: every item must be an InputError naming the item -------------------------
def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _zero_width_png() -> bytes:
    ihdr = struct.pack(">IIBBBBB", 0, 0, 8, 2, 0, 0, 0)  # 0x0, 8-bit RGB, valid CRCs
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(b"")) + _png_chunk(
        b"IEND", b""
    )


def _corrupt_corpus(tmp_path: Path) -> dict[str, object]:
    png = _encode(Image.fromarray(RGB_PIXELS), "PNG")
    jpeg = _encode(Image.fromarray(RGB_PIXELS), "JPEG", quality=90)
    corpus: dict[str, object] = {
        f"png cut at {f:.0%}": png[: int(len(png) * f)] for f in (0.05, 0.3, 0.6, 0.9)
    }
    corpus |= {f"jpeg cut at {f:.0%}": jpeg[: int(len(jpeg) * f)] for f in (0.05, 0.3, 0.6, 0.9)}
    corpus["png with a flipped IDAT byte"] = png[:100] + bytes([png[100] ^ 0xFF]) + png[101:]
    corpus["random bytes"] = RNG.integers(0, 256, 4096, dtype=np.uint8).tobytes()
    corpus["random bytes after a PNG signature"] = png[:8] + RNG.integers(0, 256, 512, dtype=np.uint8).tobytes()
    corpus["empty bytes"] = b""
    corpus["0x0 PNG"] = _zero_width_png()
    corpus["0x0 PIL image"] = Image.new("RGB", (0, 0))
    corpus["La mode (no RGB conversion)"] = Image.new("La", (4, 4))
    empty, text, cut = tmp_path / "empty.png", tmp_path / "notes.png", tmp_path / "cut.jpg"
    empty.write_bytes(b"")
    text.write_text("this is not an image\n" * 20)
    cut.write_bytes(jpeg[: len(jpeg) // 2])
    corpus |= {"zero-byte file": empty, "text file named .png": text, "truncated jpeg file": cut}
    corpus["missing file"] = tmp_path / "missing.png"
    corpus["directory"] = tmp_path
    corpus["base64 text as a path"] = "iVBORw0KGgo" * 100
    corpus["url"] = "https://example.com/cat.png"
    corpus["unsupported type"] = 3.5
    return corpus


def test_corrupt_corpus_always_raises_input_error(tmp_path: Path):
    for label, src in _corrupt_corpus(tmp_path).items():
        with pytest.raises(InputError) as info:
            load_image(src, name=f"image 3 ({label})")
        message = str(info.value)
        assert message.startswith(f"image 3 ({label}): "), message
        err = info.value  # no chained Pillow traceback is shown under ours
        assert err.__cause__ is None and (err.__context__ is None or err.__suppress_context__), label


@pytest.mark.parametrize("text", ["https://example.com/cat.png", "data:image/png;base64,iVBORw0KGgo="])
def test_urls_and_data_uris_get_a_hint(text):
    with pytest.raises(InputError, match=re.escape(f"'{text}' does not exist") + ".*URLs and data URIs are not fetched"):
        load_image(text)


def test_closed_pil_image_is_input_error(tmp_path: Path):
    path = tmp_path / "lazy.png"
    path.write_bytes(_encode(Image.fromarray(RGB_PIXELS), "PNG"))
    lazy = Image.open(path)
    lazy.close()  # opened but never loaded, then closed
    with pytest.raises(InputError, match="image 0: could not decode the mode RGB PIL image"):
        load_image(lazy)


def test_pixel_limit(tmp_path: Path, monkeypatch):
    data = _encode(Image.fromarray(RGB_PIXELS), "PNG")  # 40x24 = 960 pixels
    for src in (data, Image.fromarray(RGB_PIXELS), RGB_PIXELS):
        with pytest.raises(InputError, match="40x24 = 960 pixels, over the limit of 500"):
            load_image(src, max_pixels=500)
        assert load_image(src, max_pixels=960).size == (40, 24)
    # The default limit is Pillow's MAX_IMAGE_PIXELS, read at call time.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 600)
    with pytest.raises(InputError, match="over the limit of 600"):
        load_image(data)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a larger explicit limit: no DecompressionBombWarning either
        assert load_image(data, max_pixels=10_000).size == (40, 24)
    # Beyond twice MAX_IMAGE_PIXELS Pillow refuses to open at all: still an InputError that says what to do.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 400)
    with pytest.raises(InputError, match="MAX_IMAGE_PIXELS"):
        load_image(data, max_pixels=10_000)
