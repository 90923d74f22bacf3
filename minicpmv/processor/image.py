"""Turn whatever the user calls an image into an upright RGB `PIL.Image`, or fail with an `InputError`.

The reference processor does `Image.convert("RGB")` on every image and nothing else, so every
Pillow mode (P, PA, LA, L, I;16, I, F, CMYK, RGBA, 1, ...) converts exactly as Pillow converts it:
alpha is dropped (transparent pixels show whatever colour they store), 16-bit and 32-bit grey
values above 255 saturate to 255, floats are truncated. Two deliberate additions, both switchable:

* EXIF orientation is applied (`exif_transpose=True`, the default). The reference ignores it, so a
  phone photo stored sideways reaches the model sideways there; pass False for reference parity.
* `background=(r, g, b)` composites images that have alpha over that colour instead of dropping it.

Every failure (missing file, corrupt, truncated or empty data, too many pixels, unsupported array)
raises `InputError` naming the item; Pillow's own exception text is quoted, never re-raised.
Multi-frame files (GIF, APNG, TIFF) give their first frame, as in the reference. Truncated files
are errors unless the caller has set Pillow's global `ImageFile.LOAD_TRUNCATED_IMAGES`.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import BinaryIO, Union

import numpy as np
from PIL import Image

from minicpmv.errors import InputError

ImageSource = Union[str, os.PathLike, bytes, bytearray, memoryview, Image.Image, np.ndarray]

# EXIF tag 0x0112 value -> the transpose that makes the stored pixels upright (EXIF 2.3 §4.6.4).
_EXIF_ORIENTATION = 0x0112
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,  # stored rotated 90° counter-clockwise: turn it clockwise
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_FIX = "re-export it as PNG or JPEG"


def load_image(
    src: ImageSource,
    *,
    exif_transpose: bool = True,
    background: tuple[int, int, int] | None = None,
    max_pixels: int | None = None,
    name: str = "image 0",
) -> Image.Image:
    """Load `src` as an RGB image.

    src:            a path (str / PathLike), encoded bytes, a PIL image, or a numpy array
                    (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) of uint8, uint16, another integer
                    type holding 0..255, or floats in [0, 1] (see `_array_to_pil`).
    exif_transpose: rotate/flip by the EXIF orientation tag (the reference does not).
    background:     RGB colour to composite transparent images over; None drops alpha like
                    the reference's `convert("RGB")`.
    max_pixels:     refuse images with more pixels; default `PIL.Image.MAX_IMAGE_PIXELS` (read at
                    call time; None there means no limit). The limit is checked from the header,
                    before any pixel is decoded.
    name:           how error messages refer to this item, e.g. "image 2 of message 1".

    Example: `load_image(Path("scan.png"))` on a 16-bit greyscale PNG (mode I;16) returns mode RGB
    with every grey value above 255 saturated to 255, exactly as the reference sees it.
    An already-RGB, upright PIL input is returned as is (not copied).
    """
    limit = Image.MAX_IMAGE_PIXELS if max_pixels is None else max_pixels
    if background is not None:
        background = _colour(background, name)
    opts = (exif_transpose, background, limit, name)
    if isinstance(src, Image.Image):
        return _from_pil(src, f"the mode {src.mode} PIL image", *opts)
    if isinstance(src, np.ndarray):
        return _from_pil(_array_to_pil(src, name), f"the {src.dtype} array", *opts)
    if isinstance(src, (bytes, bytearray, memoryview)):
        return _decode(io.BytesIO(src), f"the {len(src)}-byte buffer", *opts)
    if isinstance(src, (str, os.PathLike)):
        path = Path(src)
        _check_is_file(path, os.fspath(src), name)
        try:
            with open(path, "rb") as f:
                return _decode(f, f"file {str(path)!r}", *opts)
        except OSError as e:  # unreadable file (permissions, I/O); decode errors are already InputError
            raise InputError(f"{name}: cannot read {str(path)!r} ({e}); check the file's permissions") from None
    raise InputError(
        f"{name}: unsupported image type {type(src).__name__}; pass a file path, encoded bytes, "
        "a PIL.Image.Image or a numpy array"
    )


def _check_is_file(path: Path, given: str | bytes, name: str) -> None:
    try:
        if path.is_file():
            return
        what = "is a directory, not a file" if path.is_dir() else "does not exist"
    except OSError as e:  # e.g. a base64 string passed as a path: "File name too long"
        what = f"is not a usable path ({e.strerror})"
    text = given if isinstance(given, str) else given.decode(errors="replace")
    shown = text if len(text) <= 200 else text[:200] + "..."
    hint = ""
    if text.startswith(("http://", "https://", "data:")):
        hint = " (URLs and data URIs are not fetched: download or decode them and pass the bytes)"
    raise InputError(f"{name}: {shown!r} {what}; pass the path of an image file{hint}")


def _decode(
    fp: BinaryIO, what: str, exif_transpose: bool, background: tuple[int, int, int] | None, limit: int | None, name: str
) -> Image.Image:
    """Identify the format from the header (no pixels decoded yet), then hand over to `_from_pil`."""
    if not fp.read(1):
        raise InputError(f"{name}: {what} is empty; pass a non-empty image file")
    fp.seek(0)
    try:
        with warnings.catch_warnings():
            # We enforce `limit` ourselves in `_from_pil`; Pillow's warning fires at its default limit.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(fp)
    except Image.DecompressionBombError as e:
        raise InputError(
            f"{name}: {what} is larger than Pillow's hard decompression-bomb limit ({e}); "
            "raise PIL.Image.MAX_IMAGE_PIXELS to read it, or downscale the image first"
        ) from None
    except Exception as e:  # noqa: BLE001 - Pillow raises UnidentifiedImageError, SyntaxError, struct.error, ...
        raise _undecodable(what, e, name) from None
    return _from_pil(image, what, exif_transpose, background, limit, name)


def _from_pil(
    image: Image.Image,
    what: str,
    exif_transpose: bool,
    background: tuple[int, int, int] | None,
    limit: int | None,
    name: str,
) -> Image.Image:
    """Size check, full decode, RGB conversion (or alpha compositing), EXIF orientation."""
    _check_size(image.size, limit, name)
    try:
        image.load()  # decode now, so truncated data fails here and not later
    except Exception as e:  # noqa: BLE001 - truncated data raises OSError, closed images ValueError, ...
        raise _undecodable(what, e, name) from None
    orientation = _orientation(image) if exif_transpose else 1
    try:
        if background is not None and image.has_transparency_data:
            canvas = Image.new("RGBA", image.size, (*background, 255))
            rgb = Image.alpha_composite(canvas, image.convert("RGBA")).convert("RGB")
        else:
            rgb = image if image.mode == "RGB" else image.convert("RGB")
    except Exception as e:  # noqa: BLE001 - modes Pillow cannot convert (e.g. "La")
        raise InputError(
            f"{name}: cannot convert a mode {image.mode!r} image to RGB ({type(e).__name__}: {e}); {_FIX}"
        ) from None
    return rgb.transpose(_UPRIGHT[orientation]) if orientation in _UPRIGHT else rgb


def _undecodable(what: str, e: Exception, name: str) -> InputError:
    if isinstance(e, Image.UnidentifiedImageError):  # its text only names the file object
        detail = "no image format Pillow reads"
    else:
        detail = f"{type(e).__name__}: {e}"
    return InputError(
        f"{name}: could not decode {what} as an image ({detail}); the data is corrupt, truncated or "
        f"not an image: {_FIX}"
    )


def _check_size(size_wh: tuple[int, int], limit: int | None, name: str) -> None:
    w, h = size_wh
    if w <= 0 or h <= 0:
        raise InputError(f"{name}: the image is {w}x{h} pixels (empty); pass an image with at least one pixel")
    if limit is not None and w * h > limit:
        raise InputError(
            f"{name}: the image is {w}x{h} = {w * h} pixels, over the limit of {limit}; downscale it "
            "first or pass a larger max_pixels"
        )


def _orientation(image: Image.Image) -> int:
    """EXIF orientation 1..8; 1 (upright) when absent or unreadable (a broken EXIF block is no
    reason to refuse pixels that decoded fine)."""
    try:
        return int(image.getexif().get(_EXIF_ORIENTATION, 1))
    except Exception:  # noqa: BLE001 - Pillow raises assorted errors on malformed EXIF
        return 1


def _colour(background: tuple[int, int, int], name: str) -> tuple[int, int, int]:
    values = tuple(background) if isinstance(background, (tuple, list)) else ()
    if len(values) != 3 or not all(isinstance(v, (int, np.integer)) and 0 <= v <= 255 for v in values):
        raise InputError(f"{name}: background must be an (r, g, b) tuple of ints in 0..255, got {background!r}")
    return values  # type: ignore[return-value]


def _array_to_pil(array: np.ndarray, name: str) -> Image.Image:
    """numpy -> PIL with the mode Pillow would give the same pixels read from a PNG.

    (H, W) -> L, (H, W, 1) -> L, (H, W, 3) -> RGB, (H, W, 4) -> RGBA, by dtype:
    * uint8: as is.
    * uint16: (H, W) becomes mode I;16 (so values above 255 saturate, like a 16-bit grey PNG);
      colour arrays keep the high byte (`x >> 8`), like Pillow decoding a 16-bit RGB(A) PNG.
    * other integers and bool: must hold 0..255 (bool: False/True -> 0/255).
    * floats: must be finite and in [0, 1]; `(x * 255).astype(uint8)` (truncation), as the
      reference's `to_pil_image` does for float arrays.
    Example: np.full((2, 3), 0.5) -> a 3x2 'L' image of value 127.
    """
    a = np.asarray(array)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]  # (H, W, 1) -> (H, W)
    if not (a.ndim == 2 or (a.ndim == 3 and a.shape[2] in (3, 4))):
        hint = " (channels first? use array.transpose(1, 2, 0))" if a.ndim == 3 and a.shape[0] in (1, 3, 4) else ""
        raise InputError(f"{name}: array of shape {tuple(array.shape)} is not (H, W), (H, W, 3) or (H, W, 4){hint}")
    if a.size == 0:
        raise InputError(f"{name}: array of shape {tuple(array.shape)} has no pixels; pass a non-empty image")
    if a.dtype == np.uint16 and a.ndim == 2:
        return Image.fromarray(np.ascontiguousarray(a))  # mode I;16
    return Image.fromarray(np.ascontiguousarray(_to_uint8(a, name)))


def _to_uint8(a: np.ndarray, name: str) -> np.ndarray:
    if a.dtype == np.uint8:
        return a
    if a.dtype == np.uint16:
        return (a >> 8).astype(np.uint8)
    if a.dtype == np.bool_:
        return a.astype(np.uint8) * 255
    if np.issubdtype(a.dtype, np.integer):
        lo, hi = int(a.min()), int(a.max())
        if lo < 0 or hi > 255:
            raise InputError(f"{name}: {a.dtype} array holds values {lo}..{hi}; integer images must hold 0..255")
        return a.astype(np.uint8)
    if np.issubdtype(a.dtype, np.floating):
        lo, hi = float(a.min()), float(a.max())
        if not (np.isfinite(lo) and np.isfinite(hi) and 0.0 <= lo and hi <= 1.0):
            raise InputError(f"{name}: float array holds values {lo}..{hi}; float images must be finite, in [0, 1]")
        return (a * 255).astype(np.uint8)
    raise InputError(f"{name}: unsupported array dtype {a.dtype}; use uint8, uint16 or floats in [0, 1]")
