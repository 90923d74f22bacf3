"""Drawing helpers of the synthetic task suite: colours, fonts, backgrounds, shapes, text.

Everything takes a `random.Random` so a sample is a pure function of its seed. Fonts are the
TrueType files found on the system (`fc-list` folders); when there are none, Pillow's built-in
scalable font (`ImageFont.load_default(size=...)`, Pillow >= 10.1) is used.
"""

from __future__ import annotations

import random
from functools import lru_cache
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 160, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 200, 30),
    "purple": (140, 60, 180),
    "orange": (245, 130, 20),
}
SHAPES = ("circle", "square", "triangle")
FONT_DIRS = ("/usr/share/fonts", "/usr/local/share/fonts", str(Path.home() / ".fonts"))


@lru_cache(maxsize=1)
def font_files() -> tuple[str, ...]:
    """Sorted TrueType/OpenType files under the usual font folders (sorted: same list, same samples)."""
    found = []
    for folder in FONT_DIRS:
        root = Path(folder)
        if root.is_dir():
            found += [str(p) for p in root.rglob("*") if p.suffix.lower() in (".ttf", ".otf")]
    return tuple(sorted(found))


@lru_cache(maxsize=256)
def _font(path: str, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size) if path == "" else ImageFont.truetype(path, size)


def pick_font_file(rng: random.Random) -> str:
    """A random system font file ("" = Pillow's built-in font, used when the system has none)."""
    files = font_files()
    return rng.choice(files) if files else ""


def background(rng: random.Random, size: tuple[int, int]) -> Image.Image:
    """A light background: plain, vertical gradient or speckled noise, so text and shapes stay visible."""
    w, h = size
    base = tuple(rng.randint(200, 255) for _ in range(3))
    img = Image.new("RGB", size, base)
    kind = rng.choice(("plain", "gradient", "noise"))
    d = ImageDraw.Draw(img)
    if kind == "gradient":
        other = tuple(rng.randint(180, 255) for _ in range(3))
        for y in range(h):
            t = y / max(h - 1, 1)
            d.line([(0, y), (w, y)], fill=tuple(int(a + (b - a) * t) for a, b in zip(base, other)))
    elif kind == "noise":
        for _ in range(w * h // 40):
            x, y = rng.randrange(w), rng.randrange(h)
            d.point((x, y), fill=tuple(rng.randint(170, 255) for _ in range(3)))
    return img


def draw_shape(d: ImageDraw.ImageDraw, shape: str, box: tuple[int, int, int, int],
               color: tuple[int, int, int] | int) -> None:
    """Fill `shape` inside box (x0, y0, x1, y1) with `color` (an int on a mode-'L' label map)."""
    x0, y0, x1, y1 = box
    if shape == "circle":
        d.ellipse(box, fill=color)
    elif shape == "square":
        d.rectangle(box, fill=color)
    elif shape == "triangle":
        d.polygon([((x0 + x1) // 2, y0), (x1, y1), (x0, y1)], fill=color)
    else:
        raise ValueError(f"unknown shape {shape!r}; known: {SHAPES}")


def grid_boxes(rng: random.Random, n: int, size: int, cells: int, margin: int = 4) -> list[tuple[int, int, int, int]]:
    """`n` non-overlapping boxes: distinct cells of a cells x cells grid over a size x size canvas,
    each box jittered and shrunk inside its cell. Example: size 192, cells 3 -> 64-px cells, boxes of
    28..56 px."""
    if n > cells * cells:
        raise ValueError(f"{n} boxes do not fit in a {cells}x{cells} grid")
    step = size // cells
    out = []
    for c in rng.sample(range(cells * cells), n):
        side = rng.randint(step * 7 // 16, step - 2 * margin)
        x0 = (c % cells) * step + rng.randint(margin, step - side - margin)
        y0 = (c // cells) * step + rng.randint(margin, step - side - margin)
        out.append((x0, y0, x0 + side, y0 + side))
    return out


def text_image(rng: random.Random, text: str, size: tuple[int, int], max_angle: float = 10.0) -> Image.Image:
    """`text` in a random font, size and dark colour, rotated by up to ±max_angle degrees, centred
    with jitter on a random background."""
    return text_with_boxes(rng, text, size, max_angle)[0]


def text_with_boxes(rng: random.Random, text: str, size: tuple[int, int],
                    max_angle: float = 10.0) -> tuple[Image.Image, Image.Image]:
    """`text_image`, and a mode-'L' map of where each character is: its box filled with 1 + its index in
    `text`, rotated with the text, 0 elsewhere (the label map of the dense vision stage, minicpmv/train/dense.py).
    The map costs no draws from `rng`: the image is the same as without it. Example: 'AB' -> pixels of A's
    box are 1, of B's box 2."""
    w, h = size
    img = background(rng, size)
    path, font_size = pick_font_file(rng), rng.randint(h // 4, h // 3)
    font = _font(path, font_size)
    layer = Image.new("RGBA", size, (0, 0, 0, 0))
    d = ImageDraw.Draw(layer)
    left, top, right, bottom = d.textbbox((0, 0), text, font=font)
    while right - left > w * 0.9 and font_size > 10:  # shrink long words until they fit
        font_size -= 2
        font = _font(path, font_size)
        left, top, right, bottom = d.textbbox((0, 0), text, font=font)
    color = tuple(rng.randint(0, 90) for _ in range(3)) + (255,)
    x = (w - (right - left)) // 2 - left + rng.randint(-w // 20, w // 20)
    y = (h - (bottom - top)) // 2 - top + rng.randint(-h // 10, h // 10)
    d.text((x, y), text, font=font, fill=color)
    boxes = Image.new("L", size, 0)
    b = ImageDraw.Draw(boxes)
    for i, ch in enumerate(text):
        b.rectangle(d.textbbox((x + d.textlength(text[:i], font=font), y), ch, font=font), fill=i + 1)
    angle = rng.uniform(-max_angle, max_angle)
    layer = layer.rotate(angle, resample=Image.BICUBIC, center=(w / 2, h / 2))
    img.paste(layer, (0, 0), layer)
    return img, boxes.rotate(angle, resample=Image.NEAREST, center=(w / 2, h / 2))
