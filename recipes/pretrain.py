"""Pre-training of MiniCPM-V 4.5 in three stages (training spec §2.1), on one process or many.

    python recipes/pretrain.py --config configs/pretrain_tiny.toml --stage 1
    torchrun --nproc-per-node 8 recipes/pretrain.py --config configs/pretrain_stage3.toml
    minicpmv train pretrain --config configs/pretrain_tiny.toml --stage 2

Stage 1 trains the resampler only, stage 2 the vision tower and the resampler, stage 3 everything.
The schedule defaults to warmup-stable-decay (stable 5e-5 decaying to 1e-5); during the decay phase
`--decay-data` is mixed in with a share growing linearly to `--decay-mix` (the paper's high-quality
and knowledge-dense data). Reads top to bottom like recipes/sft.py; returns the run summary.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

from minicpmv.data.datasets import MixedStream, SampleStream, SFTDataset
from minicpmv.errors import InputError
from minicpmv.model.minicpmv import MiniCPMV
from minicpmv.processor.processor import Processor
from minicpmv.train import checkpoint, distributed, loop
from minicpmv.train.cli import PretrainArgs, parse_args, resolved_config
from minicpmv.train.optim import decay_mix, set_trainable

STAGES = {1: ("resampler",), 2: ("vpm", "resampler"), 3: ("vpm", "resampler", "llm")}


def main(args: PretrainArgs) -> dict:
    # 1. processes and seeds (the same seed everywhere so every rank builds the same weights)
    env = distributed.init()
    torch.manual_seed(args.seed)
    config = resolved_config(args)
    if env.is_main:
        print(json.dumps(config, indent=2), file=sys.stderr)

    # 2. model and what trains in this stage
    if args.stage not in STAGES:
        raise InputError(f"--stage {args.stage}: use 1 (resampler), 2 (vision + resampler) or 3 (all)")
    model = MiniCPMV.from_pretrained(args.model, dtype=torch.float32) if args.model else MiniCPMV.from_config(args.preset, seed=args.seed)
    model.to(env.device)
    set_trainable(model, STAGES[args.stage])
    model.llm.gradient_checkpointing = args.gradient_checkpointing
    model.train()
    torch.manual_seed(args.seed + env.rank)

    # 3. data: the main mix, plus the decay-phase data when given
    if not (args.processor or args.model):
        raise InputError("a randomly initialised --preset needs --processor (a folder with tokenizer.json and "
                         "preprocessor_config.json, e.g. an official model folder)")
    processor_dir = Path(args.processor or args.model).resolve()
    config["processor_dir"] = str(processor_dir)
    processor = Processor.from_pretrained(processor_dir)
    sources = {"main": args.data, "decay": args.decay_data} if args.decay_data else {"main": args.data}
    streams = {name: SampleStream(SFTDataset(files, processor, args.max_length, args.max_slice_nums, args.strict),
                                  seed=args.seed + k, rank=env.rank, world_size=env.world_size)
               for k, (name, files) in enumerate(sources.items())}
    stream = MixedStream(streams, {"main": 1.0}, seed=args.seed, rank=env.rank)

    # 4. data parallelism, optimizer (after wrapping: FSDP2 swaps the parameters), schedule
    train_model, optimizer, schedule, scheduler, amp = loop.setup_optimization(model, args, env)

    # 5. resume
    start, data_state = checkpoint.resume(args.out_dir, args.resume, model, optimizer, scheduler, env)
    if data_state is not None:
        stream.load_state_dict(data_state)
    last = checkpoint.latest(args.out_dir) if start else None  # what a run with no step left exports

    # 6. the loop; the decay-phase hook sets the data mix before each step
    metrics = loop.MetricsLogger(args.out_dir, env, start, args.tensorboard)
    progress = loop.Progress(args.steps, start, env)
    began, tokens, stats = time.perf_counter(), 0, None
    for step in range(start, args.steps):
        share = decay_mix(schedule, step, args.decay_mix) if args.decay_data else 0.0
        stream.set_weights({"main": 1.0 - share, **({"decay": share} if args.decay_data else {})})
        batches = loop.next_batches(stream, args.batch_size, args.grad_accum, args.packing, args.max_length,
                                    processor.tokenizer.pad_id, args.loss_per_sample)
        t = time.perf_counter()
        stats = loop.train_step(train_model, batches, optimizer, scheduler, env, args.clip_grad, amp)
        seconds = time.perf_counter() - t
        tokens += stats.tokens
        metrics.log(step + 1, {"loss": stats.loss, "lr": stats.lr, "grad_norm": stats.grad_norm, "tokens": stats.tokens,
                               "tokens_per_s": stats.tokens / seconds, "decay_share": share,
                               "skipped": stream.skipped.total})
        progress.update(stats, stats.tokens / seconds)
        if (args.save_every and (step + 1) % args.save_every == 0) or step + 1 == args.steps:
            last = checkpoint.save(args.out_dir, step + 1, model, optimizer, scheduler, stream.state_dict(), config,
                                   env, args.keep_checkpoints)
    progress.close()
    metrics.close()

    # 7. outputs: official-format export, loss curve, summary (rank 0; others wait)
    skipped = loop.gather_skips(stream.skipped)
    result = {"steps": args.steps - start, "tokens": tokens, "seconds": time.perf_counter() - began,
              "final_loss": stats.loss if stats else None, "skipped": dict(skipped.counts), "checkpoint": str(last)}
    if env.is_main and last is not None:
        if args.export:
            result["export"] = str(checkpoint.export(last, Path(args.out_dir) / "model"))
        if args.plot:
            loop.plot_loss_curve(args.out_dir)
        if stats is not None:
            print(loop.summary(result["steps"], tokens, result["seconds"], stats.loss, skipped), file=sys.stderr)
    distributed.cleanup(env)
    return result


if __name__ == "__main__":
    main(parse_args(PretrainArgs, sys.argv[1:], prog="recipes/pretrain.py"))
