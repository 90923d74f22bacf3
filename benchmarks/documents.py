"""Document engine throughput: pages per second per worker for rendering + corruption at 150 dpi.

    .venv/bin/python benchmarks/documents.py                       # a generated 12-page A4 PDF
    .venv/bin/python benchmarks/documents.py --pdf /tmp/debian-pdfs --pages 40

Each stage of a worker's per-page work is timed on the same pages in the same run (best of
--repeats passes), cumulatively: render only -> + text layer and regions -> + sample (corruption of
the chosen regions) -> + PNG write; the same for synthetic pages. Then the whole engine (job
dispatch, ordered JSONL writing) with 1 and 2 worker processes. Ratios are to the full PDF page.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from minicpmv.data.documents.engine import EngineConfig, find_pdfs, run
from minicpmv.data.documents.samples import make_sample
from minicpmv.data.documents.sources import PdfOptions, Skip, open_pdf, pdf_page
from minicpmv.data.documents.synthetic import WORDS, synthetic_page

DPI = 150.0


def write_pdf(path: Path, pages: int) -> Path:
    """An A4 PDF of dense 10 pt text (about 45 lines of 95 characters a page) with headings."""
    from fpdf import FPDF

    rng = np.random.default_rng(0)
    pdf = FPDF(format="A4")
    pdf.set_margins(20, 20)
    for p in range(pages):
        pdf.add_page()
        for s in range(4):
            pdf.set_font("helvetica", "B", 13)
            pdf.cell(text=f"{p + 1}.{s + 1} " + " ".join(rng.choice(WORDS, 3)).title(), new_x="LMARGIN", new_y="NEXT")
            pdf.set_font("helvetica", "", 10)
            pdf.multi_cell(0, 5, " ".join(rng.choice(WORDS, 160)) + ".", new_x="LMARGIN", new_y="NEXT")
    pdf.output(str(path))
    return path


def best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def pdf_stages(paths: list[Path], n_pages: int, repeats: int, tmp: Path) -> dict[str, float]:
    """Seconds for `n_pages` pages at each cumulative stage."""
    docs = [open_pdf(p) for p in paths]
    pages = [(d, i, str(p)) for d, p in zip(docs, paths) for i in range(len(d))][:n_pages]
    options = PdfOptions(dpi=DPI)

    def render():
        for d, i, _ in pages:
            d[i].render(scale=DPI / 72, rev_byteorder=True).to_pil()

    def stage(sample: bool, write: bool):
        def go():
            for k, (d, i, src) in enumerate(pages):
                try:
                    page = pdf_page(d, i, src, options)
                except Skip:
                    continue
                if sample:
                    s = make_sample(page, k)
                    if write:
                        Image.fromarray(s.image).save(tmp / "x.png", compress_level=1)
        return go

    out = {"render": best(render, repeats), "regions": best(stage(False, False), repeats),
           "sample": best(stage(True, False), repeats), "png": best(stage(True, True), repeats)}
    for d in docs:
        d.close()
    return out


def synthetic_stages(n_pages: int, repeats: int, tmp: Path) -> dict[str, float]:
    def stage(sample: bool, write: bool):
        def go():
            for k in range(n_pages):
                page = synthetic_page(k)
                if sample:
                    s = make_sample(page, k)
                    if write:
                        Image.fromarray(s.image).save(tmp / "x.png", compress_level=1)
        return go

    return {"regions": best(stage(False, False), repeats), "sample": best(stage(True, False), repeats),
            "png": best(stage(True, True), repeats)}


def engine_rate(pdfs: list[Path], max_pages: int, workers: int, tmp: Path) -> tuple[float, int]:
    out = tmp / f"engine{workers}" / "out.jsonl"
    shutil.rmtree(out.parent, ignore_errors=True)
    t = time.perf_counter()
    summary = run(EngineConfig(out=str(out), pdfs=tuple(map(str, pdfs)), workers=workers, progress=False,
                               pdf=PdfOptions(dpi=DPI, max_pages=max_pages)))
    return time.perf_counter() - t, summary.pages_done + summary.pages_skipped


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pdf", nargs="*", default=[], help="PDF files/folders (default: a generated 12-page PDF)")
    parser.add_argument("--pages", type=int, default=12, help="pages timed per stage")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="doc_bench_"))
    try:
        pdfs = find_pdfs(args.pdf) if args.pdf else [write_pdf(tmp / "bench.pdf", args.pages)]
        pdf = pdf_stages(pdfs, args.pages, args.repeats, tmp)
        syn = synthetic_stages(max(2, args.pages // 3), args.repeats, tmp)
        n_syn = max(2, args.pages // 3)
        per_pdf = max(1, -(-args.pages // len(pdfs)))
        e1, n1 = engine_rate(pdfs, per_pdf, 1, tmp)
        e2, n2 = engine_rate(pdfs, per_pdf, 2, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    full = pdf["png"] / args.pages
    rows = [("PDF: render at 150 dpi", pdf["render"] / args.pages),
            ("PDF: + text layer -> lines/blocks", pdf["regions"] / args.pages),
            ("PDF: + sample (choose + corrupt regions)", pdf["sample"] / args.pages),
            ("PDF: + PNG write (a worker's whole page)", full),
            ("synthetic: draw page + regions", syn["regions"] / n_syn),
            ("synthetic: + sample", syn["sample"] / n_syn),
            ("synthetic: + PNG write", syn["png"] / n_syn)]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"{args.pages} pages from {', '.join(p.name for p in pdfs)}; {os.cpu_count()} CPUs, load average {load:.1f}\n")
    print("| stage (cumulative, one process) | ms / page | pages / s per worker | time vs full PDF page |")
    print("|---|---|---|---|")
    for name, sec in rows:
        print(f"| {name} | {sec * 1e3:.0f} | {1 / sec:.1f} | {sec / full:.2f} |")
    print("\n| engine (end to end, PNG) | pages | seconds | pages / s | pages / s per worker |")
    print("|---|---|---|---|---|")
    for workers, (sec, n) in ((1, (e1, n1)), (2, (e2, n2))):
        print(f"| {workers} worker{'s' * (workers > 1)} | {n} | {sec:.1f} | {n / sec:.2f} | {n / sec / workers:.2f} |")


if __name__ == "__main__":
    sys.exit(main())
