"""SigLIP so400m/14 NaViT vision tower (`vpm.*` in the checkpoint), variable resolution.

Each slice `[3, H, W]` (H, W multiples of 14) becomes `h*w = (H/14)*(W/14)` patch tokens in
row-major order. Slices of one call are padded to the longest; padded tokens get position id 0
and are masked as attention keys (architecture.md §3).
"""

from __future__ import annotations

from functools import lru_cache
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from minicpmv.config import VisionConfig


@lru_cache(maxsize=None)
def bucket_ids_1d(n: int, num_per_side: int = 70) -> torch.Tensor:
    """Bucket of each of the `n` patches along one side in the `num_per_side` position grid.

    Reproduces the reference float32 semantics exactly: the fractional coordinate of patch k is
    `k * float32(1/n)` (the reference divides by an int32 tensor, so the step is float32), and it
    is bucketed against `arange(1/70, 1, 1/70)` in float32. This is *almost* floor(k*70/n); e.g.
    n=25, k=5: 5*0.04 -> 0.2 lands just below the boundary 14/70 -> bucket 13 (floor gives 14).
    Common sizes agree with floor: n=32 -> [0, 2, 4, 6, 8, 10, 13, 15, ...].
    Cached per n, so it runs once per side length. Returns int64[n] (do not modify in place).
    """
    boundaries = torch.arange(1 / num_per_side, 1.0, 1 / num_per_side, dtype=torch.float32)
    step = (1 / torch.tensor(n, dtype=torch.int32)).item()  # float32(1/n) as a Python float
    frac = torch.arange(0, 1 - 1e-6, step, dtype=torch.float32)
    ids = torch.bucketize(frac, boundaries, right=True)
    if ids.numel() != n:
        raise ValueError(f"bucketing side length {n} gave {ids.numel()} coordinates, expected {n}")
    return ids


def position_ids_2d(h: int, w: int, num_per_side: int = 70) -> torch.Tensor:
    """Row-major position ids of an h x w patch grid: id[r*w + c] = bh[r]*num_per_side + bw[c].

    Example (num_per_side 70): h=2, w=3 -> bh=[0, 35], bw=[0, 23, 46] -> [0, 23, 46, 2450, 2473, 2496].
    """
    bh, bw = bucket_ids_1d(h, num_per_side), bucket_ids_1d(w, num_per_side)
    return (bh[:, None] * num_per_side + bw[None, :]).flatten()  # [h*w]


def patchify(image: torch.Tensor, patch: int) -> torch.Tensor:
    """[C, H, W] -> [h*w, C*patch*patch], patches row-major, each flattened as (c, kh, kw) like a conv kernel."""
    c, hh, ww = image.shape
    if hh % patch or ww % patch:
        raise ValueError(f"slice of {hh}x{ww} pixels is not a multiple of the {patch}-pixel patch")
    h, w = hh // patch, ww // patch
    x = image.reshape(c, h, patch, w, patch).permute(1, 3, 0, 2, 4)  # [h, w, C, p, p]
    return x.reshape(h * w, c * patch * patch)


class VisionOutput(NamedTuple):
    hidden: torch.Tensor  # [B, L_max, D] after post_layernorm; rows >= lengths[b] are padding
    lengths: torch.Tensor  # int64[B] valid tokens per slice (= h*w)


class VisionEmbeddings(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.patch_size = cfg.patch_size
        self.num_per_side = cfg.num_patches_per_side
        self.patch_embedding = nn.Conv2d(cfg.num_channels, cfg.hidden_size, cfg.patch_size, cfg.patch_size)
        self.position_embedding = nn.Embedding(self.num_per_side**2, cfg.hidden_size)

    def forward(self, slices: list[torch.Tensor], tgt_sizes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """slices: float[3, H_i, W_i] each; tgt_sizes int[B, 2]. Returns embeddings [B, L_max, D] and lengths [B]."""
        sizes = [(int(h), int(w)) for h, w in tgt_sizes.tolist()]
        for i, (s, (h, w)) in enumerate(zip(slices, sizes)):
            if tuple(s.shape[1:]) != (h * self.patch_size, w * self.patch_size):
                raise ValueError(f"slice {i} has shape {tuple(s.shape)} but tgt_sizes says {h}x{w} patches")
        lengths = [h * w for h, w in sizes]
        weight = self.patch_embedding.weight
        # A stride=kernel conv is a matmul over flattened patches: one GEMM for every slice at once.
        patches = nn.utils.rnn.pad_sequence(
            [patchify(s.to(device=weight.device, dtype=weight.dtype), self.patch_size) for s in slices], batch_first=True
        )  # [B, L_max, 3*p*p], padded patches are zeros
        emb = F.linear(patches, weight.flatten(1), self.patch_embedding.bias)  # [B, L_max, D]
        pos = torch.zeros(emb.shape[:2], dtype=torch.long)
        for i, (h, w) in enumerate(sizes):
            pos[i, : h * w] = position_ids_2d(h, w, self.num_per_side)
        emb = emb + self.position_embedding(pos.to(emb.device))
        return emb, torch.tensor(lengths, dtype=torch.long, device=emb.device)


class VisionAttention(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        d = cfg.hidden_size
        if d % cfg.num_heads:
            raise ValueError(f"vision hidden size {d} is not divisible by {cfg.num_heads} heads")
        self.num_heads = cfg.num_heads
        self.q_proj, self.k_proj = nn.Linear(d, d), nn.Linear(d, d)
        self.v_proj, self.out_proj = nn.Linear(d, d), nn.Linear(d, d)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
        """x [B, L, D]; key_mask bool[B, 1, 1, L] (True = attend) or None when nothing is padded."""
        b, n, d = x.shape
        heads = (b, n, self.num_heads, d // self.num_heads)
        q = self.q_proj(x).view(heads).transpose(1, 2)  # [B, H, L, hd]
        k = self.k_proj(x).view(heads).transpose(1, 2)
        v = self.v_proj(x).view(heads).transpose(1, 2)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask)  # [B, H, L, hd]
        return self.out_proj(o.transpose(1, 2).reshape(b, n, d))  # [B, L, D]


class VisionMLP(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.fc1 = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.fc2 = nn.Linear(cfg.intermediate_size, cfg.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class VisionBlock(nn.Module):
    """Pre-LN transformer block: x + attn(LN1 x), then + mlp(LN2 x)."""

    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.self_attn = VisionAttention(cfg)
        self.layer_norm2 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.mlp = VisionMLP(cfg)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x), key_mask)
        return x + self.mlp(self.layer_norm2(x))


class VisionEncoder(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.layers = nn.ModuleList(VisionBlock(cfg) for _ in range(cfg.num_layers))

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x, key_mask)
        return x


class SiglipVisionTower(nn.Module):
    """Slices -> per-patch features. Names match the checkpoint under `vpm.`."""

    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.embeddings = VisionEmbeddings(cfg)
        self.encoder = VisionEncoder(cfg)
        self.post_layernorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, slices: list[torch.Tensor], tgt_sizes: torch.Tensor) -> VisionOutput:
        """slices: B tensors float[3, 14*h_i, 14*w_i]; tgt_sizes int[B, 2] = (h_i, w_i).

        Returns hidden [B, L_max, D] (L_max = max h_i*w_i) and lengths int64[B].
        """
        if len(slices) != len(tgt_sizes):
            raise ValueError(f"{len(slices)} slices but {len(tgt_sizes)} tgt_sizes rows")
        x, lengths = self.embeddings(slices, tgt_sizes)  # [B, L_max, D]
        key_mask = None
        if bool((lengths < x.shape[1]).any()):
            valid = torch.arange(x.shape[1], device=x.device)[None, :] < lengths[:, None]  # [B, L_max]
            key_mask = valid[:, None, None, :]  # [B, 1, 1, L_max]
        x = self.encoder(x, key_mask)
        return VisionOutput(self.post_layernorm(x), lengths)
