"""The embedded demo model, end to end: synthetic data -> tokenizer + random init -> (optional) vision
pre-training on caption tags and on a label per patch, the stand-in for a pre-trained SigLIP tower ->
pre-training stages 1, 2, 3 -> (optional) SFT on the families the mix learns badly -> SFT (short
and long-CoT, videos with 3D packing) -> hybrid GRPO -> held-out evaluation -> the shipped bfloat16 copy in
minicpmv/assets/demo.

    .venv/bin/python recipes/demo.py --config configs/demo.toml            # or: bash runs/demo.sh
    .venv/bin/python recipes/demo.py --config configs/demo.toml --seed 1 --out-dir out/demo-seed1 --no-ship

Every stage is a call of the shared recipes (recipes/pretrain.py, recipes/sft.py) with its own run
folder under --out-dir (checkpoints, metrics.jsonl, the exported model); a finished stage is skipped
when the pipeline is run again. The model after SFT and the model after GRPO are both evaluated
(`eval_sft.md`, `eval_rl.md`); the last one is shipped.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from minicpmv.data.synthetic import FAMILIES, corpus, split_path, write_split
from minicpmv.data.synthetic.evaluate import as_json, evaluate, markdown_table
from minicpmv.demo import DEMO_DIR, init_model_dir
from minicpmv.model.minicpmv import MiniCPMV
from minicpmv.processor.processor import Processor
from minicpmv.train.cli import PretrainArgs, SFTArgs, VisionDenseArgs, VisionTagArgs, load_recipe, parse_args

SHIPPED_FILES = ("config.json", "model.safetensors", "tokenizer.json", "preprocessor_config.json")


@dataclass
class DemoArgs:
    """The demo pipeline (all sizes chosen for a 2-core CPU)."""

    out_dir: str = "out/demo"  # run folder: data/, init/, tags/, dense/, stage1..3/, sft/, rl/, eval_*.json, ...
    seed: int = 0  # data, initialisation and training seed
    tokenizer_per_family: int = 200  # samples per task family whose text trains the BPE tokenizer
    caption_per_family: int = 60  # pre-training captions per task family
    sft_per_family: int = 200  # SFT samples per task family
    long_share: float = 0.3  # share of SFT samples with a <think> trace
    video_packing: list[str] = field(default_factory=lambda: ["3"])  # frames per 32 visual tokens in the SFT
    # videos (3D packing); several values = a seeded choice per video (chat-time automatic packing gives short clips 1)
    batch_size: int = 8
    max_length: int = 512
    vision_tag_steps: int = 10  # vision pre-training on caption tags before stage 1 (recipes/vision_tags.py; 0 = skip)
    vision_tag_eval_n: int = 2  # captioned images it holds out and scores (the dense stage scores as many)
    vision_dense_steps: int = 10  # then a label per ViT patch (recipes/vision_dense.py; 0 = skip)
    vision_dense_text_share: float = 0.5  # share of text images in the dense stage (the rest: shapes)
    stage_steps: list[str] = field(default_factory=lambda: ["15", "15", "60"])  # steps of stages 1, 2, 3 (0 = skip)
    vision_lr: float = 0.0  # peak LR of the vision tower and resampler in stages 1-3 and SFT (0 = the stage's LR)
    pretrain_lr: float = 2e-3
    focus_families: list[str] = field(default_factory=list)  # SFT on these families alone before the mixed SFT
    # (short answers): motion direction, never learnt in the 12-family mix, is learnt alone in a few hundred steps
    # and kept through the mix (docs/demo-model.md, the fourteenth run)
    focus_per_family: int = 1000  # focus samples per family (the SFT split's seed: the same images, short form)
    focus_steps: int = 0  # 0 = no focus stage
    boost_families: list[str] = field(default_factory=list)  # extra mixed SFT samples of these families (a seed of
    # their own), raising their share of the mixed SFT
    boost_per_family: int = 0  # extra samples per boosted family (0 = none)
    sft_steps: int = 200
    sft_lr: float = 1e-3
    sft_loss_per_sample: bool = False  # mixed SFT loss: mean of each sample's token mean (short answers weigh as much
    # as long traces) instead of the mean over all supervised tokens
    rl_steps: int = 10  # hybrid GRPO steps after SFT (0 = ship the SFT model)
    rl_prompts: int = 200  # arithmetic prompts for GRPO
    rl_prompts_per_step: int = 8
    rl_group_size: int = 4
    rl_lr: float = 1e-5
    rl_max_new_tokens: int = 64
    precision: str = "bf16"  # autocast dtype of every training stage (bf16: the CPU's AMX/AVX512-BF16 units; fp32)
    packing: bool = True  # pack each batch into rows of max_length tokens (no padding compute)
    threads: int = 0  # torch CPU threads (0 = torch's default: every core)
    eval_per_family: int = 10  # held-out test samples per family and mode
    ship: bool = False  # copy the final model (bfloat16) to minicpmv/assets/demo with SHA256SUMS


def build_data(args: DemoArgs, out: Path) -> dict[str, Path]:
    """The training files (kept when already written with as many samples: the splits are deterministic)."""
    data, families, packing = out / "data", list(FAMILIES), [int(p) for p in args.video_packing]
    plans = {
        "caption": (families, args.caption_per_family, args.seed, {"form": "caption"}),
        "sft": (families, args.sft_per_family, args.seed,
                {"form": "mixed", "long_share": args.long_share, "packing": packing}),
        # GRPO prompts: fresh arithmetic samples (a different seed), the answer is the reference
        "rl": (["arith"], args.rl_prompts, args.seed + 1000, {"form": "short"}),
    }
    if args.focus_steps:
        plans["focus"] = (list(args.focus_families), args.focus_per_family, args.seed,
                          {"form": "short", "packing": packing})
    if args.boost_per_family and args.boost_families:
        plans["boost"] = (list(args.boost_families), args.boost_per_family, args.seed + 2000, plans["sft"][3])
    files = {}
    for name, (fams, n, seed, options) in plans.items():
        own = name in ("focus", "boost")
        folder = data / "_".join([name, *fams]) if own else data  # its file name could be another split's
        done = split_path(folder, "train", options["form"], options.get("packing", 3), seed)
        whole = done.is_file() and len(done.read_text().splitlines()) == len(fams) * n  # not one of another size
        files[name] = done if whole else write_split(folder, fams, "train", n, seed=seed, **options)
    return files


def run_stage(name: str, recipe: str, args, out: Path) -> Path:
    """One recipe call; skipped when its exported model is already there. Returns the model folder."""
    model_dir = Path(args.out_dir) / "model"
    if (model_dir / "config.json").is_file():
        print(f"[demo] {name}: done before ({model_dir})", file=sys.stderr)
        return model_dir
    began = time.perf_counter()
    result = load_recipe(recipe).main(args)
    result["wall_s"] = time.perf_counter() - began
    (out / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"[demo] {name}: {result['steps']} steps in {result['wall_s']:.0f} s", file=sys.stderr)
    return model_dir


def train(args: DemoArgs, out: Path, data: dict[str, Path]) -> Path:
    """init -> caption tags (vision) -> patch labels (vision) -> stage 1 (resampler) -> stage 2 (+ vision) ->
    stage 3 (all) -> focus SFT (a few families alone) -> SFT; the SFT model folder."""
    init = out / "init"
    if not (init / "config.json").is_file():
        init_model_dir(init, corpus(args.tokenizer_per_family, args.seed), seed=args.seed)
    common = {"batch_size": args.batch_size, "max_length": args.max_length, "seed": args.seed, "parallel": "ddp",
              "precision": args.precision, "packing": args.packing, "plot": False, "warmup_steps": 3,
              "lr_vision": args.vision_lr, "lr_resampler": args.vision_lr}
    model = init
    if args.vision_tag_steps:
        tag_args = VisionTagArgs(model=str(model), data=[str(data["caption"])], steps=args.vision_tag_steps,
                                 batch_size=args.batch_size, precision=args.precision, eval_n=args.vision_tag_eval_n,
                                 eval_every=max(1, args.vision_tag_steps // 4), seed=args.seed,
                                 out_dir=str(out / "tags"))
        model = run_stage("tags", "vision_tags", tag_args, out)
    if args.vision_dense_steps:
        dense_args = VisionDenseArgs(model=str(model), steps=args.vision_dense_steps, batch_size=args.batch_size,
                                     text_share=args.vision_dense_text_share, precision=args.precision,
                                     eval_n=args.vision_tag_eval_n, eval_every=max(1, args.vision_dense_steps // 4),
                                     seed=args.seed, out_dir=str(out / "dense"))
        model = run_stage("dense", "vision_dense", dense_args, out)
    for stage, steps in enumerate(int(s) for s in args.stage_steps):
        if steps == 0:  # a skipped stage: the next one starts from the previous model
            print(f"[demo] stage{stage + 1}: skipped (0 steps)", file=sys.stderr)
            continue
        stage_args = PretrainArgs(model=str(model), data=[str(data["caption"])], stage=stage + 1, steps=steps,
                                  lr=args.pretrain_lr, decay_steps=steps // 3, out_dir=str(out / f"stage{stage + 1}"),
                                  **common)
        model = run_stage(f"stage{stage + 1}", "pretrain", stage_args, out)
    if args.focus_steps:
        focus_args = SFTArgs(model=str(model), data=[str(data["focus"])], steps=args.focus_steps, lr=args.sft_lr,
                             schedule="cosine", out_dir=str(out / "focus"), **common)
        model = run_stage("focus", "sft", focus_args, out)
    sft_data = [str(data["sft"])] + ([str(data["boost"])] if "boost" in data else [])
    sft_args = SFTArgs(model=str(model), data=sft_data, steps=args.sft_steps, lr=args.sft_lr,
                       schedule="cosine", loss_per_sample=args.sft_loss_per_sample, out_dir=str(out / "sft"), **common)
    return run_stage("sft", "sft", sft_args, out)


def reinforce(args: DemoArgs, out: Path, data: dict[str, Path], sft_dir: Path) -> Path:
    """Hybrid short/long GRPO on arithmetic prompts (recipes/rl.py); the RL model folder."""
    from minicpmv.rl.cli import RLArgs

    rl_args = RLArgs(model=str(sft_dir), data=[str(data["rl"])], prompts_per_step=args.rl_prompts_per_step,
                     group_size=args.rl_group_size, max_new_tokens=args.rl_max_new_tokens, steps=args.rl_steps,
                     lr=args.rl_lr, precision=args.precision, seed=args.seed, out_dir=str(out / "rl"), plot=False,
                     eval_every=0)
    return run_stage("rl", "rl", rl_args, out)


def run_eval(args: DemoArgs, model_dir: Path, out: Path, name: str) -> str:
    model = MiniCPMV.from_pretrained(model_dir, dtype=torch.float32)
    scores = evaluate(model, Processor.from_pretrained(model_dir), per_family=args.eval_per_family, seed=0)
    (out / f"eval_{name}.json").write_text(json.dumps(as_json(scores), indent=2) + "\n")
    table = markdown_table(scores)
    (out / f"eval_{name}.md").write_text(table + "\n")
    return table


def ship(model_dir: Path, dest: Path = DEMO_DIR) -> Path:
    """bfloat16 weights + tokenizer + configs in `dest`, and SHA256SUMS over them."""
    dest.mkdir(parents=True, exist_ok=True)
    MiniCPMV.from_pretrained(model_dir, dtype=torch.bfloat16).save_pretrained(dest)
    for name in ("tokenizer.json", "preprocessor_config.json"):
        shutil.copy2(model_dir / name, dest / name)
    sums = [f"{hashlib.sha256((dest / n).read_bytes()).hexdigest()}  {n}" for n in SHIPPED_FILES]
    (dest / "SHA256SUMS").write_text("\n".join(sums) + "\n")
    return dest


def main(args: DemoArgs) -> dict:
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if args.threads:
        torch.set_num_threads(args.threads)
    (out / "demo_config.json").write_text(json.dumps(asdict(args), indent=2) + "\n")
    timings, began = {}, time.perf_counter()
    data = build_data(args, out)
    timings["data_s"] = time.perf_counter() - began
    model_dir = train(args, out, data)
    timings["train_s"] = time.perf_counter() - began - timings["data_s"]
    print(run_eval(args, model_dir, out, "sft"), file=sys.stderr)
    if args.rl_steps:
        at = time.perf_counter()
        model_dir = reinforce(args, out, data, model_dir)
        timings["rl_s"] = time.perf_counter() - at
        print(run_eval(args, model_dir, out, "rl"), file=sys.stderr)
    timings["total_s"] = time.perf_counter() - began
    (out / "timings.json").write_text(json.dumps(timings, indent=2) + "\n")
    if args.ship:
        print(f"[demo] shipped {ship(model_dir)}", file=sys.stderr)
    return {"model": str(model_dir), **timings}


if __name__ == "__main__":
    main(parse_args(DemoArgs, sys.argv[1:], prog="recipes/demo.py"))
