"""Token accounting: what an image or a video costs MiniCPM-V 4.5 and Qwen2.5-VL (architecture spec §7).

Pure arithmetic on sizes, durations and frame rates; nothing is decoded or resized. Our numbers come
from the processor's own functions (`slicing.get_sliced_grid` / `find_best_resize` / `get_refine_size`,
`video.sample_video`), so they are exactly what `Processor` produces (tests/test_tokens.py checks that
against real processor calls). Qwen2.5-VL's follow its official `qwen_vl_utils/vision_process.py`
(spec source S9: `smart_resize`, 14-px patches merged 2x2, video at 2 fps with temporal patch 2).

    minicpmv_image(1920, 1080)                   -> TokenCount(visual 576, prompt 598, ...)
    qwen_image(1920, 1080)                       -> TokenCount(visual 2691, prompt 2693, ...)
    compare_video(VideoSpec.of(3600, 448, 448))  -> ours 11,520 vs Qwen 46,464 visual tokens (ratio 0.248)

`python -m minicpmv.eval.tokens` prints the table of docs/tokens.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from minicpmv.config import ProcessorConfig
from minicpmv.errors import InputError
from minicpmv.processor import slicing
from minicpmv.processor.video import RECIPE_MAX_GROUPS, sample_video


@dataclass(frozen=True)
class TokenCount:
    """What one image or video costs a model.

    visual_tokens: prompt positions filled by vision features (MiniCPM-V: 64 per span; Qwen: merged patches)
    prompt_tokens: all tokens the medium adds to the prompt: visual tokens plus span markers, image ids
                   and the newlines between spans (not the newline that joins it to the text after it)
    vit_patches:   14-px patches the vision encoder attends over, all frames and slices together
                   (Qwen2.5-VL: spatio-temporal patches of 2 frames)
    frames:        frames sampled from a video (1 for an image)
    detail:        how the numbers came about, e.g. "grid 4x2, overview 602x336 + 8 slices of 420x476"
    """

    visual_tokens: int
    prompt_tokens: int
    vit_patches: int
    frames: int
    detail: str


@dataclass(frozen=True)
class Comparison:
    """The same input for both models; `ratio` = ours / Qwen2.5-VL in visual tokens."""

    ours: TokenCount
    qwen: TokenCount

    @property
    def ratio(self) -> float:
        return self.ours.visual_tokens / self.qwen.visual_tokens


@dataclass(frozen=True)
class VideoSpec:
    """A video as the samplers see it: `n_frames` frames at `fps`, each `width` x `height` pixels."""

    n_frames: int
    fps: float
    width: int
    height: int

    @classmethod
    def of(cls, duration_s: float, width: int, height: int, fps: float = 30.0) -> "VideoSpec":
        """A `duration_s`-second video at `fps`: n_frames = round(duration_s * fps), e.g. 60 s at 30 fps -> 1800."""
        if not (math.isfinite(duration_s) and duration_s > 0 and math.isfinite(fps) and fps > 0):
            raise InputError(f"a video needs a duration > 0 s and an fps > 0, got {duration_s!r} s at {fps!r} fps")
        return cls(max(1, round(duration_s * fps)), float(fps), int(width), int(height))

    @property
    def duration_s(self) -> float:
        return self.n_frames / self.fps


@dataclass(frozen=True)
class OurSettings:
    """MiniCPM-V 4.5 inference settings; the defaults are the official ones (spec §4.1, §5.1).

    processor:            the pre-processor config (tokens per span, slice size, patch size, image ids)
    max_slice_nums:       images: None = processor.max_slice_nums (9)
    video_max_slice_nums: video frames are not sliced in the official recipe (1)
    choose_fps:           video sampling rate (the README example uses 5)
    packing:              frames per 64-token group; None = the recipe's automatic 1..3
    max_groups:           at most this many groups per video (180)
    """

    processor: ProcessorConfig = field(default_factory=ProcessorConfig)
    max_slice_nums: int | None = None
    video_max_slice_nums: int = 1
    choose_fps: float = 5.0
    packing: int | None = None
    max_groups: int = RECIPE_MAX_GROUPS


@dataclass(frozen=True)
class QwenSettings:
    """Qwen2.5-VL defaults of `qwen_vl_utils/vision_process.py` (spec §7.2, source S9 in the QwenLM/Qwen2-VL repo).

    Later copies of that file changed two things (frames floored instead of rounded to a multiple of 2, and
    video_total_pixels read from $VIDEO_MAX_PIXELS, default 128000 * 28^2 * 0.9); pass them here to follow one.
    """

    patch_size: int = 14  # ViT patch side
    merge_size: int = 2  # 2x2 patches -> one LLM token
    temporal_patch_size: int = 2  # frames per spatio-temporal patch
    min_pixels: int = 4 * 28 * 28  # images
    max_pixels: int = 16384 * 28 * 28
    max_ratio: float = 200.0  # longest / shortest side
    fps: float = 2.0  # video sampling rate
    min_frames: int = 4
    max_frames: int = 768
    video_min_pixels: int = 128 * 28 * 28
    video_max_pixels: int = 768 * 28 * 28
    video_total_pixels: int = 24576 * 28 * 28
    floor_frames: bool = False  # True: the later `smart_nframes` (floor to a multiple of 2)

    @property
    def factor(self) -> int:
        return self.patch_size * self.merge_size  # 28 px per LLM token side


# ---- MiniCPM-V 4.5 -------------------------------------------------------------------------------

def _slice_sizes(width: int, height: int, cfg: ProcessorConfig, max_slice_nums: int) -> tuple[tuple[int, int] | None, list[tuple[int, int]]]:
    """(grid, [(w, h) of the overview, then of each slice]) exactly as `slicing.process_image` cuts the image.

    Example, 640x480 with the 4.5 settings: grid (2, 1); overview 518x392; refine 728x546 cut into two
    364x546 slices -> (2, 1), [(518, 392), (364, 546), (364, 546)].
    """
    if width <= 0 or height <= 0:
        raise InputError(f"an image needs at least one pixel, got {width}x{height}")
    p, s = cfg.patch_size, cfg.scale_resolution
    if not cfg.slice_mode:  # used as is, minus the partial patches (see slicing._crop_to_patches)
        if width < p or height < p:
            raise InputError(f"a {width}x{height} image is smaller than one {p}x{p} patch with slice_mode off")
        return None, [(width // p * p, height // p * p)]
    grid = slicing.get_sliced_grid((width, height), max_slice_nums, s)
    overview = slicing.find_best_resize((width, height), s, p, allow_upscale=grid is None)
    if grid is None:
        return None, [overview]
    cols, rows = grid
    refine_w, refine_h = slicing.get_refine_size((width, height), grid, s, p)
    return grid, [overview] + [(refine_w // cols, refine_h // rows)] * (cols * rows)


def _span_tokens(grid: tuple[int, int] | None, feature_size: int) -> int:
    """Tokens of one placeholder without the image id (spec §4.4): `<image>` 64 `<unk>` `</image>`, then
    `<slice>` 64 `<unk>` `</slice>` per slice with "\\n" between slice rows. Grid (4, 2): 66 + 8*66 + 1 = 595."""
    cols, rows = grid or (0, 1)
    return (feature_size + 2) * (1 + cols * rows) + (rows - 1)


def _patches(sizes: list[tuple[int, int]], patch: int) -> int:
    return sum((w // patch) * (h // patch) for w, h in sizes)


def _describe(grid: tuple[int, int] | None, sizes: list[tuple[int, int]]) -> str:
    (ow, oh), rest = sizes[0], sizes[1:]
    if grid is None:
        return f"no slicing, {ow}x{oh}"
    return f"grid {grid[0]}x{grid[1]}, overview {ow}x{oh} + {len(rest)} slices of {rest[0][0]}x{rest[0][1]}"


def minicpmv_image(width: int, height: int, settings: OurSettings = OurSettings(), image_idx: int | None = 0) -> TokenCount:
    """Tokens of one image under our processor (spec §4.2-4.4, §7.1).

    n = 1 + cols * rows spans of `image_feature_size` (64) tokens; the prompt adds `<image>`/`</image>`,
    `<slice>`/`</slice>` per slice, "\\n" between slice rows and, with use_image_id, `<image_id>k</image_id>`
    (2 + one token per digit of k; `image_idx=None` = no id).
    Worked example, 1920x1080, 4.5 settings, idx 0: grid (4, 2) -> 9 spans -> 576 visual tokens;
    prompt = 9 * 66 + 1 ("\\n" between the 2 slice rows) + 3 (`<image_id>0</image_id>`) = 598.
    """
    cfg = settings.processor
    msn = cfg.max_slice_nums if settings.max_slice_nums is None else settings.max_slice_nums
    grid, sizes = _slice_sizes(width, height, cfg, msn)
    visual = cfg.image_feature_size * len(sizes)
    prompt = _span_tokens(grid, cfg.image_feature_size)
    if cfg.use_image_id and image_idx is not None:
        prompt += 2 + len(str(image_idx))  # Qwen's tokenizer splits numbers into single digits
    return TokenCount(visual, prompt, _patches(sizes, cfg.patch_size), 1, _describe(grid, sizes))


def minicpmv_video(video: VideoSpec, settings: OurSettings = OurSettings()) -> TokenCount:
    """Tokens of one video under the official recipe (spec §5.1-5.2, §7.1), as `Processor` counts them.

    `sample_video` picks the frames and the packing; each group of `packing` frames becomes one placeholder
    built from the first frame (no image id), the groups separated by "\\n". Every sampled frame goes
    through the ViT.
    Worked example, 1 min at 30 fps, 448x448: 5 fps * 60 s = 300 > 180 groups, so packing 2 and 300
    frames -> 150 groups of 64 tokens = 9,600 visual tokens; prompt = 150 * 66 + 149 = 10,049;
    ViT patches = 300 frames * 32 * 32 = 307,200.
    """
    cfg = settings.processor
    sampling = sample_video(video.n_frames, video.fps, settings.choose_fps, force_packing=settings.packing,
                            max_groups=settings.max_groups)
    groups, frames = len(sampling.temporal_ids), len(sampling.frame_indices)
    grid, sizes = _slice_sizes(video.width, video.height, cfg, settings.video_max_slice_nums)
    visual = groups * cfg.image_feature_size * len(sizes)
    prompt = groups * _span_tokens(grid, cfg.image_feature_size) + (groups - 1)
    detail = f"{frames} frames, packing {sampling.packing}, {groups} groups; {_describe(grid, sizes)}"
    return TokenCount(visual, prompt, frames * _patches(sizes, cfg.patch_size), frames, detail)


# ---- Qwen2.5-VL ----------------------------------------------------------------------------------

def qwen_smart_resize(height: int, width: int, factor: int = 28, min_pixels: int = 4 * 28 * 28,
                      max_pixels: int = 16384 * 28 * 28, max_ratio: float = 200.0) -> tuple[int, int]:
    """(height, width) Qwen2.5-VL resizes to: sides multiples of `factor`, area within [min, max] pixels.

    Round each side to the nearest multiple; if the area is above max_pixels, scale both sides by
    1 / sqrt(area / max_pixels) and floor to the factor; if below min_pixels, scale up and ceil.
    Examples: 1080x1920 -> (1092, 1932) = 39 x 69 tokens; 3024x4032 -> (3024, 4032) = 15,552 tokens;
    a 448x448 video frame with max_pixels 105,369 -> sqrt(200704 / 105369) = 1.380 -> 324.6 -> (308, 308).
    """
    if height <= 0 or width <= 0:
        raise InputError(f"an image needs at least one pixel, got {width}x{height}")
    if max(height, width) / min(height, width) > max_ratio:
        raise InputError(f"Qwen2.5-VL refuses aspect ratios above {max_ratio:g}, got {width}x{height}")
    h_bar = max(factor, round(height / factor) * factor)
    w_bar = max(factor, round(width / factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h_bar = math.floor(height / beta / factor) * factor
        w_bar = math.floor(width / beta / factor) * factor
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def qwen_image(width: int, height: int, q: QwenSettings = QwenSettings()) -> TokenCount:
    """Tokens of one image for Qwen2.5-VL: (h'/28) * (w'/28), plus `<|vision_start|>`/`<|vision_end|>`.

    Example: 640x480 -> smart_resize -> 476x644 -> 17 * 23 = 391 visual tokens, 393 prompt tokens,
    34 * 46 = 1,564 ViT patches.
    """
    h, w = qwen_smart_resize(height, width, q.factor, q.min_pixels, q.max_pixels, q.max_ratio)
    tokens = (h // q.factor) * (w // q.factor)
    return TokenCount(tokens, tokens + 2, tokens * q.merge_size**2, 1, f"resized to {w}x{h}")


def qwen_video_frames(n_frames: int, fps: float, q: QwenSettings = QwenSettings()) -> int:
    """Frames Qwen2.5-VL samples (`fetch_video` of S9): duration * 2 fps, clamped to [4, min(768, n_frames)],
    to a multiple of 2. Example: 1 h at 30 fps = 108,000 frames -> 7,200 -> capped at 768; 6 s -> 12."""
    even = q.temporal_patch_size
    min_frames = math.ceil(q.min_frames / even) * even
    max_frames = math.floor(min(q.max_frames, n_frames) / even) * even
    wanted = min(max(n_frames / fps * q.fps, min_frames), max_frames)
    frames = (math.floor(wanted / even) if q.floor_frames else round(wanted / even)) * even
    if not even <= frames <= n_frames:
        raise InputError(f"Qwen2.5-VL cannot sample a {n_frames}-frame video at {fps:g} fps: it needs at least "
                         f"{even} frames, got {frames}; use a longer clip")
    return frames


def qwen_video_size(video: VideoSpec, q: QwenSettings = QwenSettings()) -> tuple[int, int, int]:
    """(frames, height, width) Qwen2.5-VL samples and resizes a video to (`fetch_video` of S9).

    Per-frame max_pixels = max(min(768 * 28^2, total_pixels / frames * 2), int(1.05 * 128 * 28^2)).
    Example, 1 h at 30 fps, 448x448: 768 frames; max_pixels = max(min(602,112, 50,176), 105,369) = 105,369
    -> (768, 308, 308).
    """
    frames = qwen_video_frames(video.n_frames, video.fps, q)
    max_pixels = max(min(q.video_max_pixels, q.video_total_pixels / frames * q.temporal_patch_size),
                     int(q.video_min_pixels * 1.05))
    h, w = qwen_smart_resize(video.height, video.width, q.factor, q.video_min_pixels, max_pixels, q.max_ratio)
    return frames, h, w


def qwen_video(video: VideoSpec, q: QwenSettings = QwenSettings()) -> TokenCount:
    """Tokens of one video for Qwen2.5-VL: (frames / 2) * (h'/28) * (w'/28), plus the two vision markers.

    Worked example, 1 h at 30 fps, 448x448: 768 frames of 308x308 (`qwen_video_size`) = 11 x 11 tokens per
    2 frames -> 384 * 121 = 46,464 visual tokens.
    """
    frames, h, w = qwen_video_size(video, q)
    per_step = (h // q.factor) * (w // q.factor)  # tokens per temporal patch of 2 frames
    steps = frames // q.temporal_patch_size
    detail = f"{frames} frames resized to {w}x{h}, {per_step} tokens per {q.temporal_patch_size} frames"
    return TokenCount(steps * per_step, steps * per_step + 2, steps * per_step * q.merge_size**2, frames, detail)


# ---- both, files, the table ----------------------------------------------------------------------

def compare_image(width: int, height: int, ours: OurSettings = OurSettings(), qwen: QwenSettings = QwenSettings()) -> Comparison:
    return Comparison(minicpmv_image(width, height, ours), qwen_image(width, height, qwen))


def compare_video(video: VideoSpec, ours: OurSettings = OurSettings(), qwen: QwenSettings = QwenSettings()) -> Comparison:
    return Comparison(minicpmv_video(video, ours), qwen_video(video, qwen))


def parse_size(text: str) -> tuple[int, int]:
    """'1920x1080' -> (1920, 1080); InputError for anything else."""
    w, sep, h = text.lower().partition("x")
    if not (sep and w.strip().isdigit() and h.strip().isdigit() and int(w) > 0 and int(h) > 0):
        raise InputError(f"size {text!r} is not WIDTHxHEIGHT in pixels; write e.g. 1920x1080")
    return int(w), int(h)


def probe_image(path: str | Path) -> tuple[int, int]:
    """(width, height) of an image file as the processor sees it (EXIF orientation applied)."""
    from minicpmv.processor.image import load_image

    return load_image(str(path), name=str(path)).size


def probe_video(path: str | Path) -> VideoSpec:
    """Frame count and fps exactly as `load_video` reads them (one demux pass, no decoding) and the frame size."""
    from minicpmv.processor import video

    index = video._index_stream(str(path), str(path))  # the same numbers `load_video` samples from
    with video._open(str(path), str(path)) as container:
        stream = video._video_stream(container, str(path))
        width, height = stream.codec_context.width, stream.codec_context.height
    if not width or not height:
        raise InputError(f"{path}: the video stream does not state its frame size; re-encode it")
    return VideoSpec(index.n_frames, index.fps, width, height)


STANDARD_IMAGES = [(448, 448), (640, 480), (1024, 768), (1344, 896), (1344, 1344), (1920, 1080), (3840, 2160),
                   (4032, 3024)]
STANDARD_VIDEOS = [(10, "448p", 448, 448), (60, "448p", 448, 448), (300, "448p", 448, 448), (1800, "448p", 448, 448),
                   (3600, "448p", 448, 448), (10, "720p", 1280, 720), (60, "720p", 1280, 720), (300, "720p", 1280, 720),
                   (1800, "720p", 1280, 720), (3600, "720p", 1280, 720)]


def _duration(seconds: float) -> str:
    return f"{seconds:g} s" if seconds < 60 else f"{seconds / 60:g} min"


def markdown_table(source_fps: float = 30.0) -> str:
    """The docs/tokens.md tables: standard images and videos, ours vs Qwen2.5-VL, default settings of both."""
    lines = ["| image | MiniCPM-V 4.5 visual (prompt) | how | Qwen2.5-VL visual (prompt) | how | ours / Qwen |",
             "|---|---|---|---|---|---|"]
    for w, h in STANDARD_IMAGES:
        c = compare_image(w, h)
        lines.append(f"| {w}x{h} | {c.ours.visual_tokens:,} ({c.ours.prompt_tokens:,}) | {c.ours.detail} | "
                     f"{c.qwen.visual_tokens:,} ({c.qwen.prompt_tokens:,}) | {c.qwen.detail} | {c.ratio:.3f} |")
    lines += ["", f"| video ({source_fps:g} fps source) | MiniCPM-V 4.5 visual (prompt) | how | ViT patches | "
                  "Qwen2.5-VL visual (prompt) | how | ViT patches | ours / Qwen |",
              "|---|---|---|---|---|---|---|---|"]
    for seconds, label, w, h in STANDARD_VIDEOS:
        c = compare_video(VideoSpec.of(seconds, w, h, source_fps))
        lines.append(f"| {_duration(seconds)}, {label} ({w}x{h}) | {c.ours.visual_tokens:,} ({c.ours.prompt_tokens:,}) | "
                     f"{c.ours.detail} | {c.ours.vit_patches:,} | {c.qwen.visual_tokens:,} ({c.qwen.prompt_tokens:,}) | "
                     f"{c.qwen.detail} | {c.qwen.vit_patches:,} | {c.ratio:.3f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown_table())
