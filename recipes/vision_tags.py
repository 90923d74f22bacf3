"""Vision pre-training on caption tags: the stand-in for the pre-trained SigLIP tower a model trained from
scratch lacks (minicpmv/train/tags.py). Runs before stage 1 of the demo pipeline (recipes/demo.py).

    .venv/bin/python recipes/vision_tags.py --model out/demo/init --data out/demo/data/train_caption_p3_s0.jsonl
    minicpmv train vision-tags --model out/demo/init --data ... --steps 2000 --out-dir out/demo/tags

Trains the vision tower and the resampler (the LLM is untouched) with two linear tag heads, one process,
AdamW, warmup then cosine. Writes <out-dir>/metrics.jsonl (loss every step, held-out scores every
--eval-every steps), tags.json (the vocabulary, one string per tag) and <out-dir>/model (official format;
the heads are dropped). Reads top to bottom; returns the run summary.
"""

from __future__ import annotations

import json
import random
import sys
import time
from pathlib import Path

import torch

from minicpmv.data.datasets import RecordFile, record_to_messages
from minicpmv.errors import InputError
from minicpmv.model.minicpmv import MiniCPMV
from minicpmv.processor.processor import Processor
from minicpmv.train.checkpoint import copy_model_files
from minicpmv.train.cli import VisionTagArgs, parse_args, resolved_config
from minicpmv.train.optim import Schedule, build_scheduler, optimizer_step
from minicpmv.train.tags import (TagHeads, caption_phrases, caption_tags, multi_hot, pooled_features, tag_loss,
                                 tag_scores, tag_vocabulary)


def image_captions(files: list[str]) -> tuple[list[tuple[RecordFile, int]], list[str], int]:
    """(file, record) of every official-format record with exactly one image and no video, its caption (the last
    turn), and how many records were skipped (others, LLaMA-Factory `messages` records included)."""
    where, captions, skipped = [], [], 0
    for name in files:
        f = RecordFile(name)
        for i in range(len(f)):
            record = f.read(i)
            usable = isinstance(record, dict) and isinstance(record.get("image"), str) and "video" not in record
            if not usable or not record.get("conversations"):
                skipped += 1
                continue
            where.append((f, i))
            captions.append(record["conversations"][-1]["content"])
    return where, captions, skipped


def load_batch(processor: Processor, where: list[tuple[RecordFile, int]]) -> tuple[list, torch.Tensor, list[int]]:
    """The slices, patch grids [n, 2] and slices per image of the records at `where`."""
    slices, sizes, counts = [], [], []
    for f, i in where:
        messages = record_to_messages(f.read(i), f.base_dir, f"{f.path.name} record {i}")
        image = next(p for p in messages[0]["content"] if not isinstance(p, str))
        processed = processor.process_image(image)
        slices += processed.pixel_values
        sizes.append(torch.as_tensor(processed.tgt_sizes).reshape(-1, 2))
        counts.append(len(processed.pixel_values))
    return slices, torch.cat(sizes), counts


def main(args: VisionTagArgs) -> dict:
    # 1. model, processor, seeds
    torch.manual_seed(args.seed)
    print(json.dumps(resolved_config(args), indent=2), file=sys.stderr)
    if args.precision not in ("bf16", "fp32"):
        raise InputError(f"--precision {args.precision!r}: use bf16 or fp32")
    if not args.ngrams or min(args.ngrams) < 1:
        raise InputError(f"--ngrams {args.ngrams}: give one or more n-gram sizes of 1 or more, e.g. --ngrams 2")
    model = MiniCPMV.from_pretrained(args.model, dtype=torch.float32)
    processor = Processor.from_pretrained(args.model)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.precision == "bf16")

    # 2. captions -> tag sets; the last eval_n images are held out; the vocabulary comes from the rest
    where, captions, skipped = image_captions(args.data)
    if len(where) <= args.eval_n:
        raise InputError(f"{len(where)} single-image records in {args.data} ({skipped} skipped), but --eval-n is "
                         f"{args.eval_n}: give more captioned images or a smaller --eval-n")
    tag_sets = [caption_tags(caption_phrases(c), args.ngrams) for c in captions]
    train_n = len(where) - args.eval_n
    vocabulary = tag_vocabulary(tag_sets[:train_n], args.tags, args.tag_min_count)
    if not vocabulary:
        raise InputError(f"no caption tag is in {args.tag_min_count} or more of the {train_n} training captions; "
                         "give more captioned images or a smaller --tag-min-count")
    targets = multi_hot(tag_sets, vocabulary)  # [images, K]
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "tags.json").write_text(json.dumps([" ".join(t) for t in vocabulary]) + "\n")
    print(f"[tags] {train_n} training images, {args.eval_n} held out, {skipped} records skipped, "
          f"{len(vocabulary)} tags", file=sys.stderr)

    # 3. optimiser over the vision tower, the resampler and the heads (the LLM stays as it is)
    heads = TagHeads(model.config.vision.hidden_size, model.config.llm.hidden_size, len(vocabulary))
    params = [*model.vpm.parameters(), *model.resampler.parameters(), *heads.parameters()]
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay, betas=(0.9, 0.95))
    scheduler = build_scheduler(optimizer, Schedule("cosine", args.steps, warmup_steps=min(10, args.steps)))

    def evaluate() -> dict[str, float]:
        with torch.no_grad(), autocast:
            vit, res = [], []
            for a in range(train_n, len(where), args.batch_size):
                v, r = heads(*pooled_features(model, *load_batch(processor, where[a:a + args.batch_size])))
                vit.append(v.float())
                res.append(r.float())
        gold = targets[train_n:]
        return {**{f"vit_{k}": v for k, v in tag_scores(torch.cat(vit), gold).items()},
                **{f"resampler_{k}": v for k, v in tag_scores(torch.cat(res), gold).items()}}

    # 4. the loop: seeded passes over the training images
    order, rng, log, began = [], random.Random(args.seed), [], time.perf_counter()
    with open(out / "metrics.jsonl", "w") as metrics:
        for step in range(1, args.steps + 1):
            while len(order) < args.batch_size:
                order += rng.sample(range(train_n), train_n)
            picked, order = order[:args.batch_size], order[args.batch_size:]
            with autocast:
                logits = heads(*pooled_features(model, *load_batch(processor, [where[i] for i in picked])))
            loss = tag_loss(logits, targets[picked])
            optimizer_step(loss, optimizer, params, scheduler)
            row = {"step": step, "loss": loss.item(), "lr": scheduler.get_last_lr()[0]}
            if step % args.eval_every == 0 or step == args.steps:
                row.update(evaluate())
                print(f"[tags] step {step}: loss {row['loss']:.4f}, held-out tag F1 / exact sets: ViT head "
                      f"{row['vit_f1']:.2f} / {row['vit_exact']:.0%}, resampler head {row['resampler_f1']:.2f} / "
                      f"{row['resampler_exact']:.0%}", file=sys.stderr)
            metrics.write(json.dumps(row) + "\n")
            log.append(row)

    # 5. the model without the heads, in the official format
    model.save_pretrained(out / "model")
    copy_model_files(Path(args.model), out / "model")
    scored = next((r for r in reversed(log) if "vit_exact" in r), {})  # the last held-out evaluation
    return {"steps": args.steps, "seconds": time.perf_counter() - began, "tags": len(vocabulary),
            "final_loss": log[-1]["loss"] if log else None,
            **{k: v for k, v in scored.items() if k.startswith(("vit_", "resampler_"))}}


if __name__ == "__main__":
    main(parse_args(VisionTagArgs, sys.argv[1:], prog="recipes/vision_tags.py"))
