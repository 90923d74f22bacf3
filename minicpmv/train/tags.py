"""Caption tags: a multi-label target that pre-trains the vision tower and the resampler on their own.

MiniCPM-V 4.5 starts from a SigLIP vision tower that was pre-trained elsewhere; a model trained from scratch
(the embedded demo model, recipes/demo.py) has none, and its vision tower learns too slowly through the
LLM's next-token loss (docs/demo-model.md). This is the stand-in: every image's caption becomes a set of
tags, the adjacent word pairs inside its phrases ("red square", "5 shapes"), and two linear heads
learn to predict the set (sigmoid per tag, as in CatLIP-style caption classification), one on the
max-pooled patches of the vision tower, one on the max-pooled resampler tokens the LLM will read. The
bigrams carry the binding: "red square, blue circle" and "blue square, red circle" have the same words but
different bigrams. Unigram tags can be fitted without binding, and with them the features carried less of
the shape (docs/demo-model.md), so by default the tags are bigrams only.

Pure functions and one small module; recipes/vision_tags.py runs the loop.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Iterable, Sequence

import torch
from torch import nn

from minicpmv.model.minicpmv import MiniCPMV, vit_in_chunks

Tag = tuple[str, ...]


def caption_phrases(caption: str) -> list[list[str]]:
    """The caption's phrases (split at , . ; : ! ?), each as lower-case words and numbers. Tags made of BPE
    tokens would split one pair over several spellings ('red', ' red' and ' square' vs ' square,'), and a
    bigram across a comma names no object ('square blue'). Example: '2 shapes: Red square, blue circle' ->
    [['2', 'shapes'], ['red', 'square'], ['blue', 'circle']]."""
    phrases = (re.findall(r"\w+", p) for p in re.split(r"[,.;:!?]", caption.lower()))
    return [p for p in phrases if p]


def caption_tags(phrases: Sequence[Sequence[str]], sizes: Sequence[int] = (2,)) -> set[Tag]:
    """The distinct n-grams (n in `sizes`) inside each phrase of one caption.

    Example: [['red', 'square', 'red'], ['blue']] -> {('red', 'square'), ('square', 'red')}; with sizes (1, 2)
    also ('red',), ('square',) and ('blue',)."""
    return {tuple(p[i:i + n]) for p in phrases for n in sizes for i in range(len(p) - n + 1)}


def tag_vocabulary(tag_sets: Iterable[set[Tag]], size: int, min_count: int = 5) -> list[Tag]:
    """The `size` tags found in the most captions (at least `min_count` of them), most frequent first;
    ties broken by the tag itself so the vocabulary is deterministic.

    Example: sets [{red, blue}, {red}, {red, green}] (one-word tags), size 2, min_count 1 -> [red, blue] (blue and
    green both appear once; 'blue' < 'green')."""
    counts = Counter(tag for tags in tag_sets for tag in tags)
    ranked = sorted((t for t, c in counts.items() if c >= min_count), key=lambda t: (-counts[t], t))
    return ranked[:size]


def multi_hot(tag_sets: Sequence[set[Tag]], vocabulary: Sequence[Tag]) -> torch.Tensor:
    """[len(tag_sets), len(vocabulary)] float targets: 1 where the caption has the tag (tags outside the
    vocabulary are ignored)."""
    index = {t: i for i, t in enumerate(vocabulary)}
    out = torch.zeros(len(tag_sets), len(vocabulary))
    for row, tags in enumerate(tag_sets):
        out[row, [index[t] for t in tags if t in index]] = 1.0
    return out


def pooled_features(model: MiniCPMV, slices: list[torch.Tensor], tgt_sizes: torch.Tensor,
                    slices_per_image: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image, the max over its valid ViT patches [B, D_vision] and the max over its resampler tokens
    [B, D_llm], every slice of an image pooled together. Example: two images of 1 and 5 slices ->
    slices_per_image [1, 5], 6 slices in, 2 rows out."""
    tgt_sizes = torch.as_tensor(tgt_sizes).reshape(-1, 2)
    patches = vit_in_chunks(model.vpm, slices, tgt_sizes, model.config.vision_batch_size)  # [n, L_max, Dv]
    tokens = model.resampler(patches, tgt_sizes, None)  # [n, Q, D]
    lengths = tgt_sizes[:, 0] * tgt_sizes[:, 1]
    padded = torch.arange(patches.shape[1])[None, :] >= lengths[:, None]  # [n, L_max]
    vit = patches.masked_fill(padded[..., None], float("-inf")).amax(1)  # [n, Dv]
    res = tokens.amax(1)  # [n, D]
    bounds = torch.tensor([0, *slices_per_image]).cumsum(0).tolist()
    if bounds[-1] != len(slices):
        raise ValueError(f"slices_per_image sums to {bounds[-1]} but {len(slices)} slices were given")
    per_image = lambda x: torch.stack([x[a:b].amax(0) for a, b in zip(bounds[:-1], bounds[1:])])  # [B, D]
    return per_image(vit), per_image(res)


class TagHeads(nn.Module):
    """Two linear tag classifiers: on the ViT's pooled patches and on the pooled resampler tokens."""

    def __init__(self, vision_width: int, llm_width: int, num_tags: int):
        super().__init__()
        self.vit = nn.Linear(vision_width, num_tags)
        self.resampler = nn.Linear(llm_width, num_tags)

    def forward(self, vit: torch.Tensor, res: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.vit(vit), self.resampler(res)  # [B, K] logits each


def tag_loss(logits: tuple[torch.Tensor, torch.Tensor], targets: torch.Tensor) -> torch.Tensor:
    """Sum over the two heads of the mean binary cross-entropy per tag."""
    bce = nn.functional.binary_cross_entropy_with_logits
    return sum(bce(x.float(), targets) for x in logits)


def tag_scores(logits: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    """exact: share of images whose predicted set (logit > 0) is exactly the caption's; f1: micro F1.

    Example: predictions [[1, 0], [1, 1]] for targets [[1, 0], [1, 0]] -> exact 0.5, f1 2*2/(2*2+1) = 0.8."""
    pred, gold = logits > 0, targets > 0.5
    hits = (pred & gold).sum().item()
    denominator = pred.sum().item() + gold.sum().item()
    return {"exact": (pred == gold).all(1).float().mean().item(), "f1": 2 * hits / denominator if denominator else 1.0}
