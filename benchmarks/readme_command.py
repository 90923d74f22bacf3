"""Wall time of the README's run command with the embedded demo model, load included (issue 8: < 30 s).

    .venv/bin/python benchmarks/readme_command.py [--runs 3]

Runs `python -m minicpmv.cli chat --image examples/shapes.png --temperature 0 "What colour is the square?"`
in a fresh process each time (interpreter start, imports, model load, pre-processing, generation) and
prints each run's seconds and answer, then the median. `bash scripts/run.sh` adds only the set-up check
(a stamp file) on a machine where the venv already exists.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMAND = ["-m", "minicpmv.cli", "chat", "--image", "examples/shapes.png", "--temperature", "0",
           "What colour is the square?"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    seconds = []
    for run in range(args.runs):
        began = time.perf_counter()
        out = subprocess.run([sys.executable, *COMMAND], cwd=ROOT, capture_output=True, text=True, check=True)
        seconds.append(time.perf_counter() - began)
        print(f"run {run + 1}: {seconds[-1]:.1f} s, answer {out.stdout.strip()!r}")
    print(f"median {statistics.median(seconds):.1f} s over {args.runs} runs (goal: < 30 s)")


if __name__ == "__main__":
    main()
