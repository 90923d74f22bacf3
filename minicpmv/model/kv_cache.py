"""A preallocated key/value cache shared by generation, the engine and the RL rollouts."""

from __future__ import annotations

import torch

from minicpmv.config import LLMConfig


class KVCache:
    """Keys and values of every layer for B sequences, preallocated to `max_len` positions.

    k, v: [num_layers, B, num_kv_heads, max_len, head_dim]. All rows share one write position
    `length` (left padding keeps batched sequences aligned); the attention mask passed to the
    LLM says which of the `length` stored positions of each row are real.
    """

    def __init__(self, k: torch.Tensor, v: torch.Tensor, length: int = 0):
        self.k, self.v, self.length = k, v, length

    @classmethod
    def allocate(
        cls, cfg: LLMConfig, batch_size: int, max_len: int, dtype: torch.dtype = torch.float32, device=None
    ) -> "KVCache":
        shape = (cfg.num_layers, batch_size, cfg.num_kv_heads, max_len, cfg.head_dim)
        return cls(torch.zeros(shape, dtype=dtype, device=device), torch.zeros(shape, dtype=dtype, device=device))

    @property
    def max_len(self) -> int:
        return self.k.shape[3]

    @property
    def batch_size(self) -> int:
        return self.k.shape[1]

    def update(self, layer: int, k_new: torch.Tensor, v_new: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k_new/v_new [B, kvh, T, hd] at positions [length, length+T); return all keys/values so far."""
        t = k_new.shape[2]
        end = self.length + t
        if end > self.max_len:
            raise ValueError(f"KV cache overflow: {self.length} stored + {t} new > max_len {self.max_len}")
        self.k[layer, :, :, self.length : end] = k_new
        self.v[layer, :, :, self.length : end] = v_new
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]  # [B, kvh, end, hd]

    def advance(self, t: int) -> None:
        """Called once per forward, after every layer wrote its T new positions."""
        self.length += t

    def select(self, rows: torch.Tensor | list[int]) -> "KVCache":
        """A cache holding only `rows` of the batch (finished sequences stop costing compute)."""
        idx = torch.as_tensor(rows, dtype=torch.long, device=self.k.device)
        return KVCache(self.k.index_select(1, idx), self.v.index_select(1, idx), self.length)

    def expand_rows(self, repeats: int) -> "KVCache":
        """Each row repeated `repeats` times in place (beam search / n samples from one prefill)."""
        return KVCache(self.k.repeat_interleave(repeats, 1), self.v.repeat_interleave(repeats, 1), self.length)

    def nbytes(self) -> int:
        return self.k.numel() * self.k.element_size() * 2
