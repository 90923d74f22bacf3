"""The document data engine: PDFs and/or synthetic pages -> a JSONL of training samples with images.

    run(EngineConfig(out="docs.jsonl", pdfs=("papers/",), synthetic=100, workers=4))

Work is split into pages. Workers render a page, find its regions, make `samples_per_page` samples
and write their images; the main process appends the records to the JSONL in page order, so the
output is byte-identical for a seed whatever the number of workers. Every page's seed is derived
from (seed, page key), never from the order pages are processed in.

Resumable: a page whose records (or skip) are already in `<out>` / `<out>.skips.jsonl` is not done
again, and the records of a page left half-written by an interrupted run are removed first (the
page is made again). More PDFs or synthetic pages can be added to an output later. The settings are
kept in `<out>.engine.json`; resuming with different ones is an error (use another --out).

Nothing a PDF can contain stops the run: encrypted, corrupt, image-only, rotated or huge documents
and pages are skipped and counted by reason (`sources.SKIP_REASONS`); `<out>.summary.json` holds the
totals, the targets per corruption level, and regions per page per document.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import sys
import traceback
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

from PIL import Image

from minicpmv.data.documents.samples import DocSample, SampleConfig, make_sample
from minicpmv.data.documents.sources import Page, PdfOptions, Skip, count_pdf_pages, open_pdf, pdf_page
from minicpmv.data.documents.synthetic import SyntheticConfig, synthetic_page
from minicpmv.errors import InputError

SYNTHETIC = "synthetic"


@dataclass(frozen=True)
class EngineConfig:
    out: str  # output JSONL; images go to <out stem>_images/ next to it
    pdfs: tuple[str, ...] = ()  # PDF files and folders (searched recursively for *.pdf)
    synthetic: int = 0  # synthetic pages to add
    seed: int = 0
    workers: int = 1  # processes (1 = in this process)
    samples_per_page: int = 1  # samples made from each page (different targets and levels)
    image_format: str = "png"  # png (lossless: the model sees exactly the corruption) or jpg
    png_compress_level: int = 1  # zlib level 0-9; 1 is ~5x faster than 6 for ~15% more bytes
    pdf: PdfOptions = field(default_factory=PdfOptions)
    sample: SampleConfig = field(default_factory=SampleConfig)
    synthetic_config: SyntheticConfig = field(default_factory=SyntheticConfig)
    progress: bool = True  # a progress bar on stderr

    def __post_init__(self):
        if self.image_format not in ("png", "jpg"):
            raise InputError(f"image_format {self.image_format!r}: use 'png' or 'jpg'")
        if self.workers < 1 or self.samples_per_page < 1 or self.synthetic < 0:
            raise InputError(f"workers {self.workers} and samples_per_page {self.samples_per_page} must be >= 1, "
                             f"synthetic {self.synthetic} >= 0")

    def fingerprint(self) -> dict[str, Any]:
        """The settings that decide each page's samples: not the inputs (more PDFs or synthetic pages may
        be added to an output later), where it goes, how many workers, or the progress bar."""
        d = asdict(self)
        for k in ("out", "pdfs", "synthetic", "workers", "progress"):
            d.pop(k)
        return json.loads(json.dumps(d))


@dataclass(frozen=True)
class Unit:
    """One page to process: a PDF page, or synthetic page number `page`."""

    source: str  # resolved PDF path, or "synthetic"
    page: int

    @property
    def key(self) -> str:
        return f"{self.source}#{self.page}"

    def seed(self, seed: int) -> list[int]:
        return [seed, int.from_bytes(hashlib.sha256(self.key.encode()).digest()[:8], "little")]

    def sample_id(self, copy: int) -> str:
        if self.source == SYNTHETIC:
            return f"synthetic-{self.page:06d}-{copy}"
        tag = hashlib.sha256(self.source.encode()).hexdigest()[:8]
        return f"{Path(self.source).stem[:40]}-{tag}-p{self.page + 1:04d}-{copy}"


@dataclass
class UnitResult:
    key: str
    records: list[dict[str, Any]] = field(default_factory=list)
    skip: tuple[str, str] | None = None  # (reason, message)


# ---- inputs ------------------------------------------------------------------------------------------
def find_pdfs(paths: Sequence[str]) -> list[Path]:
    """Files as given and *.pdf under folders (recursively), resolved, sorted, without duplicates."""
    found: set[Path] = set()
    for p in map(Path, paths):
        if p.is_dir():
            found.update(q.resolve() for q in p.rglob("*") if q.suffix.lower() == ".pdf" and q.is_file())
        elif p.is_file():
            found.add(p.resolve())
        else:
            raise InputError(f"--pdf {str(p)!r} is neither a file nor a folder")
    return sorted(found)


def plan(config: EngineConfig) -> tuple[list[Unit], list[UnitResult]]:
    """All pages to process, plus what is skipped without opening a page: whole documents (unopenable,
    too large; page -1) and pages past `max_pages`."""
    units: list[Unit] = []
    skipped: list[UnitResult] = []
    for path in find_pdfs(config.pdfs):
        try:
            n = count_pdf_pages(path, config.pdf)
        except Skip as e:
            skipped.append(UnitResult(Unit(str(path), -1).key, skip=(e.reason, str(e))))
            continue
        units += [Unit(str(path), i) for i in range(min(n, config.pdf.max_pages))]
        message = f"{path}: page past max_pages {config.pdf.max_pages} of {n}"
        skipped += [UnitResult(Unit(str(path), i).key, skip=("page_limit", message)) for i in range(config.pdf.max_pages, n)]
    units += [Unit(SYNTHETIC, i) for i in range(config.synthetic)]
    return units, skipped


# ---- one page (runs in a worker) -----------------------------------------------------------------------
_open_doc: dict[str, Any] = {}  # the worker's currently open PDF (pages of a document arrive together)


def _page(unit: Unit, config: EngineConfig):
    if unit.source == SYNTHETIC:
        return synthetic_page(unit.seed(config.seed), config.synthetic_config, index=unit.page)
    if unit.source not in _open_doc:
        _close_documents()
        _open_doc[unit.source] = open_pdf(unit.source, config.pdf)
    return pdf_page(_open_doc[unit.source], unit.page, unit.source, config.pdf)


def _close_documents() -> None:
    for doc in _open_doc.values():
        doc.close()
    _open_doc.clear()


def process_unit(unit: Unit, config: EngineConfig, image_dir: str) -> UnitResult:
    """Render the page, make its samples, write their images; a Skip or any error becomes a skip."""
    result = UnitResult(unit.key)
    try:
        page = _page(unit, config)
        counts = {"line": len(page.of_kind("line")), "block": len(page.of_kind("block"))}
        for copy in range(config.samples_per_page):
            sample = make_sample(page, [*unit.seed(config.seed), copy], config.sample)
            record = save_sample(sample, unit.sample_id(copy), page, image_dir, config.image_format,
                                 config.png_compress_level)
            record["document"].update(unit=unit.key, regions_on_page=counts)
            result.records.append(record)
    except Skip as e:
        result.records, result.skip = [], (e.reason, str(e))
    except Exception as e:  # noqa: BLE001 - a bad page must never stop the run; the message is kept
        detail = traceback.format_exception_only(type(e), e)[-1].strip()
        result.records, result.skip = [], ("error", f"{unit.key}: {detail}")
    return result


def save_sample(sample: DocSample, sample_id: str, page: Page, image_dir: str | Path, image_format: str = "png",
                png_compress_level: int = 1) -> dict[str, Any]:
    """Write the sample's image to `image_dir`/<id>.<format>; its record, with the image path relative
    to the folder holding `image_dir` (where the JSONL goes)."""
    name = f"{sample_id}.{image_format}"
    image = Image.fromarray(sample.image)
    if image_format == "png":
        image.save(Path(image_dir) / name, format="PNG", compress_level=png_compress_level)
    else:
        image.save(Path(image_dir) / name, format="JPEG", quality=95)
    return sample.record(sample_id, f"{Path(image_dir).name}/{name}", page)


def _work(job: tuple[Unit, EngineConfig, str]) -> UnitResult:
    return process_unit(*job)


# ---- the run ---------------------------------------------------------------------------------------------
def output_paths(out: str | Path) -> dict[str, Path]:
    out = Path(out)
    return {"jsonl": out, "images": out.parent / f"{out.stem}_images", "skips": out.with_suffix(".skips.jsonl"),
            "settings": out.with_suffix(".engine.json"), "summary": out.with_suffix(".summary.json")}


def run(config: EngineConfig) -> "Summary":
    """Process every page not done yet; returns (and writes) the summary of the whole output."""
    from tqdm import tqdm

    paths = output_paths(config.out)
    _check_settings(paths, config)
    paths["images"].mkdir(parents=True, exist_ok=True)
    done = {r["document"]["unit"] for r in _read_jsonl(paths["jsonl"])} | {s["unit"] for s in _read_jsonl(paths["skips"])}
    units, planned_skips = plan(config)
    todo = [u for u in units if u.key not in done]
    jobs = ((u, config, str(paths["images"])) for u in todo)
    with open(paths["jsonl"], "a") as out, open(paths["skips"], "a") as skips:
        for r in planned_skips:
            if r.key not in done:
                skips.write(json.dumps({"unit": r.key, "reason": r.skip[0], "message": r.skip[1]}) + "\n")
        bar = tqdm(total=len(todo), desc="pages", unit="page", file=sys.stderr, disable=not config.progress or None)
        for result in _results(jobs, config.workers):
            if result.skip:
                skips.write(json.dumps({"unit": result.key, "reason": result.skip[0], "message": result.skip[1]}) + "\n")
            out.writelines(json.dumps(rec, ensure_ascii=False) + "\n" for rec in result.records)
            out.flush()
            skips.flush()
            bar.update(1)
        bar.close()
    summary = summarize(paths["jsonl"], paths["skips"], resumed=len(units) - len(todo))
    paths["summary"].write_text(json.dumps(asdict(summary), indent=1) + "\n")
    return summary


def _results(jobs: Iterator[tuple[Unit, EngineConfig, str]], workers: int) -> Iterator[UnitResult]:
    """Results in job order; `workers` > 1 runs them in worker processes (forked where the OS can, so
    they need no importable __main__). Each worker opens its own PDFs: pdfium is not thread-safe."""
    if workers == 1:
        try:
            yield from map(_work, jobs)
        finally:
            _close_documents()
        return
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    with multiprocessing.get_context(method).Pool(workers) as pool:
        yield from pool.imap(_work, jobs, chunksize=1)


def _check_settings(paths: dict[str, Path], config: EngineConfig) -> None:
    """Write the settings on the first run; on a resume they must be the same (and cut a torn last line)."""
    settings = json.dumps(config.fingerprint(), indent=1, sort_keys=True) + "\n"
    if paths["settings"].is_file():
        if paths["settings"].read_text() != settings:
            raise InputError(f"{paths['jsonl']} was made with other settings ({paths['settings']}); resume with the "
                             "same settings, or write to another --out")
        for key in ("jsonl", "skips"):
            _cut_torn_line(paths[key])
        _drop_incomplete_pages(paths["jsonl"], config.samples_per_page)
    else:
        paths["jsonl"].parent.mkdir(parents=True, exist_ok=True)
        for key in ("jsonl", "skips"):
            if paths[key].exists() and paths[key].stat().st_size:
                raise InputError(f"{paths[key]} exists but has no {paths['settings'].name}: not an engine output; "
                                 "choose another --out")
        paths["settings"].write_text(settings)


def _cut_torn_line(path: Path) -> None:
    if path.is_file():
        data = path.read_bytes()
        if data and not data.endswith(b"\n"):
            path.write_bytes(data[: data.rfind(b"\n") + 1])


def _drop_incomplete_pages(path: Path, samples_per_page: int) -> None:
    """Remove the records of a page that has fewer than `samples_per_page` of them (a run stopped
    while writing it), so the page is made again from scratch."""
    if not path.is_file():
        return
    lines = path.read_text().splitlines(keepends=True)
    units = [json.loads(line)["document"]["unit"] for line in lines]
    counts = Counter(units)
    kept = [line for line, unit in zip(lines, units) if counts[unit] == samples_per_page]
    if len(kept) != len(lines):
        path.write_text("".join(kept))


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# ---- summary -------------------------------------------------------------------------------------------
@dataclass
class Summary:
    pages_done: int  # pages with samples
    pages_skipped: int
    documents_skipped: int  # whole PDFs that could not be opened or were too large
    resumed: int  # pages already done by an earlier run
    samples: int
    tasks: dict[str, int]  # "regions" / "page" samples
    levels: dict[str, int]  # targets per corruption level
    skips: dict[str, int]  # pages (and documents) by reason
    skip_examples: dict[str, str]
    per_source: dict[str, dict[str, float]]  # source -> pages, mean lines and blocks per page, skipped pages

    def report(self) -> str:
        lines = [f"pages: {self.pages_done} with samples, {self.pages_skipped} skipped"
                 f"{f', {self.resumed} done earlier' if self.resumed else ''}; documents skipped: {self.documents_skipped}",
                 f"samples: {self.samples} ({', '.join(f'{k} {v}' for k, v in sorted(self.tasks.items()))}); "
                 f"targets by level: {', '.join(f'{k} {v}' for k, v in self.levels.items())}"]
        if self.skips:
            lines.append("skipped by reason:")
            lines += [f"  {r}: {n}  (e.g. {self.skip_examples[r][:160]})" for r, n in sorted(self.skips.items(), key=lambda x: -x[1])]
        lines.append("regions per page (mean lines / blocks):")
        for source, s in sorted(self.per_source.items()):
            skipped = f", {s['skipped']:.0f} pages skipped" if s["skipped"] else ""
            lines.append(f"  {_short(source)}: {s['pages']:.0f} pages, {s['lines_per_page']:.1f} lines / "
                         f"{s['blocks_per_page']:.1f} blocks{skipped}")
        return "\n".join(lines)


def _short(source: str) -> str:
    return source if source == SYNTHETIC else Path(source).name


def summarize(jsonl: Path, skips_path: Path, resumed: int = 0) -> Summary:
    records, skips = _read_jsonl(jsonl), _read_jsonl(skips_path)
    tasks, levels, reasons = Counter(), Counter({level: 0 for level in ("low", "moderate", "high")}), Counter()
    examples: dict[str, str] = {}
    pages: dict[str, dict[str, Any]] = {}
    for rec in records:
        doc = rec["document"]
        tasks[doc["task"]] += 1
        levels.update(t["level"] for t in doc["targets"])
        pages[doc["unit"]] = {"source": doc["source"], **doc["regions_on_page"]}
    per_source: dict[str, dict[str, float]] = {}
    for page in pages.values():
        s = per_source.setdefault(page["source"], {"pages": 0, "lines_per_page": 0.0, "blocks_per_page": 0.0, "skipped": 0})
        s["pages"] += 1
        s["lines_per_page"] += page["line"]
        s["blocks_per_page"] += page["block"]
    for s in per_source.values():
        s["lines_per_page"] /= s["pages"]
        s["blocks_per_page"] /= s["pages"]
    for skip in skips:
        reasons[skip["reason"]] += 1
        examples.setdefault(skip["reason"], skip["message"])
        source, _, page = skip["unit"].rpartition("#")
        if page != "-1":
            per_source.setdefault(source, {"pages": 0, "lines_per_page": 0.0, "blocks_per_page": 0.0, "skipped": 0})["skipped"] += 1
    doc_skips = sum(1 for s in skips if s["unit"].endswith("#-1"))
    return Summary(len(pages), len(skips) - doc_skips, doc_skips, resumed, len(records), dict(tasks), dict(levels),
                   dict(reasons), examples, per_source)
