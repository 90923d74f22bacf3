"""Training throughput and peak memory on CPU: padded vs packed batches, with and without gradient
checkpointing, for the `tiny` preset and a ~0.5B random model.

    .venv/bin/python benchmarks/train_throughput.py [--presets tiny,0.5b] [--steps 3] [--threads 1]

Each configuration runs in its own process (so peak RSS is its own) through the real training path:
a process group of one, FSDP2 `fully_shard`, AdamW over every parameter, `loop.train_step` with the
token-sum loss, fp32 on CPU. One step of 8 conversations: 5 text-only ones with answers of 8 to 160
words and 3 with an image (slices of about 224 x 224 = 256 ViT patches to keep CPU runs short), so
lengths vary and padding wastes compute. tokens/s counts real (non-padding) tokens. The first step
is a warm-up and not timed. Ratios are measured in the same run, on CPU seconds of the process
(robust to other load on shared cores; use --threads 1 so CPU time is not inflated by spinning).

`0.5b` = the sizes benchmarks/generation.py uses: a Qwen3-style LLM of 20 layers x 896 (14 query heads,
2 KV heads of 64, SwiGLU 3072, the full untied 151,748 vocabulary) and a 12-layer 768-wide vision
tower, about 0.56B parameters.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from minicpmv.config import PRESETS, LLMConfig, ModelConfig, ResamplerConfig, VisionConfig
from minicpmv.data.packing import pack, pad
from minicpmv.model.minicpmv import MiniCPMV
from minicpmv.processor.processor import Processor
from minicpmv.train import distributed, loop
from minicpmv.train.optim import Schedule, build_optimizer, build_scheduler

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = Path(os.environ.get("MINICPMV_REFERENCE_DIR", ROOT.parent / "shared" / "reference"))
WORDS = "the quick brown fox jumps over a lazy dog near seven small green hills".split()


def half_b() -> ModelConfig:
    vision = VisionConfig(hidden_size=768, intermediate_size=3072, num_layers=12, num_heads=12)
    llm = LLMConfig(hidden_size=896, intermediate_size=3072, num_layers=20, num_heads=14, num_kv_heads=2, head_dim=64)
    resampler = ResamplerConfig(embed_dim=896, num_heads=7, kv_dim=768)
    return ModelConfig(vision=vision, resampler=resampler, llm=llm, torch_dtype="float32", name_or_path="0.5b")


CONFIGS = {"tiny": lambda: PRESETS["tiny"], "0.5b": half_b}


def conversations(seed: int = 0) -> list[list[dict]]:
    """8 conversations: 5 text-only with answers of 8..160 words, 3 asking about a random image."""
    rng = np.random.default_rng(seed)
    out = []
    for i, n_words in enumerate([8, 160, 40, 100, 20, 30, 60, 12]):
        answer = " ".join(rng.choice(WORDS, n_words))
        question: list = [f"Question {i}: please answer."]
        if i >= 5:
            pixels = rng.integers(0, 256, (96, 128, 3), dtype=np.uint8)
            question = [Image.fromarray(pixels), "Describe the image."]
        out.append([{"role": "user", "content": question}, {"role": "assistant", "content": answer}])
    return out


def measure(preset: str, packing: bool, checkpointing: bool, steps: int) -> dict:
    """One configuration, in this process: tokens/s over `steps` timed steps and peak RSS."""
    env = distributed.init()
    processor = Processor.from_pretrained(REFERENCE / "tiny_model")
    processor.cfg = dataclasses.replace(processor.cfg, scale_resolution=224)
    samples = [processor.encode(c, max_slice_nums=1, add_generation_prompt=False, return_labels=True)
               for c in conversations()]
    model = MiniCPMV.from_config(CONFIGS[preset](), seed=0).train()
    model.llm.gradient_checkpointing = checkpointing
    blocks = [*model.llm.model.layers, *model.vpm.encoder.layers]
    train_model = distributed.wrap(loop.TokenLoss(model), "fsdp", env, blocks)
    optimizer = build_optimizer(model, {"llm": 1e-5, "vpm": 1e-5, "resampler": 1e-5})
    scheduler = build_scheduler(optimizer, Schedule("constant", total_steps=steps + 1))
    pad_id = processor.tokenizer.pad_id
    batch = pack(samples, 1024, pad_id) if packing else pad(samples, pad_id)
    loop.train_step(train_model, [batch], optimizer, scheduler, env, 1.0, None)  # warm-up
    start, cpu_start = time.perf_counter(), time.process_time()
    for _ in range(steps):
        loop.train_step(train_model, [batch], optimizer, scheduler, env, 1.0, None)
    seconds, cpu_seconds = (time.perf_counter() - start) / steps, (time.process_time() - cpu_start) / steps
    distributed.cleanup(env)
    return {"params": sum(p.numel() for p in model.parameters()), "rows": batch.input_ids.shape[0],
            "width": batch.input_ids.shape[1], "tokens": batch.num_tokens, "step_s": seconds, "cpu_s": cpu_seconds,
            "tokens_per_s": batch.num_tokens / seconds, "tokens_per_cpu_s": batch.num_tokens / cpu_seconds,
            "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def run_isolated(preset: str, packing: bool, checkpointing: bool, steps: int, threads: int) -> dict:
    cmd = [sys.executable, __file__, "--one", json.dumps([preset, packing, checkpointing, steps]), "--threads", str(threads)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{preset} packing={packing} ckpt={checkpointing} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default="tiny,0.5b")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per configuration (after one warm-up)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run (1: CPU time = compute time)")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.one:
        print(json.dumps(measure(*json.loads(args.one))))
        return
    print(f"CPU, {args.threads} threads, torch {torch.__version__}, fp32, 8 conversations per step\n")
    print("| preset | params | batch | grad ckpt | rows x width | real tokens | s/step | CPU s/step | tokens/s | "
          "tokens per CPU s | peak RSS GiB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for preset in args.presets.split(","):
        results = {}
        for packing in (False, True):
            for checkpointing in (False, True):
                r = results[packing, checkpointing] = run_isolated(preset, packing, checkpointing, args.steps, args.threads)
                print(f"| {preset} | {r['params'] / 1e6:,.1f}M | {'packed' if packing else 'padded'} | "
                      f"{'on' if checkpointing else 'off'} | {r['rows']} x {r['width']} | {r['tokens']} | "
                      f"{r['step_s']:.3f} | {r['cpu_s']:.3f} | {r['tokens_per_s']:,.0f} | {r['tokens_per_cpu_s']:,.0f} | "
                      f"{r['peak_rss_gib']:.2f} |", flush=True)
        for ckpt in (False, True):
            speed = results[True, ckpt]["tokens_per_cpu_s"] / results[False, ckpt]["tokens_per_cpu_s"]
            print(f"| {preset} | packed / padded tokens per CPU s, grad ckpt {'on' if ckpt else 'off'}: **{speed:.2f}x** |")
        for packing in (False, True):
            memory = results[packing, True]["peak_rss_gib"] / results[packing, False]["peak_rss_gib"]
            cost = results[packing, True]["cpu_s"] / results[packing, False]["cpu_s"]
            print(f"| {preset} | grad ckpt on / off, {'packed' if packing else 'padded'}: peak RSS **{memory:.2f}x**, "
                  f"CPU time **{cost:.2f}x** |")


if __name__ == "__main__":
    main()
