"""Generation time of the synthetic task suite: milliseconds per sample for every family.

    .venv/bin/python benchmarks/synthetic_suite.py                  # 200 samples per family
    .venv/bin/python benchmarks/synthetic_suite.py --samples 50 --families doc vid_at

Each family first makes `--warmup` samples (fonts are loaded and cached on first use), then
`--samples` more (`make(family, "train", i)`, media in memory, nothing written). Two clocks: CPU time
of this process (`time.process_time`), which other jobs sharing the cores hardly change, and wall
time, which they inflate. The targets: < 5 ms per image sample, < 20 ms per 6-frame video sample.
"""

from __future__ import annotations

import argparse
import os
import time

from minicpmv.data.synthetic import FAMILIES, make
from minicpmv.data.synthetic.suite import VIDEO_FAMILIES


def time_family(family: str, samples: int, warmup: int) -> tuple[float, float]:
    """(CPU ms, wall ms) per sample of `family` over `samples` samples after `warmup` untimed ones."""
    for i in range(warmup):
        make(family, "train", i)
    cpu, wall = time.process_time(), time.perf_counter()
    for i in range(warmup, warmup + samples):
        make(family, "train", i)
    return (time.process_time() - cpu) * 1000 / samples, (time.perf_counter() - wall) * 1000 / samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", nargs="+", choices=list(FAMILIES), default=list(FAMILIES))
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    args = parser.parse_args()
    print(f"load average at start: {os.getloadavg()[0]:.1f}")
    print("| family | kind | CPU ms / sample | wall ms / sample | target |")
    print("|---|---|---|---|---|")
    for family in args.families:
        cpu, wall = time_family(family, args.samples, args.warmup)
        video = family in VIDEO_FAMILIES
        print(f"| {family} | {'video (6 frames)' if video else 'image'} | {cpu:.2f} | {wall:.1f} | "
              f"< {20 if video else 5} ms |")


if __name__ == "__main__":
    main()
