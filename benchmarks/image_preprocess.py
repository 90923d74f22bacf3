"""Image pre-processing time: encoded PNG/JPEG bytes in memory -> normalised slice tensors.

    .venv/bin/python benchmarks/image_preprocess.py [--repeats N]

`ours`     = `load_image` + `process_image` (one array per refine image, slices are views of it,
             normalisation as in-place float32 ops on one planar buffer).
`baseline` = the straightforward route the reference takes, written out here: PIL crop per slice,
             `np.array` of each slice, per-pixel-channel arithmetic in plain torch, then the
             reference's per-patch `F.unfold` strip layout [3, 14, N*14].
Both decode with Pillow and resize with Pillow BICUBIC from the original (required for bit parity),
so those stages bound the possible gain; the table shows the stage split of `ours` too. Ours and
baseline run interleaved in the same process and the median of `repeats` runs is reported; the
outputs are checked to be identical (after undoing the strip layout) before timing.
"""

from __future__ import annotations

import argparse
import io
import statistics
import time
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from minicpmv.config import ProcessorConfig
from minicpmv.processor.image import load_image
from minicpmv.processor.slicing import find_best_resize, get_refine_size, get_sliced_grid, process_image, slice_boxes

SIZES = [(640, 480), (1920, 1080), (4032, 3024)]
CFG = ProcessorConfig()


def photo_like(w: int, h: int, seed: int = 0) -> Image.Image:
    """Smooth colour gradients plus mild noise: compresses roughly like a photo."""
    rng = np.random.default_rng(seed)
    x = np.linspace(0, 1, w, dtype=np.float32)[None, :]
    y = np.linspace(0, 1, h, dtype=np.float32)[:, None]
    base = np.stack(np.broadcast_arrays(255 * x, 255 * y, 128 + 127 * np.sin(8 * x + 5 * y)), axis=-1)  # (H, W, 3)
    noisy = base + rng.normal(0, 6, base.shape)
    return Image.fromarray(noisy.clip(0, 255).astype(np.uint8))


def encode(image: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buf.getvalue()


def ours(data: bytes) -> list[torch.Tensor]:
    return process_image(load_image(data), CFG).pixel_values


def baseline(data: bytes) -> list[torch.Tensor]:
    """Reference-style: every slice is a PIL image, converted and normalised on its own."""
    image = Image.open(io.BytesIO(data)).convert("RGB")
    s, p = CFG.scale_resolution, CFG.patch_size
    grid = get_sliced_grid(image.size, CFG.max_slice_nums, s)
    pieces = [image.resize(find_best_resize(image.size, s, p, allow_upscale=grid is None), Image.Resampling.BICUBIC)]
    if grid is not None:
        refine = image.resize(get_refine_size(image.size, grid, s, p), Image.Resampling.BICUBIC)
        pieces += [refine.crop(box) for box in slice_boxes(refine.size, grid)]
    mean = torch.tensor(CFG.norm_mean, dtype=torch.float32)
    std = torch.tensor(CFG.norm_std, dtype=torch.float32)
    strips = []
    for piece in pieces:
        x = torch.from_numpy(np.array(piece)).to(torch.float32) / 255  # (H, W, 3)
        x = ((x - mean) / std).permute(2, 0, 1)  # (3, H, W)
        patches = F.unfold(x[None], (p, p), stride=(p, p))[0]  # (3*p*p, N)
        strips.append(patches.reshape(3, p, p, -1).permute(0, 1, 3, 2).reshape(3, p, -1))  # (3, p, N*p)
    return strips


def unstrip(strip: torch.Tensor, hw: tuple[int, int], p: int = 14) -> torch.Tensor:
    """[3, p, N*p] patch strip -> [3, H, W] (inverse of the reference reshape_by_patch)."""
    h, w = hw[0] // p, hw[1] // p
    return strip.reshape(3, p, h, w, p).permute(0, 2, 1, 3, 4).reshape(3, h * p, w * p)


def timed(fn: Callable[[], object], times: list[float]) -> None:
    """Run `fn` once and append its wall time in ms to `times`."""
    start = time.perf_counter()
    fn()
    times.append((time.perf_counter() - start) * 1e3)


def stages_ms(data: bytes, repeats: int) -> tuple[float, float]:
    """Median decode time and median slice+normalise time of `ours`."""
    dec, proc = [], []
    for _ in range(repeats):
        timed(lambda: load_image(data), dec)
        image = load_image(data)
        timed(lambda: process_image(image, CFG), proc)
    return statistics.median(dec), statistics.median(proc)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()
    torch.set_num_threads(1)  # Pillow and numpy stages are single-threaded; keep torch comparable
    print(f"torch {torch.__version__}, numpy {np.__version__}, Pillow {Image.__version__}, 1 torch thread, "
          f"median of {args.repeats} interleaved runs\n")
    print("| image | format | slices | decode ms | slice+normalise ms | ours ms | baseline ms | baseline / ours |")
    print("|---|---|---|---|---|---|---|---|")
    for w, h in SIZES:
        for fmt in ("PNG", "JPEG"):
            data = encode(photo_like(w, h), fmt)
            got, ref = ours(data), baseline(data)
            assert len(got) == len(ref) and all(torch.equal(g, unstrip(r, g.shape[1:])) for g, r in zip(got, ref))
            t_ours, t_base = [], []
            for _ in range(args.repeats):
                timed(lambda: ours(data), t_ours)
                timed(lambda: baseline(data), t_base)
            dec, proc = stages_ms(data, args.repeats)
            o, b = statistics.median(t_ours), statistics.median(t_base)
            print(f"| {w}x{h} | {fmt} | {len(got)} | {dec:.1f} | {proc:.1f} | {o:.1f} | {b:.1f} | {b / o:.2f}x |")


if __name__ == "__main__":
    main()
