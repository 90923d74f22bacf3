"""Seeded splits of the task suite and their files in the official fine-tune format.

Sample `i` of family `f` in split `s` is drawn from `random.Random(sample_seed(seed, s, f, i))`, so any
sample can be regenerated alone and the held-out splits never depend on how much training data was
drawn. `write_split` saves the media (PNG images, PNG frame lists) next to a JSONL file that
`minicpmv.data.datasets.SFTDataset` reads.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Any, Iterator, Sequence

from minicpmv.data.synthetic.tasks import FAMILIES, with_mode

SPLITS = ("train", "val", "test")
IMAGE_FAMILIES = ("ocr", "count", "color", "chart", "arith", "line", "doc")
VIDEO_FAMILIES = ("vid_dir", "vid_first", "vid_count", "vid_speed", "vid_at")
CAPTION_PROMPTS = ("Describe the image.", "Describe the video.")


def sample_seed(seed: int, split: str, family: str, index: int) -> int:
    """A 63-bit seed from (seed, split, family, index) by SHA-256 (stable across Python runs, unlike hash())."""
    if split not in SPLITS:
        raise ValueError(f"split {split!r}; use one of {SPLITS}")
    if family not in FAMILIES:
        raise ValueError(f"family {family!r}; known: {', '.join(FAMILIES)}")
    digest = hashlib.sha256(f"{seed}/{split}/{family}/{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def make(family: str, split: str, index: int, seed: int = 0) -> dict[str, Any]:
    """Sample `index` of `family` in `split` (the same dict every time)."""
    return FAMILIES[family](random.Random(sample_seed(seed, split, family, index)), split)


def iter_split(families: Sequence[str], split: str, per_family: int, seed: int = 0) -> Iterator[dict[str, Any]]:
    """Round-robin over families: sample 0 of each family, then sample 1 of each, ..."""
    for i in range(per_family):
        for family in families:
            yield {**make(family, split, i, seed), "index": i}


def as_caption(sample: dict[str, Any]) -> dict[str, Any]:
    """The pre-training form of a sample: 'Describe the image/video.' -> its caption."""
    prompt = CAPTION_PROMPTS[1] if "video" in sample else CAPTION_PROMPTS[0]
    tag = "<video>" if "video" in sample else "<image>"
    turns = [{"role": "user", "content": f"{tag}\n{prompt}"}, {"role": "assistant", "content": sample["caption"]}]
    return {**sample, "conversations": turns}


def save_record(sample: dict[str, Any], media_dir: Path, name: str) -> dict[str, Any]:
    """Write the sample's media under media_dir as `name`.png (or `name`/frame_XX.png) and return the
    JSON record with paths relative to media_dir's parent (the dataset file's folder)."""
    record = {k: v for k, v in sample.items() if k not in ("image", "video")}
    record["id"] = name
    if "image" in sample:
        path = media_dir / f"{name}.png"
        sample["image"].save(path)
        record["image"] = f"{media_dir.name}/{path.name}"
    if "video" in sample:
        folder = media_dir / name
        folder.mkdir(exist_ok=True)
        frames = []
        for k, frame in enumerate(sample["video"]["frames"]):
            frame.save(folder / f"frame_{k:02d}.png")
            frames.append(f"{media_dir.name}/{name}/frame_{k:02d}.png")
        record["video"] = {"frames": frames, "temporal_ids": sample["video"]["temporal_ids"]}
    return record


def split_path(out_dir: str | Path, split: str, form: str, packing: int | Sequence[int], seed: int) -> Path:
    """Where `write_split` writes a split: `<out_dir>/<split>_<form>_p<packings>_s<seed>.jsonl`.
    Example: ("data", "train", "mixed", [1, 2, 3, 3], 0) -> data/train_mixed_p1233_s0.jsonl."""
    choices = [packing] if isinstance(packing, int) else list(packing)
    return Path(out_dir) / f"{split}_{form}_p{''.join(map(str, choices))}_s{seed}.jsonl"


def write_split(out_dir: str | Path, families: Sequence[str], split: str, per_family: int, *, seed: int = 0,
                form: str = "short", long_share: float = 0.0, packing: int | Sequence[int] = 3) -> Path:
    """Write `per_family` samples of each family to `<out_dir>/<name>.jsonl` (+ media) and return the path.

    form: 'caption' (pre-training), 'short' (answers) or 'mixed' (answers, a `long_share` of them with a
    `<think>` trace; the choice is seeded per sample). packing: frames per visual span of the videos, or a list
    to draw from per video (seeded): e.g. (1, 2, 3) teaches both the 3D-packed form and the one-frame-per-span
    form that automatic packing gives short clips at chat time.
    """
    if form not in ("caption", "short", "mixed"):
        raise ValueError(f"form {form!r}; use 'caption', 'short' or 'mixed'")
    choices = [packing] if isinstance(packing, int) else list(packing)
    path = split_path(out_dir, split, form, choices, seed)
    media = path.with_name(f"{path.stem}_media")
    media.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".jsonl.partial")  # renamed when complete: an existing .jsonl is whole
    with open(partial, "w") as f:
        for sample in iter_split(families, split, per_family, seed):
            if "video" in sample:
                pick = random.Random(sample_seed(seed + 2, split, sample["family"], sample["index"])).choice(choices)
                sample = regroup(sample, pick) if pick != 3 else sample
            if form == "caption":
                sample = as_caption(sample)
            else:
                pick = random.Random(sample_seed(seed + 1, split, sample["family"], sample["index"])).random()
                sample = with_mode(sample, "long" if form == "mixed" and pick < long_share else "short")
            record = save_record(sample, media, f"{sample['family']}_{sample['index']:06d}")
            f.write(json.dumps(record) + "\n")
    partial.replace(path)
    return path


def regroup(sample: dict[str, Any], packing: int) -> dict[str, Any]:
    """The same video with `packing` frames per span. Example: ids [[0, 2, 4], [6, 8, 10]], packing 1 ->
    [[0], [2], [4], [6], [8], [10]] (three times the spans, so three times the visual tokens)."""
    ids = [t for group in sample["video"]["temporal_ids"] for t in group]
    groups = [ids[i:i + packing] for i in range(0, len(ids), packing)]
    return {**sample, "video": {**sample["video"], "temporal_ids": groups}}


def corpus(per_family: int = 200, seed: int = 0) -> Iterator[str]:
    """Text of the suite (questions, answers, traces, captions) for training the tokenizer."""
    for sample in iter_split(list(FAMILIES), "train", per_family, seed):
        yield from (sample["question"], sample["answer"], sample["reasoning"], sample["caption"])
    yield from CAPTION_PROMPTS
