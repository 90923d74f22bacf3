"""Supervised fine-tuning of MiniCPM-V 4.5: full, partial (--no-tune-vision / --no-tune-llm) or LoRA.

    python recipes/sft.py --config configs/sft_tiny.toml
    torchrun --nproc-per-node 8 recipes/sft.py --config configs/sft_lora.toml --model /models/MiniCPM-V-4_5
    minicpmv train sft --config configs/sft_tiny.toml --steps 20

Reads top to bottom: processes -> model and trainable parts -> data -> parallel wrapper, optimizer,
schedule -> resume -> loop (checkpoints) -> adapter / export / plot / summary. The resampler is always
trained, as in the official fine-tune (training spec §6.4). Returns the run summary as a dict.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

from minicpmv.data.datasets import SampleStream, SFTDataset
from minicpmv.errors import InputError
from minicpmv.model.minicpmv import MiniCPMV
from minicpmv.processor.processor import Processor
from minicpmv.train import checkpoint, distributed, loop
from minicpmv.train.cli import SFTArgs, parse_args, resolved_config
from minicpmv.train.optim import set_trainable


def main(args: SFTArgs) -> dict:
    # 1. processes and seeds (the same seed everywhere so every rank builds the same weights)
    env = distributed.init()
    torch.manual_seed(args.seed)
    config = resolved_config(args)
    if env.is_main:
        print(json.dumps(config, indent=2), file=sys.stderr)

    # 2. model and what trains
    model = MiniCPMV.from_pretrained(args.model, dtype=torch.float32) if args.model else MiniCPMV.from_config(args.preset, seed=args.seed)
    model.to(env.device)
    tune_llm = (not args.lora) if args.tune_llm is None else args.tune_llm
    if args.lora and tune_llm:
        raise InputError("--lora trains adapters instead of the LLM: drop --tune-llm (the official fine-tune refuses it too)")
    full_modules = ("vpm", "resampler") if args.tune_vision else ("resampler",)
    set_trainable(model, full_modules + (("llm",) if tune_llm else ()))
    if args.lora:
        from minicpmv.train.lora import LoraSettings, apply_lora, save_adapter

        targets = {"targets": args.lora_targets} if args.lora_targets else {}
        lora_settings = LoraSettings(r=args.lora_r, alpha=args.lora_alpha, dropout=args.lora_dropout, **targets)
        apply_lora(model, lora_settings)
        config["lora_settings"] = asdict(lora_settings)
    model.llm.gradient_checkpointing = args.gradient_checkpointing
    model.train()
    torch.manual_seed(args.seed + env.rank)  # per-rank stream for dropout from here on

    # 3. data
    if not (args.processor or args.model):
        raise InputError("a randomly initialised --preset needs --processor (a folder with tokenizer.json and "
                         "preprocessor_config.json, e.g. an official model folder)")
    processor_dir = Path(args.processor or args.model).resolve()
    config["processor_dir"] = str(processor_dir)
    processor = Processor.from_pretrained(processor_dir)
    dataset = SFTDataset(args.data, processor, args.max_length, args.max_slice_nums, args.strict)
    stream = SampleStream(dataset, seed=args.seed, rank=env.rank, world_size=env.world_size)

    # 4. data parallelism, optimizer (after wrapping: FSDP2 swaps the parameters), schedule
    train_model, optimizer, schedule, scheduler, amp = loop.setup_optimization(model, args, env)

    # 5. resume
    start, data_state = checkpoint.resume(args.out_dir, args.resume, model, optimizer, scheduler, env)
    if data_state is not None:
        stream.load_state_dict(data_state)
    last = checkpoint.latest(args.out_dir) if start else None  # what a run with no step left exports

    # 6. the loop
    metrics = loop.MetricsLogger(args.out_dir, env, start, args.tensorboard)
    progress = loop.Progress(args.steps, start, env)
    began, tokens, stats = time.perf_counter(), 0, None
    for step in range(start, args.steps):
        batches = loop.next_batches(stream, args.batch_size, args.grad_accum, args.packing, args.max_length,
                                    processor.tokenizer.pad_id, args.loss_per_sample)
        t = time.perf_counter()
        stats = loop.train_step(train_model, batches, optimizer, scheduler, env, args.clip_grad, amp)
        seconds = time.perf_counter() - t
        tokens += stats.tokens
        metrics.log(step + 1, {"loss": stats.loss, "lr": stats.lr, "grad_norm": stats.grad_norm, "tokens": stats.tokens,
                               "tokens_per_s": stats.tokens / seconds, "skipped": stream.skipped.total})
        progress.update(stats, stats.tokens / seconds)
        if (args.save_every and (step + 1) % args.save_every == 0) or step + 1 == args.steps:
            last = checkpoint.save(args.out_dir, step + 1, model, optimizer, scheduler, stream.state_dict(), config,
                                   env, args.keep_checkpoints)
    progress.close()
    metrics.close()

    # 7. outputs: adapter, official-format export, loss curve, summary (rank 0; others wait)
    skipped = loop.gather_skips(stream.skipped)
    result = {"steps": args.steps - start, "tokens": tokens, "seconds": time.perf_counter() - began,
              "final_loss": stats.loss if stats else None, "skipped": dict(skipped.counts), "checkpoint": str(last)}
    if env.is_main and last is not None:
        if args.lora:
            save_adapter(checkpoint.restore_model(last), Path(args.out_dir) / "adapter", full_modules, args.model)
        if args.export:
            result["export"] = str(checkpoint.export(last, Path(args.out_dir) / "model"))
        if args.plot:
            loop.plot_loss_curve(args.out_dir)
        if stats is not None:
            print(loop.summary(result["steps"], tokens, result["seconds"], stats.loss, skipped), file=sys.stderr)
    distributed.cleanup(env)
    return result


if __name__ == "__main__":
    main(parse_args(SFTArgs, sys.argv[1:], prog="recipes/sft.py"))
