"""Slicing parity with the reference (every `image_geometry` row of processor.json, every slice of
pixels.safetensors) plus property tests over random sizes and aspect ratios."""

from __future__ import annotations

import functools
import hashlib
import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from safetensors.torch import load_file

from minicpmv.config import ProcessorConfig
from minicpmv.errors import InputError
from minicpmv.processor.image import load_image
from minicpmv.processor.slicing import (
    IMAGE_START,
    SLICE_START,
    UNK,
    ensure_divide,
    find_best_resize,
    get_refine_size,
    get_sliced_grid,
    image_placeholder,
    process_image,
    slice_boxes,
    slice_image,
    to_tensor,
)
from conftest import REFERENCE_DIR, reference_path


def _reference_entries(file: str, key: str, id_of) -> list:
    """pytest params, one per entry the reference JSON lists (read at collection time); a single
    param that skips with the reason when the reference folder is absent."""
    path = REFERENCE_DIR / file
    if not path.exists():
        return [pytest.param(None, id="no-reference")]
    return [pytest.param(e, id=id_of(e)) for e in json.loads(path.read_text())[key]]


def _processor_params() -> dict:
    return json.loads(reference_path("processor.json").read_text())["processor_params"]


def _cfg(params: dict, max_slice_nums: int) -> ProcessorConfig:
    return ProcessorConfig(
        max_slice_nums=max_slice_nums,
        scale_resolution=params["scale_resolution"],
        patch_size=params["patch_size"],
        image_feature_size=params["image_feature_size"],
        slice_mode=params["slice_mode"],
        norm_mean=tuple(params["norm_mean"]),
        norm_std=tuple(params["norm_std"]),
    )


@functools.lru_cache(maxsize=None)
def _gradient(w: int, h: int) -> Image.Image:
    """A cheap non-constant RGB image of the given size (pixels do not affect geometry)."""
    x = np.linspace(0, 255, w, dtype=np.float32)[None, :]
    y = np.linspace(0, 255, h, dtype=np.float32)[:, None]
    rgb = np.stack(np.broadcast_arrays(x, y, (x + y) / 2), axis=-1).astype(np.uint8)  # (H, W, 3)
    return Image.fromarray(rgb)


@pytest.fixture(scope="module")
def tokenizer():
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(reference_path("tokenizer", "tokenizer.json")))


GEOMETRY = _reference_entries(
    "processor.json", "image_geometry", lambda e: f"{e['width']}x{e['height']}-msn{e['max_slice_nums']}"
)


@pytest.mark.parametrize("entry", GEOMETRY)
def test_geometry_matches_reference(entry):
    params = _processor_params()
    size, n = (entry["width"], entry["height"]), entry["max_slice_nums"]
    scale, patch = params["scale_resolution"], params["patch_size"]
    grid = get_sliced_grid(size, n, scale)
    assert grid == (None if entry["grid_cols_rows"] is None else tuple(entry["grid_cols_rows"]))
    assert list(find_best_resize(size, scale, patch, allow_upscale=grid is None)) == entry["overview_size_wh"]
    refine = None if grid is None else list(get_refine_size(size, grid, scale, patch))
    assert refine == entry["refine_size_wh"]

    sliced = slice_image(_gradient(*size), n, scale, patch)
    assert sliced.grid == grid
    got_sizes = [list(piece.size) for piece in (sliced.overview, *sliced.slices)]
    boxes = slice_boxes(tuple(refine), grid) if grid else []
    for k, ref in enumerate(entry["slices"]):
        assert got_sizes[k] == ref["size_wh"], f"slice {k}"
        if k > 0:
            assert list(boxes[k - 1]) == ref["crop_box_ltrb_in_refine"], f"crop box of slice {k}"
            cols = grid[0]
            assert ((k - 1) // cols, (k - 1) % cols) == (ref["row"], ref["col"]), f"row-major order of slice {k}"
    assert len(got_sizes) == entry["num_slices_incl_overview"] == len(entry["slices"])

    processed = process_image(_gradient(*size), _cfg(params, n))
    assert processed.grid == grid
    assert processed.tgt_sizes.dtype == torch.int32
    assert processed.tgt_sizes.tolist() == entry["tgt_sizes_hw"] == [s["tgt_hw"] for s in entry["slices"]]
    assert [list(t.shape[1:]) for t in processed.pixel_values] == [s["size_wh"][::-1] for s in entry["slices"]]
    assert params["image_feature_size"] * len(processed.pixel_values) == entry["visual_embeddings"]


@pytest.mark.parametrize("entry", GEOMETRY)
def test_placeholders_match_reference(entry, tokenizer):
    params = _processor_params()
    grid = get_sliced_grid((entry["width"], entry["height"]), entry["max_slice_nums"], params["scale_resolution"])
    for key, ref in entry["placeholders"].items():
        idx = ref["image_idx"] if ref["use_image_id"] else None
        text = image_placeholder(grid, idx, params["image_feature_size"])
        assert text == ref["text"], key
        ids = tokenizer.encode(text).ids
        assert ids == ref["input_ids"], key
        assert len(ids) == ref["num_tokens"], key


PIXEL_IMAGES = _reference_entries("pixels.json", "images", lambda e: e["name"])


@pytest.fixture(scope="module")
def pixel_tensors() -> dict[str, torch.Tensor]:
    return load_file(reference_path("pixels.safetensors"))


@pytest.mark.parametrize("entry", PIXEL_IMAGES)
def test_pixels_match_reference(entry, pixel_tensors):
    params = _processor_params()
    png = reference_path(entry["png"])
    assert hashlib.sha256(png.read_bytes()).hexdigest() == entry["png_sha256"]
    tensors = pixel_tensors
    image = load_image(png, exif_transpose=False)
    assert list(image.size) == entry["size_wh"]
    out = process_image(image, _cfg(params, entry["max_slice_nums"]))
    assert out.grid == (None if entry["grid_cols_rows"] is None else tuple(entry["grid_cols_rows"]))
    assert torch.equal(out.tgt_sizes, tensors[entry["tgt_sizes_key"]])
    assert len(out.pixel_values) == entry["num_slices"] == len(entry["slices"])
    for got, ref in zip(out.pixel_values, entry["slices"]):
        assert got.dtype == torch.float32 and got.is_contiguous()
        want = tensors[ref["key"]]
        assert got.shape == want.shape, ref["key"]
        err = (got - want).abs().max().item()
        assert err <= 1e-6, f"{ref['key']}: max abs difference {err:.3g} (the reference data are bit-exact)"


# ---- hand-written behaviour the reference defines -------------------------------------------
def test_ensure_divide_rounds_half_to_even():
    assert [ensure_divide(x, 14) for x in (21, 35, 49, 63, 3, 0, 20.9)] == [28, 28, 56, 56, 14, 14, 14]


def test_find_best_resize_truncates():
    # 101x300 upscaled: h = int(448 / sqrt(101 / 300)) = int(772.1) = 772, w = int(259.9) = 259, and
    # 259 / 14 = 18.5 rounds to even: 252 (rounding 259.9 to 260 instead would give 266)
    assert find_best_resize((101, 300), 448, 14, allow_upscale=True) == (252, 770)
    # small images keep their size unless upscaling is allowed
    assert find_best_resize((100, 60), 448, 14) == (98, 56)
    assert find_best_resize((100, 60), 448, 14, allow_upscale=True) == (574, 350)


def test_max_slice_nums_one_never_slices_and_zero_is_an_error():
    assert get_sliced_grid((8000, 8000), 1, 448) is None
    with pytest.raises(InputError, match="max_slice_nums must be >= 1"):
        process_image(_gradient(50, 50), ProcessorConfig(), max_slice_nums=0)


def test_empty_image_is_an_input_error():
    with pytest.raises(InputError, match="cannot slice a 0x5 image"):
        process_image(Image.new("RGB", (0, 5)), ProcessorConfig())


def test_slice_mode_false_uses_the_image_as_is():
    image = _gradient(100, 50)
    out = process_image(image, ProcessorConfig(slice_mode=False))
    assert out.grid is None and out.tgt_sizes.tolist() == [[3, 7]]
    expected = to_tensor(image.crop((0, 0, 98, 42)), (0.5,) * 3, (0.5,) * 3)  # partial patches dropped
    assert torch.equal(out.pixel_values[0], expected)
    assert slice_image(_gradient(98, 42), slice_mode=False).overview is not None
    with pytest.raises(InputError, match="smaller than one 14x14 patch"):
        process_image(_gradient(13, 500), ProcessorConfig(slice_mode=False))


def test_process_image_converts_other_modes_like_the_reference():
    grey = _gradient(300, 200).convert("L")
    got = process_image(grey, ProcessorConfig())
    want = process_image(grey.convert("RGB"), ProcessorConfig())
    assert all(torch.equal(a, b) for a, b in zip(got.pixel_values, want.pixel_values))


def test_to_tensor_equals_the_float32_formula():
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, (30, 20, 3), dtype=np.uint8)
    pixels.reshape(-1)[:768] = np.arange(768) % 256  # every byte value in every channel
    mean, std = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
    want = (pixels.astype(np.float32) / 255 - np.array(mean, np.float32)) / np.array(std, np.float32)
    got = to_tensor(Image.fromarray(pixels), mean, std)
    assert got.shape == (3, 30, 20) and torch.equal(got, torch.from_numpy(want.transpose(2, 0, 1).copy()))
    with pytest.raises(InputError, match="RGB uint8"):
        to_tensor(pixels.astype(np.float32), mean, std)


def test_placeholder_without_id_and_with_two_digit_id():
    assert image_placeholder(None, None, 2) == "<image><unk><unk></image>"
    assert image_placeholder((2, 1), 12, 1) == "<image_id>12</image_id><image><unk></image><slice><unk></slice><slice><unk></slice>"
    assert image_placeholder((1, 2), None, 1) == "<image><unk></image><slice><unk></slice>\n<slice><unk></slice>"


# ---- properties over random sizes (geometry only: no pixels, so thousands of px are free) ----
@st.composite
def sizes(draw, max_side: int = 8000, max_aspect: int = 100):
    w = draw(st.integers(1, max_side))
    h = draw(st.integers(max(1, math.ceil(w / max_aspect)), min(max_side, w * max_aspect)))
    return w, h


@settings(max_examples=300, deadline=None)
@given(size=sizes(), n=st.integers(1, 16))
def test_slicing_geometry_properties(size, n):
    scale, patch = 448, 14
    grid = get_sliced_grid(size, n, scale)
    if n == 1 or size[0] * size[1] <= scale * scale:
        assert grid is None
    ow, oh = find_best_resize(size, scale, patch, allow_upscale=grid is None)
    assert ow % patch == 0 and oh % patch == 0 and ow > 0 and oh > 0
    n_slices = 1
    if grid is not None:
        cols, rows = grid
        assert 2 <= cols * rows <= n
        rw, rh = get_refine_size(size, grid, scale, patch)
        assert rw % (cols * patch) == 0 and rh % (rows * patch) == 0
        boxes = slice_boxes((rw, rh), grid)
        cover = np.zeros((rh // patch, rw // patch), dtype=np.int32)  # one cell per patch: boxes are patch-aligned
        for left, top, right, bottom in boxes:
            assert all(v % patch == 0 for v in (left, top, right, bottom)) and right > left and bottom > top
            cover[top // patch : bottom // patch, left // patch : right // patch] += 1
        assert (cover == 1).all(), "slices must tile the refine image exactly, without overlap"
        n_slices += len(boxes)
    assert n_slices <= n + 1
    text = image_placeholder(grid, 0, 64)
    assert text.count(IMAGE_START) + text.count(SLICE_START) == n_slices
    assert text.count(UNK) == 64 * n_slices


@settings(max_examples=25, deadline=None)
@given(size=sizes(max_side=700, max_aspect=20), n=st.integers(1, 9))
def test_process_image_properties(size, n):
    image = _gradient(*size)
    cfg = ProcessorConfig()
    sliced = slice_image(image, n, cfg.scale_resolution, cfg.patch_size)
    out = process_image(image, cfg, max_slice_nums=n)
    pieces = [sliced.overview, *sliced.slices]
    assert len(out.pixel_values) == len(pieces) == out.tgt_sizes.shape[0] <= n + 1
    for piece, tensor, (th, tw) in zip(pieces, out.pixel_values, out.tgt_sizes.tolist()):
        assert tensor.shape == (3, th * 14, tw * 14) == (3, piece.size[1], piece.size[0])
        assert torch.equal(tensor, to_tensor(piece, cfg.norm_mean, cfg.norm_std))  # array views == PIL crops
