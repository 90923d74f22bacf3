"""Peak host memory of `MiniCPMV.from_pretrained` relative to the checkpoint's size on disk.

Writes a random-weight bf16 checkpoint of the real MiniCPM-V 4.5 shapes with `save_pretrained`
(sharded), then loads it in a fresh subprocess and reports that process's peak RSS
(`ru_maxrss`) divided by the bytes on disk (goal <= 1.15), plus the RSS of the same subprocess
before loading (interpreter + torch). The checkpoint is deleted afterwards.

`--llm-layers` keeps the real vision tower, resampler, embeddings and head but fewer of the 36
decoder layers, for machines without ~2 x 17.4 GB of free memory and disk. Usage:

    .venv/bin/python benchmarks/load_memory.py [--llm-layers 36] [--dir /tmp] [--max-shard-size 5GB]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from minicpmv.config import PRESETS
from minicpmv.model.minicpmv import MiniCPMV

CHILD = """
import json, resource, sys, time
import torch
from minicpmv.model.minicpmv import MiniCPMV
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
start = time.perf_counter()
model = MiniCPMV.from_pretrained(sys.argv[1])
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
params = sum(p.numel() * p.element_size() for p in model.parameters())
print(json.dumps({"before": before, "peak": peak, "seconds": seconds, "param_bytes": params,
                  "dtype": str(next(model.parameters()).dtype)}))
"""


def write_checkpoint(path: Path, llm_layers: int, max_shard_size: str) -> tuple[int, float]:
    """Random bf16 checkpoint in `path`; returns (bytes on disk of the weight files, seconds)."""
    cfg = PRESETS["minicpmv-4.5"]
    cfg = cfg.replace(llm=replace(cfg.llm, num_layers=llm_layers))
    start = time.perf_counter()
    model = MiniCPMV.from_config(cfg, dtype=torch.bfloat16, seed=0)
    model.save_pretrained(path, max_shard_size=max_shard_size)
    seconds = time.perf_counter() - start
    return sum(f.stat().st_size for f in path.glob("*.safetensors")), seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--llm-layers", type=int, default=36)
    ap.add_argument("--dir", default="/tmp", help="where the temporary checkpoint is written")
    ap.add_argument("--max-shard-size", default="5GB")
    ap.add_argument("--write-to", help=argparse.SUPPRESS)  # internal: the writer subprocess
    args = ap.parse_args()
    if args.write_to:
        print(json.dumps(write_checkpoint(Path(args.write_to), args.llm_layers, args.max_shard_size)))
        return
    root = Path(tempfile.mkdtemp(prefix="minicpmv-load-memory-", dir=args.dir))
    try:
        # The writer is a subprocess too, so the loader starts from a clean process.
        flags = ["--llm-layers", str(args.llm_layers), "--max-shard-size", args.max_shard_size]
        writer = subprocess.run([sys.executable, __file__, "--write-to", str(root), *flags], check=True, capture_output=True, text=True)
        disk, write_s = json.loads(writer.stdout.strip().splitlines()[-1])
        n_files = len(list(root.glob("*.safetensors")))
        child = subprocess.run([sys.executable, "-c", CHILD, str(root)], check=True, capture_output=True, text=True)
        r = json.loads(child.stdout.strip().splitlines()[-1])
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"checkpoint: real vision + resampler + embeddings/head, {args.llm_layers}/36 LLM layers, {r['dtype']}, "
          f"{n_files} file(s) (max shard {args.max_shard_size})")
    print(f"written with save_pretrained in {write_s:.1f} s; loaded with from_pretrained in {r['seconds']:.1f} s\n")
    print("| size on disk GB | parameter bytes GB | RSS before load GB | peak RSS GB | peak RSS / disk | (peak - before) / disk |")
    print("|---|---|---|---|---|---|")
    print(
        f"| {disk / 1e9:.2f} | {r['param_bytes'] / 1e9:.2f} | {r['before'] / 1e9:.2f} | {r['peak'] / 1e9:.2f} "
        f"| {r['peak'] / disk:.3f} | {(r['peak'] - r['before']) / disk:.3f} |"
    )


if __name__ == "__main__":
    main()
