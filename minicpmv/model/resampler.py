"""The 3D-Resampler (the `resampler.` part of the checkpoint).

64 learned queries cross-attend, in one attention layer, over the patch features of one image
slice, or jointly over the same slice of every frame of a temporal group (video packing). 2D sincos
positions (and, for video frames, a 1D sincos timestamp embedding) are added to the KEYS only; the
values are the plain projected features. Output width = LLM width, via `x @ proj` ([in, out]).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from minicpmv.config import ResamplerConfig


def sincos_1d(positions: np.ndarray, dim: int) -> np.ndarray:
    """MAE-style 1D sincos embedding in numpy float32: [n] -> [n, dim] = [sin(p*w), cos(p*w)].

    `w_k = 1 / 10000 ** (k / (dim/2))` for k < dim/2. Numpy float32 throughout, as the reference
    (a torch float32 sin/cos differs by a few ulp for large p). Example: dim = 4, p = 1 ->
    w = [1, 0.01] -> [sin 1, sin .01, cos 1, cos .01].
    """
    if dim % 2:
        raise ValueError(f"sincos embedding width must be even, got {dim}")
    omega = np.arange(dim // 2, dtype=np.float32)
    omega /= dim / 2.0
    omega = 1.0 / 10000**omega  # [dim/2] float32
    out = np.einsum("m,d->md", np.asarray(positions, dtype=np.float32).reshape(-1), omega)  # [n, dim/2]
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)  # [n, dim]


def sincos_2d(height: int, width: int, dim: int) -> np.ndarray:
    """2D table [height, width, dim]: dims [0, dim/2) encode the COLUMN w, [dim/2, dim) the row h.

    Each half is `sincos_1d(., dim/2)`, so row r, column c is `[emb(c), emb(r)]` (the reference
    builds the same from `meshgrid(grid_w, grid_h)`, column first).
    """
    if dim % 4:
        raise ValueError(f"2D sincos width must be a multiple of 4, got {dim}")
    cols = np.broadcast_to(sincos_1d(np.arange(width), dim // 2)[None], (height, width, dim // 2))
    rows = np.broadcast_to(sincos_1d(np.arange(height), dim // 2)[:, None], (height, width, dim // 2))
    return np.concatenate([cols, rows], axis=-1)  # [H, W, dim]


class CrossAttention(nn.Module):
    """Multi-head attention with `nn.MultiheadAttention`'s parameter names and math (packed in_proj)."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"resampler width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))  # rows: Wq; Wk; Wv
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        self.out_proj = nn.Linear(dim, dim)

    def project(self, x: torch.Tensor, which: int) -> torch.Tensor:
        """Apply W_q (0), W_k (1) or W_v (2): [..., D] -> [..., D]."""
        d = x.shape[-1]
        return F.linear(x, self.in_proj_weight[which * d : (which + 1) * d], self.in_proj_bias[which * d : (which + 1) * d])

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_valid: torch.Tensor) -> torch.Tensor:
        """Already-projected q [Q, D], k/v [G, K, D], key_valid bool [G, K] -> [G, Q, D]."""
        g, n_k, d = k.shape
        h = self.num_heads
        qh = q.view(1, -1, h, d // h).transpose(1, 2).expand(g, -1, -1, -1)  # [G, H, Q, hd]
        kh = k.view(g, n_k, h, d // h).transpose(1, 2)  # [G, H, K, hd]
        vh = v.view(g, n_k, h, d // h).transpose(1, 2)  # [G, H, K, hd]
        mask = None if bool(key_valid.all()) else key_valid[:, None, None, :]  # [G, 1, 1, K]
        y = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=mask)  # [G, H, Q, hd]
        return self.out_proj(y.transpose(1, 2).reshape(g, -1, d))  # [G, Q, D]


class Resampler(nn.Module):
    """`resampler`: padded slice features -> 64 vectors per (group, slice index).

    forward(x, tgt_sizes, temporal_ids):
      x:            float[B, L, kv_dim], slice i valid in rows [0, h_i * w_i)
      tgt_sizes:    int[B, 2] (h_i, w_i) patches
      temporal_ids: None (each slice its own group, no time embedding) or G groups of ids with
                    sum of lengths == B; group g owns the next len(g) slices; id -1 = image slice
      returns       float[G, num_queries, embed_dim]
    """

    def __init__(self, cfg: ResamplerConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.embed_dim
        self.query = nn.Parameter(torch.empty(cfg.num_queries, d))
        self.kv_proj = nn.Linear(cfg.kv_dim, d, bias=False)
        self.attn = CrossAttention(d, cfg.num_heads)
        self.ln_q = nn.LayerNorm(d, eps=cfg.layer_norm_eps)
        self.ln_kv = nn.LayerNorm(d, eps=cfg.layer_norm_eps)
        self.ln_post = nn.LayerNorm(d, eps=cfg.layer_norm_eps)
        self.proj = nn.Parameter(torch.empty(d, d))  # [in, out], used as x @ proj
        # 1D sincos table for positions 0..n-1 (width D/2); the 2D embedding of patch (r, c) is [table[c], table[r]].
        self.register_buffer("pos_embed_1d", torch.empty(0, d // 2), persistent=False)
        self.reset_pos_cache()

    def reset_pos_cache(self, size: int | None = None) -> None:
        """(Re)build the float32 position cache for `size` (default max_size) positions per side."""
        n = size or self.cfg.max_size
        table = torch.from_numpy(sincos_1d(np.arange(n), self.cfg.embed_dim // 2))  # [n, D/2]
        self.pos_embed_1d = table.to(self.query.device)

    def pos_2d(self, sizes: list[tuple[int, int]]) -> torch.Tensor:
        """2D sincos rows of every valid patch of every slice, concatenated: [sum h*w, D] (float32)."""
        longest = max(max(h, w) for h, w in sizes)
        if longest > self.pos_embed_1d.shape[0]:  # grow on demand, once per new maximum side
            self.reset_pos_cache(longest)
        rows = torch.cat([torch.arange(h).repeat_interleave(w) for h, w in sizes])  # [N]
        cols = torch.cat([torch.arange(w).repeat(h) for h, w in sizes])  # [N]
        table = self.pos_embed_1d
        return torch.cat([table[cols.to(table.device)], table[rows.to(table.device)]], dim=-1)  # [N, D]

    def temporal(self, ids: list[int], lengths: list[int], device) -> torch.Tensor:
        """Per-key temporal embedding [sum lengths, D]: row of id t (zeros for -1), repeated per key."""
        row_of = {t: i + 1 for i, t in enumerate(sorted({t for t in ids if t >= 0}))}  # row 0 = zeros for -1
        rows = torch.zeros(len(row_of) + 1, self.cfg.embed_dim)  # [U + 1, D]
        if row_of:
            rows[1:] = torch.from_numpy(sincos_1d(np.array(list(row_of)), self.cfg.embed_dim))  # on demand
        index = torch.tensor([row_of.get(t, 0) for t in ids])  # [B]
        return rows[index].to(device).repeat_interleave(torch.tensor(lengths, device=device), dim=0)  # [N, D]

    def queries(self) -> torch.Tensor:
        """The projected learned queries [Q, D] (the same for every group)."""
        return self.attn.project(self.ln_q(self.query), 0)

    def keys_values(self, rows: torch.Tensor, sizes: list[tuple[int, int]], ids: list[int] | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Projected keys and values [N, D] of the valid patch rows [N, D_vision] of slices of `sizes` (slice-major):
        2D positions (and, given per-slice temporal `ids`, time) are added to the keys only."""
        kv = self.ln_kv(self.kv_proj(rows))  # [N, D]
        key_in = kv + self.pos_2d(sizes).to(kv.dtype)
        if ids is not None:
            key_in = key_in + self.temporal(ids, [h * w for h, w in sizes], kv.device).to(kv.dtype)
        return self.attn.project(key_in, 1), self.attn.project(kv, 2)

    def forward(self, x: torch.Tensor, tgt_sizes: torch.Tensor, temporal_ids: list[list[int]] | None = None) -> torch.Tensor:
        sizes = [(int(h), int(w)) for h, w in tgt_sizes.tolist()]
        lengths = [h * w for h, w in sizes]
        groups, ids = _groups(temporal_ids, len(sizes))
        if x.shape[0] != len(sizes) or max(lengths) > x.shape[1]:
            raise ValueError(f"resampler x {tuple(x.shape)} does not fit tgt_sizes {sizes}")
        valid = torch.arange(x.shape[1], device=x.device)[None] < torch.tensor(lengths, device=x.device)[:, None]
        k, v = self.keys_values(x[valid], sizes, ids if temporal_ids is not None else None)  # [N, D] each
        # Pack each group's keys (all its frames, concatenated) into one padded row.
        group_len = [sum(lengths[s : s + n]) for s, n in groups]
        dest, key_valid = _pack_index(group_len, x.device)  # [N], [G, K]
        g, n_k = key_valid.shape
        k_packed = k.new_zeros(g * n_k, k.shape[-1]).index_copy(0, dest, k).view(g, n_k, -1)  # [G, K, D]
        v_packed = v.new_zeros(g * n_k, v.shape[-1]).index_copy(0, dest, v).view(g, n_k, -1)  # [G, K, D]
        out = self.attn(self.queries(), k_packed, v_packed, key_valid)  # [G, Q, D]
        return self.ln_post(out) @ self.proj  # [G, Q, D]


def _groups(temporal_ids: list[list[int]] | None, n_slices: int) -> tuple[list[tuple[int, int]], list[int]]:
    """(start slice, number of slices) per group, and the flat temporal id per slice.

    Example: [[0, 3, 7], [10, 13]] over 5 slices -> [(0, 3), (3, 2)], [0, 3, 7, 10, 13].
    None -> every slice its own group with id -1.
    """
    if temporal_ids is None:
        return [(i, 1) for i in range(n_slices)], [-1] * n_slices
    flat = [int(t) for g in temporal_ids for t in g]
    if min(flat, default=-1) < -1:
        raise ValueError(f"temporal ids must be >= 0 (video frame, 0.1 s units) or -1 (image slice), got {min(flat)}")
    if len(flat) != n_slices or any(len(g) == 0 for g in temporal_ids):
        raise ValueError(
            f"temporal_ids {temporal_ids} cover {len(flat)} slices in {len(temporal_ids)} groups, but there are "
            f"{n_slices} slices (every group needs >= 1 id and the ids must cover each slice exactly once)"
        )
    starts = np.cumsum([0] + [len(g) for g in temporal_ids[:-1]]).tolist()
    return [(s, len(g)) for s, g in zip(starts, temporal_ids)], flat


def _pack_index(group_len: list[int], device) -> tuple[torch.Tensor, torch.Tensor]:
    """Destination of each key in a flattened [G, K_max] layout, and its validity mask.

    Example: group lengths [3, 1] -> K_max 3, dest [0, 1, 2, 3], valid [[T, T, T], [T, F, F]].
    """
    k_max = max(group_len)
    lens = torch.tensor(group_len, device=device)
    key_valid = torch.arange(k_max, device=device)[None] < lens[:, None]  # [G, K]
    dest = torch.arange(len(group_len) * k_max, device=device).view(-1, k_max)[key_valid]  # [N]
    return dest, key_valid
