"""Decode speed at batch 1 on a CUDA GPU against the card's weight-bandwidth limit (issue 9, item 5).

    .venv/bin/python benchmarks/gpu_decode.py [--preset minicpmv-4.5] [--dtype bfloat16]
        [--prompt-tokens 128] [--new-tokens 256] [--no-compile] [--bandwidth-gbs 3350]

The real-size model (`PRESETS['minicpmv-4.5']`: SigLIP 400M + 3D-Resampler + Qwen3-8B) with random
weights in bf16 on the GPU, a random text prompt, greedy decoding of exactly `new-tokens` tokens (stop
ids banned). At batch 1 every decode step reads every LLM weight once (all but the embedding table,
of which one row is read) plus the KV cache so far, so no implementation can beat

    limit tokens/s = memory bandwidth / (LLM weight bytes - embedding bytes + mean KV-cache bytes)

The bandwidth is taken two ways: the card's peak from a table of known cards (by the name CUDA
reports; `--bandwidth-gbs` overrides it), and measured with a large device-to-device copy (which
reads and writes every byte, so bytes moved = 2 x size; what the memory system really sustains,
usually 85-95% of the peak). Rows: our `Engine` eager, our `Engine(compile_decode=True)`
(`torch.compile` of the decode step; the first run compiles and is not timed), and a bare loop of the
same compiled decode function without the engine's bookkeeping (sampling, detokenisation), which
shows the engine's own overhead per token.

On a machine without CUDA it exits with a message (`--allow-cpu` runs it on the CPU anyway, only to
check the script; the numbers then mean nothing).
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from generation import SyntheticTokenizer, prompts  # benchmarks/generation.py (same folder)
from minicpmv.config import PRESETS
from minicpmv.inference.engine import Engine, Request, decode_logits
from minicpmv.inference.types import SamplingParams
from minicpmv.model.kv_cache import KVCache
from minicpmv.model.minicpmv import MiniCPMV

# Peak memory bandwidth (GB/s = 1e9 B/s) from the vendors' data sheets, matched in order against the
# name CUDA reports (so "GH200" is tried before "H200", and "L40S" / "L40" before "L4").
KNOWN_CARDS: tuple[tuple[str, float], ...] = (
    ("GH200", 4000.0), ("H200", 4800.0), ("H100 NVL", 3900.0), ("H100 PCIe", 2000.0), ("H100", 3350.0),
    ("B200", 8000.0), ("A100-SXM4-80GB", 2039.0), ("A100 80GB PCIe", 1935.0), ("A100", 1555.0),
    ("L40S", 864.0), ("L40", 864.0), ("L4", 300.0), ("A10G", 600.0), ("A10", 600.0),
    ("RTX 4090", 1008.0), ("RTX 3090", 936.0), ("V100", 900.0),
)


def spec_bandwidth(device_name: str) -> float | None:
    """Peak bandwidth in GB/s of a card named like `torch.cuda.get_device_name()`, None when unknown.

    Example: 'NVIDIA H100 80GB HBM3' -> 3350.0 (SXM); 'NVIDIA H100 PCIe' -> 2000.0; 'NVIDIA L40S' ->
    864.0; 'NVIDIA GeForce GTX 1080' -> None.
    """
    return next((gbs for key, gbs in KNOWN_CARDS if key.lower() in device_name.lower()), None)


def measured_bandwidth(device: torch.device, nbytes: int = 2 << 30, repeats: int = 10) -> float:
    """GB/s of a device-to-device copy of `nbytes` (read + write: 2 x nbytes moved per copy), best of `repeats`."""
    src = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)  # warm-up
    best = float("inf")
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        dst.copy_(src)
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * nbytes / best / 1e9


def decode_bytes(model: MiniCPMV, mean_context: int) -> int:
    """Bytes one batch-1 decode step must read: LLM weights (the embedding table excepted: one row)
    plus the K and V of `mean_context` cached positions in every layer."""
    llm = model.llm
    weights = sum(p.numel() * p.element_size() for p in llm.parameters())
    weights -= llm.model.embed_tokens.weight.numel() * llm.model.embed_tokens.weight.element_size()
    c = llm.cfg
    kv = 2 * c.num_layers * c.num_kv_heads * c.head_dim * mean_context * next(llm.parameters()).element_size()
    return weights + kv


def engine_tokens_per_s(engine: Engine, prompt: list[int], new: int) -> float:
    """Decode tokens/s of one greedy request: the steps after the first (prefill + first token)."""
    engine.add_request(Request(prompt, SamplingParams(temperature=0.0, max_new_tokens=new, min_new_tokens=new)))
    engine.step()
    start = time.perf_counter()
    while engine.has_work:
        engine.step()  # each step ends with .tolist() of the new tokens: the GPU is synchronised
    return (new - 1) / (time.perf_counter() - start)


@torch.inference_mode()
def bare_tokens_per_s(model: MiniCPMV, step, prompt: list[int], new: int) -> float:
    """Greedy decode tokens/s of a plain loop over `step` (= decode_logits, maybe compiled), no engine."""
    device = next(model.parameters()).device
    cache = KVCache.allocate(model.config.llm, 1, len(prompt) + new, next(model.parameters()).dtype, device)
    ids = torch.tensor([prompt], device=device)
    last = model(ids, cache=cache, num_logits_to_keep=1).logits[:, -1].argmax(-1)  # [1]
    _sync(device)
    start = time.perf_counter()
    for _ in range(new - 1):
        positions = torch.full((1, 1), cache.length, device=device)  # [1, 1]
        last = step(model, last, positions, None, cache).argmax(-1)  # [1]
    _sync(device)
    return (new - 1) / (time.perf_counter() - start)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="minicpmv-4.5", choices=sorted(PRESETS))
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows")
    ap.add_argument("--bandwidth-gbs", type=float, default=None, help="peak bandwidth of the card (default: table)")
    ap.add_argument("--allow-cpu", action="store_true", help="run without CUDA (checks the script; numbers mean nothing)")
    args = ap.parse_args()
    if not torch.cuda.is_available() and not args.allow_cpu:
        sys.exit("benchmarks/gpu_decode.py needs a CUDA GPU: torch.cuda.is_available() is False here "
                 f"(torch {torch.__version__}). Run it on a machine with an NVIDIA GPU and a CUDA build of torch.")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (--allow-cpu)"
    peak = args.bandwidth_gbs or (spec_bandwidth(name) if device.type == "cuda" else None)
    copy_gbs = measured_bandwidth(device, nbytes=(2 << 30) if device.type == "cuda" else (256 << 20))

    model = MiniCPMV.from_config(args.preset, dtype=getattr(torch, args.dtype), device=device)
    tok = SyntheticTokenizer(model.config.llm.vocab_size)
    prompt = prompts(1, args.prompt_tokens, model.config.llm.vocab_size, seed=0)[0]
    nbytes = decode_bytes(model, args.prompt_tokens + args.new_tokens // 2)
    print(f"{name}, torch {torch.__version__}, {args.preset} ({sum(p.numel() for p in model.parameters()) / 1e9:.2f}B "
          f"parameters, random weights, {args.dtype}); batch 1, prompt {args.prompt_tokens}, {args.new_tokens} new tokens")
    print(f"bytes read per decode step: {nbytes / 1e9:.2f} GB; bandwidth: copy-measured {copy_gbs:.0f} GB/s, "
          f"peak {'unknown (pass --bandwidth-gbs)' if peak is None else f'{peak:.0f} GB/s'}\n")
    limit_copy = copy_gbs * 1e9 / nbytes
    limit_peak = None if peak is None else peak * 1e9 / nbytes
    print(f"| mode | tokens/s | ms/token | share of copy limit ({limit_copy:.1f} tok/s) | share of peak limit "
          f"({'-' if limit_peak is None else f'{limit_peak:.1f} tok/s'}) |")
    print("|---|---:|---:|---:|---:|")

    def row(mode: str, tps: float) -> None:
        share_peak = "-" if limit_peak is None else f"{tps / limit_peak:.0%}"
        print(f"| {mode} | {tps:.1f} | {1000 / tps:.2f} | {tps / limit_copy:.0%} | {share_peak} |", flush=True)

    eager = Engine(model, tok, max_batch_size=1)
    engine_tokens_per_s(eager, prompt[:16], 8)  # warm-up (kernels, allocator)
    row("engine, eager", engine_tokens_per_s(eager, prompt, args.new_tokens))
    row("bare loop, eager", bare_tokens_per_s(model, decode_logits, prompt, args.new_tokens))
    if not args.no_compile:
        compiled = Engine(model, tok, max_batch_size=1, compile_decode=True)
        start = time.perf_counter()
        engine_tokens_per_s(compiled, prompt, args.new_tokens)  # compiles (not timed)
        print(f"(torch.compile of the decode step: {time.perf_counter() - start:.0f} s, first run)", file=sys.stderr)
        row("engine, compile_decode", engine_tokens_per_s(compiled, prompt, args.new_tokens))
        bare_tokens_per_s(model, compiled._compiled_decode, prompt, 8)  # its own cache shapes may recompile once
        row("bare loop, compiled", bare_tokens_per_s(model, compiled._compiled_decode, prompt, args.new_tokens))


if __name__ == "__main__":
    main()
