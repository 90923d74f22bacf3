"""DPO on preference pairs (RLAIF-V stage, training spec §5.6) against a frozen copy of the start model.

    python recipes/dpo.py --model runs/rl/model --data pairs.jsonl --eval-data heldout_pairs.jsonl
    minicpmv train dpo --model runs/rl/model --data pairs.jsonl --steps 400 --lr 1e-6
    minicpmv data rlaifv --model runs/rl/model --data prompts.jsonl --out pairs.jsonl   # makes the pairs

Reads top to bottom: processes -> policy and frozen reference -> pairs -> DDP wrapper, optimizer,
schedule -> resume -> loop (held-out margin every few steps) -> export / plot. Loss: -log sigmoid
(beta * margin) with summed sequence log-probs, plus sft_weight * NLL of the chosen responses.
Returns the run summary as a dict.
"""

from __future__ import annotations

import copy
import json
import random
import sys
import time
from pathlib import Path

import torch
from torch import nn

from minicpmv.errors import InputError
from minicpmv.model.minicpmv import MiniCPMV
from minicpmv.processor.processor import Processor
from minicpmv.rl.cli import DPOArgs, parse
from minicpmv.rl.dpo import EncodedPair, dpo_loss, encode_pair, pair_logprobs
from minicpmv.rl.rollout import PromptSet
from minicpmv.train import checkpoint, distributed, loop
from minicpmv.train.cli import resolved_config
from minicpmv.train.optim import MODULES, Schedule, build_optimizer, build_scheduler, set_trainable


class PairLogprobs(nn.Module):
    """The policy's pair log-probs as a module forward, so DDP all-reduces the gradients."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, pairs: list[EncodedPair]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return pair_logprobs(self.model, pairs)


def main(args: DPOArgs) -> dict:
    # 1. processes and seeds
    env = distributed.init()
    torch.manual_seed(args.seed)
    config = resolved_config(args)
    if env.is_main:
        print(json.dumps(config, indent=2), file=sys.stderr)

    # 2. policy and frozen reference (the start model)
    if not args.model:
        raise InputError("--model is required: DPO starts from a trained model folder, which is also the reference")
    model = MiniCPMV.from_pretrained(args.model, dtype=torch.float32).to(env.device)
    set_trainable(model, MODULES if args.tune_vision else ("resampler", "llm"))
    reference = copy.deepcopy(model).requires_grad_(False).eval()

    # 3. pairs (encoded once; each process takes every world_size-th pair)
    processor_dir = Path(args.processor or args.model).resolve()
    config["processor_dir"] = str(processor_dir)
    processor = Processor.from_pretrained(processor_dir)
    train_pairs = load_pairs(processor, args.data, args.max_slice_nums, env.rank, env.world_size)
    held_out = load_pairs(processor, args.eval_data, args.max_slice_nums, 0, 1) if args.eval_data else []

    # 4. DDP wrapper, optimizer, schedule
    policy = distributed.wrap(PairLogprobs(model), "ddp", env, [])
    optimizer = build_optimizer(model, {m: args.lr for m in MODULES}, args.weight_decay, betas=(0.9, args.beta2))
    scheduler = build_scheduler(optimizer, Schedule(args.schedule, args.steps, args.warmup_steps))
    rng = random.Random(args.seed * 100_003 + env.rank)
    amp = loop.autocast_dtype(args.precision, env.device)

    # 5. resume
    start, state = checkpoint.resume(args.out_dir, args.resume, model, optimizer, scheduler, env)
    last = checkpoint.latest(args.out_dir) if start else None  # what a run with no step left exports
    if state is not None:
        rng.setstate((state["rng"][0], tuple(state["rng"][1]), state["rng"][2]))

    # 6. the loop
    metrics = loop.MetricsLogger(args.out_dir, env, start)
    if start == 0 and held_out and env.is_main:
        metrics.log(0, evaluate_pairs(model, reference, held_out, args.beta, args.batch_size))
    began = time.perf_counter()
    for step in range(start, args.steps):
        t0 = time.perf_counter()
        batch = [train_pairs[rng.randrange(len(train_pairs))] for _ in range(args.batch_size)]
        model.train()
        with torch.autocast(env.device.type, dtype=amp or torch.float32, enabled=amp is not None):
            chosen, rejected, nll = policy(batch)
            with torch.no_grad():
                ref_chosen, ref_rejected, _ = pair_logprobs(reference, batch)
        loss, stats = dpo_loss(chosen.float(), rejected.float(), ref_chosen.float(), ref_rejected.float(), args.beta,
                               nll.float(), args.sft_weight)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip_grad if args.clip_grad > 0 else float("inf"))
        lr = scheduler.get_last_lr()[0]
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        row = {"loss": float(loss.detach()), **stats, "grad_norm": float(grad_norm), "lr": lr,
               "step_s": time.perf_counter() - t0}
        if held_out and env.is_main and ((step + 1) % args.eval_every == 0 or step + 1 == args.steps):
            row.update(evaluate_pairs(model, reference, held_out, args.beta, args.batch_size))
        metrics.log(step + 1, row)
        if env.is_main:
            shown = f" | held-out margin {row['eval/margin']:+.3f}" if "eval/margin" in row else ""
            print(f"step {step + 1}/{args.steps} | loss {row['loss']:.4f} | margin {row['margin']:+.3f}{shown}",
                  file=sys.stderr)
        if (args.save_every and (step + 1) % args.save_every == 0) or step + 1 == args.steps:
            last = checkpoint.save(args.out_dir, step + 1, model, optimizer, scheduler, {"rng": _listed(rng.getstate())},
                                   config, env, args.keep_checkpoints)
    metrics.close()

    # 7. outputs
    result = {"steps": args.steps - start, "seconds": time.perf_counter() - began, "checkpoint": str(last)}
    if env.is_main and last is not None:
        if args.export:
            result["export"] = str(checkpoint.export(last, Path(args.out_dir) / "model"))
        if args.plot:
            result["plot"] = str(plot_margin(loop.read_metrics(args.out_dir), Path(args.out_dir) / "dpo_curves.png"))
    distributed.cleanup(env)
    return result


def load_pairs(processor: Processor, files: list[str], max_slice_nums: int, rank: int, world: int) -> list[EncodedPair]:
    """Every world-th pair of the files, starting at `rank`, encoded for the model."""
    pairs = PromptSet(files, need_reference=False)
    if len(pairs) < world:
        raise InputError(f"{len(pairs)} preference pairs for {world} processes; every process needs at least one")
    return [encode_pair(processor, pairs[i], max_slice_nums) for i in range(rank, len(pairs), world)]


@torch.no_grad()
def evaluate_pairs(model, reference, pairs: list[EncodedPair], beta: float, batch_size: int) -> dict[str, float]:
    """Mean log-ratio margin and the share of pairs with a positive margin on held-out pairs."""
    model.eval()
    margins = []
    for start in range(0, len(pairs), batch_size):
        batch = pairs[start:start + batch_size]
        chosen, rejected, _ = pair_logprobs(model, batch)
        ref_chosen, ref_rejected, _ = pair_logprobs(reference, batch)
        margins.append((chosen - ref_chosen) - (rejected - ref_rejected))
    margin = torch.cat(margins)
    loss, _ = dpo_loss(margin, torch.zeros_like(margin), torch.zeros_like(margin), torch.zeros_like(margin), beta)
    return {"eval/margin": float(margin.mean()), "eval/accuracy": float((margin > 0).float().mean()),
            "eval/loss": float(loss)}


def plot_margin(rows: list[dict], path: Path) -> Path | None:
    """Training and held-out margin (log pi/ref of chosen minus rejected) against the step."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no DPO curves (pip install matplotlib)", file=sys.stderr)
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    train = [(r["step"], r["margin"]) for r in rows if "margin" in r]
    held = [(r["step"], r["eval/margin"]) for r in rows if "eval/margin" in r]
    if train:
        ax.plot(*zip(*train), alpha=0.5, label="training batch")
    if held:
        ax.plot(*zip(*held), marker="o", label="held-out pairs")
    ax.set(xlabel="DPO step", ylabel="chosen - rejected log-ratio margin", title="DPO preference margin")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


def _listed(x):
    return [_listed(v) for v in x] if isinstance(x, (tuple, list)) else x


if __name__ == "__main__":
    main(parse(DPOArgs, sys.argv[1:], prog="recipes/dpo.py"))
