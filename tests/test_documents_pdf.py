"""Document sources: text normalisation and the geometric line/block grouping on hand-made characters,
then PDFs this file writes itself (fpdf2) read back through pypdfium2: every region's text and box
round-trips, hyphenation is joined, columns stay apart, and encrypted / corrupt / image-only /
rotated / too-large files are skipped with their reason. Synthetic pages: regions hold the ink."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from minicpmv.data.documents.sources import (
    Char, PdfOptions, Skip, group_blocks, group_lines, join_lines, normalise_text, open_pdf, pdf_page,
    visible_line_text,
)
from minicpmv.data.documents.synthetic import SyntheticConfig, synthetic_page, wrap

fpdf = pytest.importorskip("fpdf", reason="fpdf2 writes the test PDFs: pip install fpdf2 (the `data` extra)")
pytest.importorskip("pypdfium2", reason="pypdfium2 reads PDFs: pip install pypdfium2 (the `data` extra)")

DPI = 144  # 2 px per point: PDF positions below map to pixels by doubling
HEADING = "Results of the Survey"
PARAGRAPH = ["The quick brown fox jumps over the", "lazy dog while an extraordinary hy-", "phenation candidate waits here."]
LEFT, RIGHT = "well-known words", "second column"
SMALL = SyntheticConfig(width=600, height=800, margin=40, body_px=(14, 18))


# ---- text and grouping ---------------------------------------------------------------------------------
def test_normalise_join_and_visible_text_examples():
    assert normalise_text("E\ufb03cient   \tcode\x07 ") == "Efficient code"
    assert normalise_text("cafe\u0301") == "caf\u00e9"  # NFC
    assert join_lines(["An exam\x02", "ple of well-", "known text"]) == "An example of well-known text"
    assert join_lines(["soft hy\xad", "phen", "end\x02"]) == "soft hyphen end"
    assert visible_line_text("exam\x02") == "exam-" and visible_line_text("  a  b ") == "a b"


def _chars(text: str, x: float, y: float, size: float = 10.0, width: float = 6.0) -> list[Char]:
    """One character box per letter, `width` apart, on the baseline row y..y+size (spaces have no box)."""
    return [Char(c, None if c == " " else (x + i * width, y, x + i * width + width - 1, y + size), size)
            for i, c in enumerate(text)]


def test_group_lines_breaks_on_baseline_gap_and_inserted_breaks():
    chars = (_chars("two words", 0, 0) + _chars("far", 200, 0)  # same baseline, 3 font sizes apart: a column gap
             + [Char("\r", None, 10), Char("\n", None, 10)] + _chars("next", 0, 14)
             + _chars("lower", 0, 40))  # no inserted break, but a new baseline
    lines = group_lines(chars)
    assert [line.text for line in lines] == ["two words", "far", "next", "lower"]
    assert lines[0].box == (0, 0, 53, 10)


def test_group_lines_inserts_space_at_a_gap():
    chars = _chars("ab", 0, 0) + _chars("cd", 20, 0)  # 9 px gap > size / 3, no space character
    assert [line.text for line in group_lines(chars)] == ["ab cd"]


def test_group_blocks_by_gap_overlap_and_size():
    lines = group_lines(_chars("Heading", 0, 0, size=14) + [Char("\n", None, 14)]
                        + _chars("body one", 0, 24) + [Char("\n", None, 10)] + _chars("body two", 0, 36)
                        + [Char("\n", None, 10)] + _chars("new paragraph", 0, 70)
                        + [Char("\n", None, 10)] + _chars("other column", 300, 82))
    blocks = [[line.text for line in block] for block in group_blocks(lines)]
    assert blocks == [["Heading"], ["body one", "body two"], ["new paragraph"], ["other column"]]


# ---- PDFs written here -------------------------------------------------------------------------------------
def write_text_pdf(path: Path, pages: int = 1) -> Path:
    """A 400 x 300 pt PDF: a bold heading, a 3-line paragraph with a hyphenated line end, and two
    phrases side by side on one baseline (two columns). Positions are the text's top-left in points."""
    pdf = fpdf.FPDF(unit="pt", format=(400, 300))
    pdf.c_margin = 0  # cells start exactly at x
    for _ in range(pages):
        pdf.add_page()
        pdf.set_font("helvetica", "B", 16)
        pdf.set_xy(40, 30)
        pdf.cell(text=HEADING)
        pdf.set_font("helvetica", "", 11)
        for i, line in enumerate(PARAGRAPH):
            pdf.set_xy(40, 70 + 14 * i)
            pdf.cell(text=line)
        pdf.set_xy(40, 200)
        pdf.cell(text=LEFT)
        pdf.set_xy(250, 200)
        pdf.cell(text=RIGHT)
    pdf.output(str(path))
    return path


def write_image_only_pdf(path: Path) -> Path:
    pdf = fpdf.FPDF(unit="pt", format=(200, 200))
    pdf.add_page()
    pdf.image(Image.fromarray(np.full((50, 80, 3), 90, np.uint8)), x=20, y=20, w=80)
    pdf.output(str(path))
    return path


def write_encrypted_pdf(path: Path) -> Path:
    pdf = fpdf.FPDF()
    pdf.set_encryption(owner_password="owner", user_password="user")
    pdf.add_page()
    pdf.set_font("helvetica", size=12)
    pdf.cell(text="secret text")
    pdf.output(str(path))
    return path


def write_corrupt_pdf(path: Path, good: Path) -> Path:
    """The first 300 bytes of a real PDF: a header, then nothing usable."""
    path.write_bytes(good.read_bytes()[:300])
    return path


def test_pdf_regions_round_trip(tmp_path):
    doc = open_pdf(write_text_pdf(tmp_path / "t.pdf"))
    try:
        page = pdf_page(doc, 0, "t.pdf", PdfOptions(dpi=DPI))
    finally:
        doc.close()
    assert page.image.size == (800, 600) and page.image.mode == "RGB"
    blocks = [r.text for r in page.of_kind("block")]
    assert blocks == [HEADING, " ".join(PARAGRAPH).replace("hy- ", "hy"), LEFT, RIGHT]
    lines = page.of_kind("line")
    assert [r.text for r in lines] == [HEADING, *PARAGRAPH, LEFT, RIGHT]
    assert [r.order for r in lines] == list(range(6)) and [r.block for r in lines] == [0, 1, 1, 1, 2, 3]
    # boxes: where fpdf2 put the text (top-left in points x 2), one text line high
    for region, (x, y) in zip(lines, [(40, 30), (40, 70), (40, 84), (40, 98), (40, 200), (250, 200)]):
        x1, y1, x2, y2 = region.box
        assert abs(x1 - 2 * x) <= 6 and 2 * y <= y1 <= 2 * y + 16 and 14 <= y2 - y1 <= 40, (region, x, y)
    # ink: every line box holds dark pixels; outside all boxes (grown by 2 px) the page is white
    pixels = np.asarray(page.image.convert("L"))
    outside = np.ones_like(pixels, dtype=bool)
    for region in lines:
        x1, y1, x2, y2 = region.box
        assert pixels[y1:y2, x1:x2].min() < 100, region
        outside[max(0, y1 - 2) : y2 + 2, max(0, x1 - 2) : x2 + 2] = False
    assert pixels[outside].min() > 200


@pytest.mark.parametrize("kind, reason", [("encrypted", "encrypted"), ("corrupt", "corrupt"), ("big", "too_large")])
def test_unopenable_pdfs_are_skipped_with_their_reason(tmp_path, kind, reason):
    good = write_text_pdf(tmp_path / "good.pdf")
    path = {"encrypted": lambda: write_encrypted_pdf(tmp_path / "e.pdf"),
            "corrupt": lambda: write_corrupt_pdf(tmp_path / "c.pdf", good), "big": lambda: good}[kind]()
    with pytest.raises(Skip) as e:
        open_pdf(path, PdfOptions(max_file_mb=0.0001 if kind == "big" else 200))
    assert e.value.reason == reason and str(path) in str(e.value)


def test_image_only_rotated_and_huge_pages_are_skipped(tmp_path):
    import pypdfium2 as pdfium

    doc = open_pdf(write_image_only_pdf(tmp_path / "scan.pdf"))
    with pytest.raises(Skip, match="no text layer") as e:
        pdf_page(doc, 0, "scan.pdf")
    assert e.value.reason == "no_text"
    doc.close()
    rotated = pdfium.PdfDocument(str(write_text_pdf(tmp_path / "r.pdf")))
    rotated[0].set_rotation(90)
    rotated.save(str(tmp_path / "rotated.pdf"))
    rotated.close()
    doc = open_pdf(tmp_path / "rotated.pdf")
    with pytest.raises(Skip) as e:
        pdf_page(doc, 0, "rotated.pdf")
    assert e.value.reason == "rotated"
    doc.close()
    doc = open_pdf(write_text_pdf(tmp_path / "t.pdf"))
    with pytest.raises(Skip, match="800x600 px") as e:
        pdf_page(doc, 0, "t.pdf", PdfOptions(dpi=DPI, max_page_pixels=100_000))
    assert e.value.reason == "page_too_large"
    doc.close()


# ---- synthetic pages ----------------------------------------------------------------------------------------
def test_synthetic_page_regions_hold_the_ink_and_are_deterministic():
    page = synthetic_page(5, SMALL)
    again = synthetic_page(5, SMALL)
    assert page.image.tobytes() == again.image.tobytes() and page.regions == again.regions
    assert page.image.tobytes() != synthetic_page(6, SMALL).image.tobytes()
    lines, blocks = page.of_kind("line"), page.of_kind("block")
    assert len(lines) >= 10 and len(blocks) >= 3 and all(r.text for r in page.regions)
    assert [r.order for r in lines] == list(range(len(lines))) and [r.order for r in blocks] == list(range(len(blocks)))
    pixels = np.asarray(page.image.convert("L")).astype(int)
    paper = np.median(pixels)
    for r in lines:
        x1, y1, x2, y2 = r.box
        assert 0 <= x1 < x2 <= SMALL.width and 0 <= y1 < y2 <= SMALL.height
        assert pixels[y1:y2, x1:x2].min() < paper - 80, r  # ink inside every line box
    for b in blocks:  # a block contains its lines, and its text is their text joined
        inside = [r for r in lines if r.block == b.order]
        assert inside and b.n_lines == len(inside)
        assert all(b.box[0] <= r.box[0] and b.box[1] <= r.box[1] and r.box[2] <= b.box[2] and r.box[3] <= b.box[3] for r in inside)
        assert join_lines([r.text[:-1] + "\x02" if r.text.endswith("-") else r.text for r in inside]) == b.text or " | " in b.text


def test_wrap_hyphenates_and_keeps_words():
    rng = np.random.default_rng(0)
    lines = wrap("a simple example".split(), len, 14, rng, hyphenate_prob=1.0)
    assert lines == ["a simple exam\xad", "ple"]
    assert join_lines(lines) == "a simple example" and visible_line_text(lines[0]) == "a simple exam-"
    assert wrap("a simple example".split(), len, 14, rng, hyphenate_prob=0.0) == ["a simple", "example"]
    assert wrap(["abcdefghijklmnop"], len, 5, rng, 0.0) == ["abcde"]  # wider than a line: cut


def test_synthetic_config_validation():
    from minicpmv.errors import InputError

    with pytest.raises(InputError, match="sum <= 1"):
        SyntheticConfig(heading_prob=0.5, table_prob=0.4, figure_prob=0.3)
    with pytest.raises(InputError, match="body_px"):
        SyntheticConfig(body_px=(20, 10))
