"""Token accounting (minicpmv/eval/tokens.py): ours against real Processor calls, Qwen2.5-VL against the formula by hand."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from minicpmv.config import ProcessorConfig
from minicpmv.demo import DEMO_DIR
from minicpmv.errors import InputError
from minicpmv.eval import tokens
from minicpmv.eval.tokens import OurSettings, QwenSettings, VideoSpec
from minicpmv.processor.processor import Processor
from minicpmv.processor.tokenizer import Tokenizer

DEMO = Processor.from_pretrained(DEMO_DIR, num_threads=1)
# The official 4.5 pre-processing with the demo tokenizer (it holds every marker token; 64 <unk> per span).
REAL = Processor(Tokenizer.from_pretrained(DEMO_DIR), ProcessorConfig(), num_threads=1)


def measured(proc: Processor, part) -> tuple[int, int, int]:
    """(visual tokens, prompt tokens, ViT patches) of one image/video part, read off a real processor call.

    Prompt tokens = the prompt with the part and a question, minus the prompt with the question alone, minus
    the "\\n" that joins the part to the question.
    """
    with_part = proc.encode([{"role": "user", "content": [part, "Q"]}])
    alone = proc.encode([{"role": "user", "content": "Q"}])
    visual = int((with_part.image_bounds[:, 1] - with_part.image_bounds[:, 0]).sum())
    patches = int(with_part.tgt_sizes.prod(dim=1).sum())
    return visual, len(with_part.input_ids) - len(alone.input_ids) - 1, patches


def write_video(path: Path, n_frames: int, fps: int, width: int, height: int) -> None:
    av = pytest.importorskip("av")
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(n_frames):
            frame = np.full((height, width, 3), (7 * i) % 256, np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


SIZES = [(224, 224), (448, 448), (449, 449), (640, 480), (1024, 768), (1344, 896), (1920, 1080), (3000, 500),
         (100, 1000), (4032, 3024)]


@pytest.mark.parametrize("proc", [DEMO, REAL], ids=["demo", "4.5"])
def test_image_counts_equal_the_processor(proc):
    settings = OurSettings(processor=proc.cfg)
    for w, h in SIZES:
        got = tokens.minicpmv_image(w, h, settings)
        want = measured(proc, Image.new("RGB", (w, h), (90, 40, 200)))
        assert (got.visual_tokens, got.prompt_tokens, got.vit_patches) == want, f"{w}x{h}: {got}"


def test_image_counts_match_the_spec_table():
    """Spec §4.6/§7.1 (verified there with the reference processor and tokenizer)."""
    table = {(448, 448): (64, 69), (640, 480): (192, 201), (1024, 768): (320, 334), (1344, 1344): (640, 665),
             (1920, 1080): (576, 598), (4032, 3024): (640, 665), (3000, 500): (512, None)}
    for (w, h), (visual, prompt) in table.items():
        got = tokens.minicpmv_image(w, h)
        assert got.visual_tokens == visual and prompt in (None, got.prompt_tokens), (w, h, got)
    assert tokens.minicpmv_image(1344, 1344, image_idx=12).prompt_tokens == 666  # two digits
    assert tokens.minicpmv_image(1344, 1344, image_idx=None).prompt_tokens == 662  # no id
    assert tokens.minicpmv_image(1920, 1080, OurSettings(max_slice_nums=1)).visual_tokens == 64


# (frames, source fps, width, height, video part options): packing 1, automatic packing 3, forced packing
# (max_groups / packing make the long-video branches reachable with a few frames).
VIDEOS = [(20, 10, 64, 48, {}), (30, 10, 160, 96, {"max_groups": 4}), (24, 8, 96, 96, {"packing": 2}),
          (25, 10, 64, 48, {"max_groups": 2})]


@pytest.mark.parametrize("proc", [DEMO, REAL], ids=["demo", "4.5"])
def test_video_counts_equal_the_processor(proc, tmp_path):
    for k, (n, fps, w, h, options) in enumerate(VIDEOS):
        path = tmp_path / f"v{k}.mp4"
        write_video(path, n, fps, w, h)
        spec = tokens.probe_video(path)
        assert (spec.n_frames, spec.fps, spec.width, spec.height) == (n, fps, w, h)
        settings = OurSettings(processor=proc.cfg, packing=options.get("packing"),
                               max_groups=options.get("max_groups", 180))
        got = tokens.minicpmv_video(spec, settings)
        want = measured(proc, {"type": "video", "path": str(path), "fps": 5, **options})
        assert (got.visual_tokens, got.prompt_tokens, got.vit_patches) == want, f"video {k}: {got}"


def test_video_recipe_worked_examples():
    """Spec §5.1: 10 s -> 50 groups; 60 s -> packing 2, 150 groups; 100 s -> packing 3, 167; 1 h -> 180 groups."""
    for seconds, groups, packing in [(10, 50, 1), (60, 150, 2), (100, 167, 3), (3600, 180, 3)]:
        got = tokens.minicpmv_video(VideoSpec.of(seconds, 448, 448))
        assert got.visual_tokens == 64 * groups and f"packing {packing}, {groups} groups" in got.detail
        assert got.prompt_tokens == 67 * groups - 1  # 66 per span + "\n" between spans (spec §7.1)
    # max_groups 90 -> 90 * 3 = 270 frames; forcing packing 6 then makes 45 groups (the frame count stays).
    forced = tokens.minicpmv_video(VideoSpec.of(3600, 448, 448), OurSettings(max_groups=90, packing=6))
    assert (forced.frames, forced.visual_tokens, forced.vit_patches) == (270, 45 * 64, 270 * 1024)


def test_qwen_images_hand_computed():
    """(H, W) rounded to multiples of 28 within [4 * 28^2, 16384 * 28^2] pixels; tokens = (H/28) * (W/28)."""
    cases = {
        (448, 448): 16 * 16,  # already multiples of 28
        (640, 480): 23 * 17,  # 640/28 = 22.9 -> 23 (644); 480/28 = 17.1 -> 17 (476)
        (1024, 768): 37 * 27,  # 36.6 -> 37 (1036), 27.4 -> 27 (756)
        (1920, 1080): 69 * 39,  # 68.6 -> 69 (1932), 38.6 -> 39 (1092)
        (2240, 2240): 80 * 80,
        (4032, 3024): 144 * 108,  # 12,192,768 px, under 12,845,056
        (3840, 2160): 137 * 77,  # 137.1 -> 137 (3836), 77.1 -> 77 (2156): 8,270,416 px, under the maximum
        (10, 10): 2 * 2,  # 28 x 28 = 784 < 3,136 -> beta = sqrt(3136 / 100) = 5.6 -> ceil(56 / 28) = 2 -> 56 x 56
    }
    for (w, h), want in cases.items():
        assert tokens.qwen_image(w, h).visual_tokens == want, (w, h)
    assert tokens.qwen_image(640, 480).prompt_tokens == 391 + 2
    # Above the maximum: 8000 x 6000 = 48e6 px; beta = sqrt(48e6 / 12,845,056) = 1.9331;
    # 6000 / 1.9331 = 3103.8 -> floor to 28 -> 3080; 8000 / 1.9331 = 4138.4 -> 4116; 110 x 147 tokens.
    assert tokens.qwen_smart_resize(6000, 8000) == (3080, 4116)
    assert tokens.qwen_image(8000, 6000).visual_tokens == 110 * 147
    with pytest.raises(InputError, match="aspect ratio"):
        tokens.qwen_image(20100, 100)


def test_qwen_videos_hand_computed():
    # 6 s at 30 fps, 448x448: 180 frames / 30 * 2 = 12 frames; 12 * 448^2 is within budget -> 256 per 2 frames.
    assert tokens.qwen_video(VideoSpec.of(6, 448, 448)).visual_tokens == 6 * 256 == 1536  # spec §7.2
    # 1 h at 30 fps: 7,200 wanted, capped at 768; max_pixels = max(min(602,112, 19,267,584 / 768 * 2 = 50,176),
    # int(100,352 * 1.05) = 105,369); 448 / sqrt(200,704 / 105,369) = 324.6 -> 308 = 11 * 28 -> 121 per step.
    long = tokens.qwen_video(VideoSpec.of(3600, 448, 448))
    assert (long.frames, long.visual_tokens, long.vit_patches) == (768, 384 * 121, 384 * 121 * 4)
    # 720p, 10 s: 20 frames; max_pixels = min(602,112, 19,267,584 / 20 * 2) = 602,112 < 921,600 px ->
    # beta = sqrt(921,600 / 602,112) = 1.2372 -> 720 / 1.2372 = 581.9 -> 560 (20); 1280 / 1.2372 = 1034.6 -> 1008 (36).
    assert tokens.qwen_video(VideoSpec.of(10, 1280, 720)).visual_tokens == 10 * 20 * 36
    # Short clips: 1 s at 30 fps -> 2 wanted, raised to min_frames 4 -> 2 steps; 1 frame only -> refused.
    assert tokens.qwen_video_frames(30, 30.0) == 4
    assert tokens.qwen_video_frames(5, 2.0) == 4  # 5 frames: max_frames = floor(5 / 2) * 2 = 4
    # 945 frames at 30 fps -> 63 wanted: S9 rounds 63 / 2 = 31.5 to 32 (half to even) -> 64; the later copy floors -> 62.
    assert tokens.qwen_video_frames(945, 30.0) == 64
    assert tokens.qwen_video_frames(945, 30.0, QwenSettings(floor_frames=True)) == 62
    with pytest.raises(InputError, match="at least 2 frames"):
        tokens.qwen_video_frames(1, 30.0)


def test_comparison_ratio_and_parsing():
    c = tokens.compare_image(1920, 1080)
    assert c.ratio == pytest.approx(576 / 2691)
    assert tokens.compare_video(VideoSpec.of(3600, 448, 448)).ratio == pytest.approx(11520 / 46464)
    assert tokens.parse_size("1920x1080") == (1920, 1080) and tokens.parse_size("448X448") == (448, 448)
    for bad in ("1920", "axb", "0x5", "-3x4"):
        with pytest.raises(InputError, match="WIDTHxHEIGHT"):
            tokens.parse_size(bad)
    with pytest.raises(InputError, match="duration"):
        VideoSpec.of(0, 448, 448)
    table = tokens.markdown_table()
    assert "| 1920x1080 | 576 (598) |" in table and "| 60 min, 448p (448x448) | 11,520 (12,059) |" in table


# ---- `minicpmv info` ----------------------------------------------------------------------------

class _Service:
    """What `info` reads from a loaded model service."""

    model_name = "fake"

    def __init__(self):
        import torch

        self.model = torch.nn.Linear(2, 2)

    def count_tokens(self, messages, media):
        from minicpmv.inference.types import Usage

        return Usage(prompt_tokens=70, visual_tokens=64)


def test_info_sizes_and_durations_need_no_model(monkeypatch, capsys):
    from minicpmv import cli

    def no_model(*args):
        raise AssertionError("--size/--duration alone must not load a model")

    monkeypatch.setattr(cli, "load_service", no_model)
    assert cli.main(["info", "--size", "1920x1080", "--size", "640x480", "--max-slice-nums", "1"]) == 0
    out = capsys.readouterr().out
    assert "image 1920x1080  64 vs 2,691 visual tokens, ratio 0.024" in out and "image 640x480    64 vs 391" in out
    assert cli.main(["info", "--duration", "3600", "--duration", "10", "--source-fps", "25"]) == 0
    out = capsys.readouterr().out
    assert "video 3600 s 448x448  11,520 vs 46,464 visual tokens, ratio 0.248" in out
    assert "540 frames, packing 3, 180 groups" in out and "768 frames resized to 308x308" in out
    assert "video 10 s 448x448    3,200 vs 2,560 visual tokens, ratio 1.250" in out
    assert cli.main(["info", "--size", "19x"]) == 2
    assert "WIDTHxHEIGHT" in capsys.readouterr().err


def test_info_files_with_a_model(monkeypatch, capsys, tmp_path):
    from minicpmv import cli

    monkeypatch.setattr(cli, "load_service", lambda model, tokenizer=None: _Service())
    image = tmp_path / "a.png"
    Image.new("RGB", (1024, 768)).save(image)
    clip = tmp_path / "c.mp4"
    write_video(clip, 20, 10, 64, 48)
    assert cli.main(["info", "--image", str(image), "--video", str(clip), "--fps", "2"]) == 0
    out = capsys.readouterr().out
    assert "parameters" in out and "320 vs 999 visual tokens, ratio 0.320 (prompt 334 vs 1,001)" in out
    # The clip: 2 s at 10 fps. Ours at --fps 2: 4 frames, packing 1 -> 4 * 64 = 256. Qwen: 4 frames; 64x48 rounds to
    # 56x56 = 3,136 px < 100,352 (video min_pixels) -> beta = sqrt(100,352 / 3,072) = 5.716 -> 48 * 5.716 = 274.4
    # -> 280 (10 * 28), 64 * 5.716 = 365.8 -> 392 (14 * 28) -> 140 tokens per 2 frames -> 280.
    assert "256 vs 280 visual tokens, ratio 0.914" in out
    assert "4 frames, packing 1, 4 groups" in out and "4 frames resized to 392x280" in out
