"""Video: the official sampling recipe (golden data), PyAV decoding of generated clips, bad media."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

import minicpmv.processor.video as video_mod
from minicpmv.errors import InputError
from minicpmv.processor.video import Video, load_video, nearest_grid_index, sample_video
from conftest import reference_path
from media import CODECS, Codec, pattern_frame, read_frame_number, write_audio_only, write_no_frames, write_video

# ---------------------------------------------------------------- golden data: video_sampling.json


def _reference_combos() -> tuple[dict, list[dict]]:
    data = json.loads(reference_path("video_sampling.json").read_text())
    return data["constants"], data["combos"]


def test_every_reference_combo_matches_the_recipe() -> None:
    constants, combos = _reference_combos()
    assert combos, "video_sampling.json lists no combos"
    for c in combos:
        label = f"n_frames={c['n_frames']} fps={c['fps']} choose_fps={c['choose_fps']} force={c['force_packing']}"
        call = dict(n_frames=c["n_frames"], fps=c["fps"], choose_fps=c["choose_fps"],
                    force_packing=c["force_packing"], max_groups=constants["MAX_NUM_FRAMES"],
                    max_packing=constants["MAX_NUM_PACKING"])
        if "error" in c:
            with pytest.raises(InputError, match="too short"):
                sample_video(**call)
            continue
        out = sample_video(**call)
        assert out.frame_indices == c["frame_indices"], label
        assert out.packing == c["packing"], label
        assert [len(g) for g in out.temporal_ids] == [len(g) for g in c["temporal_id_groups"]], label
        assert len(out.temporal_ids) == c["num_groups"], label
        ties = {t["position"]: t["candidate_temporal_ids"] for t in c["exact_nearest_ties"]}
        got = [t for g in out.temporal_ids for t in g]
        for i, (mine, ref) in enumerate(zip(got, c["temporal_ids_flat"], strict=True)):
            assert mine == ref or mine in ties.get(i, []), f"{label}: temporal id {i}: {mine} vs {ref}"


def test_truncation_quirk_positions_and_exact_timestamps() -> None:
    """Where the reference truncates k*0.1/0.1 to k-1, exact_timestamps gives the grid index k."""
    _, combos = _reference_combos()
    checked = 0
    for c in combos:
        if "error" in c or not c["positions_where_int32_truncation_gives_grid_index_minus_1"]:
            continue
        exact = sample_video(c["n_frames"], c["fps"], c["choose_fps"], exact_timestamps=True)
        flat = [t for g in exact.temporal_ids for t in g]
        ties = {t["position"] for t in c["exact_nearest_ties"]}
        for i in c["positions_where_int32_truncation_gives_grid_index_minus_1"]:
            if i not in ties:
                assert flat[i] == c["nearest_grid_index"][i] == c["temporal_ids_flat"][i] + 1
                checked += 1
    assert checked > 0, "no truncation-quirk position in the reference combos"


# ---------------------------------------------------------------- sample_video: documented behaviour


def test_docstring_worked_examples() -> None:
    one_min = sample_video(1800, 30.0, choose_fps=5)
    assert one_min.packing == 2 and one_min.frame_indices[:3] == [3, 9, 15]
    assert one_min.temporal_ids[:2] == [[1, 3], [5, 7]] and len(one_min.temporal_ids) == 150
    ten_min = sample_video(18000, 30.0, choose_fps=5)
    assert len(ten_min.frame_indices) == 540 and ten_min.frame_indices[:3] == [16, 50, 83]
    assert ten_min.temporal_ids[0] == [5, 17, 28] and len(ten_min.temporal_ids) == 180
    assert nearest_grid_index(np.array([0.0, 0.14, 0.26, 0.34]), 0.35).tolist() == [0, 1, 3, 3]


def test_force_packing_up_to_six_and_recipe_clamp_when_max_packing_is_given() -> None:
    assert sample_video(1000, 10.0, 10, force_packing=6).packing == 6
    clamped = sample_video(1000, 10.0, 10, force_packing=6, max_packing=3)
    assert clamped.packing == 3 and len(clamped.temporal_ids) == 180
    six = sample_video(1000, 10.0, 10, force_packing=6)
    assert six.frame_indices == clamped.frame_indices and len(six.temporal_ids) == 90  # frames unchanged
    assert sample_video(1000, 10.0, 10, max_packing=2).packing == 2  # automatic packing capped too
    with pytest.raises(InputError, match="larger than 6"):
        sample_video(1000, 10.0, 10, force_packing=7)


@pytest.mark.parametrize("kwargs, match", [
    (dict(n_frames=0, fps=30.0), "n_frames"),
    (dict(n_frames=True, fps=30.0), "n_frames"),
    (dict(n_frames=10.5, fps=30.0), "n_frames"),
    (dict(n_frames=100, fps=0.0), "fps"),
    (dict(n_frames=100, fps=float("nan")), "fps"),
    (dict(n_frames=100, fps=30.0, choose_fps=-1), "choose_fps"),
    (dict(n_frames=100, fps=30.0, force_packing=0), "force_packing"),
    (dict(n_frames=100, fps=30.0, max_groups=0), "max_groups"),
    (dict(n_frames=10, fps=0.4), "too short"),  # 25 s but round(fps) == 0 -> 0 frames
])
def test_bad_sampling_arguments_raise_input_error(kwargs: dict, match: str) -> None:
    with pytest.raises(InputError, match=match):
        sample_video(**kwargs)


@settings(max_examples=150, deadline=None)
@given(n_frames=st.integers(1, 200_000), fps=st.floats(1.0, 120.0), choose_fps=st.sampled_from([1, 2, 3, 5, 10]),
       force=st.sampled_from([None, 1, 2, 4, 6]), exact=st.booleans())
def test_sampling_invariants(n_frames: int, fps: float, choose_fps: int, force: int | None, exact: bool) -> None:
    try:
        out = sample_video(n_frames, fps, choose_fps, force_packing=force, exact_timestamps=exact)
    except InputError as e:
        assert "too short" in str(e) and n_frames / fps < 1.5 / choose_fps
        return
    idx = out.frame_indices
    assert all(0 <= i < n_frames for i in idx) and idx == sorted(idx)
    assert len(idx) <= max(540, choose_fps * 181)
    assert out.packing == (force or out.packing) and 1 <= out.packing <= 6
    assert [len(g) for g in out.temporal_ids[:-1]] == [out.packing] * (len(out.temporal_ids) - 1)
    ids = [t for g in out.temporal_ids for t in g]
    assert len(ids) == len(idx) and ids == sorted(ids)
    err = np.abs(np.array(ids) * 0.1 - np.array(idx) / fps)  # id within half a step (+1 step when truncated)
    assert err.max() <= (0.05 if exact else 0.15) + 1e-9


@settings(max_examples=200, deadline=None)
@given(times=st.lists(st.floats(0.0, 50.0), min_size=1, max_size=30), extra=st.floats(0.0, 5.0))
def test_nearest_grid_index_equals_brute_force(times: list[float], extra: float) -> None:
    duration = max(times) + extra + 1e-3
    t = np.array(times)
    grid = np.arange(0.0, duration, 0.1)
    dist = np.abs(grid[None, :] - t[:, None])  # float64[N, G]
    mine = nearest_grid_index(t, duration)
    assert np.array_equal(dist[np.arange(len(t)), mine], dist.min(axis=1))


# ---------------------------------------------------------------- decoding generated clips


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """75 bar-code frames at 25 fps (3 s) in every container/codec of tests/media.py."""
    folder = tmp_path_factory.mktemp("clips")
    return {key: write_video(folder / f"clip_{key}{codec.suffix}", codec, 75) for key, codec in CODECS.items()}


@pytest.mark.parametrize("key", sorted(CODECS))
def test_decodes_exactly_the_sampled_frames(clips: dict[str, Path], key: str) -> None:
    out = load_video(Video(clips[key], fps=10))
    expected = sample_video(75, 25.0, 10)
    assert (out.n_frames, out.fps, out.duration_s) == (75, 25.0, 3.0)
    assert out.frame_indices == expected.frame_indices and out.temporal_ids == expected.temporal_ids
    assert [read_frame_number(f) for f in out.frames] == out.frame_indices
    assert all(f.mode == "RGB" and f.size == (128, 96) for f in out.frames)


def test_timestamps_and_packing_follow_the_video_settings(clips: dict[str, Path]) -> None:
    out = load_video(Video(clips["mp4-h264"], fps=5, packing=4, exact_timestamps=True))
    assert out.frame_indices == [2, 7, 12, 17, 22, 27, 32, 37, 42, 47, 52, 57, 62, 67, 72]
    assert out.temporal_ids == [[1, 3, 5, 7], [9, 11, 13, 15], [17, 19, 21, 23], [25, 27, 29]]  # t = i / 25 s


def test_sparse_sampling_seeks_past_gops(tmp_path: Path) -> None:
    """20 s at 25 fps, GOP 10, 1 frame per second: right frames, far fewer frames decoded than exist."""
    for key in ("mp4-h264", "webm-vp9", "avi-mjpeg"):
        clip = write_video(tmp_path / f"long{CODECS[key].suffix}", CODECS[key], 500, width=64, height=48)
        out = load_video(Video(clip, fps=1))
        assert out.frame_indices == sample_video(500, 25.0, 1).frame_indices
        assert [read_frame_number(f) for f in out.frames] == out.frame_indices
        assert out.frames_decoded < 500 // 2, f"{key}: decoded {out.frames_decoded} of 500 frames"


def test_only_sampled_frames_are_converted_and_progress_is_reported(clips: dict[str, Path],
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    converted, progress = [], []
    real = video_mod._to_rgb
    monkeypatch.setattr(video_mod, "_to_rgb", lambda frame: converted.append(1) or real(frame))
    out = load_video(Video(clips["mkv-h264"], fps=5), progress=lambda done, total: progress.append((done, total)))
    unique = len(set(out.frame_indices))
    assert len(converted) == unique
    assert progress == [(k, unique) for k in range(1, unique + 1)]


def test_repeated_indices_when_the_video_is_slower_than_choose_fps(tmp_path: Path) -> None:
    clip = write_video(tmp_path / "slow.mp4", CODECS["mp4-h264"], 80, fps=4, width=64, height=48)  # 20 s
    out = load_video(Video(clip, fps=10))
    assert len(out.frame_indices) > len(set(out.frame_indices))
    assert [read_frame_number(f) for f in out.frames] == out.frame_indices


@pytest.mark.parametrize("key", ["mp4-h264", "mkv-h264"])
def test_audio_track_before_the_video_track(tmp_path: Path, key: str) -> None:
    """Stream 0 is AAC audio lasting 1 s longer; the video stream is still found, counted and decoded."""
    codec = CODECS[key]
    clip = write_video(tmp_path / f"with_audio{codec.suffix}", codec, 75, audio_first=True)
    out = load_video(Video(clip, fps=5))
    assert out.n_frames == 75 and [read_frame_number(f) for f in out.frames] == out.frame_indices


def test_bytes_and_wrong_extension_are_probed_by_content(clips: dict[str, Path], tmp_path: Path) -> None:
    renamed = tmp_path / "actually_mp4.avi"
    renamed.write_bytes(clips["mp4-h264"].read_bytes())
    for source in (renamed, clips["webm-vp9"].read_bytes()):
        out = load_video(Video(source, fps=5))
        assert [read_frame_number(f) for f in out.frames] == out.frame_indices


# ---------------------------------------------------------------- bad media -> InputError naming the item


def _bad_media(folder: Path, clips: dict[str, Path]) -> dict[str, object]:
    mp4 = clips["mp4-h264"].read_bytes()
    faststart = write_video(folder / "faststart.mp4", CODECS["mp4-h264"], 75,
                            container_options={"movflags": "faststart"})  # header first: lists all 75 frames
    png = folder / "image.mp4"
    Image.fromarray(pattern_frame(3)).save(png, format="PNG")
    rng = np.random.default_rng(0)
    cases: dict[str, object] = {
        "random bytes": rng.integers(0, 256, 4096, dtype=np.uint8).tobytes(),
        "random bytes file.mp4": folder / "random.mp4",
        "empty file": folder / "empty.mp4",
        "text named .mp4": folder / "text.mp4",
        "truncated mp4 (moov at end)": mp4[: len(mp4) // 2],
        "truncated mp4 (faststart)": faststart.read_bytes()[: faststart.stat().st_size // 2],
        "truncated mkv": clips["mkv-h264"].read_bytes()[: clips["mkv-h264"].stat().st_size // 3],
        "truncated webm": clips["webm-vp9"].read_bytes()[: clips["webm-vp9"].stat().st_size // 3],
        "truncated avi": clips["avi-mjpeg"].read_bytes()[: clips["avi-mjpeg"].stat().st_size // 2],
        "audio only": write_audio_only(folder / "audio.wav"),
        "zero frames": write_no_frames(folder / "zero.avi"),
        "single image": png,
        "missing path": folder / "does_not_exist.mp4",
        "directory": folder,
    }
    (folder / "random.mp4").write_bytes(rng.integers(0, 256, 100_000, dtype=np.uint8).tobytes())
    (folder / "empty.mp4").write_bytes(b"")
    (folder / "text.mp4").write_text("this is not a video\n" * 50)
    return cases


def test_bad_media_corpus_raises_input_error_naming_the_item(clips: dict[str, Path], tmp_path: Path) -> None:
    for label, source in _bad_media(tmp_path, clips).items():
        with pytest.raises(InputError) as info:
            load_video(Video(source), name="clip 7")
        assert str(info.value).startswith("clip 7: "), f"{label}: {info.value}"


@pytest.mark.parametrize("kwargs, match", [
    (dict(), "exactly one"),
    (dict(path="a.mp4", frames=[Image.new("RGB", (8, 8))]), "exactly one"),
    (dict(frames=[Image.new("RGB", (8, 8))]), "temporal_ids"),
    (dict(path="a.mp4", temporal_ids=[[0]]), "temporal_ids"),
    (dict(path="a.mp4", fps=0), "Video.fps"),
    (dict(path="a.mp4", packing=7), "Video.packing"),
    (dict(path="a.mp4", max_groups=0), "Video.max_groups"),
])
def test_video_arguments_are_validated(kwargs: dict, match: str) -> None:
    with pytest.raises(InputError, match=match):
        Video(**kwargs)


# ---------------------------------------------------------------- low-level form: frames + temporal ids


def test_frames_with_temporal_ids_pass_through_as_rgb() -> None:
    frames = [Image.new("L", (16, 8), 10), pattern_frame(1, 16, 8), Image.new("RGBA", (16, 8))]
    out = load_video(Video(frames=frames, temporal_ids=[[0, 3], [7]]))
    assert [f.mode for f in out.frames] == ["RGB"] * 3 and out.temporal_ids == [[0, 3], [7]]
    assert (out.n_frames, out.frame_indices, out.fps) == (3, [0, 1, 2], None)


@pytest.mark.parametrize("frames, ids, match", [
    ([Image.new("RGB", (8, 8))] * 2, [[0]], "2 frames"),
    ([Image.new("RGB", (8, 8))] * 7, [[0, 1, 2, 3, 4, 5, 6]], "1..6"),
    ([Image.new("RGB", (8, 8))], [[-1]], ">= 0"),
    ([np.zeros((8, 8), np.float32)], [[0]], "frame 0"),
])
def test_low_level_form_is_validated(frames: list, ids: list, match: str) -> None:
    with pytest.raises(InputError, match=match):
        load_video(Video(frames=frames, temporal_ids=ids), name="video 3")


# ---------------------------------------------------------------- bounded memory


def test_peak_memory_is_bounded_by_the_sampled_frames(tmp_path: Path) -> None:
    """24 s of 416x240 (600 frames, 229 MiB as RGB images): sampling 1 fps grows peak RSS by < 60 MiB."""
    if sys.platform != "linux":
        pytest.skip("ru_maxrss units are platform specific; measured on Linux")
    one_gop = Codec(".mp4", "libx264", "yuv420p", {"g": "600", "preset": "ultrafast"})  # no seeking: decode all
    clip = write_video(tmp_path / "long.mp4", one_gop, 600, width=416, height=240)
    warm = write_video(tmp_path / "warm.mp4", one_gop, 30, width=416, height=240)
    script = textwrap.dedent(f"""
        import resource
        from minicpmv.processor.video import Video, load_video
        load_video(Video({str(warm)!r}, fps=5))  # load codecs and thread pools first
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        out = load_video(Video({str(clip)!r}, fps=1))
        print(len(out.frames), out.frames_decoded, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)
    """)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True)
    n_out, decoded, growth_kib = map(int, result.stdout.split())
    all_frames_mib = 600 * 416 * 240 * 4 / 2**20  # PIL keeps RGB at 4 bytes per pixel
    assert n_out == 24 and decoded >= 550, (n_out, decoded)
    assert growth_kib / 1024 < 60, f"peak RSS grew {growth_kib / 1024:.0f} MiB (all frames = {all_frames_mib:.0f} MiB)"
