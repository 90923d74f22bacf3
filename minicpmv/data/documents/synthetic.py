"""Synthetic document pages drawn with Pillow, so the engine runs without any PDF.

A page is filled column by column with headings, paragraphs, tables and figures with captions, in
one of the system fonts (`sources.find_fonts`). Every text line drawn becomes a line region and
every paragraph, heading, caption and table row a block region, so the ground truth is exact.
Long words that do not fit may be split with a hyphen: the line region reads "exam-", the block
"example", as for a hyphenated PDF. The text is generated from a word list (`words`), so nothing
copyrighted is ever drawn; pass your own list for another language or domain.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

from minicpmv.data.documents.sources import Page, Region, find_fonts, join_lines, load_font, normalise_text, visible_line_text
from minicpmv.errors import InputError

WORDS = tuple("""
the of and to in is that for are with as on by this be from an at which or we it can our not these
model data method results table figure section value system analysis energy signal network process
structure function field surface pressure temperature sample measure rate density phase layer error
theory equation parameter distribution average standard response effect increase decrease high low
large small first second third final initial linear nonlinear simple complex general specific local
global time space frequency range limit order level point line curve region boundary interval group
set element matrix vector tensor operator number series average estimate bound proof lemma result
experiment observation condition control variable constant factor ratio weight mean variance sum
product flow heat mass charge current voltage power source target input output state transition path
cell protein gene species growth population environment climate water carbon soil river material
metal crystal polymer fiber solution mixture reaction catalyst molecule atom electron photon wave
light image pixel camera sensor device circuit memory storage cache thread kernel compiler language
grammar syntax semantic corpus document page paragraph sentence word letter symbol report review
study survey history economy market price cost budget policy law court decision evidence argument
shows suggests indicates describes compares reduces improves requires provides remains becomes yields
using given under between during after before within without across along toward against through
""".split())


@dataclass(frozen=True)
class SyntheticConfig:
    """Page geometry and content mix. Defaults: an A4 page at 150 dpi with 9-12.5 pt body text."""

    width: int = 1240  # pixels (A4 at 150 dpi is 1240 x 1754)
    height: int = 1754
    margin: int = 110  # about 0.75 inch at 150 dpi
    columns: tuple[int, ...] = (1, 2)  # column counts; one is drawn per page
    column_gap: int = 50
    body_px: tuple[int, int] = (19, 26)  # body font size range in pixels
    heading_scale: tuple[float, float] = (1.3, 1.8)  # heading size / body size
    line_spacing: float = 1.35  # baseline distance / font size
    heading_prob: float = 0.3  # a heading before a paragraph
    table_prob: float = 0.15  # a table instead of a paragraph
    figure_prob: float = 0.15  # a figure (bar or line chart) with a caption instead of a paragraph
    hyphenate_prob: float = 0.5  # a long word (>= 7 letters) that does not fit is split with a hyphen
    sentences: tuple[int, int] = (2, 6)  # sentences per paragraph
    words: tuple[str, ...] = WORDS  # vocabulary of the generated text
    fonts: tuple[str, ...] = ()  # font files; () = every usable system font

    def __post_init__(self):
        mix = self.heading_prob + self.table_prob + self.figure_prob
        if not 0 <= mix <= 1 or min(self.heading_prob, self.table_prob, self.figure_prob) < 0:
            raise InputError(f"SyntheticConfig: heading_prob {self.heading_prob} + table_prob {self.table_prob} + "
                             f"figure_prob {self.figure_prob} = {mix}; each must be >= 0 and the sum <= 1")
        if self.body_px[0] < 4 or self.body_px[0] > self.body_px[1] or not self.words or not self.columns:
            raise InputError(f"SyntheticConfig: body_px {self.body_px} must be an increasing pair >= 4, and words "
                             f"and columns must be non-empty")


def synthetic_page(seed: int | Sequence[int], config: SyntheticConfig = SyntheticConfig(), index: int = 0) -> Page:
    """A page of generated text and its regions; the same seed (and fonts) gives the same pixels.
    `index` is only recorded (the page number within the engine's synthetic "document")."""
    rng = np.random.default_rng(seed)
    fonts = config.fonts or find_fonts()
    paper = tuple(int(v) for v in rng.integers(238, 256, 3))
    image = Image.new("RGB", (config.width, config.height), paper)
    canvas = _Canvas(ImageDraw.Draw(image), rng, config, fonts)
    n_cols = int(rng.choice(config.columns))
    col_w = (config.width - 2 * config.margin - (n_cols - 1) * config.column_gap) // n_cols
    for c in range(n_cols):
        x = config.margin + c * (col_w + config.column_gap)
        canvas.fill_column(x, col_w)
    return Page(image, canvas.regions(), "synthetic", index, 150.0)


class _Canvas:
    """Draws elements down a column and records their regions in drawing (= reading) order."""

    def __init__(self, draw: ImageDraw.ImageDraw, rng: np.random.Generator, config: SyntheticConfig, fonts: Sequence[str]):
        self.draw, self.rng, self.cfg = draw, rng, config
        pick = lambda: fonts[int(rng.integers(len(fonts)))] if fonts else None  # noqa: E731
        self.body_size = int(rng.integers(config.body_px[0], config.body_px[1] + 1))
        self.body = load_font(pick(), self.body_size)
        head_size = round(self.body_size * rng.uniform(*config.heading_scale))
        self.heading = load_font(pick(), head_size)
        self.caption = load_font(pick(), max(8, round(self.body_size * 0.85)))
        self.ink = tuple(int(v) for v in rng.integers(0, 60, 3))
        self.blocks: list[tuple[str, list[tuple[tuple[int, int, int, int], str]]]] = []  # (block text, lines)
        self.figures = 0

    def fill_column(self, x: int, width: int) -> None:
        y, bottom = self.cfg.margin, self.cfg.height - self.cfg.margin
        kind = ""
        while True:
            kind = "paragraph" if kind == "heading" else self.rng.choice(["heading", "table", "figure", "paragraph"],
                                                                       p=self._mix())  # a heading heads a paragraph
            height = {"heading": self._heading, "table": self._table, "figure": self._figure,
                      "paragraph": self._paragraph}[kind](x, y, width, bottom - y)
            if height is None:
                return
            y += height + int(self.body_size * 0.8)

    def _mix(self) -> list[float]:
        c = self.cfg
        return [c.heading_prob, c.table_prob, c.figure_prob, 1.0 - c.heading_prob - c.table_prob - c.figure_prob]

    def _text_lines(self, x: int, y: int, lines: Sequence[str], font, room: int) -> list | None:
        """Draw lines one baseline apart from the top; None (nothing drawn) when the first does not fit."""
        step = round(font.size * self.cfg.line_spacing)
        drawn = []
        for k, line in enumerate(lines):
            if (k + 1) * step > room:
                break
            at, printed = (x, y + k * step), visible_line_text(line)
            self.draw.text(at, printed, font=font, fill=self.ink)
            drawn.append((self.draw.textbbox(at, printed, font=font), line))
        return drawn or None

    def _paragraph(self, x: int, y: int, width: int, room: int) -> int | None:
        words = [w for _ in range(int(self.rng.integers(*self.cfg.sentences, endpoint=True))) for w in self._sentence()]
        lines = wrap(words, lambda s: self.draw.textlength(s, font=self.body), width, self.rng, self.cfg.hyphenate_prob)
        drawn = self._text_lines(x, y, lines, self.body, room)
        if drawn is None:
            return None
        self.blocks.append((join_lines([line for _, line in drawn]), drawn))
        return len(drawn) * round(self.body.size * self.cfg.line_spacing)

    def _heading(self, x: int, y: int, width: int, room: int) -> int | None:
        words = [w.capitalize() for w in self.rng.choice(self.cfg.words, int(self.rng.integers(2, 6)))]
        number = f"{len(self.blocks) % 9 + 1}.{int(self.rng.integers(1, 9))}"
        text = number + " " + " ".join(words)
        while len(text) > 1 and self.draw.textlength(text, font=self.heading) > width:
            text = text.rsplit(" ", 1)[0]
        body_lines = 3 * round(self.body.size * self.cfg.line_spacing)  # a heading never ends a column
        drawn = self._text_lines(x, y, [text], self.heading, room - body_lines)
        if drawn is None:
            return None
        self.blocks.append((text, drawn))
        return round(self.heading.size * self.cfg.line_spacing)

    def _sentence(self) -> list[str]:
        words = [str(w) for w in self.rng.choice(self.cfg.words, int(self.rng.integers(6, 16)))]
        if self.rng.random() < 0.3:
            words.insert(int(self.rng.integers(1, len(words))), f"{self.rng.integers(1, 1000)}")
        if self.rng.random() < 0.3:
            words[int(self.rng.integers(0, len(words) - 1))] += ","
        words[0], words[-1] = words[0].capitalize(), words[-1] + "."
        return words

    def _table(self, x: int, y: int, width: int, room: int) -> int | None:
        n_rows, n_cols = int(self.rng.integers(3, 7)), int(self.rng.integers(2, 5))
        step = round(self.body.size * self.cfg.line_spacing * 1.2)
        if (n_rows + 1) * step > room:
            return None
        cell_w = width // n_cols
        for r in range(n_rows):
            top = y + r * step
            cells, lines = [], []
            for c in range(n_cols):
                text = self._cell(r, c, cell_w - self.body.size)
                at = (x + c * cell_w + self.body.size // 3, top + step // 8)
                self.draw.text(at, text, font=self.body, fill=self.ink)
                cells.append(text)
                lines.append((self.draw.textbbox(at, text, font=self.body), text))
            self.blocks.append((" | ".join(cells), lines))
        for r in (0, 1, n_rows):  # rules: top, under the header, bottom
            self.draw.line([(x, y + r * step - 2), (x + width, y + r * step - 2)], fill=self.ink, width=2)
        return n_rows * step

    def _cell(self, row: int, col: int, width: float) -> str:
        if row == 0:
            text = str(self.rng.choice(self.cfg.words)).capitalize()
        elif col == 0:
            text = str(self.rng.choice(self.cfg.words))
        else:
            text = f"{self.rng.uniform(0, 100):.{int(self.rng.integers(0, 3))}f}"
        while len(text) > 1 and self.draw.textlength(text, font=self.body) > width:
            text = text[:-1]
        return text

    def _figure(self, x: int, y: int, width: int, room: int) -> int | None:
        height = int(width * self.rng.uniform(0.3, 0.55))
        caption_words = [f"Figure {self.figures + 1}:"] + self._sentence()
        lines = wrap(caption_words, lambda s: self.draw.textlength(s, font=self.caption), width, self.rng, 0.0)
        if height + len(lines) * round(self.caption.size * self.cfg.line_spacing) + 10 > room:
            return None
        self._chart(x, y, width, height)
        drawn = self._text_lines(x, y + height + 10, lines, self.caption, room - height - 10)
        self.blocks.append((join_lines([line for _, line in drawn]), drawn))
        self.figures += 1
        return height + 10 + len(drawn) * round(self.caption.size * self.cfg.line_spacing)

    def _chart(self, x: int, y: int, width: int, height: int) -> None:
        """Axes plus bars or a polyline in random colours (no text: a figure is context, not a target)."""
        d, rng = self.draw, self.rng
        x0, y0, x1, y1 = x + 20, y + 10, x + width - 10, y + height - 20
        d.line([(x0, y0), (x0, y1), (x1, y1)], fill=self.ink, width=2)
        n = int(rng.integers(4, 12))
        values = rng.uniform(0.1, 1.0, n)
        colour = tuple(int(v) for v in rng.integers(30, 220, 3))
        step = (x1 - x0) / n
        if rng.random() < 0.5:
            for i, v in enumerate(values):
                d.rectangle([x0 + i * step + step * 0.15, y1 - v * (y1 - y0), x0 + (i + 0.85) * step, y1 - 1], fill=colour)
        else:
            points = [(x0 + (i + 0.5) * step, y1 - v * (y1 - y0)) for i, v in enumerate(values)]
            d.line(points, fill=colour, width=3)

    def regions(self) -> list[Region]:
        regions, n_lines = [], 0
        for b, (text, lines) in enumerate(self.blocks):
            boxes = np.array([box for box, _ in lines])
            box = (int(boxes[:, 0].min()), int(boxes[:, 1].min()), int(boxes[:, 2].max()), int(boxes[:, 3].max()))
            regions.append(Region(box, normalise_text(text), "block", b, b, len(lines)))
            for line_box, line in lines:
                regions.append(Region(tuple(int(v) for v in line_box), visible_line_text(line), "line", n_lines, b, 1))
                n_lines += 1
        return [r for r in regions if r.text]


def wrap(words: Sequence[str], length, width: float, rng: np.random.Generator, hyphenate_prob: float) -> list[str]:
    """Greedy word wrap of `words` into lines no wider than `width` (`length(s)` = drawn width of s).

    A word of 7+ letters that does not fit is split, with probability `hyphenate_prob`, after as
    many letters (3 or more) as fit with a hyphen; the line then ends in a soft hyphen (U+00AD),
    drawn as "-" and removed when the block text is joined (`sources.join_lines`). Words wider than
    a line are cut to fit. Example (14 characters wide): "a simple example" -> ["a simple exam\\xad", "ple"].
    """
    lines, current = [], ""
    for word in words:
        candidate = f"{current} {word}" if current else word
        if length(candidate) <= width:
            current = candidate
            continue
        head = _hyphen_split(word, current, length, width) if len(word) >= 7 and rng.random() < hyphenate_prob else 0
        if head:
            lines.append(f"{current} {word[:head]}\xad" if current else f"{word[:head]}\xad")
            current = word[head:]
            continue
        if current:
            lines.append(current)
        while len(word) > 1 and length(word) > width:
            word = word[:-1]
        current = word
    if current:
        lines.append(current)
    return lines


def _hyphen_split(word: str, current: str, length, width: float) -> int:
    """Letters of `word` that fit before a hyphen at the end of `current` (0 when fewer than 3 fit)."""
    for head in range(len(word) - 3, 2, -1):
        if length(f"{current} {word[:head]}-" if current else f"{word[:head]}-") <= width:
            return head
    return 0
