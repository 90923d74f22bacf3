"""Fine-tuning and pre-training data: JSON/JSONL records -> processor-encoded samples.

Two record formats (paths are relative to the folder of the dataset file):

Official MiniCPM-V fine-tune format (training spec §6.2)::

    {"id": "7", "image": "a.jpg",                      # or {"<image_00>": "a.jpg", "<image_01>": "b.png"}
     "video": "clip.mp4",                              # optional; or a spec / {"<video_00>": spec, ...}
     "conversations": [{"role": "user", "content": "<image>\\nWhat is shown?"},
                       {"role": "assistant", "content": "A cat."}]}

  A single `image`/`video` goes where `<image>`/`<video>` is written, or before the first user turn
  when the tag is absent (as the official loader does); the dict forms use their `<image_XX>` /
  `<video_XX>` keys as tags anywhere in the conversation. A video spec is a path, or
  `{"path": "clip.mp4", "fps": 5, "packing": 3, "max_groups": 64}`, or an already sampled
  `{"frames": "clip_frames/" | ["f0.jpg", ...], "temporal_ids": [[0, 2, 4], [6]]}` (0.1 s units).

LLaMA-Factory format::

    {"messages": [{"role": "system" | "user" | "assistant", "content": "<image>What is shown?"}, ...],
     "images": ["a.jpg"], "videos": ["clip.mp4"]}      # `<image>` / `<video>` tags consumed in order

A bad sample is never replaced by another one (the official loader silently resamples a random
index): it is skipped, counted under one reason of `SKIP_REASONS` and logged; `strict=True` raises.
"""

from __future__ import annotations

import json
import logging
import re
from array import array
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from PIL import Image

from minicpmv.errors import InputError
from minicpmv.processor.image import load_image
from minicpmv.processor.processor import EncodedSample, Processor
from minicpmv.processor.video import Video, load_video

log = logging.getLogger("minicpmv.data")

SKIP_REASONS = ("bad_json", "bad_format", "missing_file", "bad_media", "no_trainable_tokens", "too_long")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
_LOGGED_PER_REASON = 10  # skips logged one by one per reason; later ones are only counted


class BadSample(InputError):
    """A record that cannot become a training sample; `reason` is one of SKIP_REASONS."""

    def __init__(self, reason: str, message: str):
        assert reason in SKIP_REASONS, f"unknown skip reason {reason!r}"
        super().__init__(message)
        self.reason = reason


@dataclass
class SkipCounter:
    """Skipped samples by reason, with the first message of each reason as an example."""

    counts: Counter = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)

    def add(self, error: BadSample) -> None:
        self.counts[error.reason] += 1
        self.examples.setdefault(error.reason, str(error))
        if self.counts[error.reason] <= _LOGGED_PER_REASON:
            log.warning("skipped sample (%s): %s", error.reason, error)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def merge(self, other: "SkipCounter") -> "SkipCounter":
        merged = SkipCounter(self.counts + other.counts, dict(other.examples))
        merged.examples.update(self.examples)
        return merged

    def report(self) -> str:
        if not self.total:
            return "no samples skipped"
        lines = [f"{self.total} samples skipped:"]
        lines += [f"  {r}: {n}  (e.g. {self.examples.get(r, '')[:200]})" for r, n in self.counts.most_common()]
        return "\n".join(lines)

    def state_dict(self) -> dict[str, Any]:
        return {"counts": dict(self.counts), "examples": dict(self.examples)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.counts, self.examples = Counter(state["counts"]), dict(state["examples"])


class RecordFile:
    """Random access to the records of one `.json` (a list) or `.jsonl` file.

    A JSONL file is indexed by byte offsets once and read record by record (never held in memory);
    a JSON file is one list and is loaded whole.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path).resolve()
        if not self.path.is_file():
            raise InputError(f"dataset file {self.path} not found; pass an existing .json or .jsonl file")
        self.base_dir = self.path.parent
        self._records: list[Any] | None = None
        self._offsets = array("q")
        if self.path.suffix == ".jsonl":
            with open(self.path, "rb") as f:
                at = 0
                for line in f:
                    if line.strip():
                        self._offsets.append(at)
                    at += len(line)
        else:
            try:
                records = json.loads(self.path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as e:
                raise InputError(f"dataset file {self.path} is not valid JSON ({e}); use a JSON list or JSONL") from None
            if not isinstance(records, list):
                raise InputError(f"dataset file {self.path} holds a {type(records).__name__}; expected a JSON list "
                                 "of records (or use .jsonl with one record per line)")
            self._records = records

    def __len__(self) -> int:
        return len(self._records) if self._records is not None else len(self._offsets)

    def read(self, i: int) -> Any:
        if self._records is not None:
            return self._records[i]
        with open(self.path, "rb") as f:
            f.seek(self._offsets[i])
            line = f.readline()
        try:
            return json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise BadSample("bad_json", f"{self.path.name} record {i}: not valid JSON ({e})") from None


# ---- record -> processor messages ---------------------------------------------------------------------
def record_to_messages(record: Any, base_dir: Path, where: str) -> list[dict[str, Any]]:
    """One record of either format -> processor messages with loaded media (PIL images, sampled Videos)."""
    if not isinstance(record, Mapping):
        raise BadSample("bad_format", f"{where}: a record must be a JSON object, got {type(record).__name__}")
    if "conversations" in record:
        turns, media = _official_turns(record, base_dir, where)
    elif "messages" in record:
        turns, media = _llamafactory_turns(record, base_dir, where)
    else:
        raise BadSample("bad_format", f"{where}: no 'conversations' (official format) or 'messages' "
                                      f"(LLaMA-Factory format); keys are {sorted(record)}")
    if not turns or turns[-1][0] != "assistant" or not str(turns[-1][1]).strip():
        raise BadSample("no_trainable_tokens", f"{where}: the last turn must be a non-empty assistant answer")
    return [{"role": role, "content": _split_tags(text, media, where)} for role, text in turns]


def _turns(messages: Any, role_key: str, text_key: str, where: str) -> list[tuple[str, str]]:
    if not isinstance(messages, list) or not messages:
        raise BadSample("bad_format", f"{where}: the conversation must be a non-empty list of turns")
    turns = []
    for m, msg in enumerate(messages):
        if not isinstance(msg, Mapping) or not isinstance(msg.get(text_key), str):
            raise BadSample("bad_format", f"{where} turn {m}: expected {{'{role_key}': ..., '{text_key}': str}}")
        turns.append((msg.get(role_key), msg[text_key]))
    return turns


def _official_turns(record: Mapping, base_dir: Path, where: str) -> tuple[list[tuple[str, str]], dict[str, Any]]:
    turns = _turns(record["conversations"], "role", "content", where)
    media: dict[str, Any] = {}
    for key, kind in (("image", "image"), ("video", "video")):
        value = record.get(key)
        if value is None:
            continue
        table = value if isinstance(value, Mapping) and all(str(k).startswith("<") for k in value) else {f"<{kind}>": value}
        for tag, spec in table.items():
            used = sum(text.count(tag) for _, text in turns)
            if used == 0 and len(table) == 1 and tag == f"<{kind}>":
                first_user = next((i for i, (role, _) in enumerate(turns) if role == "user"), 0)
                turns[first_user] = (turns[first_user][0], f"{tag}\n{turns[first_user][1]}")
            elif used != 1:
                raise BadSample("bad_format", f"{where}: tag {tag} appears {used} times in the conversation; "
                                              "each media key must be written exactly once")
            media[tag] = _load_media(kind, spec, base_dir, f"{where} {tag}")
    return turns, media


def _llamafactory_turns(record: Mapping, base_dir: Path, where: str) -> tuple[list[tuple[str, str]], dict[str, Any]]:
    turns = _turns(record["messages"], "role", "content", where)
    media: dict[str, Any] = {}
    for kind in ("image", "video"):
        specs = record.get(f"{kind}s") or []
        tag = f"<{kind}>"
        used = sum(text.count(tag) for _, text in turns)
        if used != len(specs):
            raise BadSample("bad_format", f"{where}: {used} {tag} tags but {len(specs)} {kind}s; "
                                          f"write one {tag} per entry of '{kind}s'")
        # Give each occurrence its own numbered tag so `_split_tags` can place them in order.
        counter = iter(range(len(specs)))
        turns = [(role, re.sub(re.escape(tag), lambda _: f"<{kind}#{next(counter)}>", text)) for role, text in turns]
        for k, spec in enumerate(specs):
            media[f"<{kind}#{k}>"] = _load_media(kind, spec, base_dir, f"{where} {kind} {k}")
    return turns, media


def _split_tags(text: str, media: Mapping[str, Any], where: str) -> list[Any] | str:
    """Text with media tags -> processor content parts; one newline next to a tag is dropped (the
    processor joins parts with a newline), so "<image>\\nWhat?" -> [image, "What?"]."""
    if not media:
        return text
    pieces = re.split("(" + "|".join(re.escape(t) for t in media) + ")", text)
    parts: list[Any] = []
    for k, piece in enumerate(pieces):
        if k % 2:  # a tag
            parts.append(media[piece])
            continue
        if k > 0 and piece.startswith("\n"):
            piece = piece[1:]
        if k < len(pieces) - 1 and piece.endswith("\n"):
            piece = piece[:-1]
        if piece:
            parts.append(piece)
    return parts if any(not isinstance(p, str) for p in parts) else text


def _resolve(path: Any, base_dir: Path, where: str) -> Path:
    if not isinstance(path, str) or not path:
        raise BadSample("bad_format", f"{where}: a media path must be a non-empty string, got {path!r:.80}")
    full = (base_dir / path).resolve()
    if not full.exists():
        raise BadSample("missing_file", f"{where}: {full} does not exist (paths are relative to the dataset file)")
    return full


def _load_media(kind: str, spec: Any, base_dir: Path, where: str) -> Image.Image | Video:
    """Load an image or sample a video now, so a broken file is reported with its own reason."""
    if kind == "image":
        path = _resolve(spec, base_dir, where)
        try:
            return load_image(str(path), name=where)
        except InputError as e:
            raise BadSample("bad_media", str(e)) from None
    if isinstance(spec, str):
        spec = {"path": spec}
    if not isinstance(spec, Mapping) or ("path" in spec) == ("frames" in spec):
        raise BadSample("bad_format", f"{where}: a video is a path, {{'path': ..., 'fps', 'packing', 'max_groups'}} "
                                      f"or {{'frames': folder or list, 'temporal_ids': groups}}; got {spec!r:.120}")
    try:
        if "frames" in spec:
            frames = [load_image(str(p), name=f"{where} frame {i}") for i, p in enumerate(_frame_paths(spec, base_dir, where))]
            return Video(frames=frames, temporal_ids=spec.get("temporal_ids"))
        options = {k: spec[k] for k in ("fps", "packing", "max_groups", "exact_timestamps") if k in spec}
        decoded = load_video(Video(path=str(_resolve(spec["path"], base_dir, where)), **options), name=where)
        return Video(frames=decoded.frames, temporal_ids=decoded.temporal_ids)
    except BadSample:
        raise
    except (InputError, TypeError) as e:
        raise BadSample("bad_media", f"{where}: {e}") from None


def _frame_paths(spec: Mapping, base_dir: Path, where: str) -> list[Path]:
    frames = spec["frames"]
    if isinstance(frames, list):
        return [_resolve(p, base_dir, f"{where} frame {i}") for i, p in enumerate(frames)]
    folder = _resolve(frames, base_dir, where)
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise BadSample("missing_file", f"{where}: frame folder {folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return paths


# ---- the dataset ------------------------------------------------------------------------------------
class SFTDataset:
    """Records of one or more files -> `EncodedSample`s with labels, or None when skipped.

    max_length:     samples longer than this many tokens are skipped ("too_long"), never cut
    max_slice_nums: slices per image (None = the processor's default, 9)
    strict:         raise on the first bad sample instead of skipping it
    """

    def __init__(self, files: Sequence[str | Path], processor: Processor, max_length: int,
                 max_slice_nums: int | None = None, strict: bool = False):
        if not files:
            raise InputError("no dataset files given; pass at least one .json or .jsonl file")
        self.files = [RecordFile(f) for f in files]
        self.processor = processor
        self.max_length = max_length
        self.max_slice_nums = max_slice_nums
        self.strict = strict
        self.skipped = SkipCounter()
        self._starts = [0]
        for f in self.files:
            self._starts.append(self._starts[-1] + len(f))

    def __len__(self) -> int:
        return self._starts[-1]

    def encode(self, index: int) -> EncodedSample | None:
        """The sample at `index` (over all files in order); None (counted) when it is bad."""
        try:
            return self._encode(index)
        except BadSample as e:
            if self.strict:
                raise
            self.skipped.add(e)
            return None

    def _encode(self, index: int) -> EncodedSample:
        k = next(k for k in range(len(self.files)) if index < self._starts[k + 1])
        file, i = self.files[k], index - self._starts[k]
        where = f"{file.path.name} record {i}"
        messages = record_to_messages(file.read(i), file.base_dir, where)
        try:
            sample = self.processor.encode(messages, max_slice_nums=self.max_slice_nums, add_generation_prompt=False,
                                           return_labels=True, sample_index=index)
        except InputError as e:
            raise BadSample("bad_format", f"{where}: {e}") from None
        if len(sample.input_ids) > self.max_length:
            raise BadSample("too_long", f"{where}: {len(sample.input_ids)} tokens > max_length {self.max_length}")
        return sample


# ---- resumable streams ---------------------------------------------------------------------------------
class SampleStream:
    """An endless, resumable stream of one rank's samples of a dataset.

    Each epoch is a permutation seeded by (seed, epoch), cut to a multiple of world_size; rank r
    takes positions r, r + W, r + 2W, ... so all ranks finish an epoch together. Bad samples are
    skipped (counted by the dataset), never replaced by a random other index.

    Example: 5 records, world_size 2, epoch-0 permutation [3, 0, 4, 1, 2] -> cut to [3, 0, 4, 1];
    rank 0 yields 3, 4, then epoch 1; rank 1 yields 0, 1. The state {"epoch": 0, "cursor": 1} means
    "the next sample is the second of this rank's share of epoch 0".
    """

    def __init__(self, dataset: SFTDataset, seed: int = 0, rank: int = 0, world_size: int = 1, shuffle: bool = True):
        if len(dataset) < world_size:
            raise InputError(f"the dataset has {len(dataset)} records, fewer than the {world_size} ranks")
        self.dataset, self.seed, self.rank, self.world_size, self.shuffle = dataset, seed, rank, world_size, shuffle
        self.epoch, self.cursor = 0, 0
        self._share: list[int] | None = None

    @property
    def skipped(self) -> SkipCounter:
        return self.dataset.skipped

    def _rank_share(self) -> list[int]:
        if self._share is None:
            n = len(self.dataset)
            order = np.random.default_rng([self.seed, self.epoch]).permutation(n) if self.shuffle else np.arange(n)
            self._share = order[: n - n % self.world_size][self.rank :: self.world_size].tolist()
        return self._share

    def next(self) -> EncodedSample:
        for _ in range(len(self.dataset) + 1):
            share = self._rank_share()
            if self.cursor >= len(share):
                self.epoch, self.cursor, self._share = self.epoch + 1, 0, None
                share = self._rank_share()
            index = share[self.cursor]
            self.cursor += 1
            sample = self.dataset.encode(index)
            if sample is not None:
                return sample
        raise InputError(f"no usable sample in {len(self.dataset) + 1} tries; {self.skipped.report()}")

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "cursor": self.cursor, "skipped": self.skipped.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.epoch, self.cursor, self._share = int(state["epoch"]), int(state["cursor"]), None
        self.skipped.load_state_dict(state["skipped"])


class MixedStream:
    """Each sample drawn from one of several named streams, picked with the current weights.

    The pick for draw d uses a generator seeded by (seed, rank, d), so a resumed run picks the same
    sources. `set_weights` changes the mix, e.g. in the WSD decay phase (`optim.decay_mix`).
    """

    def __init__(self, streams: Mapping[str, SampleStream], weights: Mapping[str, float], seed: int = 0, rank: int = 0):
        self.streams, self.seed, self.rank, self.draws = dict(streams), seed, rank, 0
        self.set_weights(weights)

    def set_weights(self, weights: Mapping[str, float]) -> None:
        unknown = set(weights) - set(self.streams)
        total = sum(weights.values())
        if unknown or total <= 0 or min(weights.values()) < 0:
            raise InputError(f"mix weights {dict(weights)} must be >= 0, sum > 0 and name streams of {sorted(self.streams)}")
        self.weights = {name: weights.get(name, 0.0) / total for name in self.streams}

    @property
    def skipped(self) -> SkipCounter:
        merged = SkipCounter()
        for s in self.streams.values():
            merged = merged.merge(s.skipped)
        return merged

    def next(self) -> EncodedSample:
        names = list(self.streams)
        pick = np.random.default_rng([self.seed, self.rank, self.draws]).choice(len(names), p=[self.weights[n] for n in names])
        self.draws += 1
        return self.streams[names[pick]].next()

    def state_dict(self) -> dict[str, Any]:
        return {"draws": self.draws, "streams": {n: s.state_dict() for n, s in self.streams.items()}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.draws = int(state["draws"])
        for name, s in self.streams.items():
            s.load_state_dict(state["streams"][name])
