"""Typed containers at the processor -> model boundary."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Iterator

import torch


@dataclass
class Batch:
    """Model inputs for B conversations.

    input_ids:      int64[B, T]   left-padded with the pad token `<|endoftext|>`
    attention_mask: int64[B, T]   1 = real token, 0 = padding
    pixel_values:   per item, a list of float32[3, H, W] slices (H, W multiples of 14)
    tgt_sizes:      per item, int32[n_slices, 2] = (H/14, W/14) of each slice
    temporal_ids:   per item, a list of groups; sum of group lengths = n_slices
                    (`[-1]` for an image slice, ids in 0.1 s units for video frames)
    image_bounds:   per item, int64[n_spans, 2] start/end (exclusive) of each 64-token span;
                    span k receives resampler output k of that item
    labels:         int64[B, T] or None; -100 where no loss is taken
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    pixel_values: list[list[torch.Tensor]] = field(default_factory=list)
    tgt_sizes: list[torch.Tensor] = field(default_factory=list)
    temporal_ids: list[list[list[int]]] = field(default_factory=list)
    image_bounds: list[torch.Tensor] = field(default_factory=list)
    labels: torch.Tensor | None = None

    # Mapping protocol so that `model(**batch)` works; `labels` only when present.
    def keys(self) -> list[str]:
        return [f.name for f in fields(self) if not (f.name == "labels" and self.labels is None)]

    def __getitem__(self, key: str) -> Any:
        return getattr(self, key)

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    def to(self, device: torch.device | str) -> "Batch":
        """Move tensors to `device` (pixel values keep float32; the model casts them)."""
        return Batch(
            input_ids=self.input_ids.to(device),
            attention_mask=self.attention_mask.to(device),
            pixel_values=[[p.to(device) for p in item] for item in self.pixel_values],
            tgt_sizes=[t.to(device) for t in self.tgt_sizes],
            temporal_ids=self.temporal_ids,
            image_bounds=[b.to(device) for b in self.image_bounds],
            labels=None if self.labels is None else self.labels.to(device),
        )
