"""Where does the demo model lose the visual evidence? A pooling probe on the vision tower + 3D-Resampler.

    .venv/bin/python recipes/vision_probe.py --model out/demo/init                 # ~2 min per pool, 1 core
    .venv/bin/python recipes/vision_probe.py --model out/demo/sft/model --steps 0   # attention spread only
    .venv/bin/python recipes/vision_probe.py --model out/demo/sft/model --frozen    # head only: what is there

A linear head on pooled visual features is trained, together with the vision tower and the resampler
(AdamW, batch 16, bf16 autocast), to name the one shape of a single-shape `color` image (circle / square /
triangle, chance 1/3), or the number of shapes of a `count` image (1-6); with --frozen only the head is
trained (a linear probe of what --model's features already carry). Pools, each from a fresh copy of --model:

* vit_max: max over the ViT's patch features        (a hard pick of the most salient patch);
* vit_mean: mean over the ViT's patch features      (what uniform attention would pass on);
* resampler_mean / resampler_max: mean / max over the 32 resampler outputs (the tokens the LLM sees).

The same vision tower learns the task in a few hundred steps when read by max-pooling but not when its
patches are averaged, which is what the resampler does at init (see `attention_spread`). Also reported:
the resampler's attention on a few test images of --model (effective number of keys per query and head,
and how many distinct patches the queries look at). Output: `<out-dir>/probe.json` and `probe.md`.
"""

from __future__ import annotations

import copy
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from minicpmv.data.synthetic.draw import SHAPES
from minicpmv.data.synthetic.suite import make
from minicpmv.model.minicpmv import MiniCPMV
from minicpmv.processor.processor import Processor
from minicpmv.train.cli import parse_args
from minicpmv.train.optim import optimizer_step

POOLS = ("vit_max", "vit_mean", "resampler_mean", "resampler_max")


@dataclass
class ProbeArgs:
    """Linear probes on pooled visual features, and the resampler's attention spread."""

    model: str = "out/demo/init"  # model folder (the demo pipeline's init, a stage, or the SFT model)
    out_dir: str = "out/vision_probe"
    task: str = "shape"  # shape (name the one shape, 3 classes) | count (1-6 shapes, 6 classes)
    pools: list[str] = field(default_factory=lambda: list(POOLS))
    steps: int = 300  # 0 = attention spread only
    frozen: bool = False  # train the head only: what the visual features of --model already carry
    lr: float = 1e-3
    batch_size: int = 16
    eval_every: int = 50
    eval_n: int = 200  # held-out images per evaluation
    seed: int = 0
    threads: int = 1


def labelled(task: str, split: str, index: int) -> tuple[Any, int]:
    """(image, class) of sample `index`. shape: the first single-shape `color` sample from index on, with
    SHAPES.index of its shape; count: the `count` sample, shapes - 1."""
    if task == "count":
        s = make("count", split, index)
        return s["image"], int(s["answer"]) - 1
    if task != "shape":
        raise ValueError(f"task {task!r}; use 'shape' or 'count'")
    while True:  # 1/3 of colour samples show one shape
        s = make("color", split, index)
        if "," not in s["caption"]:  # caption 'red circle' -> 'circle'
            return s["image"], SHAPES.index(s["caption"].split()[1])
        index += 1_000_003


def slices_of(processor: Processor, images: list) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Every image as the processor prepares it for chat: its slices and their patch grids [n, 2]."""
    slices, sizes = [], []
    for image in images:
        batch = processor([{"role": "user", "content": [image, "?"]}])
        slices += list(batch.pixel_values[0])
        sizes.append(torch.as_tensor(batch.tgt_sizes[0]).reshape(-1, 2))
    return slices, torch.cat(sizes)


def pooled(model: MiniCPMV, pool: str, slices: list[torch.Tensor], sizes: torch.Tensor) -> torch.Tensor:
    """[n images, width] features; the probe images are single-slice, so image i = slice i."""
    if len(slices) != len(sizes):
        raise ValueError(f"{len(slices)} slices for {len(sizes)} grids: the probe needs single-slice images")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        if pool.startswith("vit"):
            hidden = model.vpm(slices, sizes).hidden.float()  # [n, L, D_vision] (equal L: one slice size)
            return hidden.max(1).values if pool == "vit_max" else hidden.mean(1)
        tokens = model.encode_vision(slices, sizes).float()  # [n, Q, D_llm]
    return tokens.max(1).values if pool == "resampler_max" else tokens.mean(1)


def accuracy(model, head, pool, test: tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]) -> float:
    """Share of `test` = (slices, grids, labels) the head names right."""
    slices, sizes, labels = test
    with torch.no_grad():
        logits = head(pooled(model, pool, slices, sizes))
    return (logits.argmax(-1) == labels).float().mean().item()


def train_probe(model: MiniCPMV, processor: Processor, pool: str, args: ProbeArgs) -> list[dict[str, float]]:
    """A linear head on `pool`ed features, trained with `model`'s vision tower and resampler (in place; only
    the head with args.frozen); held-out accuracy curve."""
    if pool not in POOLS:
        raise ValueError(f"pool {pool!r}; use one of {POOLS}")
    torch.manual_seed(args.seed)
    width = model.config.vision.hidden_size if pool.startswith("vit") else model.config.llm.hidden_size
    head = torch.nn.Linear(width, 3 if args.task == "shape" else 6)
    params = [*head.parameters()] if args.frozen else [*model.vpm.parameters(), *model.resampler.parameters(),
                                                        *head.parameters()]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.1, betas=(0.9, 0.95))
    images, labels = zip(*(labelled(args.task, "test", i) for i in range(args.eval_n)))
    test = (*slices_of(processor, list(images)), torch.tensor(labels))
    curve, began = [], time.perf_counter()
    for step in range(1, args.steps + 1):
        batch = [labelled(args.task, "train", (step - 1) * args.batch_size + i) for i in range(args.batch_size)]
        images, labels = zip(*batch)
        with torch.set_grad_enabled(not args.frozen):
            features = pooled(model, pool, *slices_of(processor, list(images)))  # [batch, width]
        loss = torch.nn.functional.cross_entropy(head(features), torch.tensor(labels))
        optimizer_step(loss, opt, params)
        if step % args.eval_every == 0 or step == args.steps:
            curve.append({"step": step, "loss": loss.item(), "accuracy": accuracy(model, head, pool, test),
                          "seconds": time.perf_counter() - began})
            print(f"[probe] {pool} step {step}: accuracy {curve[-1]['accuracy']:.2f}", file=sys.stderr)
    return curve


def attention_spread(model: MiniCPMV, processor: Processor, n_images: int = 8) -> dict[str, float]:
    """The resampler's attention on `n_images` test `color` images (one slice each, no time embedding).

    effective_keys: 1 / sum(a^2) per query and head, averaged (64 = uniform over an 8 x 8 slice, 1 = one
    patch); distinct_patches: how many different patches are some query's argmax, per image (over heads).
    Example: uniform attention over 64 patches -> 64.0 and (ties) 1 patch.
    """
    r = model.resampler
    heads, eff, distinct = r.cfg.num_heads, [], []
    with torch.no_grad():
        q = r.queries()  # [Q, D], the same for every image
        hd = q.shape[-1] // heads
        for i in range(n_images):
            slices, sizes = slices_of(processor, [make("color", "test", i)["image"]])
            x = model.vpm(slices, sizes).hidden[0]  # [L, D_vision]
            k, _ = r.keys_values(x, [tuple(sizes[0].tolist())])  # [L, D]
            scores = torch.einsum("qhd,khd->hqk", q.view(-1, heads, hd), k.view(-1, heads, hd)) / hd**0.5
            a = scores.softmax(-1)  # [H, Q, L]
            eff.append((1 / (a**2).sum(-1)).mean().item())
            distinct.append(len(set(a.argmax(-1).flatten().tolist())))
    return {"effective_keys": sum(eff) / len(eff), "distinct_patches": sum(distinct) / len(distinct),
            "patches": int(x.shape[0])}


def main(args: ProbeArgs) -> dict:
    torch.set_num_threads(args.threads)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = MiniCPMV.from_pretrained(args.model, dtype=torch.float32)
    processor = Processor.from_pretrained(args.model)
    result = {"args": asdict(args), "attention": attention_spread(model, processor),
              "curves": {pool: train_probe(copy.deepcopy(model), processor, pool, args)
                         for pool in args.pools if args.steps}}
    (out / "probe.json").write_text(json.dumps(result, indent=2) + "\n")
    att = result["attention"]
    lines = [f"resampler attention of {args.model}: {att['effective_keys']:.1f} effective keys of {att['patches']} "
             f"per query and head, {att['distinct_patches']:.1f} distinct patches looked at per image", ""]
    if result["curves"]:
        steps = [p["step"] for p in next(iter(result["curves"].values()))]
        lines += ["| pool | " + " | ".join(f"step {s}" for s in steps) + " |", "|---" * (len(steps) + 1) + "|"]
        lines += [f"| {pool} | " + " | ".join(f"{p['accuracy']:.0%}" for p in curve) + " |"
                  for pool, curve in result["curves"].items()]
    (out / "probe.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return result


if __name__ == "__main__":
    main(parse_args(ProbeArgs, sys.argv[1:], prog="recipes/vision_probe.py"))
