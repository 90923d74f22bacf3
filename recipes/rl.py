"""Hybrid short/long GRPO for MiniCPM-V 4.5 (training spec §5.3-5.5), rollouts from our batched engine
(or, on CUDA with vLLM installed, from vLLM serving the current weights: --rollout-backend vllm, docs/rl.md).

    python recipes/rl.py --model runs/sft/model --data rl.jsonl --eval-data heldout.jsonl
    torchrun --nproc-per-node 8 recipes/rl.py --config configs/rl.toml
    minicpmv train rl --model runs/sft/model --data rl.jsonl --steps 50

Reads top to bottom: processes -> policy (and frozen reference when KL is on) -> prompts -> DDP
wrapper, optimizer (constant LR), engine -> resume -> loop -> export / plot / summary. One step:
draw prompts and a mode per prompt -> `group_size` rollouts per prompt in one engine call ->
rewards (rule / RLPR / overlap routed by the reference, format, repetition, optional RM) -> optional
std filter -> group advantages -> log-probs before the update -> clipped PG update. Each process
draws its own prompts; DDP averages the gradients (FSDP is not offered: the engine needs whole
weights on every process). Returns the run summary as a dict.
"""

from __future__ import annotations

import copy
import json
import random
import sys
import time
from pathlib import Path

import torch

from minicpmv.errors import InputError
from minicpmv.inference.engine import Engine
from minicpmv.inference.types import SamplingParams
from minicpmv.model.minicpmv import MiniCPMV
from minicpmv.processor.processor import Processor
from minicpmv.rl.cli import RLArgs, load_callable, parse
from minicpmv.rl.dpo import prompt_question
from minicpmv.rl.grpo import GRPOConfig, PolicyLogprobs, draw_modes, group_advantages, mode_stats, update_policy
from minicpmv.rl.rewards import RewardConfig, StdFilter, reward_model_scores, route, score_group
from minicpmv.rl.rollout import PromptSet, encode_prompt, evaluate, generate_rollouts, rlpr_scores, rollout_logprobs
from minicpmv.train import checkpoint, distributed, loop
from minicpmv.train.cli import resolved_config
from minicpmv.train.optim import MODULES, Schedule, build_optimizer, build_scheduler, set_trainable


def main(args: RLArgs) -> dict:
    # 1. processes and seeds
    env = distributed.init()
    torch.manual_seed(args.seed)
    config = resolved_config(args)
    if env.is_main:
        print(json.dumps(config, indent=2), file=sys.stderr)

    # 2. policy, what trains, frozen reference (only for the optional KL term)
    if not args.model:
        raise InputError("--model is required: RL starts from a trained model folder (e.g. the SFT export)")
    model = MiniCPMV.from_pretrained(args.model, dtype=torch.float32).to(env.device)
    set_trainable(model, MODULES if args.tune_vision else ("resampler", "llm"))
    reference = copy.deepcopy(model).requires_grad_(False).eval() if args.kl_coef > 0 else None

    # 3. prompts
    processor_dir = Path(args.processor or args.model).resolve()
    config["processor_dir"] = str(processor_dir)
    processor = Processor.from_pretrained(processor_dir)
    prompts = PromptSet(args.data)
    held_out_set = PromptSet(args.eval_data) if args.eval_data else []
    held_out = [held_out_set[i] for i in range(len(held_out_set))]

    # 4. DDP wrapper, optimizer, constant schedule, engine, settings
    policy = distributed.wrap(PolicyLogprobs(model), "ddp", env, [])
    lrs = {m: args.lr for m in MODULES}
    optimizer = build_optimizer(model, lrs, args.weight_decay, betas=(0.9, args.beta2))
    scheduler = build_scheduler(optimizer, Schedule("constant", args.steps))
    engine = Engine(model, processor.tokenizer, max_batch_size=args.rollout_batch_size or args.prompts_per_step * args.group_size)
    grpo = GRPOConfig(args.group_size, args.long_share, args.clip_low, args.clip_high, args.kl_coef, args.entropy_coef,
                      args.ppo_epochs, args.mini_batch_size, args.clip_grad)
    reward_cfg = RewardConfig(args.short_words, args.repetition_window, args.repetition_limit)
    reward_model = load_callable(args.reward_model, "--reward-model") if args.reward_model else None
    std_filter = StdFilter(args.std_filter_beta, args.std_filter_ema, args.std_filter_start) if args.std_filter else None
    rng = random.Random(args.seed * 100_003 + env.rank)
    amp = loop.autocast_dtype(args.precision, env.device)
    eval_tokens = args.eval_max_new_tokens or args.max_new_tokens
    vllm = start_vllm(args, processor, processor_dir, model, env)  # None = rollouts from `engine`

    # 5. resume
    start, state = checkpoint.resume(args.out_dir, args.resume, model, optimizer, scheduler, env)
    last = checkpoint.latest(args.out_dir) if start else None  # what a run with no step left exports
    if state is not None:
        rng.setstate((state["rng"][0], tuple(state["rng"][1]), state["rng"][2]))
        if std_filter is not None:
            std_filter.load_state_dict(state["std_filter"])

    # 6. the loop
    metrics = loop.MetricsLogger(args.out_dir, env, start)
    if start == 0 and held_out and env.is_main:
        metrics.log(0, evaluate_modes(engine, processor, held_out, eval_tokens, args.max_slice_nums))
    began, generated = time.perf_counter(), 0
    for step in range(start, args.steps):
        t0 = time.perf_counter()
        batch = [prompts[rng.randrange(len(prompts))] for _ in range(args.prompts_per_step)]
        modes = draw_modes(len(batch), args.long_share, rng)
        if vllm is not None:
            vllm.refresh(model, step)
        row, tokens = grpo_step(args, model, reference, policy, optimizer, vllm or engine, processor, batch, modes,
                                grpo, reward_cfg, reward_model, std_filter, rng, amp)
        scheduler.step()
        generated += tokens
        row.update({"lr": scheduler.get_last_lr()[0], "step_s": time.perf_counter() - t0})
        if held_out and env.is_main and ((step + 1) % args.eval_every == 0 or step + 1 == args.steps):
            row.update(evaluate_modes(engine, processor, held_out, eval_tokens, args.max_slice_nums))
        metrics.log(step + 1, row)
        if env.is_main:
            print(progress_line(step + 1, args.steps, row), file=sys.stderr)
        if (args.save_every and (step + 1) % args.save_every == 0) or step + 1 == args.steps:
            state = {"rng": _listed(rng.getstate()), "std_filter": std_filter.state_dict() if std_filter else None}
            last = checkpoint.save(args.out_dir, step + 1, model, optimizer, scheduler, state, config, env,
                                   args.keep_checkpoints)
    metrics.close()
    if vllm is not None:
        vllm.close()

    # 7. outputs: official-format export, curves, summary (rank 0; others wait)
    result = {"steps": args.steps - start, "generated_tokens": generated, "seconds": time.perf_counter() - began,
              "checkpoint": str(last)}
    if env.is_main and last is not None:
        if args.export:
            result["export"] = str(checkpoint.export(last, Path(args.out_dir) / "model"))
        if args.plot:
            result["plot"] = str(plot_curves(loop.read_metrics(args.out_dir), Path(args.out_dir) / "rl_curves.png"))
    distributed.cleanup(env)
    return result


def start_vllm(args, processor, processor_dir, model, env):
    """The vLLM rollout server for --rollout-backend vllm (InputError without CUDA or vllm), else None."""
    if args.rollout_backend == "engine":
        return None
    if args.rollout_backend != "vllm":
        raise InputError(f"--rollout-backend {args.rollout_backend!r}; use engine or vllm")
    from minicpmv.rl.vllm_rollout import VLLMRollouts, VLLMSettings

    settings = VLLMSettings(str(Path(args.out_dir) / "vllm_policy"), args.vllm_gpu_memory_utilization,
                            args.vllm_refresh_every, args.vllm_max_model_len, args.vllm_max_images, seed=args.seed)
    return VLLMRollouts(settings, processor, processor_dir, model.config, env.is_main, distributed.barrier)


def grpo_step(args, model, reference, policy, optimizer, generator, processor, batch, modes, grpo, reward_cfg,
              reward_model, std_filter, rng, amp) -> tuple[dict, int]:
    """Rollouts (from our `Engine` or a `VLLMRollouts`) -> rewards -> (std filter) -> advantages -> old
    log-probs -> update; (metrics row, tokens)."""
    t0 = time.perf_counter()
    encoded = [encode_prompt(processor, p, m, args.max_slice_nums) for p, m in zip(batch, modes)]
    params = SamplingParams(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=1.0, top_k=0,
                            n=args.group_size, seed=rng.randrange(2**31))
    model.eval()
    if isinstance(generator, Engine):
        rollouts = generate_rollouts(generator, encoded, modes, params)
    else:
        rollouts = generator.generate(batch, encoded, modes, params, args.max_slice_nums)
    t_rollout = time.perf_counter() - t0

    parts = group_rewards(model, processor, rollouts, batch, modes, args.group_size, reward_cfg, reward_model)
    totals = torch.tensor([[p.total for p in group] for group in parts])  # [G, n]
    keep = std_filter.keep(totals.std(dim=1).tolist()) if std_filter else [True] * len(batch)
    advantages = group_advantages(totals).flatten().tolist()  # rollout order = group-major
    t1 = time.perf_counter()
    device = next(model.parameters()).device
    with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
        with torch.no_grad():
            old = rollout_logprobs(model, rollouts)
            ref = rollout_logprobs(reference, rollouts) if reference is not None else None
        model.train()
        update = update_policy(policy, rollouts, advantages, old, optimizer, grpo, ref, rng,
                               [keep[r.group] for r in rollouts])
    t_update = time.perf_counter() - t1

    flat = [p for group in parts for p in group]
    lengths = [len(r.response_ids) for r in rollouts]
    sampler = {} if isinstance(generator, Engine) else generator.stats(rollouts, old)  # vLLM vs teacher forcing
    row = {**gathered_mode_stats(modes, args.group_size, flat, lengths), **update, **sampler,
           "reward": float(totals.mean()),
           "kept_groups": sum(keep), "rollout_s": t_rollout, "update_s": t_update,
           "rollout_tokens_per_s": sum(lengths) / max(t_rollout, 1e-9)}
    return row, sum(lengths)


def group_rewards(model, processor, rollouts, prompts, modes, group_size, cfg, reward_model) -> list[list]:
    """`RewardParts` per group: RLPR scores only for groups whose reference is routed to RLPR."""
    parts = []
    for g, (prompt, mode) in enumerate(zip(prompts, modes)):
        group = rollouts[g * group_size:(g + 1) * group_size]
        texts = [r.assistant_text for r in group]
        rlpr = None
        if route(prompt.reference, mode, cfg.short_words) == "rlpr":
            rlpr = rlpr_scores(model, processor.tokenizer, group, prompt.reference)
        rm = None
        if reward_model is not None:
            rm = reward_model_scores(reward_model, prompt_question(prompt), texts)
        parts.append(score_group(texts, mode, prompt.reference, cfg, rlpr, rm))
    return parts


def gathered_mode_stats(modes, group_size, parts, lengths) -> dict[str, float]:
    """Per-mode statistics over the rollouts of every process."""
    mine = ([modes[i // group_size] for i in range(len(parts))], [p.total for p in parts], lengths,
            [p.correct for p in parts], [p.format == 0.0 for p in parts])
    everyone = distributed.all_gather_object(mine)
    return mode_stats(*[sum((e[k] for e in everyone), []) for k in range(5)])


def evaluate_modes(engine, processor, prompts, max_new_tokens, max_slice_nums) -> dict[str, float]:
    """Greedy held-out accuracy, format rate and length in both modes ('eval/long/accuracy', ...)."""
    out = {}
    for mode in ("long", "short"):
        for key, value in evaluate(engine, processor, prompts, mode, max_new_tokens, max_slice_nums).items():
            out[f"eval/{mode}/{key}"] = value
    return out


def progress_line(step: int, total: int, row: dict) -> str:
    fields = [f"step {step}/{total}", f"reward {row['reward']:+.3f}", f"{row['step_s']:.1f}s"]
    for mode in ("long", "short"):
        if f"{mode}/accuracy" in row:
            fields.append(f"{mode} acc {row[f'{mode}/accuracy']:.2f} len {row[f'{mode}/length']:.0f}")
        if f"eval/{mode}/accuracy" in row:
            fields.append(f"held-out {mode} {row[f'eval/{mode}/accuracy']:.2f}")
    return " | ".join(fields)


def plot_curves(rows: list[dict], path: Path, smooth: int = 5) -> Path | None:
    """Per mode: reward, rollout accuracy, response length and format rate (raw, faint, and a moving
    average over `smooth` steps), held-out greedy accuracy and format rate (markers)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no RL curves (pip install matplotlib)", file=sys.stderr)
        return None
    panels = [("reward", "{mode}/reward"), ("rollout accuracy (T = 1)", "{mode}/accuracy"),
              ("held-out accuracy (greedy)", "eval/{mode}/accuracy"), ("response length (tokens)", "{mode}/length"),
              ("rollout format rate", "{mode}/format"), ("held-out format rate (greedy)", "eval/{mode}/format")]
    fig, axes = plt.subplots(2, 3, figsize=(14, 7))
    for ax, (title, key) in zip(axes.flat, panels):
        for mode, colour in (("long", "tab:purple"), ("short", "tab:orange")):
            points = [(r["step"], r[key.format(mode=mode)]) for r in rows if key.format(mode=mode) in r]
            if not points:
                continue
            steps, values = zip(*points)
            if key.startswith("eval/"):
                ax.plot(steps, values, marker="o", ms=4, color=colour, label=f"{mode} mode")
                continue
            ax.plot(steps, values, color=colour, alpha=0.25)
            mean = [sum(values[max(0, i - smooth + 1):i + 1]) / len(values[max(0, i - smooth + 1):i + 1])
                    for i in range(len(values))]
            ax.plot(steps, mean, color=colour, label=f"{mode} mode ({smooth}-step mean)")
        ax.set(title=title, xlabel="RL step")
        if "format" in key:
            ax.set_ylim(0, 1.05)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _listed(x):
    return [_listed(v) for v in x] if isinstance(x, (tuple, list)) else x


if __name__ == "__main__":
    main(parse(RLArgs, sys.argv[1:], prog="recipes/rl.py"))
