"""RL on CPU with the tiny preset: rollout throughput at group size 8, batched vs sequential, and the
time of one whole GRPO step.

    .venv/bin/python benchmarks/rl.py [--prompts 4] [--group-size 8] [--new-tokens 48] [--repeats 3] [--threads N]

Model: the reference tiny random model (`PRESETS['tiny']` sizes with the real 151,748-token
vocabulary), one 448x448 image per prompt (one slice: 1024 ViT patches -> 64 visual tokens).
Every sequence generates exactly --new-tokens tokens (min_new_tokens = max_new_tokens) so both ways
produce the same number of tokens.

Table 1, rollouts for --prompts prompts x --group-size samples at temperature 1:
  batched     one `Engine.generate` call: each prompt prefilled once, its cache row repeated
              group-size times, all prompts x group rows decoded together (what `recipes/rl.py` does);
  sequential  one sample at a time (prefill + decode of a single row), prompts x group times.
Medians of interleaved repeats; ratio = sequential time / batched time. With top-k off every row
draws from all 151,748 probabilities (`torch.multinomial` per row, the same cost batched or not);
--top-k 50 shows the batching gain on the model itself.

Table 2, one GRPO step on the same batch (the recipe's order): batched rollouts, rewards (rule
verifier + format + repetition), log-probs before the update (teacher forcing, no grad), the
policy update (forward + backward + AdamW, 1 PPO epoch, one mini-batch).
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from minicpmv.inference.engine import Engine
from minicpmv.inference.types import SamplingParams
from minicpmv.model.minicpmv import MiniCPMV
from minicpmv.processor.processor import Processor
from minicpmv.rl.grpo import GRPOConfig, PolicyLogprobs, group_advantages, update_policy
from minicpmv.rl.rewards import score_group
from minicpmv.rl.rollout import RLPrompt, encode_prompt, generate_rollouts, rollout_logprobs

DEFAULT_MODEL_DIR = Path(__file__).resolve().parents[2] / "shared" / "reference" / "tiny_model"


def prompts(n: int) -> list[RLPrompt]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        image = Image.fromarray(rng.integers(0, 256, (448, 448, 3), dtype=np.uint8))
        messages = [{"role": "user", "content": [image, f"How many squares are there? ({i})"]}]
        out.append(RLPrompt(messages, str(i + 3), f"prompt {i}", {}, Path(".")))
    return out


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def rollout_table(engine: Engine, samples, modes, group: int, new_tokens: int, repeats: int, top_k: int) -> tuple[str, float]:
    params = SamplingParams(max_new_tokens=new_tokens, min_new_tokens=new_tokens, temperature=1.0, top_p=1.0, top_k=top_k)
    def batched() -> None:
        generate_rollouts(engine, samples, modes, replace(params, n=group))

    def sequential() -> None:
        for s, m in zip(samples, modes):
            for _ in range(group):
                generate_rollouts(engine, [s], [m], params)

    times: dict[str, list[float]] = {"batched": [], "sequential": []}
    for _ in range(repeats):
        times["batched"].append(timed(batched))
        times["sequential"].append(timed(sequential))
    tokens = len(samples) * group * new_tokens
    med = {k: statistics.median(v) for k, v in times.items()}
    rows = [f"| {k} | {tokens} | {med[k]:.2f} | {tokens / med[k]:,.0f} |" for k in ("batched", "sequential")]
    table = "\n".join(["| rollouts | tokens | seconds (median) | tokens/s |", "|---|---:|---:|---:|", *rows])
    return table, med["sequential"] / med["batched"]


def step_table(model, processor, engine, batch: list[RLPrompt], group: int, new_tokens: int, repeats: int,
               top_k: int) -> str:
    """Median seconds of each phase of one GRPO step."""
    policy = PolicyLogprobs(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)
    cfg = GRPOConfig(group_size=group)
    modes = ["long" if i % 2 else "short" for i in range(len(batch))]
    samples = [encode_prompt(processor, p, m, 1) for p, m in zip(batch, modes)]
    params = SamplingParams(max_new_tokens=new_tokens, min_new_tokens=new_tokens, temperature=1.0, top_p=1.0,
                            top_k=top_k, n=group)
    phases: dict[str, list[float]] = {k: [] for k in ("rollouts", "rewards", "log-probs before update", "update", "step")}
    for _ in range(repeats):
        t0 = time.perf_counter()
        model.eval()
        rollouts = generate_rollouts(engine, samples, modes, params)
        t1 = time.perf_counter()
        parts = [score_group([r.assistant_text for r in rollouts if r.group == g], m, p.reference)
                 for g, (p, m) in enumerate(zip(batch, modes))]
        adv = group_advantages(torch.tensor([[x.total for x in g] for g in parts])).flatten().tolist()
        t2 = time.perf_counter()
        with torch.no_grad():
            old = rollout_logprobs(model, rollouts)
        t3 = time.perf_counter()
        model.train()
        update_policy(policy, rollouts, adv, old, optimizer, cfg)
        t4 = time.perf_counter()
        for key, value in zip(phases, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t4 - t0)):
            phases[key].append(value)
    rows = [f"| {k} | {statistics.median(v):.2f} | {100 * statistics.median(v) / statistics.median(phases['step']):.0f}% |"
            for k, v in phases.items()]
    return "\n".join(["| GRPO step phase | seconds (median) | share |", "|---|---:|---:|", *rows])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL_DIR)
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    parser.add_argument("--top-k", type=int, default=0, help="rollout top-k (0 = off, the paper's plain T = 1 sampling)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    random.seed(0)
    model = MiniCPMV.from_pretrained(args.model_dir)
    processor = Processor.from_pretrained(args.model_dir)
    engine = Engine(model, processor.tokenizer, max_batch_size=args.prompts * args.group_size)
    batch = prompts(args.prompts)
    modes = ["long" if i % 2 else "short" for i in range(len(batch))]
    samples = [encode_prompt(processor, p, m, 1) for p, m in zip(batch, modes)]
    print(f"tiny preset ({sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters), {args.prompts} prompts x "
          f"group {args.group_size}, {args.new_tokens} new tokens each, temperature 1, top-k {args.top_k or 'off'}, "
          f"torch threads {torch.get_num_threads()}\n")
    table, ratio = rollout_table(engine, samples, modes, args.group_size, args.new_tokens, args.repeats, args.top_k)
    print(table)
    print(f"\nbatched rollouts are {ratio:.1f}x faster than sequential ones\n")
    print(step_table(model, processor, engine, batch, args.group_size, args.new_tokens, args.repeats, args.top_k))


if __name__ == "__main__":
    main()
