"""Scoring a model on held-out document samples: exact match and character error rate per corruption
level (training spec §3.2, "masked-region cloze" check).

The model answers each record's question (greedy decoding); a region-addressed answer is split into
its numbered items ("1. ...", "2. ...") and item i is compared with target i. Whole-page samples are
scored as one item under the level "page". Text is compared after whitespace normalisation.

    CER = Levenshtein(prediction, truth) / len(truth)    (0 = perfect; can exceed 1 for long wrong answers)
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from minicpmv.data.documents.corruption import LEVELS
from minicpmv.data.documents.sources import normalise_text
from minicpmv.eval.scorers import levenshtein as edit_distance

_ITEM = re.compile(r"^\s*(\d+)[.)]\s?(.*)$")


def cer(prediction: str, truth: str) -> float:
    """Character error rate of `prediction` against `truth` (normalised whitespace). Example:
    cer("hello wrld", "hello world") == 1 / 11."""
    p, t = normalise_text(prediction), normalise_text(truth)
    return edit_distance(p, t) / max(1, len(t))


def split_numbered(answer: str, n: int) -> list[str]:
    """The n items of a numbered answer, "" for any the model left out; unnumbered lines continue the
    item above. Example: split_numbered("1. foo\\n2) bar\\nbaz", 3) == ["foo", "bar baz", ""]."""
    items: dict[int, list[str]] = {}
    current = None
    for line in answer.splitlines():
        m = _ITEM.match(line)
        if m and 1 <= int(m.group(1)) <= n and int(m.group(1)) not in items:
            current = int(m.group(1))
            items[current] = [m.group(2)]
        elif current is not None:
            items[current].append(line)
    return [normalise_text(" ".join(items.get(i, []))) for i in range(1, n + 1)]


def truths(record: dict[str, Any]) -> list[tuple[str, str]]:
    """(level, text) of each scored item of a record: its targets, or the whole page."""
    doc = record["document"]
    if doc["task"] == "page":
        return [("page", record["conversations"][-1]["content"])]
    return [(t["level"], t["text"]) for t in doc["targets"]]


@dataclass
class LevelScore:
    items: int = 0
    exact: int = 0
    cer_sum: float = 0.0

    @property
    def exact_match(self) -> float:
        return self.exact / max(1, self.items)

    @property
    def cer(self) -> float:
        return self.cer_sum / max(1, self.items)


def score(records: Sequence[dict[str, Any]], answers: Sequence[str]) -> dict[str, LevelScore]:
    """Per level (low, moderate, high, then page when present): items, exact matches, mean CER."""
    if len(records) != len(answers):
        raise ValueError(f"{len(records)} records but {len(answers)} answers")
    scores = {level: LevelScore() for level in LEVELS}
    for record, answer in zip(records, answers):
        items = truths(record)
        predicted = [answer] if record["document"]["task"] == "page" else split_numbered(answer, len(items))
        for (level, truth), pred in zip(items, predicted):
            s = scores.setdefault(level, LevelScore())
            s.items += 1
            s.exact += normalise_text(pred) == normalise_text(truth)
            s.cer_sum += cer(pred, truth)
    return scores


def report(scores: dict[str, LevelScore]) -> str:
    """A markdown table of the scores."""
    rows = ["| level | items | exact match | CER |", "|---|---|---|---|"]
    rows += [f"| {level} | {s.items} | {s.exact_match:.3f} | {s.cer:.3f} |" for level, s in scores.items() if s.items]
    return "\n".join(rows)


def question_messages(record: dict[str, Any], base_dir: Path, where: str) -> list[dict[str, Any]]:
    """The record's conversation without its last (assistant) turn, media loaded, for the processor."""
    from minicpmv.data.datasets import record_to_messages

    return record_to_messages(record, base_dir, where)[:-1]


def generate_answers(service, records: Sequence[dict[str, Any]], base_dir: Path, max_new_tokens: int = 512,
                     max_slice_nums: int | None = None, concurrency: int = 16) -> list[str]:
    """Greedy answers of a `ChatService` to every record, `concurrency` requests in flight (batched)."""
    from minicpmv.inference.types import MediaOptions, SamplingParams

    params = SamplingParams(temperature=0.0, max_new_tokens=max_new_tokens)
    media = MediaOptions(max_slice_nums=max_slice_nums)

    async def all_answers() -> list[str]:
        gate = asyncio.Semaphore(concurrency)

        async def one(i: int, record: dict[str, Any]) -> str:
            async with gate:
                messages = question_messages(record, base_dir, f"record {i}")
                (result,) = await service.complete(messages, params, media=media)
                return result.answer

        return await asyncio.gather(*(one(i, r) for i, r in enumerate(records)))

    return asyncio.run(all_answers())
