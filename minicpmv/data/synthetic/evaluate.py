"""Held-out accuracy of a model on the synthetic suite, per task family and mode (and, for the `doc`
family, per corruption level too: rows `doc/low`, `doc/moderate`, `doc/high`).

Each test sample is asked once in short mode (answer directly) and once in thinking mode (the model
writes a `<think>` trace first), greedily. A reply is right when its answer, lower-cased and stripped
of surrounding spaces, quotes and a final full stop, equals the reference: exact match, so 'AB12' vs
'AB1' is wrong. Visual tokens and latency (pre-processing + generation, one request at a time) are
averaged per sample (latency timed on a few samples run alone).
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any, Callable, Sequence

from minicpmv.data.synthetic.suite import iter_split
from minicpmv.data.synthetic.tasks import FAMILIES

MODES = ("short", "long")


@dataclass(frozen=True)
class FamilyScore:
    family: str
    mode: str
    n: int
    accuracy: float  # exact-match share, 0..1
    visual_tokens: float  # mean per sample
    latency_s: float | None  # mean seconds per sample run alone; None where none was timed (doc/level rows)


def normalize(text: str) -> str:
    """'  Red. ' -> 'red'; '"AB12"' -> 'ab12'."""
    return text.strip().strip("\"'").strip().rstrip(".").strip().lower()


def messages_of(sample: dict[str, Any]) -> list[dict[str, Any]]:
    """The user turn of a sample as processor messages (media object, then the question)."""
    from minicpmv.processor.video import Video

    if "video" in sample:
        media = Video(frames=sample["video"]["frames"], temporal_ids=sample["video"]["temporal_ids"])
    else:
        media = sample["image"]
    return [{"role": "user", "content": [media, sample["question"]]}]


def ask_one(service, sample: dict[str, Any], mode: str, max_new_tokens: int):
    """One sample asked greedily in `mode` ('short' or 'long' = thinking): its `ChatResult`.
    service: a `minicpmv.chat.ChatService`."""
    from minicpmv.inference.types import SamplingParams

    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0)
    return service.generate(messages_of(sample), params, enable_thinking=mode == "long")[0]


def answer_all(service, samples: Sequence[dict[str, Any]], mode: str, max_new_tokens: int) -> list:
    """`ask_one` for every sample, all requests in flight together (greedy, so batching does not change the
    answers): one `ChatResult` per sample, in order."""
    with ThreadPoolExecutor(max_workers=16) as pool:  # concurrent requests share decode steps
        return list(pool.map(lambda sample: ask_one(service, sample, mode, max_new_tokens), samples))


def evaluate(model, processor, families: Sequence[str] = tuple(FAMILIES), per_family: int = 25,
             modes: Sequence[str] = MODES, seed: int = 0, split: str = "test",
             max_new_tokens: tuple[int, int] = (16, 64), latency_samples: int = 2,
             transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> list[FamilyScore]:
    """Scores per (family, mode) on the first `per_family` samples of `split` (`answer_all`); latency is then
    timed one request at a time on the first `latency_samples` samples of each family.
    max_new_tokens: (short, long) generation budgets. transform: applied to every test sample first (e.g.
    re-grouping video frames for the packing ablation, recipes/packing_ablation.py)."""
    from minicpmv.chat import ChatService

    unknown = [f for f in families if f not in FAMILIES]
    if unknown:
        raise ValueError(f"unknown families {unknown}; known: {', '.join(FAMILIES)}")
    samples = [transform(s) if transform else s for s in iter_split(families, split, per_family, seed)]
    service = ChatService(model, processor, max_batch_size=32)
    tally: dict[tuple[str, str], list[tuple[bool, int]]] = {}
    latency: dict[tuple[str, str], list[float]] = {}
    try:
        for mode in modes:
            budget = max_new_tokens[mode == "long"]
            for sample, result in zip(samples, answer_all(service, samples, mode, budget)):
                right = normalize(result.answer) == normalize(sample["answer"])
                tally.setdefault((sample["family"], mode), []).append((right, result.usage.visual_tokens))
                if "level" in sample:  # doc pages: also per corruption level, as row "doc/low" etc.
                    row = (f"{sample['family']}/{sample['level']}", mode)
                    tally.setdefault(row, []).append((right, result.usage.visual_tokens))
            for sample in samples[: latency_samples * len(families)]:  # one request at a time
                began = time.perf_counter()
                ask_one(service, sample, mode, budget)
                latency.setdefault((sample["family"], mode), []).append(time.perf_counter() - began)
    finally:
        service.close()
    order = lambda key: (list(FAMILIES).index(key[0].split("/")[0]), key[0], key[1])
    return [FamilyScore(family, mode, len(rows), sum(r[0] for r in rows) / len(rows),
                        sum(r[1] for r in rows) / len(rows), _mean(latency.get((family, mode), [])))
            for (family, mode), rows in sorted(tally.items(), key=lambda kv: order(kv[0]))]


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def markdown_table(scores: Sequence[FamilyScore]) -> str:
    """| family | short acc | long acc | visual tokens | latency short / long | ... one row per family."""
    by = {(s.family, s.mode): s for s in scores}
    families = list(dict.fromkeys(s.family for s in scores))
    lines = ["| family | n | short: accuracy | thinking: accuracy | visual tokens / sample | latency short / thinking (s) |",
             "|---|---|---|---|---|---|"]
    for f in families:
        short, long = by.get((f, "short")), by.get((f, "long"))
        any_ = short or long
        acc = lambda s: f"{100 * s.accuracy:.0f}%" if s else "-"
        lat = " / ".join(f"{s.latency_s:.2f}" if s and s.latency_s is not None else "-" for s in (short, long))
        lines.append(f"| {f} | {any_.n} | {acc(short)} | {acc(long)} | {any_.visual_tokens:.0f} | {lat} |")
    return "\n".join(lines)


def as_json(scores: Sequence[FamilyScore]) -> list[dict[str, Any]]:
    return [asdict(s) for s in scores]
