"""Conversations (text, images, videos) -> `Batch`: the reference `chat()` + `MiniCPMVProcessor` path.

Per conversation (architecture spec §4.4, §4.5, §5.2, §6):
  1. Every image in a message becomes the tag `(<image>./</image>)`, a video one tag per sampled
     frame; the parts of a message are joined with "\\n"; the chat template renders the messages.
  2. Images and frames are grouped into units: an image is its own unit (temporal ids `[-1]`), a
     video contributes one unit per temporal group of frames.
  3. The first tag of each unit becomes the unit's placeholder (`<image_id>k</image_id>` only for
     images when use_image_id, `<image>` + 64 `<unk>` + `</image>`, then `<slice>` rows); the other
     tags of the unit vanish and the text before each of them is `.strip()`ped (reference quirk).
  4. Pixels: for each unit, for each slice index (0 = overview), that slice of every frame of the unit
     in turn; the unit's temporal ids are appended once per slice index. One 64-token span per
     (unit, slice index), in prompt order, so span k receives resampler output k.
  5. Tokenise (no BOS), find the spans, left-pad the batch with `<|endoftext|>`.

Differences from the reference, on purpose:
  * padding uses the pad token `<|endoftext|>`, not id 0, and attention_mask comes from the lengths,
    so a `!` (id 0) in a prompt stays visible to the model;
  * `max_length` never truncates: a longer prompt raises InputError with both numbers (the reference
    cuts from the right, which removes the generation prompt and can cut a visual span);
  * text containing the span markers `<image>`, `</image>`, `<slice>`, `</slice>` is refused (the
    reference would tokenise them as markers and mis-place every visual span);
  * image ids count images only (video frames never carry one), restarting at 0 per conversation.

Labels (`return_labels=True`, training spec §6.3): a token is trained iff it starts inside an
assistant turn's text after `<|im_start|>assistant\\n`, up to and including `<|im_end|>`, and
outside every visual placeholder. A sample is "thinking" iff its last assistant message contains
`<think>` and `</think>` (official rule); otherwise the empty block `<think>\\n\\n</think>\\n\\n` the
template puts before the final answer is not trained (the official 4-token offset). Labels are NOT
shifted (the loss compares logits[t] with labels[t + 1]); unlike the official dataset we add no
extra `eos` target after `<|im_end|>` and we do not train the "\\n" that follows `assistant`.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from PIL import Image

from minicpmv.config import ModelConfig, ProcessorConfig
from minicpmv.errors import InputError
from minicpmv.processor import slicing, video
from minicpmv.processor.chat_template import render_chat
from minicpmv.processor.image import load_image
from minicpmv.processor.tokenizer import Tokenizer
from minicpmv.processor.types import Batch
from minicpmv.processor.video import Video

IMAGE_TAG = "(<image>./</image>)"
SPAN_MARKERS = ("<image>", "</image>", "<slice>", "</slice>")
IGNORE_INDEX = -100
_VIDEO_KEYS = ("path", "fps", "max_groups", "packing", "exact_timestamps")


@dataclass
class _Unit:
    """One placeholder of the prompt: an image, or one temporal group of video frames."""

    frames: list[Image.Image]
    temporal_ids: list[int]  # [-1] for an image
    image_idx: int | None  # number shown in <image_id>..</image_id>; None = no id
    max_slice_nums: int
    name: str


@dataclass
class _Parsed:
    """A conversation after its media were loaded: text messages with tags, and the media in order."""

    messages: list[dict[str, Any]]  # {'role', 'content': str with tags[, 'reasoning_content']}
    media: list[tuple[Image.Image | video.DecodedVideo, str]]  # in prompt order, with a name for errors


@dataclass
class EncodedSample:
    """One conversation, tokenised, before batching.

    chat_text:    the chat-templated text with `(<image>./</image>)` tags
    final_text:   after placeholder expansion: exactly what was tokenised
    input_ids:    int[T]
    image_bounds: int64[n_spans, 2] (start, end) of each 64-token span
    pixel_values: float32[3, H, W] per slice; tgt_sizes int32[n_slices, 2]; temporal_ids: groups
    labels:       int[T] with -100 outside the trained assistant text, or None
    """

    chat_text: str
    final_text: str
    input_ids: list[int]
    image_bounds: torch.Tensor
    pixel_values: list[torch.Tensor]
    tgt_sizes: torch.Tensor
    temporal_ids: list[list[int]]
    labels: list[int] | None = None


@dataclass(frozen=True)
class Expanded:
    """Result of `expand_image_tags`.

    text:         the prompt with placeholders in place of the tags
    position:     position[i] = index in `text` where character i of the input ended up (len+1 entries;
                  removed characters map to where they would have been)
    placeholders: (start, end) of each inserted placeholder in `text`
    """

    text: str
    position: list[int]
    placeholders: list[tuple[int, int]]


def expand_image_tags(text: str, placeholders: Sequence[str | None]) -> Expanded:
    """Replace the k-th `(<image>./</image>)` of `text` by `placeholders[k]` (reference `_convert`).

    `None` marks a frame that is not the first of its temporal group: its tag is removed and the text
    chunk before it (since the previous tag) is `.strip()`ped. Example with placeholders [P, None, Q]:
        'A\\n(<image>./</image>)\\n(<image>./</image>)\\n(<image>./</image>)\\nB'
        chunks 'A\\n' | '\\n' | '\\n' | '\\nB'  ->  'A\\n' + P + '' + '' + '\\n' + Q + '\\nB'
    """
    chunks = text.split(IMAGE_TAG)
    if len(chunks) - 1 != len(placeholders):
        raise ValueError(f"the text has {len(chunks) - 1} image tags but {len(placeholders)} placeholders were given")
    out: list[str] = []
    position: list[int] = []
    spans: list[tuple[int, int]] = []
    at = 0  # length of the output so far
    for k, chunk in enumerate(chunks):
        last = k == len(placeholders)  # the text after the final tag
        skipped = not last and placeholders[k] is None
        kept = chunk.strip() if skipped else chunk
        lead = (len(chunk) - len(chunk.lstrip())) if skipped else 0
        position.extend(at + min(max(j - lead, 0), len(kept)) for j in range(len(chunk)))
        out.append(kept)
        at += len(kept)
        if not last:
            filler = placeholders[k] or ""
            position.extend([at] * len(IMAGE_TAG))
            if filler:
                spans.append((at, at + len(filler)))
            out.append(filler)
            at += len(filler)
    position.append(at)
    return Expanded(text="".join(out), position=position, placeholders=spans)


def find_image_bounds(ids: Sequence[int], tok: Tokenizer) -> torch.Tensor:
    """int64[n, 2]: start = index after each `<image>`/`<slice>`, end = index of each `</image>`/`</slice>`.

    Example: ids [<image>, unk, unk, </image>, <slice>, unk, unk, </slice>] -> [[1, 3], [5, 7]].
    """
    t = torch.tensor(ids, dtype=torch.long)
    starts = torch.nonzero((t == tok.image_start_id) | (t == tok.slice_start_id)).flatten() + 1  # (n,)
    ends = torch.nonzero((t == tok.image_end_id) | (t == tok.slice_end_id)).flatten()  # (n,)
    if len(starts) != len(ends) or bool((ends < starts).any()):
        raise RuntimeError(f"unbalanced span markers: {len(starts)} starts at {starts.tolist()} vs {len(ends)} ends")
    return torch.stack([starts, ends], dim=1)  # (n, 2)


class Processor:
    """Turns conversations into model batches. See the module docstring for the pipeline."""

    def __init__(self, tokenizer: Tokenizer, cfg: ProcessorConfig = ProcessorConfig(), num_threads: int | None = None):
        """num_threads: threads that resize/normalise the images and frames of one call (Pillow and
        numpy release the GIL); None = min(8, CPU count), 1 = serial."""
        self.tokenizer = tokenizer
        self.cfg = cfg
        self.num_threads = num_threads or min(8, os.cpu_count() or 1)

    @classmethod
    def from_pretrained(cls, path: str | Path, num_threads: int | None = None) -> "Processor":
        """Load `tokenizer.json` and `preprocessor_config.json` from a model folder.

        When `config.json` is there too, its query_num / patch_size / image_size must agree with the
        pre-processor (the reference `chat()` asserts the same).
        """
        path = Path(path)
        pre = path / "preprocessor_config.json"
        if not pre.is_file():
            raise FileNotFoundError(f"{pre} not found: a MiniCPM-V model folder has preprocessor_config.json")
        cfg = ProcessorConfig.from_hf_dict(json.loads(pre.read_text()))
        if (path / "config.json").is_file():
            _check_model_agrees(ModelConfig.from_json(path / "config.json"), cfg)
        return cls(Tokenizer.from_pretrained(path), cfg, num_threads)

    def process_image(self, image: Image.Image, max_slice_nums: int | None = None) -> slicing.ProcessedImage:
        """Slices, tgt sizes and grid of one image (`slicing.process_image` with this processor's config)."""
        return slicing.process_image(image, self.cfg, max_slice_nums)

    def sample_video(
        self, n_frames: int, fps: float, choose_fps: float = 5, force_packing: int | None = None
    ) -> video.VideoSampling:
        """Frame indices, packing and temporal ids of the official recipe (`video.sample_video`)."""
        return video.sample_video(n_frames, fps, choose_fps=choose_fps, force_packing=force_packing)

    def __call__(
        self,
        msgs_or_batch: Sequence[Mapping[str, Any]] | Sequence[Sequence[Mapping[str, Any]]],
        enable_thinking: bool = False,
        system_prompt: str = "",
        max_slice_nums: int | None = None,
        use_image_id: bool | None = None,
        temporal_ids: Sequence[Any] | None = None,
        max_length: int | None = None,
        add_generation_prompt: bool = True,
        return_labels: bool = False,
    ) -> Batch:
        """One conversation (a list of messages) or a batch (a list of conversations) -> `Batch`.

        Messages: {'role': 'user' | 'assistant' (| 'system' first), 'content': str | list of parts};
        parts: str, PIL image, numpy image, `Video`, {'type': 'text', 'text'}, {'type': 'image',
        'image': path | bytes | PIL}, {'type': 'video', 'path', 'fps', 'max_groups', 'packing'}.
        max_slice_nums: images default to the config (9); video frames default to 1.
        use_image_id:   None = config (True); never applies to video frames.
        temporal_ids:   low-level video form (reference `chat(temporal_ids=...)`): groups over the
                        image parts of a conversation, e.g. [[0, 3, 7], [10, 13]] for 5 frames; for a
                        batch, one such list (or None) per conversation.
        max_length:     refuse (InputError) any conversation longer than this many tokens.
        return_labels:  add `labels` for fine-tuning (use add_generation_prompt=False).
        """
        batch, per_sample_tids = _as_batch(msgs_or_batch, temporal_ids)
        options = dict(enable_thinking=enable_thinking, system_prompt=system_prompt, max_slice_nums=max_slice_nums,
                       use_image_id=use_image_id, max_length=max_length,
                       add_generation_prompt=add_generation_prompt, return_labels=return_labels)
        samples = [self.encode(msgs, temporal_ids=tids, sample_index=b, **options)
                   for b, (msgs, tids) in enumerate(zip(batch, per_sample_tids))]
        return self.collate(samples)

    def encode(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        enable_thinking: bool = False,
        system_prompt: str = "",
        max_slice_nums: int | None = None,
        use_image_id: bool | None = None,
        temporal_ids: Sequence[Sequence[int]] | None = None,
        max_length: int | None = None,
        add_generation_prompt: bool = True,
        return_labels: bool = False,
        sample_index: int = 0,
    ) -> EncodedSample:
        """One conversation -> `EncodedSample` (arguments as in `__call__`; `sample_index` names errors)."""
        where = f"conversation {sample_index}"
        _check_slice_nums(max_slice_nums, where)
        parsed = self._parse(messages, system_prompt, where)
        units = self._units(parsed, max_slice_nums, use_image_id, temporal_ids, where)
        rendered = render_chat(parsed.messages, add_generation_prompt=add_generation_prompt,
                               enable_thinking=enable_thinking)
        placeholders, pixel_values, tgt_sizes, groups = self._pixels(units)
        expanded = expand_image_tags(rendered.text, placeholders)
        ids, offsets = self.tokenizer.encode_with_offsets(expanded.text)
        bounds = find_image_bounds(ids, self.tokenizer)
        if len(bounds) != len(groups):
            raise RuntimeError(f"{where}: {len(bounds)} visual spans in the prompt but {len(groups)} resampler groups")
        if max_length is not None and len(ids) > max_length:
            raise InputError(
                f"{where} is {len(ids)} tokens long ({int((bounds[:, 1] - bounds[:, 0]).sum())} of them in "
                f"{len(bounds)} visual spans), above max_length={max_length}; prompts are never truncated: "
                "shorten the text, lower max_slice_nums, sample fewer video frames, or raise max_length"
            )
        labels = None
        if return_labels:
            labels = _labels(ids, offsets, rendered.trainable, expanded, where)
        return EncodedSample(rendered.text, expanded.text, ids, bounds, pixel_values,
                             torch.cat(tgt_sizes) if tgt_sizes else torch.zeros((0, 2), dtype=torch.int32), groups,
                             labels)

    def collate(self, samples: Sequence[EncodedSample]) -> Batch:
        """Left-pad with `<|endoftext|>`; attention_mask from lengths; spans shifted by the padding."""
        if not samples:
            raise InputError("the batch is empty: pass at least one conversation")
        width = max(len(s.input_ids) for s in samples)
        input_ids = torch.full((len(samples), width), self.tokenizer.pad_id, dtype=torch.long)  # (B, T)
        attention_mask = torch.zeros((len(samples), width), dtype=torch.long)  # (B, T)
        with_labels = [s.labels is not None for s in samples]
        if any(with_labels) != all(with_labels):
            raise ValueError(f"labels present for {sum(with_labels)} of {len(samples)} samples; encode all with return_labels")
        with_labels = all(with_labels)
        labels = torch.full((len(samples), width), IGNORE_INDEX, dtype=torch.long) if with_labels else None
        for b, s in enumerate(samples):
            pad = width - len(s.input_ids)
            input_ids[b, pad:] = torch.tensor(s.input_ids, dtype=torch.long)
            attention_mask[b, pad:] = 1
            if labels is not None:
                labels[b, pad:] = torch.tensor(s.labels, dtype=torch.long)
        return Batch(
            input_ids=input_ids,
            attention_mask=attention_mask,
            pixel_values=[s.pixel_values for s in samples],
            tgt_sizes=[s.tgt_sizes for s in samples],
            temporal_ids=[s.temporal_ids for s in samples],
            image_bounds=[s.image_bounds + (width - len(s.input_ids)) for s in samples],
            labels=labels,
        )

    # ---- steps of `encode` -------------------------------------------------------------------------
    def _parse(self, messages: Sequence[Mapping[str, Any]], system_prompt: str, where: str) -> _Parsed:
        """Check the messages, load their media in order, and turn each content into tagged text."""
        if isinstance(messages, (str, Mapping)) or not isinstance(messages, Sequence) or not messages:
            raise InputError(f"{where} must be a non-empty list of {{'role', 'content'}} messages, got {messages!r:.80}")
        _check_text(system_prompt, "system_prompt")
        out: list[dict[str, Any]] = [{"role": "system", "content": system_prompt}] if system_prompt else []
        media: list[tuple[Image.Image | video.DecodedVideo, str]] = []
        for m, msg in enumerate(messages):
            name = f"{where} message {m}"
            role = _check_role(msg, m, messages, bool(system_prompt), name)
            pieces: list[str] = []
            for k, part in enumerate(_content_parts(msg, name)):
                part_name = f"{name} part {k}"
                kind, value = _classify(part, part_name)
                if kind == "text":
                    _check_text(value, part_name)
                    pieces.append(value)
                elif kind == "image":
                    media.append((load_image(value, name=part_name), part_name))
                    pieces.append(IMAGE_TAG)
                else:
                    decoded = video.load_video(value, name=part_name)
                    media.append((decoded, part_name))
                    pieces.extend([IMAGE_TAG] * len(decoded.frames))
            content = "\n".join(pieces)
            if not content.strip():
                raise InputError(f"{name} ({role}) has empty content; give it text, an image or a video")
            rendered = {"role": role, "content": content}
            if msg.get("reasoning_content") is not None:
                rendered["reasoning_content"] = msg["reasoning_content"]
            out.append(rendered)
        return _Parsed(messages=out, media=media)

    def _units(
        self,
        parsed: _Parsed,
        max_slice_nums: int | None,
        use_image_id: bool | None,
        temporal_ids: Sequence[Sequence[int]] | None,
        where: str,
    ) -> list[_Unit]:
        """Group images and frames into placeholder units, in prompt order (see the module docstring)."""
        image_msn = self.cfg.max_slice_nums if max_slice_nums is None else max_slice_nums
        video_msn = 1 if max_slice_nums is None else max_slice_nums
        with_id = self.cfg.use_image_id if use_image_id is None else use_image_id
        if temporal_ids is not None:  # low-level form: the image parts are the frames
            if any(isinstance(item, video.DecodedVideo) for item, _ in parsed.media):
                raise InputError(f"{where}: temporal_ids= groups image parts; it cannot be combined with Video parts "
                                 "(a Video carries its own temporal ids)")
            frames = [item for item, _ in parsed.media]
            _check_groups(temporal_ids, len(frames), f"{where} temporal_ids")
            units, start = [], 0
            for g, ids in enumerate(temporal_ids):
                units.append(_Unit(frames[start:start + len(ids)], list(ids), start if with_id else None, image_msn,
                                   f"{where} temporal group {g}"))
                start += len(ids)
            return units
        units, n_images = [], 0
        for item, name in parsed.media:
            if isinstance(item, Image.Image):
                units.append(_Unit([item], [-1], n_images if with_id else None, image_msn, name))
                n_images += 1
                continue
            start = 0  # load_video checked that the groups cover the frames
            for g, ids in enumerate(item.temporal_ids):
                units.append(_Unit(item.frames[start:start + len(ids)], list(ids), None, video_msn, f"{name} group {g}"))
                start += len(ids)
        return units

    def _pixels(
        self, units: list[_Unit]
    ) -> tuple[list[str | None], list[torch.Tensor], list[torch.Tensor], list[list[int]]]:
        """Placeholder per tag (None = later frame of a group), slices, tgt sizes and temporal ids.

        Order (reference `image_processing_minicpmv.preprocess`): unit by unit; inside a unit, slice
        index by slice index, and for each slice index every frame of the unit. E.g. 2 frames sliced
        into overview + 2 slices: [f0_ov, f1_ov, f0_s1, f1_s1, f0_s2, f1_s2], temporal ids [g]*3.
        """
        placeholders: list[str | None] = []
        pixel_values: list[torch.Tensor] = []
        tgt_sizes: list[torch.Tensor] = []
        groups: list[list[int]] = []
        processed = self._process_all([(f, unit.max_slice_nums) for unit in units for f in unit.frames])
        for unit in units:
            done = [processed[id(f), unit.max_slice_nums] for f in unit.frames]
            for j, p in enumerate(done[1:], start=1):
                if p.grid != done[0].grid:
                    raise InputError(f"{unit.name}: frame {j} is cut into grid {p.grid} but frame 0 into {done[0].grid}; "
                                     "frames of one temporal group must have the same size")
            placeholders.append(slicing.image_placeholder(done[0].grid, unit.image_idx, self.cfg.image_feature_size))
            placeholders.extend([None] * (len(done) - 1))
            for s in range(len(done[0].pixel_values)):
                for p in done:
                    pixel_values.append(p.pixel_values[s])  # (3, H, W)
                    tgt_sizes.append(p.tgt_sizes[s:s + 1])  # (1, 2)
                groups.append(list(unit.temporal_ids))
        return placeholders, pixel_values, tgt_sizes, groups

    def _process_all(self, jobs: list[tuple[Image.Image, int]]) -> dict[tuple[int, int], slicing.ProcessedImage]:
        """`process_image` for each distinct (image object, max_slice_nums), on a thread pool.

        Frames repeat as the same object when a video is sampled above its frame rate; each is done once.
        """
        unique = {(id(image), msn): (image, msn) for image, msn in jobs}
        if len(unique) <= 1 or self.num_threads == 1:
            return {key: slicing.process_image(image, self.cfg, msn) for key, (image, msn) in unique.items()}
        with ThreadPoolExecutor(min(self.num_threads, len(unique))) as pool:
            done = pool.map(lambda job: slicing.process_image(job[0], self.cfg, job[1]), unique.values())
            return dict(zip(unique, done))


def _labels(
    ids: list[int], offsets: list[tuple[int, int]], trainable: Sequence[tuple[int, int]], expanded: Expanded, where: str
) -> list[int]:
    """Token id where the token starts inside a trained span of the chat text (mapped through the
    placeholder expansion) and outside every placeholder; -100 elsewhere (not shifted: the loss
    compares logits[t] with labels[t + 1])."""
    keep = np.zeros(len(expanded.text) + 1, dtype=bool)
    for start, end in trainable:
        keep[expanded.position[start]:expanded.position[end]] = True
    for start, end in expanded.placeholders:
        keep[start:end] = False
    starts = np.array([o[0] for o in offsets], dtype=np.int64)
    labels = np.where(keep[starts], np.array(ids, dtype=np.int64), IGNORE_INDEX)
    if not (labels != IGNORE_INDEX).any():
        raise InputError(f"{where} has no assistant text to train on; end it with an assistant message")
    return labels.tolist()


def _as_batch(msgs_or_batch: Any, temporal_ids: Any) -> tuple[list[Any], list[Any]]:
    """([conversation, ...], [temporal_ids of each]) for one conversation or a batch."""
    if isinstance(msgs_or_batch, (str, Mapping)) or not isinstance(msgs_or_batch, Sequence) or not msgs_or_batch:
        raise InputError("pass a non-empty list of messages, or a list of such lists for a batch; "
                         f"got {msgs_or_batch!r:.80}")
    if isinstance(msgs_or_batch[0], Mapping):
        return [msgs_or_batch], [temporal_ids]
    if temporal_ids is None:
        return list(msgs_or_batch), [None] * len(msgs_or_batch)
    if len(temporal_ids) != len(msgs_or_batch):
        raise InputError(f"for a batch of {len(msgs_or_batch)} conversations temporal_ids must hold one entry "
                         f"(a list of groups, or None) per conversation; got {len(temporal_ids)} entries")
    return list(msgs_or_batch), list(temporal_ids)


def _check_role(msg: Any, m: int, messages: Sequence[Any], has_system_prompt: bool, name: str) -> str:
    if not isinstance(msg, Mapping):
        raise InputError(f"{name} must be a dict with 'role' and 'content', got {type(msg).__name__}")
    role = msg.get("role")
    if role not in ("user", "assistant", "system"):
        raise InputError(f"{name} has role {role!r}; use 'user' or 'assistant' ('system' only as the first message)")
    if role == "system" and (m > 0 or has_system_prompt):
        raise InputError(f"{name}: a system message may only come first, and not together with system_prompt=")
    first_turn = 1 if messages[0].get("role") == "system" else 0
    if m == first_turn and role != "user":
        raise InputError(f"{name} is from {role!r}, but the conversation must start with a user message")
    return role


def _content_parts(msg: Mapping[str, Any], name: str) -> list[Any]:
    content = msg.get("content")
    if isinstance(content, str):
        return [content]
    if isinstance(content, (list, tuple)) and content:
        return list(content)
    raise InputError(f"{name} content must be a string or a non-empty list of parts, got {content!r:.80}")


def _classify(part: Any, name: str) -> tuple[str, Any]:
    """('text' | 'image' | 'video', value) of one content part."""
    if isinstance(part, str):
        return "text", part
    if isinstance(part, (Image.Image, np.ndarray)):
        return "image", part
    if isinstance(part, Video):
        return "video", part
    if isinstance(part, Mapping):
        kind = part.get("type")
        if kind == "text" and isinstance(part.get("text"), str):
            return "text", part["text"]
        if kind == "image" and part.get("image") is not None:
            return "image", part["image"]
        if kind == "video":
            return "video", _video_from_dict(part, name)
        raise InputError(f"{name}: dict part with keys {sorted(part)} is not understood; use "
                         "{'type': 'text', 'text': ...}, {'type': 'image', 'image': ...} or {'type': 'video', 'path': ...}")
    raise InputError(f"{name}: a content part of type {type(part).__name__} is not supported; use str, a PIL image, "
                     "a numpy image, a Video, or a typed dict")


def _video_from_dict(part: Mapping[str, Any], name: str) -> Video:
    unknown = sorted(set(part) - {"type", *_VIDEO_KEYS})
    if unknown or part.get("path") is None:
        raise InputError(f"{name}: a video part needs 'path' and may have {', '.join(_VIDEO_KEYS[1:])}; "
                         f"got keys {sorted(part)}")
    try:
        return Video(**{k: part[k] for k in _VIDEO_KEYS if k in part})
    except InputError as e:
        raise InputError(f"{name}: {e}") from None


def _check_text(text: Any, name: str) -> None:
    if not isinstance(text, str):
        raise InputError(f"{name} must be a string, got {type(text).__name__}")
    for marker in SPAN_MARKERS:
        if marker in text:
            raise InputError(f"{name}: the text contains {marker!r}, which the prompt reserves for visual spans; "
                             "remove it and pass images or videos as separate content parts")


def _check_groups(groups: Any, n_frames: int, what: str) -> None:
    ok = isinstance(groups, Sequence) and all(
        isinstance(g, Sequence) and len(g) > 0 and all(isinstance(t, (int, np.integer)) for t in g) for g in groups
    )
    if not ok:
        raise InputError(f"{what} must be a list of non-empty lists of ints (ids in 0.1 s units), got {groups!r:.80}")
    total = sum(len(g) for g in groups)
    if total != n_frames:
        raise InputError(f"{what}: the temporal ids cover {total} frames in {len(groups)} groups, but there are "
                         f"{n_frames} frames/images; give exactly one id per frame")


def _check_slice_nums(n: Any, where: str) -> None:
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise InputError(f"{where}: max_slice_nums must be an int >= 1 (or None for the default), got {n!r}")


def _check_model_agrees(model: ModelConfig, cfg: ProcessorConfig) -> None:
    pairs = {
        "query_num vs image_feature_size": (model.query_num, cfg.image_feature_size),
        "patch_size": (model.patch_size, cfg.patch_size),
        "image_size vs scale_resolution": (model.scale_resolution, cfg.scale_resolution),
    }
    bad = {k: v for k, v in pairs.items() if v[0] != v[1]}
    if bad:
        raise ValueError(f"config.json and preprocessor_config.json disagree (config, preprocessor): {bad}")
