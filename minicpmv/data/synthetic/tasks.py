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
target. The split is recorded only: held-out data differ by seed (see `suite.sample_seed`). `doc` samples
also carry "level" (low / moderate / high corruption of the target) and "box" (its pixel box), so
evaluation can split by level.
"""

from __future__ import annotations

import random
from typing import Any, Callable

import numpy as np
from PIL import Image, ImageDraw

from minicpmv.data.documents.corruption import LEVELS, Target, corrupt_regions
from minicpmv.data.documents.samples import SampleConfig, box_to_1000
from minicpmv.data.documents.sources import Page, Region
from minicpmv.data.documents.synthetic import WORDS, SyntheticConfig, synthetic_page
from minicpmv.data.synthetic.draw import COLORS, SHAPES, background, draw_shape, grid_boxes, pick_font_file, text_image
from minicpmv.data.synthetic.draw import _font

IMAGE_SIDE = 192  # below scale_resolution 224: one slice (32 visual tokens with the demo model)
FRAME_SIDE = 128
FRAME_STEP_IDS = 2  # frames 0.2 s apart = 2 temporal ids of 0.1 s
OCR_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ"  # no I/O (confusable with 1/0)
# Document pages of the `doc` family: the document engine's synthetic page at 192 x 192, one column of
# large body text (26-32 px, 3-4 lines of 1-3 words) from its word list cut to 3-7 letter words, no
# headings, tables, figures or hyphenation.
DOC_PAGE = SyntheticConfig(width=IMAGE_SIDE, height=IMAGE_SIDE, margin=12, columns=(1,), body_px=(26, 32),
                           heading_prob=0.0, table_prob=0.0, figure_prob=0.0, hyphenate_prob=0.0, sentences=(1, 1),
                           words=tuple(w for w in WORDS if 3 <= len(w) <= 7))
DOC_MAX_WORDS = 2  # target lines have at most this many words, so answers stay short


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


def _a(noun: str) -> str:
    """'a red circle' / 'an orange square'."""
    return f"an {noun}" if noun[0] in "aeiou" else f"a {noun}"


# ---- images ------------------------------------------------------------------------------------------
def make_ocr(rng: random.Random, split: str) -> dict[str, Any]:
    """A 1-6 character word (letters) or number rendered in a random font, size, colour and rotation."""
    n = rng.randint(1, 6)
    alphabet = "0123456789" if rng.random() < 0.5 else OCR_ALPHABET
    text = "".join(rng.choice(alphabet) for _ in range(n))
    img = text_image(rng, text, (IMAGE_SIDE, IMAGE_SIDE // 2 + 32))
    reasoning = f"The characters are {', '.join(text)}. Together they read {text}."
    return _sample("ocr", split, {"image": img}, "What text is written in the image?", text, reasoning, text)


def _shapes_image(rng: random.Random, items: list[tuple[str, str]]) -> tuple[Image.Image, list[tuple[str, str]]]:
    """The items drawn in random cells of a 3 x 3 grid, and the items in reading order (row by row, left to
    right), the order captions and traces name them in: a described order the image determines is learnable,
    a random one is not. Example: a blue square top right and a red circle bottom left -> [blue square, red circle]."""
    img, items, _ = shapes_with_map(rng, items)
    return img, items


def shapes_with_map(rng: random.Random,
                    items: list[tuple[str, str]]) -> tuple[Image.Image, list[tuple[str, str]], Image.Image]:
    """`_shapes_image`, and a mode-'L' map of where each shape is: filled with 1 + its index in the reading
    order, 0 elsewhere (the label map of the dense vision stage; no extra draws from `rng`)."""
    img = background(rng, (IMAGE_SIDE, IMAGE_SIDE))
    d = ImageDraw.Draw(img)
    step = IMAGE_SIDE // 3
    placed = []
    for (color, shape), box in zip(items, grid_boxes(rng, len(items), IMAGE_SIDE, 3)):
        draw_shape(d, shape, box, COLORS[color])
        placed.append((box[1] // step, box[0] // step, (color, shape), box))  # (cell row, cell column, item, box)
    placed.sort(key=lambda p: p[:2])
    where = Image.new("L", img.size, 0)
    marks = ImageDraw.Draw(where)
    for i, (_, _, (_, shape), box) in enumerate(placed):
        draw_shape(marks, shape, box, i + 1)
    return img, [item for _, _, item, _ in placed], where


def make_count(rng: random.Random, split: str) -> dict[str, Any]:
    """1-6 shapes of random kinds and colours; count them."""
    items = [(rng.choice(list(COLORS)), rng.choice(SHAPES)) for _ in range(rng.randint(1, 6))]
    image, items = _shapes_image(rng, items)
    n = str(len(items))
    reasoning = f"I see {_join([f'a {c} {s}' for c, s in items])}. That makes {n}."
    caption = f"{n} shapes: " + ", ".join(f"{c} {s}" for c, s in items)
    return _sample("count", split, {"image": image}, "How many shapes are in the image?", n, reasoning, caption)


def make_color(rng: random.Random, split: str) -> dict[str, Any]:
    """1-3 shapes of distinct kinds and colours; name the colour of one kind (or the kind of one colour)."""
    k = rng.randint(1, 3)
    items = list(zip(rng.sample(list(COLORS), k), rng.sample(SHAPES, k)))
    color, shape = rng.choice(items)
    if rng.random() < 0.7:
        question, answer = f"What colour is the {shape}?", color
    else:
        question, answer = f"Which shape is {color}?", shape
    image, items = _shapes_image(rng, items)
    reasoning = f"I see {_join([f'a {c} {s}' for c, s in items])}. The {shape} is {color}."
    caption = ", ".join(f"{c} {s}" for c, s in items)
    return _sample("color", split, {"image": image}, question, answer, reasoning, caption)


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


def line_xs(n: int) -> list[int]:
    """x of the n points of a `line` chart, evenly spread. Example: n=3 -> [24, 98, 172]."""
    left, right = 24, IMAGE_SIDE - 20
    return [left + i * (right - left) // (n - 1) for i in range(n)]


def line_y(value: int) -> int:
    """y of a value 1-9 on a `line` chart (the same scale as the bar chart). Example: 1 -> 148, 9 -> 20."""
    return IMAGE_SIDE - 28 - value * ((IMAGE_SIDE - 48) // 9)


def make_line(rng: random.Random, split: str) -> dict[str, Any]:
    """A line chart of 3-5 labelled points with distinct values 1-9 (a polyline with dots): which point
    is the highest / the lowest, or does the line go up or down between two neighbouring points?"""
    labels = "ABCDE"[: rng.randint(3, 5)]
    values = rng.sample(range(1, 10), len(labels))
    img = background(rng, (IMAGE_SIDE, IMAGE_SIDE))
    d = ImageDraw.Draw(img)
    base = line_y(0)
    d.line([(8, base), (IMAGE_SIDE - 8, base)], fill=(60, 60, 60), width=2)
    points = [(x, line_y(v)) for x, v in zip(line_xs(len(labels)), values)]
    color, radius, font = COLORS[rng.choice(list(COLORS))], rng.randint(4, 6), _font(pick_font_file(rng), 18)
    d.line(points, fill=color, width=3)
    for label, (x, y) in zip(labels, points):
        d.ellipse((x - radius, y - radius, x + radius, y + radius), fill=color)
        d.text((x, base + 4), label, font=font, fill=(20, 20, 20), anchor="mt")
    listing = ", ".join(f"{l} {v}" for l, v in zip(labels, values))
    kind = rng.random()
    if kind < 0.6:
        pick = max if kind < 0.4 else min
        word = "highest" if pick is max else "lowest"
        answer = labels[values.index(pick(values))]
        question, reasoning = f"Which point is the {word}?", f"The points are {listing}. The {word} is {answer}."
    else:
        i = rng.randrange(len(labels) - 1)
        (a, b), (va, vb) = labels[i:i + 2], values[i:i + 2]
        answer = "up" if vb > va else "down"
        question = f"Does the line go up or down from {a} to {b}?"
        reasoning = f"{a} is at {va} and {b} is at {vb}, so the line goes {answer} from {a} to {b}."
    return _sample("line", split, {"image": img}, question, answer, reasoning, f"line chart: {listing}")


def doc_page(rng: random.Random) -> Page:
    """A `DOC_PAGE` document page (the document engine's `synthetic_page`) with at least one line of at
    most DOC_MAX_WORDS words; pages without one are drawn again from the next seed of `rng`.
    `make_doc` calls it first, so `doc_page(random.Random(seed))` is the clean page of sample `seed`."""
    for _ in range(50):
        page = synthetic_page(rng.getrandbits(63), DOC_PAGE)
        if _doc_targets(page):
            return page
    raise RuntimeError(f"50 pages of {DOC_PAGE} without a line of <= {DOC_MAX_WORDS} words; use a larger body_px")


def _doc_targets(page: Page) -> list[Region]:
    return [r for r in page.of_kind("line") if 1 <= len(r.text.split()) <= DOC_MAX_WORDS]


DOC_TRACES = {  # the worked trace per corruption level (the text is read, pieced together, or guessed)
    "low": "The text in the box is slightly degraded but still legible. It reads {text}.",
    "moderate": "The text in the box is heavily degraded. The remaining strokes fit {text}.",
    "high": "The text in the box is masked out and the other lines do not give it away, so this is a guess: {text}.",
}


def make_doc(rng: random.Random, split: str) -> dict[str, Any]:
    """A 192 x 192 document page of 3-4 short lines; one line of 1-2 words is corrupted at a random level
    (the document engine's corruption, levels drawn with its default probabilities 0.4 / 0.3 / 0.3) and
    the question asks for its original text by its box in 0-1000 page coordinates. The sample records
    "level" and "box" (the target's pixel box; the corruption touches only that box plus 3 pixels).
    Example (make("doc", "train", 0)): "What is the original text in <box>62 89 635 214</box>?" -> "Control"
    (level low)."""
    page = doc_page(rng)
    target = rng.choice(_doc_targets(page))
    level = rng.choices(LEVELS, weights=SampleConfig().level_probs)[0]
    pixels, _ = corrupt_regions(np.asarray(page.image), [Target(target.box, level, target.line_height)],
                                rng.getrandbits(63))  # uint8[192, 192, 3]
    x1, y1, x2, y2 = box_to_1000(target.box, page.image.width, page.image.height)
    question = f"What is the original text in <box>{x1} {y1} {x2} {y2}</box>?"
    lines = ["[masked]" if r == target and level == "high" else r.text for r in page.of_kind("line")]
    caption = f"a page of {len(lines)} lines: " + " / ".join(lines)  # what can be seen: a masked line is not
    sample = _sample("doc", split, {"image": Image.fromarray(pixels)}, question, target.text,
                     DOC_TRACES[level].format(text=target.text), caption)
    return {**sample, "level": level, "box": list(target.box)}


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


def make_vid_speed(rng: random.Random, split: str) -> dict[str, Any]:
    """Two shapes of different colours, each in its own lane (top / bottom half), moving right over 6
    frames: one 14-18 px per frame, the other 2-6 px (at least 2.3x slower). Which moves faster?"""
    colors, shapes = rng.sample(list(COLORS), 2), [rng.choice(SHAPES) for _ in range(2)]
    names = [f"{c} {s}" for c, s in zip(colors, shapes)]
    fast = rng.randrange(2)  # index of the faster shape
    side, n, lane = rng.randint(18, 26), 6, FRAME_SIDE // 2
    steps = [rng.randint(14, 18) if k == fast else rng.randint(2, 6) for k in range(2)]
    starts = [rng.randint(2, FRAME_SIDE - side - (n - 1) * step - 2) for step in steps]
    tops = [k * lane + rng.randint(4, lane - side - 4) for k in rng.sample(range(2), 2)]  # one lane each

    def draw(d: ImageDraw.ImageDraw, t: int) -> None:
        for k in range(2):
            x = starts[k] + steps[k] * t
            draw_shape(d, shapes[k], (x, tops[k], x + side, tops[k] + side), COLORS[colors[k]])

    order = rng.sample(range(2), 2)
    slow = 1 - fast
    question = f"Which moves faster, the {names[order[0]]} or the {names[order[1]]}?"
    reasoning = (f"Both move right. From frame to frame the {names[fast]} moves far and the {names[slow]} only a "
                 f"little, so the {names[fast]} is faster.")
    caption = f"{_a(names[fast])} moves right fast and {_a(names[slow])} moves right slowly"
    return _sample("vid_speed", split, _video(_frames(rng, n, draw)), question, names[fast], reasoning, caption)


def make_vid_at(rng: random.Random, split: str) -> dict[str, Any]:
    """Six distinct digits, one per frame (frame k at k * 0.2 s, temporal id 2k in 0.1 s units, so the
    time in the question is a temporal id the model sees); what digit is shown at time t?
    Example: digits 5 2 7 1 9 0, "What digit is shown at 0.4 s?" -> "7" (frame 3, temporal id 4)."""
    n = 6
    digits = rng.sample(range(10), n)
    font = _font(pick_font_file(rng), rng.randint(56, 80))
    ink = tuple(rng.randint(0, 90) for _ in range(3))
    centres = [(FRAME_SIDE // 2 + rng.randint(-12, 12), FRAME_SIDE // 2 + rng.randint(-12, 12)) for _ in range(n)]

    def draw(d: ImageDraw.ImageDraw, t: int) -> None:
        d.text(centres[t], str(digits[t]), font=font, fill=ink, anchor="mm")

    k = rng.randrange(n)
    when = f"{k * FRAME_STEP_IDS / 10:.1f} s"
    shown = ", ".join(map(str, digits))
    step = f"{FRAME_STEP_IDS / 10:.1f} s"
    reasoning = f"One frame every {step} shows {shown}. {when} is frame {k + 1}, which shows {digits[k]}."
    return _sample("vid_at", split, _video(_frames(rng, n, draw)), f"What digit is shown at {when}?", str(digits[k]),
                   reasoning, f"the digits {shown}, one per frame")


FAMILIES: dict[str, Callable[[random.Random, str], dict[str, Any]]] = {
    "ocr": make_ocr,
    "count": make_count,
    "color": make_color,
    "chart": make_chart,
    "arith": make_arith,
    "line": make_line,
    "doc": make_doc,
    "vid_dir": make_vid_dir,
    "vid_first": make_vid_first,
    "vid_count": make_vid_count,
    "vid_speed": make_vid_speed,
    "vid_at": make_vid_at,
}
