"""Document pages for the data engine: born-digital PDF pages and synthetic pages, each an RGB image
plus its text regions (training spec §3.2, step 1).

A `Region` is one text line or one text block (a paragraph, heading, caption or table row) with its
box in page pixels, its text, and its reading-order index. Both granularities are kept; the sample
maker picks between them.

PDF pages come from `pypdfium2` (the `data` extra): the page is rendered at a DPI, and the text layer
gives one box per character, grouped here into lines (`group_lines`) and lines into blocks
(`group_blocks`) by geometry alone, in the PDF's own character order (no layout parser).
Synthetic pages (`synthetic.py`) are drawn with Pillow from generated text and use the same types.

Pages that cannot be used raise `Skip` with one reason of `SKIP_REASONS`; the engine counts them.
"""

from __future__ import annotations

import math
import os
import unicodedata
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
from PIL import Image, ImageFont

SKIP_REASONS = (
    "encrypted",  # the PDF needs a password
    "corrupt",  # the file is not a readable PDF, or a page fails to load or render
    "too_large",  # the file is over the size limit (`PdfOptions.max_file_mb`)
    "page_limit",  # the page is past `PdfOptions.max_pages` of its document (the engine does not open it)
    "page_too_large",  # the rendered page would be over `PdfOptions.max_page_pixels`
    "rotated",  # the page has a /Rotate entry (boxes and image would disagree)
    "no_text",  # no text layer on the page (scanned or image-only)
    "few_regions",  # fewer usable regions than the sample maker needs
    "error",  # anything unexpected (the message says what)
)

LIGATURES = {"\ufb00": "ff", "\ufb01": "fi", "\ufb02": "fl", "\ufb03": "ffi", "\ufb04": "ffl", "\ufb05": "st", "\ufb06": "st"}
SOFT_HYPHENS = ("\x02", "\xad")  # pdfium reports a hyphenation break as U+0002; U+00AD is the Unicode soft hyphen

Box = tuple[int, int, int, int]  # x1, y1, x2, y2 in page pixels; x2 and y2 exclusive


class Skip(Exception):
    """A page or document the engine cannot use; `reason` is one of SKIP_REASONS."""

    def __init__(self, reason: str, message: str):
        assert reason in SKIP_REASONS, f"unknown skip reason {reason!r}"
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Region:
    box: Box  # in page pixels
    text: str  # whitespace normalised; a block's hyphenated line ends are joined
    kind: str  # "line" or "block"
    order: int  # reading-order index among the page's regions of this kind
    block: int  # order of the block holding it (a block: its own order)
    n_lines: int  # text lines inside (1 for a line); the occlusion operator uses the line height

    @property
    def line_height(self) -> float:
        return (self.box[3] - self.box[1]) / self.n_lines


@dataclass
class Page:
    image: Image.Image  # RGB
    regions: list[Region]
    source: str  # the PDF path, or "synthetic"
    index: int  # page number in the source (0-based)
    dpi: float

    def of_kind(self, kind: str) -> list[Region]:
        return [r for r in self.regions if r.kind == kind]


# ---- text -----------------------------------------------------------------------------------------------
def normalise_text(text: str) -> str:
    """NFC, ligatures spelled out, control characters dropped, whitespace runs -> one space, stripped.

    Math and other Unicode are kept as they are. Example: "E\\ufb03cient   \\tcode\\x07" -> "Efficient code".
    """
    text = unicodedata.normalize("NFC", "".join(LIGATURES.get(c, c) for c in text))
    text = "".join(c if c.isprintable() or c.isspace() else "" for c in text)
    return " ".join(text.split())


def join_lines(lines: Sequence[str]) -> str:
    """Line texts of a block -> the block's text, de-hyphenated.

    A line ending in a soft hyphen (a hyphenation break) joins the next line with no hyphen and no
    space; a line ending in a hard "-" joins with no space, keeping it; others join with one space.
    Example: ["An exam\\x02", "ple of well-", "known text"] -> "An example of well-known text".
    """
    out = ""
    for line in lines:
        line = line.strip()
        if not line:
            continue
        if out.endswith(SOFT_HYPHENS):
            out = out[:-1] + line
        elif out.endswith("-") or not out:
            out += line
        else:
            out += " " + line
    return normalise_text(out.rstrip("".join(SOFT_HYPHENS)))


def visible_line_text(text: str) -> str:
    """A line's text as printed: a soft hyphen at its end is the printed "-". Example: "exam\\x02" -> "exam-"."""
    return normalise_text(text[:-1] + "-" if text.endswith(SOFT_HYPHENS) else text)


# ---- characters -> lines -> blocks ------------------------------------------------------------------------
@dataclass(frozen=True)
class Char:
    text: str  # one character; "\r"/"\n" are line breaks the PDF library inserted
    box: tuple[float, float, float, float] | None  # x1, y1, x2, y2 in pixels (top-left origin); None: no ink
    size: float  # font size in pixels: the scale of every threshold below


@dataclass
class Line:
    """Characters of one text line; its geometry is read once the line is complete (cached)."""

    chars: list[Char] = field(default_factory=list)

    @cached_property
    def inked(self) -> list[Char]:
        return [c for c in self.chars if c.box is not None and not c.text.isspace()]

    @cached_property
    def box(self) -> tuple[float, float, float, float]:
        return _union([c.box for c in self.inked])

    @cached_property
    def size(self) -> float:
        return float(np.median([c.size for c in self.inked]))

    @property
    def text(self) -> str:
        return "".join(c.text for c in self.chars)


def group_lines(chars: Sequence[Char]) -> list[Line]:
    """Characters in the PDF's order -> lines of text (lines without ink are dropped).

    A line ends at an inserted line break, or where the next inked character is not on the same
    baseline (vertical centres more than half a font size apart), jumps back left by more than a
    font size, or leaves a horizontal gap over 2.5 font sizes (a column or table-cell gap). A gap
    over a third of a font size with no space in between gets a space.
    Example (size 10): "A"@x0-8 "B"@x9-17 "C"@x60-68 on one baseline -> lines "AB" and "C".
    """
    lines, current, last = [], Line(), None
    for ch in chars:
        if ch.text in ("\r", "\n"):
            lines.append(current)
            current, last = Line(), None
            continue
        if ch.box is None or ch.text.isspace():
            current.chars.append(Char(" " if ch.text.isspace() else ch.text, None, ch.size))
            continue
        if last is not None:
            s = max(last.size, ch.size)
            dy = abs((last.box[1] + last.box[3]) - (ch.box[1] + ch.box[3])) / 2
            gap = ch.box[0] - last.box[2]
            if dy > 0.5 * s or gap < -s or gap > 2.5 * s:
                lines.append(current)
                current = Line()
            elif gap > s / 3 and current.chars and current.chars[-1].text != " ":
                current.chars.append(Char(" ", None, ch.size))
        current.chars.append(ch)
        last = ch
    lines.append(current)
    return [line for line in lines if line.inked]


def group_blocks(lines: Sequence[Line]) -> list[list[Line]]:
    """Lines in order -> blocks: a line joins the block above it when it starts at most one line
    height below the block's last line, overlaps the block horizontally and has about the same font
    size (less than 15% apart: a LaTeX subsection heading is 20% larger than its text); otherwise it
    starts a new block (a heading, a new paragraph, another column).
    Example: body lines at y=100, 112, 124 (size 10), then y=150 -> blocks [100, 112, 124], [150].
    """
    blocks: list[list[Line]] = []
    bx1 = bx2 = 0.0  # horizontal extent of the current block
    for line in lines:
        x1, y1, x2, _ = line.box
        if blocks:
            prev = blocks[-1][-1]
            _, py1, _, py2 = prev.box
            height = max(py2 - py1, prev.size * 0.7)
            below = -0.3 * height <= y1 - py2 <= height
            overlaps = min(x2, bx2) - max(x1, bx1) > 0
            similar = max(line.size, prev.size) < 1.15 * min(line.size, prev.size)
            if below and overlaps and similar:
                blocks[-1].append(line)
                bx1, bx2 = min(bx1, x1), max(bx2, x2)
                continue
        blocks.append([line])
        bx1, bx2 = x1, x2
    return blocks


def regions_from_lines(lines: Sequence[Line], width: int, height: int) -> list[Region]:
    """Grouped lines -> line and block regions (boxes rounded outwards, clipped to the page)."""
    regions: list[Region] = []
    n_lines = 0
    for b, block in enumerate(group_blocks(lines)):
        texts = [line.text for line in block]
        box = _pixel_box(_union([line.box for line in block]), width, height)
        regions.append(Region(box, join_lines(texts), "block", b, b, len(block)))
        for line, text in zip(block, texts):
            regions.append(Region(_pixel_box(line.box, width, height), visible_line_text(text), "line", n_lines, b, 1))
            n_lines += 1
    return [r for r in regions if r.text and r.box[2] > r.box[0] and r.box[3] > r.box[1]]


def _union(boxes: Sequence[tuple[float, float, float, float]]) -> tuple[float, float, float, float]:
    a = np.array(boxes, dtype=float)
    return a[:, 0].min(), a[:, 1].min(), a[:, 2].max(), a[:, 3].max()


def _pixel_box(box: tuple[float, float, float, float], width: int, height: int) -> Box:
    x1, y1, x2, y2 = box
    return (max(0, math.floor(x1)), max(0, math.floor(y1)), min(width, math.ceil(x2)), min(height, math.ceil(y2)))


# ---- PDF pages ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PdfOptions:
    dpi: float = 150.0  # spec §3.2: 120-200 dpi; the slicer handles the resolution from there
    max_file_mb: float = 200.0  # larger files are skipped ("too_large")
    max_pages: int = 2000  # pages past this are skipped ("page_limit")
    max_page_pixels: int = 40_000_000  # e.g. an A0 poster at 150 dpi (35 MP) still fits; larger pages are skipped


def open_pdf(path: str | Path, options: PdfOptions = PdfOptions()):
    """A `pypdfium2.PdfDocument`, or Skip("too_large" | "encrypted" | "corrupt")."""
    import pypdfium2 as pdfium

    path = Path(path)
    size_mb = path.stat().st_size / 2**20
    if size_mb > options.max_file_mb:
        raise Skip("too_large", f"{path}: {size_mb:.1f} MB > max_file_mb {options.max_file_mb}")
    try:
        return pdfium.PdfDocument(str(path))
    except pdfium.PdfiumError as e:
        reason = "encrypted" if "password" in str(e).lower() or "security" in str(e).lower() else "corrupt"
        raise Skip(reason, f"{path}: {e}") from None


def pdf_page(doc, index: int, source: str, options: PdfOptions = PdfOptions()) -> Page:
    """Page `index` of an open PDF rendered at `options.dpi`, with its line and block regions."""
    import pypdfium2 as pdfium

    where = f"{source} page {index + 1}"
    try:
        page = doc[index]
        if page.get_rotation() % 360:
            raise Skip("rotated", f"{where}: /Rotate {page.get_rotation()}")
        scale = options.dpi / 72.0
        left, bottom, right, top = page.get_bbox()  # the crop box (media box when none): what render() draws
        width, height = round((right - left) * scale), round((top - bottom) * scale)
        if width * height > options.max_page_pixels:
            raise Skip("page_too_large", f"{where}: {width}x{height} px at {options.dpi} dpi > {options.max_page_pixels}")
        chars = list(_pdf_chars(page.get_textpage(), scale, left, top))
        if not any(c.box is not None for c in chars):
            raise Skip("no_text", f"{where}: no text layer")
        image = page.render(scale=scale, rev_byteorder=True).to_pil()  # [H, W] at dpi, already RGB
        image = image if image.mode == "RGB" else image.convert("RGB")
    except pdfium.PdfiumError as e:
        raise Skip("corrupt", f"{where}: {e}") from None
    regions = regions_from_lines(group_lines(chars), image.width, image.height)
    if not regions:
        raise Skip("no_text", f"{where}: the text layer holds no visible text")
    return Page(image, regions, source, index, options.dpi)


def _pdf_chars(textpage, scale: float, left: float, top: float) -> Iterator[Char]:
    """The text page's characters with boxes in pixels; rotated text (e.g. margin stamps) is left out.
    Calls pdfium directly: ~2,000 characters a page make the wrapper's per-call overhead count."""
    import ctypes

    import pypdfium2.raw as pdfium_c

    raw = textpage.raw
    unicode, generated, font_size = pdfium_c.FPDFText_GetUnicode, pdfium_c.FPDFText_IsGenerated, pdfium_c.FPDFText_GetFontSize
    angle, char_box = pdfium_c.FPDFText_GetCharAngle, pdfium_c.FPDFText_GetCharBox
    x1, x2, y1, y2 = (ctypes.c_double() for _ in range(4))
    refs = [ctypes.byref(v) for v in (x1, x2, y1, y2)]
    for i in range(pdfium_c.FPDFText_CountChars(raw)):
        code = unicode(raw, i)
        text = chr(code) if 0 < code < 0x110000 else ""
        size = font_size(raw, i) * scale
        if generated(raw, i) or not text or text.isspace():
            yield Char(text if text in ("\r", "\n") else " ", None, size)
            continue
        if abs(angle(raw, i)) > 0.01:
            continue
        char_box(raw, i, *refs)  # PDF points, origin bottom-left
        if x2.value <= x1.value or y2.value <= y1.value:
            yield Char(text, None, size)
            continue
        yield Char(text, ((x1.value - left) * scale, (top - y2.value) * scale, (x2.value - left) * scale,
                          (top - y1.value) * scale), size)


def count_pdf_pages(path: str | Path, options: PdfOptions = PdfOptions()) -> int:
    doc = open_pdf(path, options)
    try:
        return len(doc)
    finally:
        doc.close()


# ---- fonts ----------------------------------------------------------------------------------------------
FONT_DIRS = ("/usr/share/fonts", "/usr/local/share/fonts", "~/.fonts", "~/.local/share/fonts", "/Library/Fonts",
             "C:/Windows/Fonts")


@lru_cache(maxsize=1)
def find_fonts() -> tuple[str, ...]:
    """TrueType/OpenType files that draw Latin text, from the usual font folders (sorted, so a seed picks
    the same font on the same machine), else matplotlib's bundled DejaVu Sans; () when there is neither
    (then Pillow's built-in font is used). `scripts/install_fonts.sh` installs a few font families."""
    found: list[str] = []
    for root in FONT_DIRS:
        root = os.path.expanduser(root)
        for dirpath, _, names in os.walk(root):
            found += [os.path.join(dirpath, n) for n in names if n.lower().endswith((".ttf", ".otf"))]
    usable = tuple(sorted(p for p in set(found) if _draws_latin(p)))
    if usable:
        return usable
    try:
        import matplotlib

        bundled = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
        return (str(bundled),) if bundled.is_file() else ()
    except ImportError:
        return ()


def _draws_latin(path: str) -> bool:
    """Loads, and 'a', 'b' and 'o' have different ink (symbol fonts draw boxes or dingbats)."""
    try:
        font = ImageFont.truetype(path, 24)
        masks = [bytes(font.getmask(c)) for c in "abo"]
    except (OSError, ValueError):
        return False
    return all(masks) and len(set(masks)) == 3 and "symbol" not in Path(path).name.lower()


def load_font(path: str | None, size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.truetype(path, size) if path else ImageFont.load_default(size)
