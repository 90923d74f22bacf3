"""Time saved by the vision cache in a 5-turn chat about one 1344x1344 image (CPU).

    .venv/bin/python benchmarks/vision_cache.py [--turns 5] [--new-tokens 8] [--threads N] [--tokenizer DIR]

Every turn sends the whole conversation again (as `chat()` and the OpenAI API do): the image
(10 slices, 640 visual tokens) plus all earlier questions and answers. Without the cache every turn
runs the vision tower and resampler on the 10 slices; with it only the first turn does (later turns
hash the pixels and look the features up). Both runs use the same random model, side by side, and
must produce the same tokens.

Model (random weights, "mid-size"): vision tower 6 layers x 384 (6 heads, MLP 1536); LLM 16 layers
x 896 (14 query / 2 KV heads of 64, SwiGLU 3072, full 151,748 vocabulary): about 0.45B parameters,
chosen so that, as in the real 8B model, encoding one 10-slice image costs about as much as the
prefill of its prompt. Tokenizer and pre-processing settings: `--tokenizer`, default the reference
tiny model folder (`$MINICPMV_REFERENCE_DIR/tiny_model`), which holds the official files.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from minicpmv.config import LLMConfig, ModelConfig, ResamplerConfig, VisionConfig
from minicpmv.inference.engine import Engine, Request, VisionInputs
from minicpmv.inference.types import SamplingParams
from minicpmv.inference.vision_cache import VisionCache
from minicpmv.model.minicpmv import MiniCPMV
from minicpmv.processor.processor import Processor

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = Path(os.environ.get("MINICPMV_REFERENCE_DIR", ROOT.parent / "shared" / "reference"))
QUESTIONS = ["Describe this image.", "What colours dominate?", "Is there any text?", "Where is the brightest spot?",
             "Summarise it in one sentence.", "Anything unusual?", "Count the shapes."]


def mid_size() -> ModelConfig:
    vision = VisionConfig(hidden_size=384, intermediate_size=1536, num_layers=6, num_heads=6)
    llm = LLMConfig(hidden_size=896, intermediate_size=3072, num_layers=16, num_heads=14, num_kv_heads=2, head_dim=64)
    resampler = ResamplerConfig(embed_dim=896, num_heads=7, kv_dim=384)
    return ModelConfig(vision=vision, resampler=resampler, llm=llm, torch_dtype="float32", name_or_path="mid")


def photo(side: int = 1344, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    x = np.linspace(0, 1, side, dtype=np.float32)[None, :]
    y = np.linspace(0, 1, side, dtype=np.float32)[:, None]
    base = np.stack(np.broadcast_arrays(255 * x, 255 * y, 128 + 127 * np.sin(9 * x * y)), axis=-1)  # [H, W, 3]
    return Image.fromarray((base + rng.normal(0, 8, base.shape)).clip(0, 255).astype(np.uint8))


def turn(engine: Engine, proc: Processor, history: list[dict], new: int) -> tuple[float, list[int], int]:
    """(seconds, generated ids, prompt tokens) of one turn: pre-processing + generation."""
    start = time.perf_counter()
    s = proc.encode(history)
    vision = VisionInputs(s.image_bounds, s.pixel_values, s.tgt_sizes, s.temporal_ids)
    params = SamplingParams(temperature=0.0, max_new_tokens=new, min_new_tokens=new)
    out = engine.generate([Request(s.input_ids, params, vision)])[0].completions[0]
    return time.perf_counter() - start, out.token_ids, len(s.input_ids)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--turns", type=int, default=5)
    ap.add_argument("--new-tokens", type=int, default=8)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--tokenizer", type=Path, default=REFERENCE / "tiny_model")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    proc = Processor.from_pretrained(args.tokenizer)
    model = MiniCPMV.from_config(mid_size())
    params_m = sum(p.numel() for p in model.parameters()) / 1e6
    plain = Engine(model, proc.tokenizer)
    cached = Engine(model, proc.tokenizer, vision_cache=VisionCache())
    image = photo()
    warm = [{"role": "user", "content": [photo(448, 1), "warm up"]}]
    turn(plain, proc, warm, 2)
    print(f"CPU, {torch.get_num_threads()} threads; model {params_m:.0f}M parameters; 1344x1344 image; "
          f"{args.new_tokens} new tokens per turn\n")
    print("| turn | prompt tokens | no cache s | vision cache s | saved |")
    print("|---|---|---|---|---|")
    history: list[dict] = []
    totals = [0.0, 0.0]
    for t in range(args.turns):
        question = QUESTIONS[t % len(QUESTIONS)]
        history.append({"role": "user", "content": [image, question] if t == 0 else question})
        slow, ids, n_prompt = turn(plain, proc, history, args.new_tokens)
        fast, ids_cached, _ = turn(cached, proc, history, args.new_tokens)
        assert ids == ids_cached, f"turn {t}: the cache changed the tokens"
        totals[0] += slow
        totals[1] += fast
        print(f"| {t + 1} | {n_prompt} | {slow:.2f} | {fast:.2f} | {1 - fast / slow:.0%} |", flush=True)
        history.append({"role": "assistant", "content": proc.tokenizer.decode(ids, skip_special_tokens=True)})
    print(f"| all | | {totals[0]:.2f} | {totals[1]:.2f} | {1 - totals[1] / totals[0]:.0%} "
          f"({totals[0] / totals[1]:.2f}x faster) |")
    stats = cached.vision_cache.stats
    print(f"\nvision cache: {stats.hits} group hits, {stats.misses} misses, {stats.encode_calls} encode calls, "
          f"{cached.vision_cache.nbytes / 2**20:.1f} MiB held")


if __name__ == "__main__":
    main()
