"""Encoded samples -> training batches: padded (one sample per row) or packed (several per row).

Packing puts several samples into one row of at most `max_length` tokens. Each sample keeps its own
positions (restarting at 0) and attends only inside itself (a block-diagonal causal mask), so the
loss of a packed batch equals the loss of the same samples padded (tested), while far fewer padding
tokens are computed.

Loss weights: with `per_sample=False` (label_weights None) the loss is the mean over the batch's
supervised tokens; with `per_sample=True` each sample's positions weigh 1 / its number of supervised
positions (`label_weights`), so the loss is the mean over samples of each sample's token mean, and a
1-token answer counts as much as a 40-token trace.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from minicpmv.errors import InputError
from minicpmv.processor.processor import IGNORE_INDEX, EncodedSample
from minicpmv.processor.types import Batch


@dataclass
class TrainBatch(Batch):
    """A `Batch` for training (R rows of T tokens) with explicit positions.

    attention_mask: int64[R, T] key mask (padded rows) or bool[R, 1, T, T] block-diagonal causal
                    mask (packed rows; True = may attend)
    position_ids:   int64[R, T], restarting at 0 for each sample
    labels:         int64[R, T], -100 on prompts, padding and the first token of every sample
    label_weights:  float32[R, T], the loss weight of each label, or None = all 1 (module docstring)
    num_samples:    samples in the batch        } not model inputs
    num_tokens:     real (non-padding) tokens   }
    """

    position_ids: torch.Tensor | None = None
    label_weights: torch.Tensor | None = None
    num_samples: int = 0
    num_tokens: int = 0

    def keys(self) -> list[str]:
        return [k for k in super().keys()
                if k not in ("num_samples", "num_tokens") and not (k == "label_weights" and self.label_weights is None)]

    def to(self, device: torch.device | str) -> "TrainBatch":
        moved = super().to(device)
        return TrainBatch(**{k: getattr(moved, k) for k in Batch.keys(moved)}, position_ids=self.position_ids.to(device),
                          label_weights=None if self.label_weights is None else self.label_weights.to(device),
                          num_samples=self.num_samples, num_tokens=self.num_tokens)

    @property
    def num_targets(self) -> int:
        """Supervised positions (labels are compared one step ahead: labels[:, 1:] != -100)."""
        return int((self.labels[:, 1:] != IGNORE_INDEX).sum())

    @property
    def target_weight(self) -> float:
        """Sum of the weights of the supervised positions: `num_targets`, or the number of samples with a
        supervised token when the loss is averaged per sample."""
        if self.label_weights is None:
            return float(self.num_targets)
        return float(self.label_weights[:, 1:][self.labels[:, 1:] != IGNORE_INDEX].sum())


def plan_rows(lengths: Sequence[int], max_length: int) -> list[list[int]]:
    """First-fit decreasing: group sample indices into rows of total length <= max_length.

    Samples are placed longest first into the first row with room; rows keep sample order inside.
    Example: lengths [5, 3, 7, 2], max_length 8 -> longest first 7 (row 0), 5 (row 1), 3 (row 1:
    5+3=8), 2 (row 0: 7+2 > 8, row 1 full -> row 2) -> [[2], [0, 1], [3]].
    """
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        if lengths[i] > max_length:
            raise InputError(f"sample {i} has {lengths[i]} tokens, more than max_length {max_length}")
        row = next((r for r in range(len(rows)) if room[r] >= lengths[i]), None)
        if row is None:
            rows.append([])
            room.append(max_length)
            row = len(rows) - 1
        rows[row].append(i)
        room[row] -= lengths[i]
    return [sorted(r) for r in rows]


def block_causal_mask(segments: torch.Tensor) -> torch.Tensor:
    """bool[R, 1, T, T]: query t may see key s iff s <= t and both lie in the same segment.

    segments: int64[R, T] segment number of every token. Example row [0, 0, 1, 1, 1] gives the
    lower-triangular blocks {0,1}x{0,1} and {2,3,4}x{2,3,4}: token 2 sees only itself.
    """
    t = segments.shape[1]
    causal = torch.ones(t, t, dtype=torch.bool, device=segments.device).tril()  # [T, T]
    same = segments[:, :, None] == segments[:, None, :]  # [R, T, T]
    return (same & causal)[:, None]  # [R, 1, T, T]


def pack(samples: Sequence[EncodedSample], max_length: int, pad_id: int, per_sample: bool = False) -> TrainBatch:
    """Pack samples into as few rows of `max_length` tokens as `plan_rows` finds (right padded).

    Positions restart at 0 per sample; image bounds move with their sample; the first label of each
    sample is dropped (-100) since it would be predicted from the previous sample's last token.
    per_sample: weight each sample's labels by 1 / its supervised positions (module docstring).
    """
    rows = plan_rows([len(s.input_ids) for s in samples], max_length)
    width = max(sum(len(samples[i].input_ids) for i in row) for row in rows)
    out = _empty(len(rows), width, pad_id, len(samples), per_sample)
    segments = torch.full((len(rows), width), -1, dtype=torch.long)
    for r, row in enumerate(rows):
        at = 0
        for k, i in enumerate(row):
            at = _place(out, r, at, samples[i])
            segments[r, at - len(samples[i].input_ids) : at] = k
        out.position_ids[r, at:] = torch.arange(width - at)  # tail padding: its own causal segment
    out.attention_mask = block_causal_mask(segments)
    return out


def pad(samples: Sequence[EncodedSample], pad_id: int, per_sample: bool = False) -> TrainBatch:
    """One sample per row, right padded to the longest; attention_mask is the [R, T] key mask.
    per_sample: as in `pack`."""
    width = max(len(s.input_ids) for s in samples)
    out = _empty(len(samples), width, pad_id, len(samples), per_sample)
    out.attention_mask = torch.zeros(len(samples), width, dtype=torch.long)  # [R, T]
    for r, s in enumerate(samples):
        n = _place(out, r, 0, s)
        out.attention_mask[r, :n] = 1
        out.position_ids[r, n:] = torch.arange(width - n)
    return out


def _empty(rows: int, width: int, pad_id: int, num_samples: int, weighted: bool) -> TrainBatch:
    return TrainBatch(
        input_ids=torch.full((rows, width), pad_id, dtype=torch.long),  # [R, T]
        attention_mask=torch.empty(0),
        pixel_values=[[] for _ in range(rows)],
        tgt_sizes=[torch.zeros((0, 2), dtype=torch.int32) for _ in range(rows)],
        temporal_ids=[[] for _ in range(rows)],
        image_bounds=[torch.zeros((0, 2), dtype=torch.long) for _ in range(rows)],
        labels=torch.full((rows, width), IGNORE_INDEX, dtype=torch.long),  # [R, T]
        position_ids=torch.zeros((rows, width), dtype=torch.long),  # [R, T]
        label_weights=torch.ones((rows, width), dtype=torch.float32) if weighted else None,  # [R, T]
        num_samples=num_samples,
        num_tokens=0,  # grows in `_place`
    )


def _place(out: TrainBatch, row: int, at: int, s: EncodedSample) -> int:
    """Write sample `s` into `row` from token `at` (its labels weighted 1 / their count when the batch has
    label weights); return where it ends."""
    n = len(s.input_ids)
    end = at + n
    out.input_ids[row, at:end] = torch.tensor(s.input_ids, dtype=torch.long)
    out.labels[row, at:end] = torch.tensor(s.labels, dtype=torch.long)
    out.labels[row, at] = IGNORE_INDEX
    if out.label_weights is not None:  # labels at..end-1 are exactly this sample's supervised positions
        out.label_weights[row, at:end] = 1.0 / max(1, int((out.labels[row, at:end] != IGNORE_INDEX).sum()))
    out.position_ids[row, at:end] = torch.arange(n)
    out.num_tokens += n
    out.pixel_values[row].extend(s.pixel_values)
    out.tgt_sizes[row] = torch.cat([out.tgt_sizes[row], s.tgt_sizes.to(torch.int32).reshape(-1, 2)])
    out.temporal_ids[row].extend(s.temporal_ids)
    out.image_bounds[row] = torch.cat([out.image_bounds[row], s.image_bounds.reshape(-1, 2) + at])
    return end
