"""Video input: frame sampling, 3D packing and temporal ids (the official recipe), and PyAV decoding.

MiniCPM-V 4.5 sees a video as consecutive *groups* of up to `packing` frames; the 3D-Resampler turns
each group into one 64-token span, and every frame carries a temporal id in 0.1 s units (spec §5.1).

    sample_video(n_frames, fps, ...) -> VideoSampling   pure: which frames, how many per group, ids
    load_video(Video(path=...))      -> DecodedVideo    decode only the sampled frames, RGB PIL images

Decoding reads the container once without decoding (packet count, keyframe positions), then walks the
sampled frames in order: when the next wanted frame lies behind a keyframe that is ahead of the
decoder, it seeks to that keyframe; otherwise it decodes forward. Only the sampled frames are converted
to RGB and kept, so memory is bounded by the number of sampled frames (at most 540 by default), never
by the length of the video.
"""

from __future__ import annotations

import bisect
import io
import math
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import av
import numpy as np
from PIL import Image

from minicpmv.errors import InputError

TIME_SCALE = 0.1  # seconds per temporal-id step (recipe TIME_SCALE)
RECIPE_MAX_GROUPS = 180  # recipe MAX_NUM_FRAMES: at most this many packed groups
RECIPE_MAX_PACKING = 3  # recipe MAX_NUM_PACKING: automatic packing never exceeds this
MAX_FRAMES_PER_GROUP = 6  # the paper's largest group ("6x temporal compression"); caps force_packing
MIN_FRAMES_SKIPPED_BY_SEEK = 8  # seek only when it skips more frames than this (a seek flushes the decoder)


@dataclass(frozen=True)
class VideoSampling:
    """Which frames to decode and how they are grouped.

    frame_indices: int[N]     sampled frame numbers (non-decreasing; repeat when fps < choose_fps)
    packing:       int        frames per group (the last group may be shorter)
    temporal_ids:  [[int]]    ids in 0.1 s units, consecutive chunks of `packing`; sum of lengths = N
    """

    frame_indices: list[int]
    packing: int
    temporal_ids: list[list[int]]


def _check_number(value: Any, what: str, *, integer: bool = False, minimum: float = 0.0) -> None:
    """Reject bools, non-numbers, NaN/inf and values below `minimum` (or <= 0 when minimum == 0)."""
    kinds = (int, np.integer) if integer else (int, float, np.integer, np.floating)
    ok = isinstance(value, kinds) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > 0 if minimum == 0 else value >= minimum)
    if not ok:
        bound = "> 0" if minimum == 0 else f">= {minimum:g}"
        raise InputError(f"{what} must be a finite {'integer' if integer else 'number'} {bound}, got {value!r}")


def _check_packing(value: int | None, what: str) -> None:
    if value is None:
        return
    _check_number(value, what, integer=True, minimum=1)
    if value > MAX_FRAMES_PER_GROUP:
        raise InputError(f"{what} = {value} is larger than {MAX_FRAMES_PER_GROUP} frames per group "
                         f"(the model's largest temporal group); use 1..{MAX_FRAMES_PER_GROUP} or None")


def _frame_budget(n_frames: int, fps: float, choose_fps: float, max_groups: int,
                  max_packing: int) -> tuple[int, int]:
    """(frames to sample, automatic packing), exactly as the recipe's branches (Python floats, `round`)."""
    duration = n_frames / fps
    if choose_fps * int(duration) <= max_groups:
        return round(min(choose_fps, round(fps)) * min(max_groups, duration)), 1
    packing = math.ceil(duration * choose_fps / max_groups)
    if packing <= max_packing:
        return round(duration * choose_fps), packing
    return max_groups * max_packing, max_packing


def nearest_grid_index(times: np.ndarray, duration: float) -> np.ndarray:
    """Index of the nearest point of `np.arange(0, duration, 0.1)` for each time (float64), lower on ties.

    The grid is sorted, so `searchsorted` brackets each time between two grid values exactly and the
    nearer one wins, comparing float64 distances like a nearest-neighbour search over the grid values
    (the recipe uses scipy's cKDTree; at exact float64 ties its choice varies, here the lower point).

    Example: duration 0.35 -> grid [0, 0.1, 0.2, 0.3]; times [0.0, 0.14, 0.26, 0.34] -> [0, 1, 3, 3].
    """
    grid = np.arange(0.0, duration, TIME_SCALE)  # float64[G]
    if len(grid) == 1:
        return np.zeros(len(times), dtype=np.int64)
    hi = np.searchsorted(grid, times).clip(1, len(grid) - 1)  # grid[hi-1] < t <= grid[hi] inside the grid
    lo = hi - 1
    return np.where(grid[hi] - times < times - grid[lo], hi, lo)  # int64[N]


def sample_video(n_frames: int, fps: float, choose_fps: float = 5, force_packing: int | None = None,
                 max_groups: int = RECIPE_MAX_GROUPS, max_packing: int | None = None,
                 exact_timestamps: bool = False) -> VideoSampling:
    """Frames to sample from an `n_frames` video at `fps`, their packing and temporal ids (spec §5.1).

    The official README recipe `encode_video`, on numbers only:
      1. duration = n_frames / fps. If choose_fps * int(duration) <= max_groups: packing 1 and
         k = round(min(choose_fps, round(fps)) * min(max_groups, duration)) frames. Otherwise
         packing = ceil(duration * choose_fps / max_groups) and k = round(duration * choose_fps); if that
         packing exceeds max_packing, k = max_groups * max_packing and packing = max_packing.
      2. Uniform sampling, centre of each bin: index_i = int(i * gap + gap / 2), gap = n_frames / k.
      3. force_packing, when given, replaces the packing (the number of frames k stays as chosen).
      4. Timestamp t_i = index_i / fps snaps to the nearest point g of the grid np.arange(0, duration, 0.1);
         the id is int32(g / 0.1), a TRUNCATION: g / 0.1 is sometimes k - epsilon (e.g. 4.3 s -> 42), and
         this reproduces the recipe bit for bit. exact_timestamps=True gives round(g / 0.1) = the grid
         index instead (43), a conscious fix that no longer matches the reference ids.
      5. Groups are consecutive chunks of `packing` ids; the last one may be shorter.

    Packing limits: automatic packing is capped at 3 (the recipe's MAX_NUM_PACKING) and force_packing
    may go up to 6 (the paper's largest group). Passing max_packing explicitly caps both, as the recipe
    does: sample_video(..., force_packing=6, max_packing=3) packs by 3, like `encode_video`.

    Worked example: 60 s at 30 fps (1800 frames), choose_fps=5 -> 5 * 60 = 300 > 180, so packing =
    ceil(300 / 180) = 2 and k = 300 frames; gap = 6 -> indices [3, 9, 15, ...]; t = [0.1, 0.3, 0.5, ...]
    -> ids [1, 3, 5, ...] -> 150 groups [[1, 3], [5, 7], ...]. A 10-minute clip at 30 fps gets
    180 * 3 = 540 frames (gap 33.3 -> indices [16, 50, 83, ...]) and groups [[5, 17, 28], ...].

    Raises InputError for non-positive inputs, force_packing outside 1..6 and clips so short that
    k == 0 (the recipe divides by zero there).
    """
    _check_number(n_frames, "n_frames", integer=True, minimum=1)
    _check_number(fps, "fps")
    _check_number(choose_fps, "choose_fps")
    _check_number(max_groups, "max_groups", integer=True, minimum=1)
    _check_packing(force_packing, "force_packing")
    _check_packing(max_packing, "max_packing")
    n_frames, fps, choose_fps = int(n_frames), float(fps), float(choose_fps)  # the recipe's Python numbers
    auto_cap = RECIPE_MAX_PACKING if max_packing is None else max_packing
    n_sample, packing = _frame_budget(n_frames, fps, choose_fps, max_groups, auto_cap)
    if n_sample == 0:
        raise InputError(f"video too short to sample: {n_frames} frames at {fps:g} fps = {n_frames / fps:.3f} s "
                         f"gives 0 frames at choose_fps {choose_fps:g}; use a clip of at least "
                         f"~{1 / choose_fps:.2f} s, a higher choose_fps, or pass frames directly")
    if force_packing is not None:
        packing = force_packing if max_packing is None else min(force_packing, max_packing)

    gap = n_frames / n_sample
    indices = (np.arange(n_sample) * gap + gap / 2).astype(np.int64)  # int64[k], int() of non-negatives
    duration = n_frames / fps
    nearest = nearest_grid_index(indices / fps, duration)  # int64[k]
    if exact_timestamps:
        ids = nearest
    else:
        ids = (np.arange(0.0, duration, TIME_SCALE)[nearest] / TIME_SCALE).astype(np.int32)  # truncation
    ids_list = ids.tolist()
    groups = [ids_list[i:i + packing] for i in range(0, len(ids_list), packing)]
    return VideoSampling(frame_indices=indices.tolist(), packing=packing, temporal_ids=groups)


FrameLike = Image.Image | np.ndarray


@dataclass(frozen=True, eq=False)
class Video:
    """A video in a message: a file (or its bytes) to sample, or frames already sampled.

    path:             file path, or the file's bytes (any container/codec FFmpeg reads)
    fps:              frames sampled per second (the recipe's choose_fps; the official example uses 5)
    max_groups:       at most this many packed groups (64 tokens each)
    packing:          frames per group; None = automatic (1..3, the recipe); up to 6 when forced
    exact_timestamps: round temporal ids instead of the recipe's truncation (see `sample_video`)
    frames:           low-level form: sampled frames (PIL images or uint8 HxWx3 arrays) ...
    temporal_ids:     ... and their groups of ids in 0.1 s units (lengths sum to len(frames))
    """

    path: str | os.PathLike | bytes | None = None
    fps: float = 5
    max_groups: int = RECIPE_MAX_GROUPS
    packing: int | None = None
    exact_timestamps: bool = False
    frames: Sequence[FrameLike] | None = None
    temporal_ids: Sequence[Sequence[int]] | None = None

    def __post_init__(self) -> None:
        if self.frames is not None and not isinstance(self.frames, Sequence):
            raise InputError(f"Video.frames must be a list of frames, got {type(self.frames).__name__}")
        if (self.path is None) == (self.frames is None):
            raise InputError("Video needs exactly one of `path` (a file to sample) or `frames` "
                             f"(already sampled, with temporal_ids); got path={self.path!r:.60}, "
                             f"frames={'None' if self.frames is None else f'{len(self.frames)} frames'}")
        if self.frames is not None and self.temporal_ids is None:
            raise InputError("Video(frames=...) also needs temporal_ids (groups of ids in 0.1 s units, e.g. "
                             "sample_video(...).temporal_ids)")
        if self.path is not None and self.temporal_ids is not None:
            raise InputError("Video(path=...) computes temporal_ids itself; pass them only with frames=")
        _check_number(self.fps, "Video.fps")
        _check_number(self.max_groups, "Video.max_groups", integer=True, minimum=1)
        _check_packing(self.packing, "Video.packing")


@dataclass(frozen=True)
class DecodedVideo:
    """Sampled frames ready for the processor.

    frames:        N RGB PIL images (repeated objects when a frame index repeats)
    temporal_ids:  groups of ids (0.1 s units), lengths sum to N
    fps:           average frame rate of the stream (None for the low-level form)
    duration_s:    n_frames / fps (None for the low-level form)
    n_frames:      frames in the stream (N for the low-level form)
    frame_indices: N sampled frame numbers
    frames_decoded: frames the decoder produced (>= unique sampled frames; 0 for the low-level form)
    """

    frames: list[Image.Image]
    temporal_ids: list[list[int]]
    fps: float | None
    duration_s: float | None
    n_frames: int
    frame_indices: list[int]
    frames_decoded: int = 0


@dataclass(frozen=True)
class _StreamIndex:
    """What one demux pass (no decoding) says about a video stream."""

    n_frames: int
    fps: float
    time_base: Fraction
    start_pts: int
    keyframe_positions: list[int]  # sorted frame positions of keyframes
    keyframe_pts: list[int]  # their pts, same order

    def position(self, pts: int) -> int:
        """Frame number shown at `pts` (constant-rate mapping from the stream start)."""
        return _position(pts, self.start_pts, self.time_base, self.fps)


def _position(pts: int, start_pts: int, time_base: Fraction, fps: float) -> int:
    return round(float((pts - start_pts) * time_base) * fps)


# What PyAV raises on bad media: FFmpegError and its subclasses (which also derive from OSError,
# ValueError, EOFError, ...), plus errors from reading tags or packet data.
_AV_ERRORS = (av.FFmpegError, OSError, ValueError, EOFError, RuntimeError, IndexError, UnicodeDecodeError)


def _open(source: str | os.PathLike | bytes, name: str) -> Any:
    """av.open with every failure turned into an InputError naming the item."""
    if not isinstance(source, bytes):
        path = os.fspath(source)
        if not os.path.exists(path):
            raise InputError(f"{name}: no such file {path!r}; check the path")
        if not os.path.isfile(path):
            raise InputError(f"{name}: {path!r} is not a regular file (a directory?); pass a video file")
    try:
        return av.open(io.BytesIO(source) if isinstance(source, bytes) else os.fspath(source),
                       metadata_errors="replace")
    except _AV_ERRORS as e:
        raise InputError(f"{name}: cannot open as a video ({type(e).__name__}: {e}); pass a readable video "
                         "file (mp4, webm, mkv, avi, mov, gif, ...)") from None


def _video_stream(container: Any, name: str) -> Any:
    """FFmpeg's best video stream (skips cover-art pictures, prefers the main track)."""
    stream = container.streams.best("video")
    if stream is None:
        kinds = sorted({s.type for s in container.streams}) or ["none"]
        raise InputError(f"{name}: the file has no video stream (streams: {', '.join(kinds)}); pass a video file")
    stream.thread_type = "AUTO"  # frame + slice threads
    return stream


def _average_fps(stream: Any, counted: int, name: str) -> float:
    """Stream average rate, else FFmpeg's guess, else counted frames over the stream duration."""
    for rate in (stream.average_rate, stream.guessed_rate):
        if rate and float(rate) > 0:
            return float(rate)
    if stream.duration and stream.time_base:
        return counted / float(stream.duration * stream.time_base)
    raise InputError(f"{name}: the stream has no frame rate and no duration; re-encode it (e.g. ffmpeg -i in out.mp4)")


def _declared_seconds(container: Any, stream: Any) -> float | None:
    """Duration the header promises for this video stream (container duration only if it is alone)."""
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    if container.duration and len(container.streams) == 1:
        return container.duration / 1_000_000
    return None


def _index_stream(source: str | os.PathLike | bytes, name: str) -> _StreamIndex:
    """One demux pass (no decoding): frame count, average fps, keyframes; rejects truncated files."""
    with _open(source, name) as container:
        stream = _video_stream(container, name)
        counted, first_pts, keyframes = 0, None, set()
        try:
            for packet in container.demux(stream):
                pts = packet.pts if packet.pts is not None else packet.dts
                if packet.size == 0 or pts is None:
                    continue  # the demuxer's final flush packet, or an empty placeholder
                counted += 1
                first_pts = pts if first_pts is None else min(first_pts, pts)
                if packet.is_keyframe:
                    keyframes.add(pts)
        except _AV_ERRORS as e:
            raise InputError(f"{name}: corrupt container after {counted} frames ({type(e).__name__}: {e}); "
                             "re-encode or re-download the file") from None
        if counted == 0:
            raise InputError(f"{name}: the video stream has no frames; pass a non-empty video")
        fps = _average_fps(stream, counted, name)
        declared_frames, declared_s = stream.frames, _declared_seconds(container, stream)
        start = stream.start_time if stream.start_time is not None else first_pts
        time_base = Fraction(stream.time_base) if stream.time_base else Fraction(1, 1)
    _check_complete(name, counted, declared_frames, declared_s, fps)
    key_pts = sorted(keyframes or {start})
    return _StreamIndex(n_frames=declared_frames or counted, fps=fps, time_base=time_base, start_pts=start,
                        keyframe_positions=[_position(p, start, time_base, fps) for p in key_pts],
                        keyframe_pts=key_pts)


def _check_complete(name: str, counted: int, declared_frames: int, declared_s: float | None, fps: float) -> None:
    """A header that promises clearly more frames (or seconds) than the file holds means truncation."""
    if declared_frames > 0 and counted < declared_frames - max(2, declared_frames // 100):
        raise InputError(f"{name}: truncated or corrupt: the header lists {declared_frames} frames but only "
                         f"{counted} are present; re-encode or re-download the file")
    if declared_frames <= 0 and declared_s is not None and counted / fps + max(1.0, 0.05 * declared_s) < declared_s:
        raise InputError(f"{name}: truncated or corrupt: the header says {declared_s:.2f} s but the frames "
                         f"present last {counted / fps:.2f} s ({counted} at {fps:g} fps); re-encode the file")


class _FrameCursor:
    """Walks a stream forward to wanted frame positions, seeking to a keyframe when that skips frames.

    Holds at most two decoded frames: `last` (the newest at or before the target, i.e. the frame on
    screen at the target) and `ahead` (one decoded past the previous target).
    """

    def __init__(self, container: Any, stream: Any, index: _StreamIndex, name: str):
        self.container, self.stream, self.index, self.name = container, stream, index, name
        self.frames: Iterator[Any] = container.decode(stream)
        self.position = index.keyframe_positions[0]  # a fresh container decodes from its first keyframe
        self.last: tuple[int, Any] | None = None
        self.ahead: tuple[int, Any] | None = None
        self.decoded = 0
        self.budget = 2 * index.n_frames + 64  # decoded-frame guard against broken timestamps

    def frame_at(self, target: int) -> tuple[int, Any] | None:
        """(position, frame) shown at frame `target`; a position < target means the stream ended."""
        if self.ahead is not None and self.ahead[0] <= target:
            self.last, self.ahead = self.ahead, None
        if self.ahead is None and (self.last is None or self.last[0] < target):
            self._seek_if_cheaper(target)
            self._decode_until(target)
        return self.last if self.last is not None else self.ahead

    def _seek_if_cheaper(self, target: int) -> None:
        k = bisect.bisect_right(self.index.keyframe_positions, target) - 1
        if k < 0 or self.index.keyframe_positions[k] <= self.position + MIN_FRAMES_SKIPPED_BY_SEEK:
            return  # no keyframe far enough between the decoder and the target: decode forward
        self.container.seek(self.index.keyframe_pts[k], stream=self.stream, backward=True, any_frame=False)
        self.frames = self.container.decode(self.stream)
        self.position, self.last, self.ahead = self.index.keyframe_positions[k], None, None

    def _decode_until(self, target: int) -> None:
        for frame in self.frames:
            self.decoded += 1
            if self.decoded > self.budget:
                raise InputError(f"{self.name}: decoded {self.decoded} frames of a {self.index.n_frames}-frame "
                                 "video without reaching the sampled frames (broken timestamps?); re-encode it")
            pos = self.position + 1 if frame.pts is None else self.index.position(frame.pts)
            self.position = max(self.position, pos)
            if pos > target:
                self.ahead = (pos, frame)
                return
            self.last = (pos, frame)
            if pos == target:
                return


def _to_rgb(frame: Any) -> Image.Image:
    """One decoded frame as an RGB PIL image (the only per-frame colour conversion).

    `to_ndarray` + `fromarray` gives the same pixels as `frame.to_image()` and is ~1.5x faster.
    """
    return Image.fromarray(frame.to_ndarray(format="rgb24"), "RGB")  # uint8[H, W, 3] -> RGB


def _decode_frames(source: str | os.PathLike | bytes, index: _StreamIndex, wanted: list[int], name: str,
                   progress: Callable[[int, int], None] | None) -> tuple[dict[int, Image.Image], int]:
    """RGB images of the sorted unique frame positions `wanted`, and how many frames were decoded."""
    images: dict[int, Image.Image] = {}
    tolerance = max(2, round(index.fps))  # a stream may end up to ~1 s before its header's frame count
    with _open(source, name) as container:
        cursor = _FrameCursor(container, _video_stream(container, name), index, name)
        for target in wanted:
            try:
                found = cursor.frame_at(target)
            except InputError:
                raise
            except _AV_ERRORS as e:
                raise InputError(f"{name}: cannot decode frame {target} of {index.n_frames} "
                                 f"({type(e).__name__}: {e}); re-encode or re-download the file") from None
            if found is None or found[0] < target - tolerance:
                reached = -1 if found is None else found[0]
                raise InputError(f"{name}: the stream ends at frame {reached} but frame {target} of "
                                 f"{index.n_frames} was expected (truncated file?); re-encode or re-download it")
            images[target] = _to_rgb(found[1])
            if progress is not None:
                progress(len(images), len(wanted))
    return images, cursor.decoded


def _rgb(frame: FrameLike, name: str, i: int) -> Image.Image:
    if isinstance(frame, Image.Image):
        return frame if frame.mode == "RGB" else frame.convert("RGB")
    if isinstance(frame, np.ndarray) and frame.dtype == np.uint8 and frame.ndim == 3 and frame.shape[2] == 3:
        return Image.fromarray(frame, "RGB")
    what = f"array {frame.dtype} {frame.shape}" if isinstance(frame, np.ndarray) else type(frame).__name__
    raise InputError(f"{name}: frame {i} is a {what}; pass PIL images or uint8 HxWx3 arrays")


def _from_frames(video: Video, name: str) -> DecodedVideo:
    """The low-level form: validate frames against their temporal id groups."""
    if isinstance(video.temporal_ids, (str, bytes)) or any(
            not isinstance(g, Sequence) or isinstance(g, (str, bytes)) for g in video.temporal_ids):
        raise InputError(f"{name}: temporal_ids must be a list of groups (lists of ints), e.g. [[0, 3], [7]]; "
                         f"got {video.temporal_ids!r:.80}")
    groups = [list(g) for g in video.temporal_ids]
    ids = [t for g in groups for t in g]
    if not groups or any(not 1 <= len(g) <= MAX_FRAMES_PER_GROUP for g in groups):
        sizes = [len(g) for g in groups]
        raise InputError(f"{name}: temporal_ids groups must hold 1..{MAX_FRAMES_PER_GROUP} ids each; got sizes {sizes}")
    if len(ids) != len(video.frames):
        raise InputError(f"{name}: temporal_ids hold {len(ids)} ids but {len(video.frames)} frames were given; "
                         "pass one id per frame")
    if any(isinstance(t, bool) or not isinstance(t, (int, np.integer)) or t < 0 for t in ids):
        raise InputError(f"{name}: temporal ids must be integers >= 0 (0.1 s units); got {ids[:12]}")
    frames = [_rgb(f, name, i) for i, f in enumerate(video.frames)]
    return DecodedVideo(frames, [[int(t) for t in g] for g in groups], None, None, len(frames),
                        list(range(len(frames))))


def load_video(video: Video, name: str = "video 0", *,
               progress: Callable[[int, int], None] | None = None) -> DecodedVideo:
    """Decode the sampled frames of `video` (spec §5.1) as RGB PIL images with their temporal ids.

    Steps: one demux pass (frame count from the header, else counted packets; average fps; keyframes;
    truncation check) -> `sample_video` -> decode forward through the sorted unique sampled frames,
    seeking to a keyframe whenever one lies between the decoder and the next wanted frame -> RGB.
    Frame i is the frame shown at time start + i / fps. `progress(done, total)` is called after each
    unique sampled frame. Every failure (unreadable path, random bytes, no video stream, no frames,
    truncated or corrupt data, too short to sample) raises InputError naming `name`.

    Example: a 10 s 30 fps mp4 with Video(path, fps=5) -> 50 frames (indices 3, 9, ..., 297), packing 1,
    temporal_ids [[1], [3], ..., [39], [41], [42], [45], ..., [99]] (4.3 s truncates to 42, see
    `sample_video`).
    """
    if video.frames is not None:
        return _from_frames(video, name)
    index = _index_stream(video.path, name)
    try:
        sampling = sample_video(index.n_frames, index.fps, video.fps, force_packing=video.packing,
                                max_groups=video.max_groups, exact_timestamps=video.exact_timestamps)
    except InputError as e:
        raise InputError(f"{name}: {e}") from None
    wanted = sorted(set(sampling.frame_indices))
    images, decoded = _decode_frames(video.path, index, wanted, name, progress)
    return DecodedVideo(frames=[images[i] for i in sampling.frame_indices], temporal_ids=sampling.temporal_ids,
                        fps=index.fps, duration_s=index.n_frames / index.fps, n_frames=index.n_frames,
                        frame_indices=sampling.frame_indices, frames_decoded=decoded)
