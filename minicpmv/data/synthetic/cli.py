"""`minicpmv eval synthetic`: held-out accuracy of a model on the synthetic suite.

    minicpmv eval synthetic                          # the embedded demo model
    minicpmv eval synthetic --model out/demo/sft/model --per-family 50 --json scores.json

Prints a markdown table: accuracy per task family in short and thinking mode, visual tokens and
latency per sample. The model is loaded only when the command runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from minicpmv.cli import command_group


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `eval synthetic` to the `minicpmv` command."""
    from minicpmv.data.synthetic.suite import SPLITS
    from minicpmv.data.synthetic.tasks import FAMILIES

    sub = command_group(subparsers, "eval", "evaluate a model on held-out benchmarks")
    p = sub.add_parser("synthetic", help="held-out accuracy per synthetic task family, short vs thinking mode")
    p.add_argument("--model", default=None, help="model folder (default: the embedded demo model)")
    p.add_argument("--families", nargs="+", choices=list(FAMILIES), default=list(FAMILIES))
    p.add_argument("--modes", nargs="+", choices=["short", "long"], default=["short", "long"])
    p.add_argument("--per-family", type=int, default=25, help="test samples per family (default: 25)")
    p.add_argument("--split", choices=SPLITS, default="test",
                   help="test (default), val, or train: the first samples of a seed-0 pipeline's training data, to "
                        "tell underfitting (train ~ test) from overfitting (train >> test)")
    p.add_argument("--seed", type=int, default=0, help="suite seed (default: 0, the published numbers)")
    p.add_argument("--json", help="also write the scores to this JSON file")
    p.set_defaults(func=run_eval_synthetic)


def run_eval_synthetic(args: argparse.Namespace) -> int:
    from minicpmv.api import load
    from minicpmv.data.synthetic.evaluate import as_json, evaluate, markdown_table
    from minicpmv.errors import InputError

    if args.per_family < 1:
        raise InputError(f"--per-family {args.per_family}: use at least 1 sample per family")
    model, processor = load(args.model)
    scores = evaluate(model, processor, args.families, args.per_family, args.modes, args.seed, args.split)
    print(markdown_table(scores))
    if args.json:
        Path(args.json).write_text(json.dumps(as_json(scores), indent=2) + "\n")
        print(f"wrote {args.json}", file=sys.stderr)
    return 0
