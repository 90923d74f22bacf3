"""Dense vision pre-training: every ViT patch learns the object or character it shows (minicpmv/train/dense.py).
Runs after the caption-tag stage and before stage 1 of the demo pipeline (recipes/demo.py).

    .venv/bin/python recipes/vision_dense.py --model out/demo/tags/model --steps 2000 --out-dir out/demo/dense
    minicpmv train vision-dense --model out/demo/tags/model --steps 2000 --out-dir out/demo/dense

Images are generated on the fly from --seed (minicpmv/data/synthetic/dense.py); --eval-n more, from their own
seed, are scored every --eval-every steps (patch accuracy on background, shapes and characters). Trains the
vision tower and a linear head (dropped at the end; the resampler and the LLM are untouched), AdamW, warmup then
cosine. Writes <out-dir>/metrics.jsonl and <out-dir>/model (official format). Returns the run summary.
"""

from __future__ import annotations

import json
import random
import sys
import time
from pathlib import Path

import torch

from minicpmv.data.synthetic.dense import CLASSES
from minicpmv.errors import InputError
from minicpmv.model.minicpmv import MiniCPMV
from minicpmv.processor.processor import Processor
from minicpmv.train.checkpoint import copy_model_files
from minicpmv.train.cli import VisionDenseArgs, parse_args, resolved_config
from minicpmv.train.dense import IGNORE, dense_batch, dense_scores, patch_logits
from minicpmv.train.optim import Schedule, build_scheduler, optimizer_step


def main(args: VisionDenseArgs) -> dict:
    # 1. model, processor, seeds, the held-out images
    torch.manual_seed(args.seed)
    print(json.dumps(resolved_config(args), indent=2), file=sys.stderr)
    if args.precision not in ("bf16", "fp32"):
        raise InputError(f"--precision {args.precision!r}: use bf16 or fp32")
    if not 0.0 <= args.text_share <= 1.0:
        raise InputError(f"--text-share {args.text_share}: give the share of text images, from 0 to 1")
    model = MiniCPMV.from_pretrained(args.model, dtype=torch.float32)
    processor = Processor.from_pretrained(args.model)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.precision == "bf16")
    held_out = dense_batch(processor, random.Random(f"dense-eval-{args.seed}"), args.eval_n, args.text_share)
    train_rng = random.Random(f"dense-train-{args.seed}")

    # 2. optimiser over the vision tower and the patch head
    head = torch.nn.Linear(model.config.vision.hidden_size, len(CLASSES))
    params = [*model.vpm.parameters(), *head.parameters()]
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay, betas=(0.9, 0.95))
    scheduler = build_scheduler(optimizer, Schedule("cosine", args.steps, warmup_steps=min(10, args.steps)))

    def evaluate() -> dict[str, float]:
        slices, sizes, labels = held_out
        with torch.no_grad(), autocast:
            logits = torch.cat([patch_logits(model, head, slices[a:a + args.batch_size], sizes[a:a + args.batch_size])
                                for a in range(0, len(slices), args.batch_size)])
        return dense_scores(logits.float(), labels)

    # 3. the loop: fresh images every step
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    log, began = [], time.perf_counter()
    with open(out / "metrics.jsonl", "w") as metrics:
        for step in range(1, args.steps + 1):
            slices, sizes, labels = dense_batch(processor, train_rng, args.batch_size, args.text_share)
            with autocast:
                logits = patch_logits(model, head, slices, sizes)  # [B, L_max, C]
            loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), labels.flatten(),
                                                     ignore_index=IGNORE)
            optimizer_step(loss, optimizer, params, scheduler)
            row = {"step": step, "loss": loss.item(), "lr": scheduler.get_last_lr()[0]}
            if step % args.eval_every == 0 or step == args.steps:
                row.update(evaluate())
                print(f"[dense] step {step}: loss {row['loss']:.4f}, held-out patch accuracy: background "
                      f"{row['background_acc']:.1%}, shapes {row['shape_acc']:.1%}, characters {row['char_acc']:.1%}",
                      file=sys.stderr)
            metrics.write(json.dumps(row) + "\n")
            log.append(row)

    # 4. the model without the head, in the official format
    model.save_pretrained(out / "model")
    copy_model_files(Path(args.model), out / "model")
    scored = next((r for r in reversed(log) if "char_acc" in r), {})
    return {"steps": args.steps, "seconds": time.perf_counter() - began, "final_loss": log[-1]["loss"] if log else None,
            **{k: v for k, v in scored.items() if k.endswith("_acc")}}


if __name__ == "__main__":
    main(parse_args(VisionDenseArgs, sys.argv[1:], prog="recipes/vision_dense.py"))
