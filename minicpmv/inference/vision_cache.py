"""A bounded LRU of encoded vision features, so a multi-turn chat does not re-encode its images.

The unit is one resampler output group: an image slice (temporal ids `[-1]`) or the same slice of
every frame of a packed video group. Its 64 output rows depend only on its own pixels, patch
sizes and temporal ids (the ViT masks padding and the resampler attends within a group), so the
key is a content hash of exactly those. A second turn about the same photo, or a new image added
next to a cached one, re-encodes only what is new. The reference implementation re-encodes every
image on every turn (architecture spec §6.3).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass

import torch


def group_key(slices: list[torch.Tensor], tgt_sizes: torch.Tensor, temporal_ids: list[int]) -> str:
    """Content hash (BLAKE2b, 128 bit) of one group's pixel slices, their patch sizes and temporal ids.

    Shapes and dtypes are hashed with the bytes, so equal bytes in another layout never collide.
    Example: the overview slice of a 448x448 photo, tgt (32, 32), ids [-1] -> a 32-hex-digit key
    that is the same in every turn the photo is sent again.
    """
    h = hashlib.blake2b(digest_size=16)
    for s in slices:
        s = s.detach().contiguous().cpu()
        h.update(f"{tuple(s.shape)}:{s.dtype};".encode())
        h.update(memoryview(s.view(torch.uint8).numpy()))
    h.update(f"tgt={torch.as_tensor(tgt_sizes).reshape(-1, 2).tolist()};ids={list(temporal_ids)}".encode())
    return h.hexdigest()


def split_groups(n_slices: int, temporal_ids: list[list[int]] | None) -> list[tuple[int, int]]:
    """(start, end) slice range of each group: groups cover consecutive slices in order.

    Example: 5 slices with temporal ids [[0, 3, 7], [10, 13]] -> [(0, 3), (3, 5)]; no temporal
    ids -> one group per slice.
    """
    groups = temporal_ids or [[-1]] * n_slices
    bounds, start = [], 0
    for g in groups:
        bounds.append((start, start + len(g)))
        start += len(g)
    if start != n_slices:
        raise ValueError(f"temporal ids {groups} cover {start} slices but there are {n_slices}")
    return bounds


@dataclass
class CacheStats:
    hits: int = 0  # groups served from the cache
    misses: int = 0  # groups that had to be encoded
    evictions: int = 0
    encode_calls: int = 0  # calls of model.encode_vision


class VisionCache:
    """LRU of resampler outputs [Q, D] by `group_key`, bounded by the bytes of the stored tensors.

    Not thread-safe: the engine owns it and uses it from its one loop thread.
    """

    def __init__(self, max_bytes: int = 1 << 30):
        if max_bytes < 0:
            raise ValueError(f"vision cache size must be >= 0 bytes, got {max_bytes}")
        self.max_bytes = max_bytes
        self.nbytes = 0
        self.stats = CacheStats()
        self._items: OrderedDict[str, torch.Tensor] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: str) -> torch.Tensor | None:
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    def put(self, key: str, value: torch.Tensor) -> None:
        """Store `value`, evicting least recently used entries; a value larger than the budget is skipped."""
        size = value.numel() * value.element_size()
        if size > self.max_bytes:
            return
        if key in self._items:
            self.nbytes -= self._nbytes(self._items.pop(key))
        while self.nbytes + size > self.max_bytes:
            _, old = self._items.popitem(last=False)
            self.nbytes -= self._nbytes(old)
            self.stats.evictions += 1
        self._items[key] = value
        self.nbytes += size

    def clear(self) -> None:
        self._items.clear()
        self.nbytes = 0

    @staticmethod
    def _nbytes(t: torch.Tensor) -> int:
        return t.numel() * t.element_size()

    def encode(
        self,
        model,
        pixel_values: list[list[torch.Tensor]],
        tgt_sizes: list[torch.Tensor],
        temporal_ids: list[list[list[int]] | None],
    ) -> list[torch.Tensor | None]:
        """Per item [G_b, Q, D] (None without slices), encoding only the groups not in the cache.

        All missing groups of all items go through ONE `model.encode_vision` call; a group that
        occurs twice (the same image twice in a batch) is encoded once.
        """
        plan: list[list[str]] = []  # per item, the key of each group
        found: dict[str, torch.Tensor] = {}  # held here so an eviction during this call cannot lose it
        missing: dict[str, tuple[list[torch.Tensor], torch.Tensor, list[int]]] = {}
        for b, slices in enumerate(pixel_values):
            ids = temporal_ids[b] if b < len(temporal_ids) else None
            sizes = torch.as_tensor(tgt_sizes[b]).reshape(-1, 2) if slices else None
            keys = []
            for (s, e), group in zip(split_groups(len(slices), ids), ids or [[-1]] * len(slices)):
                key = group_key(slices[s:e], sizes[s:e], group)
                keys.append(key)
                if key in found or key in missing:
                    continue
                cached = self.get(key)
                if cached is None:
                    missing[key] = (slices[s:e], sizes[s:e], group)
                else:
                    found[key] = cached
            plan.append(keys)
        self.stats.misses += len(missing)
        self.stats.hits += sum(len(k) for k in plan) - len(missing)
        found.update(self._encode_missing(model, missing))
        return [torch.stack([found[k] for k in keys]) if keys else None for keys in plan]  # [G_b, Q, D]

    def _encode_missing(self, model, missing: dict) -> dict[str, torch.Tensor]:
        if not missing:
            return {}
        device = next(model.parameters()).device
        slices = [s.to(device) for sl, _, _ in missing.values() for s in sl]
        sizes = torch.cat([sz for _, sz, _ in missing.values()])  # [n, 2]
        groups = [g for _, _, g in missing.values()]
        out = model.encode_vision(slices, sizes, groups)  # [G_missing, Q, D]
        self.stats.encode_calls += 1
        fresh = dict(zip(missing, out.unbind(0)))
        for key, value in fresh.items():
            self.put(key, value.clone())  # own storage, so one entry never pins the whole batch output
        return fresh
