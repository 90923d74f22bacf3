"""The document engine end to end on generated inputs: synthetic pages plus PDFs written by
test_documents_pdf (good, encrypted, corrupt, image-only). Skips are counted by reason and never stop
the run; output is byte-identical for a seed with 1 or 2 workers; a rerun resumes (nothing redone,
a torn last line is cut), other settings are refused; the CLI writes samples, summary and preview;
`eval documents` scores the tiny reference model."""

from __future__ import annotations

import argparse
import hashlib
import json
from dataclasses import replace
from pathlib import Path

import pytest

from minicpmv.data.documents.cli import register
from minicpmv.data.documents.engine import EngineConfig, output_paths, run
from minicpmv.data.documents.samples import SampleConfig
from minicpmv.data.documents.sources import PdfOptions
from minicpmv.data.documents.synthetic import SyntheticConfig
from minicpmv.errors import InputError
from test_documents_pdf import write_corrupt_pdf, write_encrypted_pdf, write_image_only_pdf, write_text_pdf

SMALL = SyntheticConfig(width=500, height=640, margin=30, body_px=(13, 16))


@pytest.fixture(scope="module")
def pdf_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("pdfs")
    good = write_text_pdf(d / "good.pdf", pages=2)
    write_encrypted_pdf(d / "locked.pdf")
    write_corrupt_pdf(d / "broken.pdf", good)
    (d / "sub").mkdir()
    write_image_only_pdf(d / "sub" / "scan.pdf")  # folders are searched recursively
    return d


def _config(out: Path, pdf_dir: Path, **changes) -> EngineConfig:
    base = EngineConfig(out=str(out), pdfs=(str(pdf_dir),), synthetic=3, seed=1, workers=1, samples_per_page=2,
                        pdf=PdfOptions(dpi=100), sample=SampleConfig(page_prob=0.2, min_chars=5),
                        synthetic_config=SMALL, progress=False)
    return replace(base, **changes)


def _digest(out: Path) -> str:
    """Hash of the JSONL and of every image it names (records name images relative to the JSONL)."""
    h = hashlib.sha256(out.read_bytes())
    for line in out.read_text().splitlines():
        h.update((out.parent / json.loads(line)["image"]).read_bytes())
    return h.hexdigest()


def test_engine_counts_skips_and_is_identical_across_workers(tmp_path, pdf_dir):
    one = run(_config(tmp_path / "a" / "out.jsonl", pdf_dir))
    assert one.pages_done == 2 + 3 and one.samples == 2 * 5
    assert one.skips == {"encrypted": 1, "corrupt": 1, "no_text": 1}
    assert one.documents_skipped == 2 and one.pages_skipped == 1
    assert sum(one.tasks.values()) == 10 and sum(one.levels.values()) > 0
    good = next(s for src, s in one.per_source.items() if src.endswith("good.pdf"))
    assert good["pages"] == 2 and good["lines_per_page"] == 6 and good["blocks_per_page"] == 4
    assert "locked.pdf" in one.skip_examples["encrypted"] and "scan.pdf" in one.skip_examples["no_text"]
    report = one.report()
    assert "encrypted: 1" in report and "good.pdf: 2 pages, 6.0 lines / 4.0 blocks" in report
    two = run(_config(tmp_path / "b" / "out.jsonl", pdf_dir, workers=2))
    assert _digest(tmp_path / "a" / "out.jsonl") == _digest(tmp_path / "b" / "out.jsonl") and two == one
    summary = json.loads(output_paths(tmp_path / "a" / "out.jsonl")["summary"].read_text())
    assert summary["samples"] == 10 and summary["skips"] == one.skips


def test_engine_resumes_and_refuses_other_settings(tmp_path, pdf_dir):
    out = tmp_path / "out.jsonl"
    first = run(_config(out, pdf_dir, synthetic=2))
    digest = _digest(out)
    again = run(_config(out, pdf_dir, synthetic=2))
    assert again.resumed == 5 and _digest(out) == digest and again.samples == first.samples  # 4 pages + 1 skipped
    # an interrupted run: the last page's second record was half written -> that page's records are
    # dropped and the page redone: the same output
    lines = out.read_text().splitlines(keepends=True)
    out.write_text("".join(lines[:-1]) + lines[-1][:25])
    assert run(_config(out, pdf_dir, synthetic=2)).samples == first.samples and _digest(out) == digest
    # more pages later: only the new ones are made
    more = run(_config(out, pdf_dir, synthetic=3))
    assert more.resumed == 5 and more.samples == first.samples + 2
    with pytest.raises(InputError, match="other settings"):
        run(_config(out, pdf_dir, synthetic=3, seed=2))


def test_engine_page_limit_and_foreign_output(tmp_path, pdf_dir):
    summary = run(_config(tmp_path / "o.jsonl", pdf_dir, synthetic=0, pdf=PdfOptions(dpi=100, max_pages=1)))
    assert summary.skips["page_limit"] == 1 and summary.pages_done == 1
    foreign = tmp_path / "x.jsonl"
    foreign.write_text('{"id": 1}\n')
    with pytest.raises(InputError, match="not an engine output"):
        run(_config(foreign, pdf_dir))
    with pytest.raises(InputError, match="neither a file nor a folder"):
        run(_config(tmp_path / "y.jsonl", tmp_path / "missing"))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="minicpmv")
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("data").add_subparsers(dest="data_command")  # another module registered `data` first
    register(sub)
    return parser


def test_cli_data_documents_writes_samples_summary_and_preview(tmp_path, capsys):
    corruption = tmp_path / "c.json"
    corruption.write_text(json.dumps({"high": {"ops": {"mask": [0, 0]}, "n_ops": [1, 1]}}))
    args = _parser().parse_args(["data", "documents", "--synthetic", "2", "--out", str(tmp_path / "d.jsonl"),
                                 "--levels", "0", "0", "1", "--page-prob", "0", "--corruption", str(corruption),
                                 "--preview", "2", "--no-progress", "--seed", "3"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "pages: 2 with samples" in out and "synthetic: 2 pages" in out
    records = [json.loads(line) for line in (tmp_path / "d.jsonl").read_text().splitlines()]
    assert len(records) == 2 and all(t["level"] == "high" and t["ops"] == [["mask", 0.0]]
                                     for r in records for t in r["document"]["targets"])
    assert (tmp_path / "d.preview.png").stat().st_size > 10_000
    with pytest.raises(InputError, match="nothing to do"):
        args = _parser().parse_args(["data", "documents", "--out", str(tmp_path / "e.jsonl")])
        args.func(args)


def test_cli_eval_documents_scores_the_tiny_model(tmp_path, capsys):
    from conftest import reference_path

    model = reference_path("tiny_model")
    run(EngineConfig(out=str(tmp_path / "h.jsonl"), synthetic=2, sample=SampleConfig(page_prob=0.0, k=(1, 2)),
                     synthetic_config=SMALL, progress=False))
    predictions = tmp_path / "p.jsonl"
    args = _parser().parse_args(["eval", "documents", "--model", str(model), "--data", str(tmp_path / "h.jsonl"),
                                 "--max-new-tokens", "3", "--max-slice-nums", "1", "--predictions", str(predictions)])
    assert args.func(args) == 0
    table = capsys.readouterr().out
    assert table.splitlines()[0] == "| level | items | exact match | CER |" and len(table.splitlines()) >= 3
    assert [json.loads(line)["id"] for line in predictions.read_text().splitlines()] == ["synthetic-000000-0",
                                                                                         "synthetic-000001-0"]


def _documents_run():
    """recipes/documents_run.py as a module (a script, not part of the package)."""
    import importlib.util
    import sys

    path = Path(__file__).resolve().parents[1] / "recipes" / "documents_run.py"
    spec = importlib.util.spec_from_file_location("documents_run", path)
    recipe = sys.modules["documents_run"] = importlib.util.module_from_spec(spec)  # dataclasses need the module
    spec.loader.exec_module(recipe)
    return recipe


def test_documents_run_level_checks_read_the_papers_ordering():
    """level_checks on hand-made probe rows: the ordering of the 2026-12-03 run passes all three checks;
    equal curves pass none; a level ahead only at step 0 (the untrained model) does not count; moderate
    above high (over-confident misreadings) fails high_stays_highest and moderate_between."""
    checks = _documents_run().level_checks

    def rows(*triples):
        return [{"step": 100 * i, "low": lo, "moderate": mo, "high": hi} for i, (lo, mo, hi) in enumerate(triples)]

    paper = checks(rows((24.1, 24.3, 24.3), (2.40, 2.41, 2.41), (0.85, 1.51, 1.53), (0.09, 1.4, 1.5), (0.01, 1.0, 1.4)))
    assert paper["first_ahead"] == {"low": 200, "moderate": None, "high": None}
    assert paper["late"] == {"low": 0.01, "moderate": 1.0, "high": 1.4} and paper["late_from_step"] == 400
    assert paper["low_falls_fastest"] and paper["high_stays_highest"] and paper["moderate_between"]
    flat = checks(rows((24.0, 24.3, 24.3), (3.5, 3.5, 3.5), (3.5, 3.52, 3.5)))
    assert flat["first_ahead"]["low"] is None
    assert not (flat["low_falls_fastest"] or flat["high_stays_highest"] or flat["moderate_between"])
    overconfident = checks(rows((24.0, 24.1, 24.1), (0.5, 1.8, 1.4), (0.01, 2.0, 1.4)))
    assert overconfident["low_falls_fastest"]
    assert not (overconfident["high_stays_highest"] or overconfident["moderate_between"])


def test_documents_run_recipe_smoke(tmp_path):
    """recipes/documents_run.py end to end at toy size: data, tokenizer + model, 2 steps, probe losses
    per level (with the visual-token spread), greedy evaluation table, plot."""
    pytest.importorskip("matplotlib")
    recipe = _documents_run()
    args = recipe.DocumentsRunArgs(out_dir=str(tmp_path / "run"), figure=str(tmp_path / "levels.png"), steps=2,
                                   warmup_steps=1, eval_every=1, train_pages=12, probe_pages=2, batch_size=2)
    result = recipe.main(args)
    assert [r["step"] for r in result["levels"]] == [0, 1, 2]
    assert all(r[level] > 0 for r in result["levels"] for level in ("low", "moderate", "high", "visual_spread"))
    assert result["eval"].startswith("| level | items | exact match | CER |")
    assert (tmp_path / "levels.png").stat().st_size > 10_000 and (tmp_path / "run" / "eval.md").is_file()
    assert set(result["checks"]) >= {"low_falls_fastest", "high_stays_highest"}
