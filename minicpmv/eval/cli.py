"""`minicpmv eval bench`: score a model on a local benchmark file with the official settings.

    minicpmv eval bench --benchmark MMStar --data ~/LMUData/MMStar.tsv --model path/to/MiniCPM-V-4_5 --out results/
    minicpmv eval bench --benchmark VideoMME --data videomme/videomme.jsonl --subtitles --limit 50 --out results/
    minicpmv eval bench --benchmark OCRBench --data OCRBench.tsv --model demo --out /tmp/ocr --think off

Re-running the same command resumes: questions already in the results file are not generated again.
Prints the final markdown table (also written to OUT/NAME.md). See docs/evaluation.md.
"""

from __future__ import annotations

import argparse
import sys

from minicpmv.cli import command_group


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `eval bench` to the `minicpmv` command."""
    from minicpmv.eval.prompts import BENCHMARKS

    sub = command_group(subparsers, "eval", "evaluate a model on held-out benchmarks")
    p = sub.add_parser("bench", help="a standard benchmark from local files (VLMEvalKit TSV, Video-MME JSON)",
                       description="Score a model on a local benchmark file with the official evaluation settings. "
                                   f"Benchmarks: {', '.join(BENCHMARKS)} (VLMEvalKit names starting with these too).")
    p.add_argument("--benchmark", required=True, help="benchmark name, e.g. MMStar, MMBench_DEV_EN_V11, OCRBench, VideoMME")
    p.add_argument("--data", required=True, help="the benchmark file: a VLMEvalKit .tsv, or a Video-MME .json/.jsonl")
    p.add_argument("--model", default="demo", help="checkpoint folder, or 'demo' for the embedded demo model (default)")
    p.add_argument("--tokenizer", default=None, help="with a preset name as --model: folder with tokenizer.json")
    p.add_argument("--out", required=True, help="folder for the results (NAME.jsonl, NAME.md, NAME.scores.json)")
    p.add_argument("--limit", type=int, default=None, help="only the first N questions")
    p.add_argument("--think", choices=["auto", "on", "off"], default="auto",
                   help="thinking mode: auto = the benchmark's official setting (on for the reasoning sets)")
    p.add_argument("--subtitles", action="store_true", help="video sets: add the subtitles of the sampled frames")
    p.add_argument("--max-new-tokens", type=int, default=None, help="override the official budget (8192 / 2048 / 1024)")
    p.add_argument("--num-beams", type=int, default=None, help="override the 3 beams of deterministic runs (1 = greedy)")
    p.add_argument("--seed", type=int, default=0, help="seed of the upsizing draws and of sampling (default 0)")
    p.add_argument("--batch-size", type=int, default=8, help="questions generated together (default 8)")
    p.set_defaults(func=run_eval_bench)


def run_eval_bench(args: argparse.Namespace) -> int:
    from minicpmv.api import load
    from minicpmv.cli import ticking
    from minicpmv.eval.runner import evaluate

    with ticking(f"loading {args.model}"):
        model, processor = load(None if args.model == "demo" else args.model, tokenizer=args.tokenizer)
    report = evaluate(args.benchmark, args.data, model, processor, args.out, limit=args.limit, think=args.think,
                      subtitles=args.subtitles, seed=args.seed, max_new_tokens=args.max_new_tokens,
                      num_beams=args.num_beams, batch_size=args.batch_size, model_name=args.model)
    print(report.table)
    print(f"results: {report.results_path} ({report.generated} generated now)", file=sys.stderr)
    return 0
