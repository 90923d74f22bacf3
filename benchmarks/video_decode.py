"""Video decode + sample + pack: `load_video` vs decoding every frame into a list, then sampling.

    .venv/bin/python benchmarks/video_decode.py            # 10-minute 720p clip, choose_fps 5
    .venv/bin/python benchmarks/video_decode.py --minutes 1 --baseline-seconds 10   # quick run

The clip is generated once into /tmp (H.264 via libx264, preset ultrafast, crf 30, GOP --gop frames,
no B-frames: ultrafast disables them); its content is a static grey gradient, a moving square and a
frame-number bar code, drawn directly in yuv420p so no colour conversion slows the encode. Each
measurement runs in a fresh subprocess so that its peak RSS (ru_maxrss) is its own; "peak MiB" is the
growth of peak RSS over the RSS after imports. The baseline holds every decoded frame as an RGB image
(W*H*3 bytes each; 50 GiB for 10 minutes of 720p), so both methods are compared side by side on a
separately encoded clip of the first --baseline-seconds (same content and settings); on the full clip
only load_video runs and the baseline's frame memory is computed.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import av
import numpy as np
from PIL import Image


def make_frame(i: int, width: int, height: int, background: np.ndarray) -> np.ndarray:
    """uint8[H*3/2, W] yuv420p planes: a gradient, a square moving left to right, a bar code of i.

    Drawn straight in YUV (grey content, chroma planes flat) so no RGB conversion slows the encode.
    """
    img = background.copy()
    side = height // 6
    x = (i * 4) % (width - side)
    img[height // 2 : height // 2 + side, x : x + side] = 60
    bits = (i >> np.arange(16)) & 1  # int[16]
    for b, on in enumerate(bits):
        img[8:40, 8 + 24 * b : 28 + 24 * b] = 235 if on else 16
    return img


def generate(path: Path, seconds: float, fps: int, width: int, height: int, gop: int) -> float:
    """Encode the clip (skipped when it exists); returns the encode time in seconds (0 when cached)."""
    if path.exists():
        return 0.0
    background = np.full((height * 3 // 2, width), 128, dtype=np.uint8)  # uint8[H*3/2, W], grey chroma
    background[:height] = np.linspace(40, 200, width).astype(np.uint8)  # luma ramp
    start = time.perf_counter()
    tmp = path.with_suffix(".part.mp4")
    with av.open(str(tmp), "w") as container:
        opts = {"preset": "ultrafast", "crf": "30", "g": str(gop), "keyint_min": str(gop)}
        stream = container.add_stream("libx264", rate=fps, options=opts)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(round(seconds * fps)):
            frame = av.VideoFrame.from_ndarray(make_frame(i, width, height, background), format="yuv420p")
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    tmp.rename(path)
    return time.perf_counter() - start


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def child(method: str, path: str, choose_fps: float) -> None:
    """Run one measurement in this process and print a JSON line."""
    from minicpmv.processor.video import Video, load_video, sample_video

    base = rss_mib()
    start = time.perf_counter()
    if method == "load_video":
        out = load_video(Video(path, fps=choose_fps))
        n_frames, n_groups, decoded, sampled = out.n_frames, len(out.temporal_ids), out.frames_decoded, len(out.frames)
    else:
        with av.open(path) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"  # same decoder threading as load_video
            every = [Image.fromarray(f.to_ndarray(format="rgb24"), "RGB") for f in container.decode(stream)]
            fps = float(stream.average_rate)
        sampling = sample_video(len(every), fps, choose_fps)
        frames = [every[i] for i in sampling.frame_indices]
        n_frames, n_groups, decoded, sampled = len(every), len(sampling.temporal_ids), len(every), len(frames)
        del frames, every
    seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "peak_mib": rss_mib() - base, "n_frames": n_frames,
                      "groups": n_groups, "decoded": decoded, "sampled": sampled}))


def measure(method: str, path: Path, choose_fps: float) -> dict:
    cmd = [sys.executable, __file__, "--child", method, str(path), "--choose-fps", str(choose_fps)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def clip_path(args: argparse.Namespace, gop: int, seconds: float) -> Path:
    return args.dir / f"minicpmv_bench_{args.height}p_{args.fps}fps_gop{gop}_{seconds:g}s.mp4"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--baseline-seconds", type=float, default=30.0)
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--height", type=int, default=720)
    p.add_argument("--fps", type=int, default=30)
    p.add_argument("--gops", default="300,30", help="keyframe intervals (frames) of the full clips; the first "
                                                    "one is also used for the side-by-side clip")
    p.add_argument("--choose-fps", type=float, default=5.0)
    p.add_argument("--dir", type=Path, default=Path("/tmp"))
    p.add_argument("--child", nargs=2, metavar=("METHOD", "PATH"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args.child[0], args.child[1], args.choose_fps)
        return

    gops = [int(g) for g in args.gops.split(",")]
    clips = [(gops[0], args.baseline_seconds)] + [(g, args.minutes * 60) for g in gops]
    print(f"libx264 ultrafast crf 30, {args.width}x{args.height} {args.fps} fps; choose_fps {args.choose_fps:g}")
    for gop, seconds in clips:
        path = clip_path(args, gop, seconds)
        took = generate(path, seconds, args.fps, args.width, args.height, gop)
        print(f"- {path.name}: {path.stat().st_size / 2**20:.1f} MiB, "
              + (f"encoded in {took:.1f} s" if took else "cached from an earlier run"))

    cut = clip_path(args, gops[0], args.baseline_seconds)
    rows = [("load_video", cut, measure("load_video", cut, args.choose_fps)),
            ("decode all, then sample", cut, measure("baseline", cut, args.choose_fps))]
    rows += [("load_video", path, measure("load_video", path, args.choose_fps))
             for path in (clip_path(args, g, args.minutes * 60) for g in gops)]
    print("\n| method | clip | frames | sampled | groups | decoded | time s | peak MiB |")
    print("|---|---|---|---|---|---|---|---|")
    for method, path, r in rows:
        print(f"| {method} | {path.name} | {r['n_frames']} | {r['sampled']} | {r['groups']} | {r['decoded']} | "
              f"{r['seconds']:.2f} | {r['peak_mib']:.0f} |")
    ours, base, long = rows[0][2], rows[1][2], rows[2][2]
    frame_mib = args.width * args.height * 4 / 2**20  # PIL keeps RGB at 4 bytes per pixel
    print(f"\nSame {args.baseline_seconds:g} s clip: load_video is {base['seconds'] / ours['seconds']:.2f}x faster "
          f"and its peak RSS growth is {base['peak_mib'] / max(ours['peak_mib'], 1):.1f}x smaller.")
    all_gib = long["n_frames"] * frame_mib / 1024
    print(f"Full clip: the baseline would hold {long['n_frames']} RGB frames = {all_gib:.1f} GiB (not run); "
          f"load_video peaked at {long['peak_mib']:.0f} MiB, about what the {long['sampled']} returned frames "
          f"take ({long['sampled'] * frame_mib:.0f} MiB).")


if __name__ == "__main__":
    main()
