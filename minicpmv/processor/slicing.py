"""LLaVA-UHD slicing: one image -> an overview plus up to `max_slice_nums` slices (spec §4.2-4.4).

Every output is about `scale_resolution`² pixels (448² = 200,704) with sides that are multiples
of `patch_size` (14), so each becomes about 1024 ViT patches and, after the resampler, 64 tokens.
Worked example, a 1920x1080 photo with the defaults (9 slices, 448, 14):

1. `get_sliced_grid`: area / 448² = 10.3 -> 9 slices wanted (capped at 9); candidate grids are the
   factorisations of 8 and 9; [4, 2] is closest to the log aspect ratio 16:9 -> (cols, rows) = (4, 2).
2. overview: `find_best_resize` keeps the aspect ratio at ~448² area -> 602x336 (tgt 24x43 patches).
3. refine: `get_refine_size` -> cells of 420x476 -> the original is resized to 1680x952 ...
4. ... and cut row-major into 8 slices of 420x476 (tgt 34x30).
5. `image_placeholder`: `<image_id>0</image_id><image>` + 64 `<unk>` + `</image>`, then 2 rows of
   4 `<slice>`+64`<unk>`+`</slice>` joined by "\\n": 598 tokens for 9 x 64 = 576 visual embeddings.

Bit-exactness with the reference needs exactly these choices: Pillow BICUBIC resizing of the
*original* image for both the overview and the refine image, Python `round` (half to even) in
`ensure_divide`, `int()` truncation in `find_best_resize`, and the first minimum in the grid search.

`slice_mode=False` (not used by MiniCPM-V 4.5): the reference passes the image through unresized
and its patch unfold silently drops the right/bottom remainder; we return the same pixels by
cropping the image to whole patches (top-left anchored), so there is a single 'overview'.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from minicpmv.config import ProcessorConfig
from minicpmv.errors import InputError
from minicpmv.processor.image import load_image

IMAGE_START, IMAGE_END = "<image>", "</image>"
SLICE_START, SLICE_END = "<slice>", "</slice>"
ID_START, ID_END = "<image_id>", "</image_id>"
UNK = "<unk>"  # token 128244, one per visual embedding

Box = tuple[int, int, int, int]  # (left, top, right, bottom) in pixels, PIL crop order


@dataclass
class SlicedImage:
    """overview: the whole image at ~scale² area; slices: the refine image cut row-major;
    grid: (cols, rows), None when the image is not sliced."""

    overview: Image.Image
    slices: list[Image.Image]
    grid: tuple[int, int] | None


@dataclass
class ProcessedImage:
    """pixel_values: normalised float32[3, H, W] per slice, overview first (H, W multiples of 14);
    tgt_sizes: int32[n, 2] = (H/14, W/14) per slice; grid: (cols, rows) or None."""

    pixel_values: list[torch.Tensor]
    tgt_sizes: torch.Tensor
    grid: tuple[int, int] | None


def ensure_divide(length: float, multiple: int) -> int:
    """Nearest multiple of `multiple`, at least `multiple` itself. Python `round` sends ties to the
    even quotient: ensure_divide(21, 14) = 28 (round(1.5) = 2), ensure_divide(35, 14) = 28
    (round(2.5) = 2, not 3), ensure_divide(3, 14) = 14 (round(0.21) = 0, raised to the minimum)."""
    return max(round(length / multiple) * multiple, multiple)


def find_best_resize(
    size_wh: tuple[float, float], scale_resolution: int = 448, patch_size: int = 14, allow_upscale: bool = False
) -> tuple[int, int]:
    """Size with the same aspect ratio and ~scale² area, sides rounded to multiples of `patch_size`.

    Images already within scale² keep their size (rounded) unless `allow_upscale`.
    Example, 640x480 (area 307,200 > 448² = 200,704): r = 4/3, h = int(448 / sqrt(r)) = 387,
    w = int(387 * r) = 516 -> (ensure_divide(516), ensure_divide(387)) = (518, 392).
    224x224 with allow_upscale: h = int(448 / 1) = 448, w = 448 -> (448, 448).
    """
    w, h = size_wh
    if w * h > scale_resolution * scale_resolution or allow_upscale:
        r = w / h
        h = int(scale_resolution / math.sqrt(r))  # truncation, as the reference
        w = int(h * r)
    return ensure_divide(w, patch_size), ensure_divide(h, patch_size)


def get_refine_size(
    size_wh: tuple[int, int], grid: tuple[int, int], scale_resolution: int = 448, patch_size: int = 14
) -> tuple[int, int]:
    """Size the original is resized to before it is cut into `grid` = (cols, rows) equal cells,
    each cell itself ~scale² area with sides multiples of `patch_size`.

    Example, 640x480 with grid (2, 1): the image rounds to 640x480 (multiples of 2 and 1), so a
    cell is 320.0x480.0; upscaled to ~448² area that is 364x546; the refine image is 728x546.
    """
    w, h = size_wh
    cols, rows = grid
    cell_w = ensure_divide(w, cols) / cols  # float cell sizes, as the reference
    cell_h = ensure_divide(h, rows) / rows
    best_w, best_h = find_best_resize((cell_w, cell_h), scale_resolution, patch_size, allow_upscale=True)
    return best_w * cols, best_h * rows


def get_sliced_grid(
    size_wh: tuple[int, int], max_slice_nums: int = 9, scale_resolution: int = 448
) -> tuple[int, int] | None:
    """(cols, rows) of slices for an image, or None when it is not sliced.

    n = min(ceil(area / scale²), max_slice_nums) slices are wanted; None when n <= 1 (so
    max_slice_nums = 1 never slices). Candidates are every factorisation cols x rows of n - 1, n,
    n + 1 (skipping 1 and counts above max_slice_nums), in that order and by increasing cols; the
    first with the smallest |log(w/h) - log(cols/rows)| wins (strict '<').
    Example, 449x449: area/448² = 1.004 -> n = 2; candidates [1,2], [2,1], [1,3], [3,1]; [1,2]
    and [2,1] tie at |log 2| -> (1, 2), the first. 640x480 -> (2, 1); 1344x1344 -> (3, 3).
    """
    if max_slice_nums < 1:
        raise InputError(f"max_slice_nums must be >= 1 (1 = never slice), got {max_slice_nums}")
    w, h = size_wh
    log_ratio = math.log(w / h)
    wanted = min(math.ceil(w * h / (scale_resolution * scale_resolution)), max_slice_nums)
    if wanted <= 1:
        return None
    counts = [n for n in (wanted - 1, wanted, wanted + 1) if n != 1 and n <= max_slice_nums]
    best, best_err = None, math.inf
    for n in counts:
        for cols in range(1, n + 1):
            if n % cols == 0:
                err = abs(log_ratio - math.log(cols / (n // cols)))
                if err < best_err:
                    best, best_err = (cols, n // cols), err
    return best


def slice_boxes(refine_wh: tuple[int, int], grid: tuple[int, int]) -> list[Box]:
    """Crop boxes of the grid cells, row-major. Example: (728, 546) with grid (2, 1) ->
    [(0, 0, 364, 546), (364, 0, 728, 546)]."""
    cols, rows = grid
    cell_w, cell_h = refine_wh[0] // cols, refine_wh[1] // rows
    return [(c * cell_w, r * cell_h, (c + 1) * cell_w, (r + 1) * cell_h) for r in range(rows) for c in range(cols)]


def slice_image(
    image: Image.Image,
    max_slice_nums: int = 9,
    scale_resolution: int = 448,
    patch_size: int = 14,
    slice_mode: bool = True,
) -> SlicedImage:
    """Overview + row-major slices of `image` (see the module docstring for a worked example)."""
    grid, overview, refine = _resize(image, max_slice_nums, scale_resolution, patch_size, slice_mode)
    slices = [refine.crop(box) for box in slice_boxes(refine.size, grid)] if grid else []
    return SlicedImage(overview=overview, slices=slices, grid=grid)


def _resize(
    image: Image.Image, max_slice_nums: int, scale_resolution: int, patch_size: int, slice_mode: bool
) -> tuple[tuple[int, int] | None, Image.Image, Image.Image | None]:
    """(grid, overview, refine image or None): the two BICUBIC resizes of the original."""
    w, h = image.size
    if w <= 0 or h <= 0:
        raise InputError(f"cannot slice a {w}x{h} image (no pixels); pass an image with at least one pixel")
    if not slice_mode:
        return None, _crop_to_patches(image, patch_size), None
    grid = get_sliced_grid(image.size, max_slice_nums, scale_resolution)
    # Unsliced images are always resized to ~scale² area, upscaling small ones (reference behaviour).
    overview_wh = find_best_resize(image.size, scale_resolution, patch_size, allow_upscale=grid is None)
    overview = image.resize(overview_wh, Image.Resampling.BICUBIC)
    if grid is None:
        return None, overview, None
    refine_wh = get_refine_size(image.size, grid, scale_resolution, patch_size)
    return grid, overview, image.resize(refine_wh, Image.Resampling.BICUBIC)


def _crop_to_patches(image: Image.Image, patch_size: int) -> Image.Image:
    """slice_mode=False: keep the image as is, minus the partial patches the reference drops."""
    w, h = image.size
    keep_w, keep_h = w // patch_size * patch_size, h // patch_size * patch_size
    if keep_w == 0 or keep_h == 0:
        raise InputError(
            f"a {w}x{h} image is smaller than one {patch_size}x{patch_size} patch; with slice_mode=False "
            "images are not resized, so pass a larger image or enable slice_mode"
        )
    return image if (keep_w, keep_h) == (w, h) else image.crop((0, 0, keep_w, keep_h))


def to_tensor(
    image: Image.Image | np.ndarray, mean: tuple[float, float, float], std: tuple[float, float, float]
) -> torch.Tensor:
    """RGB uint8 image (PIL or (H, W, 3) array, views allowed) -> float32[3, H, W] = (x / 255 - mean) / std.

    The same float32 operations in the same order as the reference (`astype(float32) / 255`, then
    `(x - mean) / std`), so the result is bit-identical; done in place on one planar buffer.
    Example, mean = std = 0.5: 0 -> -1.0, 255 -> 1.0, 128 -> 0.003921628.
    """
    pixels = np.asarray(image)  # (H, W, 3) uint8
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] != 3:
        raise InputError(f"to_tensor needs an RGB uint8 image, got {pixels.dtype} array of shape {pixels.shape}")
    out = np.empty((3, *pixels.shape[:2]), dtype=np.float32)  # (3, H, W)
    out[...] = pixels.transpose(2, 0, 1)  # (H, W, 3) uint8 -> (3, H, W) float32
    out /= np.float32(255)
    out -= np.asarray(mean, dtype=np.float32)[:, None, None]
    out /= np.asarray(std, dtype=np.float32)[:, None, None]
    return torch.from_numpy(out)


def image_placeholder(grid: tuple[int, int] | None, image_idx: int | None, feature_size: int = 64) -> str:
    """Prompt text that stands for one image (spec §4.4); `image_idx=None` omits the id.

    Example, grid (2, 2), image_idx 0 (<unk>*64 written for 64 copies of <unk>):
    `<image_id>0</image_id><image><unk>*64</image>` + `<slice><unk>*64</slice><slice><unk>*64</slice>`
    + "\\n" + `<slice><unk>*64</slice><slice><unk>*64</slice>` (no separator after `</image>`,
    no trailing newline): 334 tokens.
    """
    span = UNK * feature_size
    text = "" if image_idx is None else f"{ID_START}{image_idx}{ID_END}"
    text += IMAGE_START + span + IMAGE_END
    if grid is not None:
        cols, rows = grid
        text += "\n".join([(SLICE_START + span + SLICE_END) * cols] * rows)
    return text


def process_image(image: Image.Image, cfg: ProcessorConfig, max_slice_nums: int | None = None) -> ProcessedImage:
    """Slice and normalise one image: the pixel side of the reference image processor.

    `max_slice_nums` overrides `cfg.max_slice_nums` (the reference's per-call argument, e.g. 1
    for video frames). Non-RGB images are converted as `load_image` does (without EXIF rotation).
    Example, 640x480 with the defaults: pixel_values shapes [3,392,518], [3,546,364], [3,546,364];
    tgt_sizes [[28,37],[39,26],[39,26]]; grid (2, 1).
    """
    if image.mode != "RGB":
        image = load_image(image, exif_transpose=False)
    n = cfg.max_slice_nums if max_slice_nums is None else max_slice_nums
    grid, overview, refine = _resize(image, n, cfg.scale_resolution, cfg.patch_size, cfg.slice_mode)
    pixel_values = [to_tensor(overview, cfg.norm_mean, cfg.norm_std)]
    if grid is not None:
        refine_px = np.asarray(refine)  # (H, W, 3) uint8, one copy; slices are views of it
        for left, top, right, bottom in slice_boxes(refine.size, grid):
            pixel_values.append(to_tensor(refine_px[top:bottom, left:right], cfg.norm_mean, cfg.norm_std))
    p = cfg.patch_size
    tgt_sizes = torch.tensor([[t.shape[1] // p, t.shape[2] // p] for t in pixel_values], dtype=torch.int32)  # (n, 2)
    return ProcessedImage(pixel_values=pixel_values, tgt_sizes=tgt_sizes, grid=grid)
