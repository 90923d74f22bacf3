"""Vision tower + 3D-Resampler at the real MiniCPM-V 4.5 sizes (ViT 1152 x 27, resampler 4096), random weights.

Workloads: one 1344x1344 image (overview + 3x3 slices = 10 slices of 32x32 patches) and 48 frames of
448x448 packed by 3 (16 groups) and by 6 (8 groups). The ViT work of the two video packings is the
same (48 slices), so it is timed once and shared; only the resampler differs.

Efficiency = achieved vision-tower FLOP/s / plain matmul FLOP/s measured in the same run, same dtype.
On CPU both rates are per busy second (process CPU time / threads), so other processes sharing the
cores do not skew the ratio; the seconds columns are wall-clock.
`--vit-layers` runs fewer ViT layers (the real width, FLOP/s unaffected) and extrapolates the time
to 27 layers linearly, for slow machines. Usage:

    .venv/bin/python benchmarks/vision_resampler.py [--dtypes float32,bfloat16] [--vit-layers 27]
        [--workloads image,video] [--device cpu]
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import torch
import torch.nn.functional as F

from minicpmv.config import ModelConfig
from minicpmv.model.minicpmv import vit_in_chunks
from minicpmv.model.resampler import Resampler
from minicpmv.model.vision import SiglipVisionTower
from minicpmv.model.weights import init_random_

REAL = ModelConfig()


def vit_flops(cfg, tokens_per_slice: list[int]) -> float:
    """Multiply-adds x 2 of the ViT: patch embedding, q/k/v/o projections, attention, MLP, per layer."""
    d, i, p = cfg.hidden_size, cfg.intermediate_size, cfg.patch_size
    total = 0.0
    for n in tokens_per_slice:
        per_layer = 2 * n * (4 * d * d + 2 * d * i) + 2 * 2 * n * n * d
        total += 2 * n * (3 * p * p) * d + cfg.num_layers * per_layer
    return total


def matmul_flops_per_busy_s(dtype: torch.dtype, device: str) -> float:
    """The faster of `a @ w.T` and `F.linear(a, w)`, best of 3 each, for [4096, 1152] x [4304, 1152]
    (the ViT's fc1 shape), per busy second.

    Both, because their kernels differ: on CPUs without native bf16, `@` is ~5x slower than the
    `linear` every model layer uses; in float32 `@` is slightly faster.
    """
    a = torch.randn(4096, REAL.vision.hidden_size, dtype=dtype, device=device)
    w = torch.randn(REAL.vision.intermediate_size, REAL.vision.hidden_size, dtype=dtype, device=device)
    best = min(_timed(op, device)[2] for op in (lambda: a @ w.T, lambda: F.linear(a, w)) for _ in range(3))
    return 2 * a.shape[0] * a.shape[1] * w.shape[0] / best


def _timed(fn, device: str):
    """(result, wall seconds, busy seconds). Busy = this process's CPU seconds / threads on CPU (immune to
    other processes competing for the cores), wall time on GPU."""
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    if cuda:
        torch.cuda.synchronize()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return out, wall, wall if cuda else cpu / torch.get_num_threads()


def workloads(names: list[str]) -> list[tuple[str, int, list[list[list[int]]], list[str]]]:
    """(label, number of 448x448 slices, temporal-id groupings, grouping labels)."""
    out = []
    if "image" in names:
        out.append(("1344x1344 image (10 slices)", 10, [[[-1]] * 10], ["per-slice"]))
    if "video" in names:
        ids = list(range(0, 480, 10))  # 48 frames at 1 fps, ids in 0.1 s units
        by3 = [ids[i : i + 3] for i in range(0, 48, 3)]
        by6 = [ids[i : i + 6] for i in range(0, 48, 6)]
        out.append(("48 frames 448x448", 48, [by3, by6], ["packed by 3", "packed by 6"]))
    return out


def run(dtype: torch.dtype, vit_layers: int, names: list[str], device: str):
    """Yield one markdown row per (workload, grouping)."""
    vis_cfg = replace(REAL.vision, num_layers=vit_layers)
    vpm, resampler = SiglipVisionTower(vis_cfg), Resampler(REAL.resampler)
    for m in (vpm, resampler):
        m.to(device=device, dtype=dtype).eval()
        init_random_(m, seed=0)
    resampler.reset_pos_cache()
    peak = matmul_flops_per_busy_s(dtype, device)
    side = REAL.scale_resolution // REAL.patch_size  # 32 patches
    tiny = torch.tensor([[2, 2]])
    for label, n, groupings, group_labels in workloads(names):
        slices = [torch.rand(3, REAL.scale_resolution, REAL.scale_resolution, device=device) * 2 - 1 for _ in range(n)]
        tgt = torch.tensor([[side, side]] * n, dtype=torch.int32)
        with torch.no_grad():
            resampler(vpm([slices[0][:, :28, :28]], tiny).hidden, tiny)  # warm-up on a 2x2-patch slice
            # The ViT alone first, then each resampler grouping on its output.
            feats, t_vit, busy = _timed(lambda: vit_in_chunks(vpm, slices, tgt, REAL.vision_batch_size), device)
            achieved = vit_flops(vis_cfg, [side * side] * n) / busy
            t_full = t_vit * REAL.vision.num_layers / vit_layers
            for groups, g_label in zip(groupings, group_labels):
                t_res = _timed(lambda: resampler(feats, tgt, groups), device)[1]
                yield (
                    f"| {str(dtype).removeprefix('torch.')} | {label}, {g_label} | {n} | {len(groups)} | {vit_layers} "
                    f"| {t_vit:.2f} | {t_full:.1f} | {t_res:.2f} | {t_full + t_res:.1f} | {achieved / 1e9:.1f} "
                    f"| {peak / 1e9:.1f} | {achieved / peak:.2f} |"
                )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--vit-layers", type=int, default=REAL.vision.num_layers)
    ap.add_argument("--workloads", default="image,video")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    print(f"device {args.device}, torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    print(
        "| dtype | workload | slices | groups | ViT layers run | ViT s (run) | ViT s (27 layers) | resampler s "
        "| total s (27 layers) | ViT GFLOP/busy s | matmul GFLOP/busy s | ViT / matmul |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name in args.dtypes.split(","):
        for row in run(getattr(torch, name), args.vit_layers, args.workloads.split(","), args.device):
            print(row, flush=True)


if __name__ == "__main__":
    main()
