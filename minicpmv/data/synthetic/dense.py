"""Dense labels of the synthetic images: which object or character each ViT patch shows.

The demo model's vision tower starts from nothing and, trained through the LLM or on caption tags, learns to
name a single shape but not to bind a colour to one of three shapes, nor to read glyphs (docs/demo-model.md).
A label per patch gives it 64 targets per image instead of one caption: every patch of a shape is labelled
with the shape's colour and kind ("red circle"), every patch of a character with the character, every other
patch "background". minicpmv/train/dense.py trains the tower on these before stage 1.

Pure functions of a `random.Random` and numpy; no torch.
"""

from __future__ import annotations

import random

import numpy as np
from PIL import Image

from minicpmv.data.synthetic.draw import COLORS, SHAPES, text_with_boxes
from minicpmv.data.synthetic.tasks import IMAGE_SIDE, OCR_ALPHABET, shapes_with_map

CLASSES: tuple[str, ...] = ("background", *(f"{c} {s}" for c in COLORS for s in SHAPES), *"0123456789",
                            *OCR_ALPHABET)
CLASS_INDEX = {name: i for i, name in enumerate(CLASSES)}


def dense_sample(rng: random.Random, text_share: float = 0.5) -> tuple[Image.Image, np.ndarray]:
    """An image like the `count` family's (1-6 shapes) or, with probability `text_share`, the `ocr` family's
    (a 1-6 character number or word), and its class map [H, W] (indices into CLASSES)."""
    if rng.random() < text_share:
        alphabet = "0123456789" if rng.random() < 0.5 else OCR_ALPHABET
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 6)))
        image, where = text_with_boxes(rng, text, (IMAGE_SIDE, IMAGE_SIDE // 2 + 32))
        names = list(text)
    else:
        items = [(rng.choice(list(COLORS)), rng.choice(SHAPES)) for _ in range(rng.randint(1, 6))]
        image, items, where = shapes_with_map(rng, items)
        names = [f"{c} {s}" for c, s in items]
    lookup = np.array([0, *(CLASS_INDEX[n] for n in names)])  # map value 1 + i -> class of the i-th object
    return image, lookup[np.asarray(where)]  # [H, W]


def patch_labels(class_map: np.ndarray, grid: tuple[int, int], samples: int = 4, min_share: float = 0.25) -> np.ndarray:
    """The class of each patch of a `grid` (rows, columns) laid over the whole map (the processor stretches an
    unsliced image onto its patch grid): the most frequent non-background class among samples x samples
    points of the patch when it covers at least `min_share` of them, else 0. Row-major [rows * columns].

    Example: a 4 x 4 map whose left half is class 3, grid (1, 2), samples 2 -> [3, 0]; with the left half
    split as rows of 3 and 5 -> [3, 0] at min_share 0.25 (a tie goes to the lower class)."""
    rows, cols = grid
    small = Image.fromarray(class_map.astype(np.uint8)).resize((cols * samples, rows * samples), Image.NEAREST)
    cells = np.asarray(small).reshape(rows, samples, cols, samples).transpose(0, 2, 1, 3).reshape(rows * cols, -1)
    counts = np.stack([np.bincount(c, minlength=len(CLASSES)) for c in cells])  # [patches, classes]
    counts[:, 0] = 0
    best = counts.argmax(1)  # [patches]
    return np.where(counts.max(1) >= min_share * samples * samples, best, 0)
