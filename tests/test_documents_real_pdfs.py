"""Real PDFs from Debian documentation packages through the document engine (not committed: fetched
into /tmp). Runs when PDFs are present, skips saying how to get them otherwise:

    mkdir -p /tmp/debian-pdfs/debs && cd /tmp/debian-pdfs/debs
    apt-get download camlidl-doc auto-multiple-choice-doc-pdf c++-annotations-pdf docbook-xsl-doc-pdf
    for f in *.deb; do dpkg-deb -x "$f" ../root; done

Also a script: `.venv/bin/python tests/test_documents_real_pdfs.py [DIR] [PAGES_PER_PDF]` prints the summary
(regions found per page, per document). MINICPMV_DOC_PDFS overrides the folder.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import pytest

PDF_DIR = Path(os.environ.get("MINICPMV_DOC_PDFS", "/tmp/debian-pdfs"))
PAGES_PER_PDF = 3


def process(pdf_dir: Path, out_dir: Path, pages_per_pdf: int = PAGES_PER_PDF, workers: int = 2):
    from minicpmv.data.documents.engine import EngineConfig, run
    from minicpmv.data.documents.sources import PdfOptions

    return run(EngineConfig(out=str(out_dir / "real.jsonl"), pdfs=(str(pdf_dir),), workers=workers, progress=False,
                            pdf=PdfOptions(dpi=150, max_pages=pages_per_pdf)))


@pytest.mark.slow
def test_debian_documentation_pdfs(tmp_path):
    pytest.importorskip("pypdfium2", reason="pypdfium2 reads PDFs: pip install pypdfium2 (the `data` extra)")
    pdfs = sorted(PDF_DIR.rglob("*.pdf")) if PDF_DIR.is_dir() else []
    if not pdfs:
        pytest.skip(f"no PDFs under {PDF_DIR}: fetch some as this file's docstring shows (apt-get download "
                    "camlidl-doc ... and dpkg-deb -x), or set MINICPMV_DOC_PDFS")
    summary = process(PDF_DIR, tmp_path)
    print("\n" + summary.report())
    assert summary.pages_done > 0 and summary.samples == summary.pages_done
    assert set(summary.skips) <= {"page_limit", "no_text", "few_regions", "rotated", "encrypted", "corrupt",
                                  "too_large", "page_too_large"}, summary.skip_examples  # never "error"
    for source, stats in summary.per_source.items():
        assert stats["pages"] == 0 or stats["lines_per_page"] >= 1, (source, stats)


if __name__ == "__main__":
    folder = Path(sys.argv[1]) if len(sys.argv) > 1 else PDF_DIR
    pages = int(sys.argv[2]) if len(sys.argv) > 2 else PAGES_PER_PDF
    with tempfile.TemporaryDirectory() as tmp:
        print(process(folder, Path(tmp), pages).report())
