"""The dense vision stage: a linear head on every ViT patch learns which object or character the patch shows
(minicpmv/data/synthetic/dense.py makes the images and labels). A stand-in, like caption tags
(minicpmv/train/tags.py), for the pre-trained SigLIP tower a model trained from scratch lacks: one image gives
a target per patch, so the tower learns to tell shapes and glyphs apart where they are, which the resampler
and the LLM can then read out. recipes/vision_dense.py runs the loop.
"""

from __future__ import annotations

import random
from typing import Sequence

import torch
from torch import nn

from minicpmv.data.synthetic.dense import CLASSES, dense_sample, patch_labels
from minicpmv.model.minicpmv import MiniCPMV, vit_in_chunks
from minicpmv.processor.processor import Processor

IGNORE = -100


def dense_batch(processor: Processor, rng: random.Random, n: int,
                text_share: float) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
    """n fresh samples: slices, patch grids [n, 2] and patch labels [n, L_max] (IGNORE past each grid)."""
    slices, sizes, labels = [], [], []
    for _ in range(n):
        image, class_map = dense_sample(rng, text_share)
        processed = processor.process_image(image)
        if len(processed.pixel_values) != 1:
            raise ValueError(f"a dense sample of {image.size} was cut into {len(processed.pixel_values)} slices; "
                             "the dense stage needs images the processor does not slice")
        grid = tuple(int(v) for v in torch.as_tensor(processed.tgt_sizes).reshape(2))
        slices.append(processed.pixel_values[0])
        sizes.append(grid)
        labels.append(torch.as_tensor(patch_labels(class_map, grid)))
    longest = max(len(l) for l in labels)
    padded = torch.full((n, longest), IGNORE)
    for row, l in enumerate(labels):
        padded[row, :len(l)] = l
    return slices, torch.tensor(sizes), padded


def patch_logits(model: MiniCPMV, head: nn.Linear, slices: Sequence[torch.Tensor], sizes: torch.Tensor) -> torch.Tensor:
    """[n, L_max, classes] logits of every ViT patch (rows past a slice's grid are padding)."""
    patches = vit_in_chunks(model.vpm, list(slices), sizes, model.config.vision_batch_size)  # [n, L_max, Dv]
    return head(patches)


def dense_scores(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Patch accuracy on background, shape and character patches (labels IGNORE skipped).

    Example: labels [[0, 1, 19]] (background, 'red circle', '0'), argmax [[0, 1, 0]] -> background 1.0, shape
    1.0, char 0.0."""
    pred, out = logits.argmax(-1), {}
    first_char = CLASSES.index("0")
    kinds = {"background": labels == 0, "shape": (labels > 0) & (labels < first_char), "char": labels >= first_char}
    for name, mask in kinds.items():
        out[f"{name}_acc"] = (pred[mask] == labels[mask]).float().mean().item() if mask.any() else float("nan")
    return out
