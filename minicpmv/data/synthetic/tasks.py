"""The task families: `make_sample(rng, split) -> dict` each, in the official fine-tune format.

A sample is one user question about one image (or one short video) and a short answer::

    {"family": "count", "split": "train", "image": <PIL.Image>,
     "conversations": [{"role": "user", "content": "<image>\\nHow many shapes are in the image?"},
                       {"role": "assistant", "content": "3"}],
     "answer": "3", "reasoning": "I see a red circle, a blue square and a green triangle. That makes 3.",
     "caption": "3 shapes: red circle, blue square, green triangle"}

Videos are already sampled: `"video": {"frames": [PIL.Image, ...], "temporal_ids": [[0, 2, 4], [6, 8, 10]]}`
(frames 0.2 s apart, ids in 0.1 s units, grouped `packing` frames per 64 visual tokens: 3D packing).
`reasoning` is the worked trace of the long (thinking) mode (`with_mode`), `caption` the pre-training
target. The split is recorded only: held-out data differ by seed (see `suite.sample_seed`).
"""

from __future__ import annotations

import random
from typing import Any, Callable

from PIL import Image, ImageDraw

from minicpmv.data.synthetic.draw import COLORS, SHAPES, background, draw_shape, grid_boxes, pick_font_file, text_image
from minicpmv.data.synthetic.draw import _font

IMAGE_SIDE = 192  # below scale_resolution 224: one slice, 64 visual tokens
FRAME_SIDE = 128
FRAME_STEP_IDS = 2  # frames 0.2 s apart = 2 temporal ids of 0.1 s
OCR_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ"  # no I/O (confusable with 1/0)


def _sample(family: str, split: str, media: dict[str, Any], question: str, answer: str, reasoning: str,
            caption: str) -> dict[str, Any]:
    tag = "<video>" if "video" in media else "<image>"
    return {"family": family, "split": split, **media,
            "conversations": [{"role": "user", "content": f"{tag}\n{question}"},
                              {"role": "assistant", "content": answer}],
            "question": question, "answer": answer, "reasoning": reasoning, "caption": caption}


def with_mode(sample: dict[str, Any], mode: str) -> dict[str, Any]:
    """The sample with its assistant turn in `mode`: 'short' = the answer, 'long' = a `<think>` trace
    then the answer. Example: answer '12', reasoning '7 + 5 = 12.' -> '<think>\\n7 + 5 = 12.\\n</think>\\n\\n12'."""
    if mode not in ("short", "long"):
        raise ValueError(f"mode {mode!r}; use 'short' or 'long'")
    content = sample["answer"] if mode == "short" else f"<think>\n{sample['reasoning']}\n</think>\n\n{sample['answer']}"
    turns = [sample["conversations"][0], {"role": "assistant", "content": content}]
    return {**sample, "conversations": turns, "mode": mode}


def _join(items: list[str]) -> str:
    """'a' / 'a and b' / 'a, b and c'."""
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


# ---- images ------------------------------------------------------------------------------------------
def make_ocr(rng: random.Random, split: str) -> dict[str, Any]:
    """A 1-6 character word (letters) or number rendered in a random font, size, colour and rotation."""
    n = rng.randint(1, 6)
    alphabet = "0123456789" if rng.random() < 0.5 else OCR_ALPHABET
    text = "".join(rng.choice(alphabet) for _ in range(n))
    img = text_image(rng, text, (IMAGE_SIDE, IMAGE_SIDE // 2 + 32))
    reasoning = f"The characters are {', '.join(text)}. Together they read {text}."
    return _sample("ocr", split, {"image": img}, "What text is written in the image?", text, reasoning, text)


def _shapes_image(rng: random.Random, items: list[tuple[str, str]]) -> Image.Image:
    img = background(rng, (IMAGE_SIDE, IMAGE_SIDE))
    d = ImageDraw.Draw(img)
    for (color, shape), box in zip(items, grid_boxes(rng, len(items), IMAGE_SIDE, 3)):
        draw_shape(d, shape, box, COLORS[color])
    return img


def make_count(rng: random.Random, split: str) -> dict[str, Any]:
    """1-6 shapes of random kinds and colours; count them."""
    items = [(rng.choice(list(COLORS)), rng.choice(SHAPES)) for _ in range(rng.randint(1, 6))]
    names = [f"a {c} {s}" for c, s in items]
    n = str(len(items))
    reasoning = f"I see {_join(names)}. That makes {n}."
    caption = f"{n} shapes: " + ", ".join(f"{c} {s}" for c, s in items)
    return _sample("count", split, {"image": _shapes_image(rng, items)}, "How many shapes are in the image?", n,
                   reasoning, caption)


def make_color(rng: random.Random, split: str) -> dict[str, Any]:
    """1-3 shapes of distinct kinds and colours; name the colour of one kind (or the kind of one colour)."""
    k = rng.randint(1, 3)
    items = list(zip(rng.sample(list(COLORS), k), rng.sample(SHAPES, k)))
    color, shape = rng.choice(items)
    if rng.random() < 0.7:
        question, answer = f"What colour is the {shape}?", color
    else:
        question, answer = f"Which shape is {color}?", shape
    reasoning = f"I see {_join([f'a {c} {s}' for c, s in items])}. The {shape} is {color}."
    caption = ", ".join(f"{c} {s}" for c, s in items)
    return _sample("color", split, {"image": _shapes_image(rng, items)}, question, answer, reasoning, caption)


def make_chart(rng: random.Random, split: str) -> dict[str, Any]:
    """A bar chart of 3-4 labelled bars with distinct heights 1-9; which bar is the tallest?"""
    labels = "ABCD"[: rng.randint(3, 4)]
    values = rng.sample(range(1, 10), len(labels))
    img = background(rng, (IMAGE_SIDE, IMAGE_SIDE))
    d = ImageDraw.Draw(img)
    font = _font(pick_font_file(rng), 18)
    base, unit, width = IMAGE_SIDE - 28, (IMAGE_SIDE - 48) // 9, (IMAGE_SIDE - 20) // len(labels)
    d.line([(6, base), (IMAGE_SIDE - 6, base)], fill=(60, 60, 60), width=2)
    color = COLORS[rng.choice(list(COLORS))]
    for i, (label, v) in enumerate(zip(labels, values)):
        x0 = 10 + i * width + width // 6
        d.rectangle((x0, base - v * unit, x0 + width * 2 // 3, base), fill=color)
        d.text((x0 + width // 3 - 5, base + 4), label, font=font, fill=(20, 20, 20))
    best = labels[values.index(max(values))]
    listing = ", ".join(f"{l} {v}" for l, v in zip(labels, values))
    reasoning = f"The bar heights are {listing}. The tallest is {best}."
    return _sample("chart", split, {"image": img}, "Which bar is the tallest?", best, reasoning, f"bar chart: {listing}")


def make_arith(rng: random.Random, split: str) -> dict[str, Any]:
    """Two numbers 1-9 drawn at random places; their sum, with the addition worked out in long mode."""
    a, b = rng.randint(1, 9), rng.randint(1, 9)
    img = background(rng, (IMAGE_SIDE, IMAGE_SIDE))
    d = ImageDraw.Draw(img)
    for value, (x0, y0, x1, y1) in zip((a, b), sorted(grid_boxes(rng, 2, IMAGE_SIDE, 2, margin=8))):
        font = _font(pick_font_file(rng), rng.randint(40, 64))
        d.text(((x0 + x1) // 2, (y0 + y1) // 2), str(value), font=font, anchor="mm",
               fill=tuple(rng.randint(0, 90) for _ in range(3)))
    reasoning = f"The numbers are {a} and {b}. {a} + {b} = {a + b}."
    return _sample("arith", split, {"image": img}, "What is the sum of the two numbers in the image?", str(a + b),
                   reasoning, f"{a} and {b}")


# ---- videos --------------------------------------------------------------------------------------------
def _video(frames: list[Image.Image], packing: int = 3) -> dict[str, Any]:
    """Frames 0.2 s apart, grouped `packing` per span. Example: 6 frames, packing 3 -> [[0, 2, 4], [6, 8, 10]]."""
    ids = [i * FRAME_STEP_IDS for i in range(len(frames))]
    return {"video": {"frames": frames, "temporal_ids": [ids[i:i + packing] for i in range(0, len(ids), packing)]}}


def _frames(rng: random.Random, n: int, draw: Callable[[ImageDraw.ImageDraw, int], None]) -> list[Image.Image]:
    bg = background(rng, (FRAME_SIDE, FRAME_SIDE))
    frames = []
    for t in range(n):
        frame = bg.copy()
        draw(ImageDraw.Draw(frame), t)
        frames.append(frame)
    return frames


def make_vid_dir(rng: random.Random, split: str) -> dict[str, Any]:
    """One shape crossing 6 frames left, right, up or down; which direction does it move?"""
    color, shape, direction = rng.choice(list(COLORS)), rng.choice(SHAPES), rng.choice(("left", "right", "up", "down"))
    side, n = rng.randint(22, 34), 6
    travel, across = FRAME_SIDE - side - 8, rng.randint(4, FRAME_SIDE - side - 4)

    def draw(d: ImageDraw.ImageDraw, t: int) -> None:
        along = 4 + travel * t // (n - 1)
        along = along if direction in ("right", "down") else FRAME_SIDE - side - along
        x, y = (along, across) if direction in ("left", "right") else (across, along)
        draw_shape(d, shape, (x, y, x + side, y + side), COLORS[color])

    question = f"In which direction does the {color} {shape} move?"
    reasoning = f"The {color} {shape} is at a new place in each frame, always further {direction}."
    return _sample("vid_dir", split, _video(_frames(rng, n, draw)), question, direction, reasoning,
                   f"a {color} {shape} moves {direction}")


def make_vid_first(rng: random.Random, split: str) -> dict[str, Any]:
    """Two shapes appear one after the other (and stay); which appeared first?"""
    colors, shapes = rng.sample(list(COLORS), 2), rng.sample(SHAPES, 2)
    names = [f"{c} {s}" for c, s in zip(colors, shapes)]
    first_at = rng.randint(0, 2)
    starts = [first_at, rng.randint(first_at + 1, 4)]
    boxes = grid_boxes(rng, 2, FRAME_SIDE, 2)

    def draw(d: ImageDraw.ImageDraw, t: int) -> None:
        for k in range(2):
            if t >= starts[k]:
                draw_shape(d, shapes[k], boxes[k], COLORS[colors[k]])

    order = [0, 1] if rng.random() < 0.5 else [1, 0]
    question = f"Which appeared first, the {names[order[0]]} or the {names[order[1]]}?"
    reasoning = (f"The {names[0]} appears at {starts[0] * 0.2:.1f} s and the {names[1]} at {starts[1] * 0.2:.1f} s, "
                 f"so the {names[0]} came first.")
    return _sample("vid_first", split, _video(_frames(rng, 6, draw)), question, names[0], reasoning,
                   f"a {names[0]} appears, then a {names[1]}")


def flash_pattern(rng: random.Random, n_frames: int, k: int) -> list[bool]:
    """On/off states of n_frames with exactly k separate 'on' runs. Example (6, 2): e.g.
    [F, T, T, F, T, F] -> the light flashes twice."""
    while True:
        on = [False] * n_frames
        for start in sorted(rng.sample(range(n_frames), k)):
            on[start] = True
            if start + 1 < n_frames and rng.random() < 0.4:
                on[start + 1] = True
        runs = sum(1 for i, v in enumerate(on) if v and (i == 0 or not on[i - 1]))
        if runs == k:
            return on


def make_vid_count(rng: random.Random, split: str) -> dict[str, Any]:
    """A light flashes 1-3 times over 6 frames; how many times?"""
    color, k = rng.choice(list(COLORS)), rng.randint(1, 3)
    on = flash_pattern(rng, 6, k)
    side = rng.randint(30, 50)
    x, y = rng.randint(4, FRAME_SIDE - side - 4), rng.randint(4, FRAME_SIDE - side - 4)

    def draw(d: ImageDraw.ImageDraw, t: int) -> None:
        if on[t]:
            d.ellipse((x, y, x + side, y + side), fill=COLORS[color])

    times = [f"{i * 0.2:.1f} s" for i, v in enumerate(on) if v and (i == 0 or not on[i - 1])]
    reasoning = f"The light turns on at {_join(times)}. That is {k}."
    return _sample("vid_count", split, _video(_frames(rng, 6, draw)), f"How many times does the {color} light flash?",
                   str(k), reasoning, f"a {color} light flashes {k} times")


FAMILIES: dict[str, Callable[[random.Random, str], dict[str, Any]]] = {
    "ocr": make_ocr,
    "count": make_count,
    "color": make_color,
    "chart": make_chart,
    "arith": make_arith,
    "vid_dir": make_vid_dir,
    "vid_first": make_vid_first,
    "vid_count": make_vid_count,
}
