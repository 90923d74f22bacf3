"""Training samples from a page (training spec §3.2, steps 2-4): choose k target regions, corrupt each
at an independently drawn level, and ask for their original text.

Two prompt formats:

    region-addressed  "<image>\\nRecover the original text in the following regions, in order:\\n
                       1. <box>x1 y1 x2 y2</box>\\n2. <box>...</box>"  ->  "1. <text>\\n2. <text>"
                       (boxes in 0-1000 page coordinates, the MiniCPM-V grounding convention)
    whole page        "<image>\\nTranscribe all the text on this page in reading order."  ->  the page's
                       blocks, one per line (only for clean pages: it needs a reading order)

A sample becomes a record in the official fine-tune format (`minicpmv.data.datasets`) plus a
"document" field with what evaluation needs: source, page, and per target its level, box and text.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from minicpmv.data.documents.corruption import LEVELS, CorruptionConfig, Target, corrupt_regions, padded_box
from minicpmv.data.documents.sources import Box, Page, Region, Skip
from minicpmv.errors import InputError

REGION_PROMPT = "Recover the original text in the following regions, in order:"
PAGE_PROMPT = "Transcribe all the text on this page in reading order."


@dataclass(frozen=True)
class SampleConfig:
    k: tuple[int, int] = (1, 6)  # targets per sample, uniform (spec: 1..min(6, regions))
    level_probs: tuple[float, float, float] = (0.4, 0.3, 0.3)  # low, moderate, high, drawn per target (spec)
    block_prob: float = 0.5  # a sample targets blocks with this probability, else lines (both granularities)
    page_prob: float = 0.1  # a whole-page transcription of the clean page instead (spec: clean pages only)
    min_chars: int = 10  # shorter regions are never targets (spec: "too small" blocks)
    max_chars: int = 1200  # longer ones neither, so answers stay a few hundred tokens
    max_page_chars: int = 8000  # whole-page samples only for pages with at most this much text
    corruption: CorruptionConfig = field(default_factory=CorruptionConfig)
    region_prompt: str = REGION_PROMPT
    page_prompt: str = PAGE_PROMPT

    def __post_init__(self):
        p = self.level_probs
        if len(p) != 3 or min(p) < 0 or not math.isclose(sum(p), 1.0, abs_tol=1e-6):
            raise InputError(f"level_probs {p} must be 3 probabilities (low, moderate, high) >= 0 summing to 1")
        if not 1 <= self.k[0] <= self.k[1]:
            raise InputError(f"k {self.k} must be (least, most) targets with 1 <= least <= most")
        for name in ("block_prob", "page_prob"):
            if not 0 <= getattr(self, name) <= 1:
                raise InputError(f"{name} {getattr(self, name)} must be a probability in [0, 1]")


@dataclass
class DocSample:
    image: np.ndarray  # uint8[H, W, 3], the page with its targets corrupted
    prompt: str  # the user turn without the image tag
    answer: str
    task: str  # "regions" or "page"
    targets: list[dict[str, Any]]  # per target: level, kind, order, box (pixels), box_1000, text, ops

    def record(self, sample_id: str, image_path: str, page: Page) -> dict[str, Any]:
        """The official fine-tune record plus the "document" metadata used by evaluation."""
        return {
            "id": sample_id,
            "image": image_path,
            "conversations": [{"role": "user", "content": f"<image>\n{self.prompt}"},
                              {"role": "assistant", "content": self.answer}],
            "document": {"source": page.source, "page": page.index, "task": self.task, "dpi": page.dpi,
                         "size": [page.image.width, page.image.height], "targets": self.targets},
        }


def box_to_1000(box: Box, width: int, height: int) -> tuple[int, int, int, int]:
    """Pixel box -> 0-1000 page coordinates (rounded, clipped). Example: (124, 175, 620, 350) on a
    1240 x 1754 page -> (100, 100, 500, 200)."""
    x1, y1, x2, y2 = box
    scale = lambda v, n: min(1000, max(0, round(v * 1000 / n)))  # noqa: E731
    return scale(x1, width), scale(y1, height), scale(x2, width), scale(y2, height)


def region_prompt(boxes: Sequence[tuple[int, int, int, int]], instruction: str = REGION_PROMPT) -> str:
    """The region-addressed question. Example: [(100, 100, 500, 200)] ->
    "Recover the original text in the following regions, in order:\\n1. <box>100 100 500 200</box>"."""
    return "\n".join([instruction, *(f"{i + 1}. <box>{x1} {y1} {x2} {y2}</box>" for i, (x1, y1, x2, y2) in enumerate(boxes))])


def numbered_answer(texts: Sequence[str]) -> str:
    """Example: ["First line.", "Second."] -> "1. First line.\\n2. Second."."""
    return "\n".join(f"{i + 1}. {t}" for i, t in enumerate(texts))


def usable_regions(page: Page, kind: str, config: SampleConfig) -> list[Region]:
    return [r for r in page.of_kind(kind) if config.min_chars <= len(r.text) <= config.max_chars]


def make_sample(page: Page, seed: int | Sequence[int], config: SampleConfig = SampleConfig()) -> DocSample:
    """One sample of `page`, fully determined by the seed. Raises Skip("few_regions") when no region
    of either kind has between min_chars and max_chars characters."""
    seq = [int(seed)] if isinstance(seed, (int, np.integer)) else [int(s) for s in seed]
    rng = np.random.default_rng(seq)
    page_text = "\n".join(r.text for r in page.of_kind("block"))
    if rng.random() < config.page_prob and 0 < len(page_text) <= config.max_page_chars:
        return DocSample(np.asarray(page.image).copy(), config.page_prompt, page_text, "page", [])
    first = "block" if rng.random() < config.block_prob else "line"
    candidates = usable_regions(page, first, config) or usable_regions(page, "line" if first == "block" else "block", config)
    if not candidates:
        raise Skip("few_regions", f"{page.source} page {page.index + 1}: no region with {config.min_chars}-"
                                  f"{config.max_chars} characters among {len(page.regions)} regions")
    most = min(config.k[1], max(1, len(candidates) - 1))  # keep one region unmasked as context when possible
    k = int(rng.integers(min(config.k[0], most), most + 1))
    chosen = pick_disjoint(candidates, k, rng, config.corruption.pad, page.image.size)
    levels = [str(v) for v in rng.choice(LEVELS, size=len(chosen), p=config.level_probs)]
    return region_sample(page, chosen, levels, [*seq, 1], config)


def region_sample(page: Page, regions: Sequence[Region], levels: Sequence[str], seed: int | Sequence[int],
                  config: SampleConfig = SampleConfig()) -> DocSample:
    """The region-addressed sample for chosen targets and levels (targets are listed in reading order).
    `make_sample` draws both; a held-out probe can fix them, e.g. one region at each level in turn."""
    if len(regions) != len(levels) or not regions:
        raise InputError(f"region_sample needs one level per region, got {len(regions)} regions, {len(levels)} levels")
    pairs = sorted(zip(regions, levels), key=lambda p: (p[0].kind, p[0].order))
    targets = [Target(r.box, level, r.line_height) for r, level in pairs]
    image, ops = corrupt_regions(np.asarray(page.image), targets, seed, config.corruption)
    boxes = [box_to_1000(r.box, page.image.width, page.image.height) for r, _ in pairs]
    meta = [{"level": level, "kind": r.kind, "order": r.order, "box": list(r.box), "box_1000": list(b), "text": r.text,
             "ops": [list(o) for o in op]} for (r, level), b, op in zip(pairs, boxes, ops)]
    return DocSample(image, region_prompt(boxes, config.region_prompt), numbered_answer([r.text for r, _ in pairs]),
                     "regions", meta)


def pick_disjoint(regions: Sequence[Region], k: int, rng: np.random.Generator, pad: int, size: tuple[int, int]) -> list[Region]:
    """Up to k regions in random order whose padded boxes do not overlap (so each target's corruption
    is its own). Example: three lines of a paragraph, k=2 -> two of them (lines never overlap)."""
    chosen: list[Region] = []
    taken: list[Box] = []
    for i in rng.permutation(len(regions)):
        box = padded_box(regions[i].box, pad, *size)
        if all(box[2] <= b[0] or b[2] <= box[0] or box[3] <= b[1] or b[3] <= box[1] for b in taken):
            chosen.append(regions[i])
            taken.append(box)
            if len(chosen) == k:
                break
    return chosen
