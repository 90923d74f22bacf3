"""Writes the example media used by the README (deterministic; re-run to regenerate).

    .venv/bin/python examples/make_examples.py

They are drawn like the synthetic task families the embedded demo model was trained on
(minicpmv.data.synthetic): 192 x 192 shapes on a light background, and a 128 x 128 clip of a shape
crossing the frame in 6 frames at 5 fps.

    shapes.png          a red circle, a blue square and a green triangle
                        ("How many shapes are in the image?" -> 3; "What colour is the circle?" -> red)
    moving_square.mp4   a red square moving from left to right
                        ("In which direction does the red square move?" -> right)
"""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
from PIL import Image, ImageDraw

from minicpmv.data.synthetic.draw import COLORS, draw_shape

HERE = Path(__file__).resolve().parent
BACKGROUND = (240, 236, 226)


def shapes_image() -> Image.Image:
    """Three shapes in three cells of a 3 x 3 grid, 192 x 192."""
    img = Image.new("RGB", (192, 192), BACKGROUND)
    d = ImageDraw.Draw(img)
    draw_shape(d, "circle", (12, 14, 58, 60), COLORS["red"])
    draw_shape(d, "square", (136, 72, 180, 116), COLORS["blue"])
    draw_shape(d, "triangle", (70, 136, 118, 184), COLORS["green"])
    return img


def moving_square_frames(n: int = 6, side: int = 128, size: int = 28) -> list[np.ndarray]:
    """A red square crossing from left to right, one step per frame."""
    frames = []
    for t in range(n):
        img = Image.new("RGB", (side, side), BACKGROUND)
        x = 4 + (side - size - 8) * t // (n - 1)
        draw_shape(ImageDraw.Draw(img), "square", (x, 50, x + size, 50 + size), COLORS["red"])
        frames.append(np.asarray(img))
    return frames


def write_video(path: Path, frames: list[np.ndarray], fps: int = 5) -> None:
    """H.264 mp4, yuv420p (what every player reads)."""
    h, w = frames[0].shape[:2]
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


if __name__ == "__main__":
    shapes_image().save(HERE / "shapes.png", optimize=True)
    write_video(HERE / "moving_square.mp4", moving_square_frames())
    print("wrote", HERE / "shapes.png", HERE / "moving_square.mp4")
