"""Processor time per conversation, and streaming detokenisation cost.

    .venv/bin/python benchmarks/processor.py [--repeats N] [--model-dir reference/tiny_model]

Table 1: `Processor(...)(messages)` end to end (PIL images already in memory -> Batch), with the
images/frames of one call resized on a thread pool (`num_threads` default = min(8, CPUs)) vs
serially (`num_threads=1`). Outputs are checked identical before timing; medians of interleaved runs.

Table 2: streaming N generated tokens to text. `IncrementalDecoder` (bytes -> incremental UTF-8
decoder, O(1) per token) vs the common naive loop that re-decodes all ids so far at every step and
emits the new suffix once it does not end in U+FFFD (O(N) per token).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image

from minicpmv.processor.processor import Processor
from minicpmv.processor.tokenizer import IncrementalDecoder, Tokenizer
from minicpmv.processor.video import Video

DEFAULT_MODEL_DIR = Path(__file__).resolve().parents[2] / "shared" / "reference" / "tiny_model"


def noise(w: int, h: int, seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def conversations() -> dict[str, tuple[list[dict], dict]]:
    frames = [noise(640, 360, i) for i in range(60)]
    video3 = Video(frames=frames, temporal_ids=[[3 * g, 3 * g + 1, 3 * g + 2] for g in range(20)])
    video1 = Video(frames=frames[:30], temporal_ids=[[t] for t in range(30)])
    return {
        "text only": ([{"role": "user", "content": "Write a poem about the sea."}], {}),
        "1 image 1920x1080": ([{"role": "user", "content": [noise(1920, 1080, 0), "Describe."]}], {}),
        "3 images": ([{"role": "user", "content": [noise(640, 480, 1), noise(1024, 768, 2), noise(300, 900, 3), "Compare."]}], {}),
        "video 60 frames, packing 3": ([{"role": "user", "content": [video3, "What happens?"]}], {}),
        "video 30 frames, 2 slices": ([{"role": "user", "content": [video1, "What happens?"]}], {"max_slice_nums": 2}),
    }


def median_ms(fns: list[Callable[[], object]], repeats: int) -> list[float]:
    """Interleave the functions `repeats` times; median wall ms of each."""
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, t in zip(fns, times):
            start = time.perf_counter()
            fn()
            t.append((time.perf_counter() - start) * 1e3)
    return [statistics.median(t) for t in times]


def same_batch(a, b) -> bool:
    return torch.equal(a.input_ids, b.input_ids) and all(
        torch.equal(x, y) for px, py in zip(a.pixel_values, b.pixel_values) for x, y in zip(px, py)
    )


def naive_stream(tok: Tokenizer, ids: list[int]) -> str:
    out, emitted = [], 0
    for i in range(1, len(ids) + 1):
        text = tok.decode(ids[:i])
        if not text.endswith("\ufffd"):
            out.append(text[emitted:])
            emitted = len(text)
    return "".join(out)


def incremental_stream(tok: Tokenizer, ids: list[int]) -> str:
    dec = IncrementalDecoder(tok)
    return "".join(dec.add(t) for t in ids) + dec.flush()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL_DIR)
    args = parser.parse_args()
    threaded = Processor.from_pretrained(args.model_dir)
    serial = Processor(threaded.tokenizer, threaded.cfg, num_threads=1)
    print(f"{os.cpu_count()} CPUs, Processor threads {threaded.num_threads}, median of {args.repeats} interleaved runs\n")
    print("| conversation | tokens | slices | serial ms | threaded ms | serial / threaded |")
    print("|---|---|---|---|---|---|")
    for name, (msgs, kw) in conversations().items():
        a, b = serial(msgs, **kw), threaded(msgs, **kw)
        assert same_batch(a, b), name
        t_serial, t_threaded = median_ms([lambda: serial(msgs, **kw), lambda: threaded(msgs, **kw)], args.repeats)
        print(f"| {name} | {a.input_ids.shape[1]} | {len(a.pixel_values[0])} | {t_serial:.1f} | {t_threaded:.1f} "
              f"| {t_serial / t_threaded:.2f}x |")

    tok = threaded.tokenizer
    unit = "The sea is wide 🌊, 海很宽。 Ça va? def f(x): return x**2\n"
    print("\n| streamed tokens | naive re-decode ms | IncrementalDecoder ms | naive / incremental |")
    print("|---|---|---|---|")
    tok.token_bytes  # build the byte table once, outside the timing
    for n in (500, 2000):
        ids = (tok.encode(unit) * (n // 10))[:n]
        assert naive_stream(tok, ids) == incremental_stream(tok, ids) == tok.decode(ids)
        t_naive, t_inc = median_ms([lambda: naive_stream(tok, ids), lambda: incremental_stream(tok, ids)], args.repeats)
        print(f"| {n} | {t_naive:.1f} | {t_inc:.2f} | {t_naive / t_inc:.0f}x |")


if __name__ == "__main__":
    main()
