"""`minicpmv data documents` (make samples) and `minicpmv eval documents` (score a model on them).

    minicpmv data documents --pdf papers/ --synthetic 200 --out data/docs.jsonl --workers 8 --preview 4
    minicpmv eval documents --model runs/docs/model --data data/held_out.jsonl --limit 200

`register(subparsers)` adds both; the `data` and `eval` groups are created, or reused when another
module registered them first. Imports stay light here (no torch) because the `minicpmv` command
builds its parser on every start.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from minicpmv.cli import command_group
from minicpmv.errors import InputError


def register(subparsers: argparse._SubParsersAction) -> None:
    _add_data_documents(command_group(subparsers, "data", "make training data"))
    _add_eval_documents(command_group(subparsers, "eval", "evaluate a model"))


def _add_data_documents(sub: argparse._SubParsersAction) -> None:
    from minicpmv.data.documents.samples import SampleConfig
    from minicpmv.data.documents.sources import PdfOptions

    s, p = SampleConfig(), PdfOptions()
    d = sub.add_parser("documents", help="PDF and synthetic pages -> corrupted-region samples (JSONL + images)",
                       description="Pages with text regions corrupted at low / moderate / high levels, asking for "
                                   "the original text (training spec section 3). Resumable: rerun to continue.")
    d.add_argument("--pdf", nargs="+", default=[], metavar="PATH", help="PDF files and folders (searched recursively)")
    d.add_argument("--synthetic", type=int, default=0, metavar="N", help="add N synthetic pages drawn with Pillow")
    d.add_argument("--out", required=True, help="output JSONL (images go to <stem>_images/ beside it)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--workers", type=int, default=1, help="processes")
    d.add_argument("--dpi", type=float, default=p.dpi, help="PDF render resolution")
    d.add_argument("--samples-per-page", type=int, default=1)
    d.add_argument("--k", type=int, nargs=2, default=list(s.k), metavar=("MIN", "MAX"), help="targets per sample")
    d.add_argument("--levels", type=float, nargs=3, default=list(s.level_probs), metavar=("LOW", "MODERATE", "HIGH"),
                   help="probability of each corruption level per target")
    d.add_argument("--block-prob", type=float, default=s.block_prob, help="share of samples targeting blocks (else lines)")
    d.add_argument("--page-prob", type=float, default=s.page_prob, help="share of whole-page transcription samples")
    d.add_argument("--min-chars", type=int, default=s.min_chars, help="shortest region text used as a target")
    d.add_argument("--corruption", type=Path, default=None, metavar="JSON",
                   help='operator overrides, e.g. {"moderate": {"ops": {"blur": [2, 3]}, "n_ops": [1, 2]}}')
    d.add_argument("--image-format", choices=["png", "jpg"], default="png")
    d.add_argument("--max-file-mb", type=float, default=p.max_file_mb)
    d.add_argument("--max-pages", type=int, default=p.max_pages, help="pages used per PDF")
    d.add_argument("--preview", type=int, default=0, metavar="N", help="also write <out stem>.preview.png of N samples")
    d.add_argument("--no-progress", action="store_true")
    d.set_defaults(func=run_data_documents)


def engine_config(args: argparse.Namespace):
    """The EngineConfig the `data documents` flags describe."""
    from dataclasses import replace

    from minicpmv.data.documents.corruption import CorruptionConfig
    from minicpmv.data.documents.engine import EngineConfig
    from minicpmv.data.documents.samples import SampleConfig
    from minicpmv.data.documents.sources import PdfOptions

    if not args.pdf and args.synthetic <= 0:
        raise InputError("nothing to do: give --pdf files or folders and/or --synthetic N")
    corruption = CorruptionConfig()
    if args.corruption is not None:
        try:
            corruption = CorruptionConfig.from_dict(json.loads(args.corruption.read_text()))
        except (OSError, json.JSONDecodeError) as e:
            raise InputError(f"--corruption {args.corruption}: {e}") from None
    sample = replace(SampleConfig(), k=tuple(args.k), level_probs=tuple(args.levels), block_prob=args.block_prob,
                     page_prob=args.page_prob, min_chars=args.min_chars, corruption=corruption)
    pdf = PdfOptions(dpi=args.dpi, max_file_mb=args.max_file_mb, max_pages=args.max_pages)
    return EngineConfig(out=args.out, pdfs=tuple(args.pdf), synthetic=args.synthetic, seed=args.seed,
                        workers=args.workers, samples_per_page=args.samples_per_page, image_format=args.image_format,
                        pdf=pdf, sample=sample, progress=not args.no_progress)


def run_data_documents(args: argparse.Namespace) -> int:
    from minicpmv.data.documents.engine import output_paths, run
    from minicpmv.data.documents.preview import preview_file

    config = engine_config(args)
    summary = run(config)
    print(summary.report())
    paths = output_paths(config.out)
    print(f"wrote {paths['jsonl']} ({summary.samples} samples), images in {paths['images']}, "
          f"summary in {paths['summary']}")
    if args.preview and summary.samples:
        png = preview_file(paths["jsonl"], Path(config.out).with_suffix(".preview.png"), args.preview)
        print(f"preview: {png}")
    return 0


def _add_eval_documents(sub: argparse._SubParsersAction) -> None:
    e = sub.add_parser("documents", help="exact match and CER per corruption level on held-out document samples")
    e.add_argument("--model", required=True, help="model folder (official format, with tokenizer) or preset name")
    e.add_argument("--tokenizer", default=None, help="folder with tokenizer.json when --model is a preset")
    e.add_argument("--data", required=True, help="a JSONL written by `minicpmv data documents`")
    e.add_argument("--limit", type=int, default=0, help="score the first N records (0 = all)")
    e.add_argument("--max-new-tokens", type=int, default=512)
    e.add_argument("--max-slice-nums", type=int, default=None, help="image slices (default: the processor's)")
    e.add_argument("--predictions", type=Path, default=None, help="also write each record's answer here (JSONL)")
    e.set_defaults(func=run_eval_documents)


def run_eval_documents(args: argparse.Namespace) -> int:
    from minicpmv.api import load
    from minicpmv.chat import ChatService
    from minicpmv.data.documents.evaluate import generate_answers, report, score

    data = Path(args.data)
    if not data.is_file():
        raise InputError(f"--data {data}: no such file; make one with `minicpmv data documents`")
    records = [json.loads(line) for line in data.read_text().splitlines() if line.strip()]
    records = [r for r in records if "document" in r][: args.limit or None]
    if not records:
        raise InputError(f"--data {data} holds no document samples (records with a 'document' field)")
    model, processor = load(args.model, tokenizer=args.tokenizer)
    service = ChatService(model, processor)
    try:
        answers = generate_answers(service, records, data.parent, args.max_new_tokens, args.max_slice_nums)
    finally:
        service.close()
    if args.predictions:
        args.predictions.write_text("".join(json.dumps({"id": r["id"], "answer": a}) + "\n" for r, a in zip(records, answers)))
    print(report(score(records, answers)))
    print(f"{len(records)} records from {data}", file=sys.stderr)
    return 0
