"""Where a demo model's answers go wrong, finer than `minicpmv eval synthetic`'s one row per family.

    .venv/bin/python recipes/demo_breakdown.py --model out/demo/rl/model --per-family 120

Held-out test samples (seed 0), greedy:
- colour, short mode, by number of shapes and question ("What colour is the X?" / "Which shape is C?");
- count, short mode, by number of shapes;
- arithmetic, thinking mode: how often the trace's "The numbers are a and b" reads both numbers right (in either
  order), at least one, whether the answer is a + b of the numbers read, and whether it is right.
Prints a markdown table per part (docs/demo-model.md, Diagnosis).
"""

from __future__ import annotations

import argparse
import re
from collections import defaultdict

from minicpmv.api import load
from minicpmv.chat import ChatService
from minicpmv.data.synthetic.evaluate import answer_all, normalize
from minicpmv.data.synthetic.suite import iter_split


def shapes_in(sample: dict) -> int:
    """Number of shapes in a colour or count image, from its caption. Example: colour caption 'red triangle,
    green square' -> 2; count caption '3 shapes: red square, ...' -> 3."""
    caption = sample["caption"]
    return int(caption.split()[0]) if sample["family"] == "count" else len(caption.split(", "))


def by_group(samples: list[dict], answers: list[str], group) -> dict:
    """{group: [right, asked]} with group(sample) as key."""
    tally: dict = defaultdict(lambda: [0, 0])
    for sample, answer in zip(samples, answers):
        row = tally[group(sample)]
        row[0] += normalize(answer) == normalize(sample["answer"])
        row[1] += 1
    return dict(sorted(tally.items()))


def trace_reading(samples: list[dict], replies: list[tuple[str, str]]) -> dict[str, int]:
    """Counts over arithmetic replies (reasoning, answer). Example: image '6 and 2', trace 'The numbers are 2 and
    2. 2 + 2 = 4.', answer '4' -> read_one, sum_of_read; not read_both, not right."""
    counts = dict.fromkeys(("parsed", "read_both", "read_one", "sum_of_read", "right"), 0)
    for sample, (reasoning, answer) in zip(samples, replies):
        counts["right"] += normalize(answer) == normalize(sample["answer"])
        found = re.search(r"numbers are (\d+) and (\d+)", reasoning)
        if not found:
            continue
        read, truth = sorted(map(int, found.groups())), sorted(map(int, sample["caption"].split(" and ")))
        counts["parsed"] += 1
        counts["read_both"] += read == truth
        counts["read_one"] += bool(set(read) & set(truth))
        counts["sum_of_read"] += normalize(answer) == str(sum(read))
    return counts


def table(title: str, rows: dict) -> str:
    lines = [f"| {title} | right / asked | accuracy |", "|---|---|---|"]
    lines += [f"| {key} | {r} / {n} | {r / n:.0%} |" for key, (r, n) in rows.items()]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="demo", help="model folder (default: the embedded demo model)")
    parser.add_argument("--per-family", type=int, default=120, help="held-out samples per family")
    args = parser.parse_args()
    model, processor = load(args.model)
    service = ChatService(model, processor, max_batch_size=32)
    try:
        groups = {"color": ("colour: shapes, question", lambda s: f"{shapes_in(s)}, {s['question'].split()[0]}"),
                  "count": ("count: shapes", shapes_in)}
        for family, (title, group) in groups.items():
            samples = list(iter_split([family], "test", args.per_family))
            answers = [r.answer for r in answer_all(service, samples, "short", 16)]
            print(table(title, by_group(samples, answers, group)) + "\n")
        arith = list(iter_split(["arith"], "test", args.per_family))
        replies = [(r.reasoning or "", r.answer) for r in answer_all(service, arith, "long", 64)]
        counts = trace_reading(arith, replies)
        print(table("arith, thinking mode", {k: (v, len(arith)) for k, v in counts.items()}))
    finally:
        service.close()


if __name__ == "__main__":
    main()
