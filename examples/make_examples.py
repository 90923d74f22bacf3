"""Writes the example media used by the README (deterministic; re-run to regenerate).

    .venv/bin/python examples/make_examples.py
"""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
from PIL import Image, ImageDraw

HERE = Path(__file__).resolve().parent


def shapes_image() -> Image.Image:
    """Three coloured shapes on a light background, 640x480."""
    img = Image.new("RGB", (640, 480), (245, 242, 235))
    d = ImageDraw.Draw(img)
    d.ellipse((60, 150, 220, 310), fill=(220, 40, 40))  # red circle
    d.rectangle((260, 140, 400, 320), fill=(40, 90, 220))  # blue square-ish rectangle
    d.polygon([(500, 140), (590, 320), (410, 320)], fill=(40, 170, 70))  # green triangle
    return img


def moving_square_video(path: Path, seconds: float = 3.0, fps: int = 10, size=(320, 240)) -> None:
    """A red square moving from left to right over a grey background (H.264 mp4)."""
    w, h = size
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        n = int(seconds * fps)
        for i in range(n):
            frame = np.full((h, w, 3), 128, np.uint8)
            x = int(10 + (w - 70) * i / max(n - 1, 1))
            frame[h // 2 - 25 : h // 2 + 25, x : x + 50] = (220, 30, 30)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


if __name__ == "__main__":
    shapes_image().save(HERE / "shapes.png", optimize=True)
    moving_square_video(HERE / "moving_square.mp4")
    print("wrote", HERE / "shapes.png", HERE / "moving_square.mp4")
