"""Generation speed on CPU: time to first token and decode tokens/s at batch 1, 4 and 16.

    .venv/bin/python benchmarks/generation.py [--presets tiny,0.5b] [--dtypes float32,bfloat16]
        [--batches 1,4,16] [--prompt-tokens 32] [--new-tokens 16] [--no-cache-tokens 8] [--threads N]

Random weights. `tiny` = PRESETS['tiny'] (the sizes of the reference tiny model: LLM 2 x 32 wide,
full 151,748-token vocabulary). `0.5b` = a Qwen3-style LLM of 20 layers x 896 (14 query heads and
2 KV heads of 64, SwiGLU 3072, the full untied 151,748 vocabulary) next to a 12-layer 768-wide
vision tower: about 0.56B parameters (text prompts only here, so the vision tower is idle).

Each batch is B different random prompts of `prompt-tokens` tokens, greedy, exactly `new-tokens`
new tokens (stop ids banned with min_new_tokens). TTFT = the first `Engine.step()` (prefill of the
whole batch + the first token of every row); decode tok/s = B * (new - 1) / time of the other
steps. Ratios are measured in the same run: batch B vs batch 1 throughput, and at batch 1 the
engine vs a loop without KV cache that recomputes the whole sequence for every token (timed over
`no-cache-tokens` tokens, its cost grows with the sequence).
"""

from __future__ import annotations

import argparse
import time

import torch

from minicpmv.config import PRESETS, LLMConfig, ModelConfig, ResamplerConfig, VisionConfig
from minicpmv.inference.engine import Engine, Request
from minicpmv.inference.types import SamplingParams
from minicpmv.model.minicpmv import MiniCPMV


def half_b() -> ModelConfig:
    vision = VisionConfig(hidden_size=768, intermediate_size=3072, num_layers=12, num_heads=12)
    llm = LLMConfig(hidden_size=896, intermediate_size=3072, num_layers=20, num_heads=14, num_kv_heads=2, head_dim=64)
    resampler = ResamplerConfig(embed_dim=896, num_heads=7, kv_dim=768)
    return ModelConfig(vision=vision, resampler=resampler, llm=llm, torch_dtype="float32", name_or_path="0.5b")


CONFIGS = {"tiny": lambda: PRESETS["tiny"], "0.5b": half_b}


class SyntheticTokenizer:
    """What the engine needs from a tokenizer (stop ids, pad id, bytes per id), without vocabulary files."""

    def __init__(self, vocab_size: int):
        self.token_bytes = [b"t%d " % i for i in range(vocab_size)]
        self.special_ids: frozenset[int] = frozenset()
        self.stop_ids = (vocab_size - 103, vocab_size - 105)  # where <|im_end|>, <|endoftext|> sit in the real vocabulary
        self.pad_id = vocab_size - 105


def prompts(batch: int, length: int, vocab: int, seed: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab - 200, (length,), generator=g).tolist() for _ in range(batch)]


def run_engine(model, tok, batch: int, prompt_len: int, new: int) -> tuple[float, float]:
    """(TTFT seconds, decode tokens/s) of one batch."""
    engine = Engine(model, tok, max_batch_size=batch)
    params = SamplingParams(temperature=0.0, max_new_tokens=new, min_new_tokens=new)
    for ids in prompts(batch, prompt_len, model.config.llm.vocab_size, seed=batch):
        engine.add_request(Request(ids, params))
    start = time.perf_counter()
    engine.step()
    ttft = time.perf_counter() - start
    start = time.perf_counter()
    while engine.has_work:
        engine.step()
    return ttft, batch * (new - 1) / (time.perf_counter() - start)


def run_no_cache(model, prompt_len: int, new: int) -> float:
    """Tokens/s of greedy decoding that re-runs the whole sequence for every token (batch 1)."""
    ids = torch.tensor(prompts(1, prompt_len, model.config.llm.vocab_size, seed=1))
    start = time.perf_counter()
    with torch.inference_mode():
        for _ in range(new):
            nxt = model(ids, num_logits_to_keep=1).logits[:, -1].argmax(-1, keepdim=True)  # [1, 1]
            ids = torch.cat([ids, nxt], 1)
    return new / (time.perf_counter() - start)


def bench(preset: str, dtype: torch.dtype, batches: list[int], prompt_len: int, new: int, plain_new: int) -> list[str]:
    model = MiniCPMV.from_config(CONFIGS[preset](), dtype=dtype)
    tok = SyntheticTokenizer(model.config.llm.vocab_size)
    params_m = sum(p.numel() for p in model.parameters()) / 1e6
    run_engine(model, tok, 1, 8, 3)  # warm-up
    rows, base = [], None
    for b in batches:
        ttft, tps = run_engine(model, tok, b, prompt_len, new)
        base = base or tps
        extra = "| | "
        if b == 1:
            plain = run_no_cache(model, prompt_len, plain_new)
            extra = f"| {plain:.1f} | {tps / plain:.2f}x "
        name = str(dtype).removeprefix("torch.")
        rows.append(f"| {preset} ({params_m:.0f}M) | {name} | {b} | {ttft * 1000:.0f} | {tps:.1f} | {tps / base:.2f}x {extra}|")
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--presets", default="tiny,0.5b")
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--batches", default="1,4,16")
    ap.add_argument("--prompt-tokens", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--no-cache-tokens", type=int, default=8)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"CPU, {torch.get_num_threads()} threads, torch {torch.__version__} "
          f"({torch.backends.cpu.get_cpu_capability()}); prompt {args.prompt_tokens} tokens, {args.new_tokens} new tokens\n")
    print("| model | dtype | batch | TTFT ms | decode tok/s | vs batch 1 | no-cache tok/s | engine / no-cache |")
    print("|---|---|---|---|---|---|---|---|")
    batches = [int(b) for b in args.batches.split(",")]
    for preset in args.presets.split(","):
        for dtype in args.dtypes.split(","):
            bench(preset, getattr(torch, dtype), batches, args.prompt_tokens, args.new_tokens, args.no_cache_tokens)


if __name__ == "__main__":
    main()
