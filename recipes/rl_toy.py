"""A tiny end-to-end RL run on CPU (issue 7, "must show"): SFT briefly, then hybrid GRPO, then DPO,
on a synthetic verifiable task, with curves written to docs/figures/.

    python recipes/rl_toy.py                      # everything: 2 min on 2 idle CPU cores, ~10 min on busy ones
    python recipes/rl_toy.py --sft-steps 20 --rl-steps 5 --dpo-steps 4 --out-dir /tmp/toy --figures ""   # quick look

The task: a 56x28 image shows two digits 0-4 (a 3x5 bitmap font scaled 4x, shifted by up to 1 px,
pixel noise); "What is the sum of the two numbers?" -> e.g. "7". Long mode reasons first
("<think>\nThe numbers are 3 and 4. 3 + 4 = 7.\n</think>\n\n7"), short mode answers at once.
The model is MiniCPM-V 4.5 in miniature: a byte-level BPE tokenizer trained on the task text with
every MiniCPM-V special token (so the real Processor, chat template and engine run unchanged), a
2-layer ViT (width 32) on 14-pixel patches (8 per image), a resampler with 8 queries and a 2-layer
Qwen3 of width 64, initialised N(0, 1/fan_in). Stages, each the real recipe: `recipes/sft.py`
(both modes plus "Which two numbers does the image show?", stopped early so the model reads the
digits but is far from perfect) -> `recipes/rl.py` (rule-verified rewards, held-out greedy accuracy
per mode every few steps) -> `recipes/dpo.py` on synthetic preference pairs for the describe
question (the right digits vs one hallucinated digit), margin measured on held-out pairs.
Held-out prompts are new images (new noise and shifts) of the same task.
"""

from __future__ import annotations

import json
import random
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from minicpmv.train.cli import load_recipe, parse_args

# 3x5 bitmaps of the digits 0-9, rows top to bottom ('#' = ink)
FONT = {
    0: ["###", "#.#", "#.#", "#.#", "###"], 1: [".#.", "##.", ".#.", ".#.", "###"],
    2: ["###", "..#", "###", "#..", "###"], 3: ["###", "..#", "###", "..#", "###"],
    4: ["#.#", "#.#", "###", "..#", "..#"], 5: ["###", "#..", "###", "..#", "###"],
    6: ["###", "#..", "###", "#.#", "###"], 7: ["###", "..#", "..#", ".#.", ".#."],
    8: ["###", "#.#", "###", "#.#", "###"], 9: ["###", "#.#", "###", "..#", "###"],
}
SUM_QUESTION = "What is the sum of the two numbers?"
DESCRIBE_QUESTION = "Which two numbers does the image show?"
SCALE, CELL, SIDE = 4, 28, 40  # pixels per font dot, cell per digit, processor scale_resolution


@dataclass
class ToyArgs:
    """The synthetic sum task: SFT -> hybrid GRPO -> DPO on CPU."""

    out_dir: str = "runs/rl_toy"  # work folder (tokenizer, model, data, the three runs)
    figures: str = "docs/figures"  # where rl_*.png go ("" = only inside out_dir)
    digits: int = 5  # the images show digits 0 .. digits - 1
    n_sft: int = 3000  # SFT samples: half describe questions, a quarter each sum in long / short mode
    n_rl: int = 2000  # RL prompts
    n_eval: int = 128  # held-out prompts (and held-out DPO pairs)
    n_pairs: int = 600  # DPO training pairs
    sft_steps: int = 130  # stopped early: the model reads the digits but is far from perfect
    sft_lr: float = 1e-3
    rl_steps: int = 60
    rl_lr: float = 1e-4
    prompts_per_step: int = 32
    group_size: int = 8
    eval_every: int = 5
    dpo_steps: int = 40
    dpo_lr: float = 1e-4
    seed: int = 0
    threads: int = 1  # torch CPU threads: the model is so small that one thread is fastest (and fair on a busy machine)


def draw_pair(a: int, b: int, rng: random.Random) -> Image.Image:
    """A 56x28 RGB image: digit a in the left 28x28 cell, b in the right one (light ink on a dark
    background, each digit shifted by up to 1 px, uniform pixel noise of +-40 grey levels)."""
    pixels = np.full((CELL, 2 * CELL), 40, dtype=np.int16)  # [28, 56]
    for k, digit in enumerate((a, b)):
        left, top = k * CELL + 8 + rng.randint(-1, 1), 4 + rng.randint(-1, 1)
        for r, row in enumerate(FONT[digit]):
            for c, dot in enumerate(row):
                if dot == "#":
                    pixels[top + r * SCALE: top + (r + 1) * SCALE, left + c * SCALE: left + (c + 1) * SCALE] = 210
    noise = np.random.default_rng(rng.randrange(2**32)).integers(-40, 41, (CELL, 2 * CELL, 3))  # [28, 56, 3]
    return Image.fromarray(np.clip(pixels[:, :, None] + noise, 0, 255).astype(np.uint8))


def reasoning(a: int, b: int) -> str:
    return f"The numbers are {a} and {b}. {a} + {b} = {a + b}."


def write_task(folder: Path, n: int, seed: int, kind: str, digits: int = 10) -> Path:
    """Records in the fine-tune format with images under folder/img: kind 'sft' (both modes and
    describe questions), 'rl' (sum question + reference answer) or 'pairs' (describe preference pairs);
    the digits shown are 0 .. digits - 1."""
    rng = random.Random(seed)
    (folder / "img").mkdir(parents=True, exist_ok=True)
    path = folder / f"{kind}.jsonl"
    with open(path, "w") as f:
        for i in range(n):
            a, b = rng.randrange(digits), rng.randrange(digits)
            image = f"img/{kind}_{i}.png"
            draw_pair(a, b, rng).save(folder / image)
            f.write(json.dumps({"id": str(i), "image": image, **_record(kind, a, b, rng, digits)}) + "\n")
    return path


def _record(kind: str, a: int, b: int, rng: random.Random, digits: int) -> dict:
    if kind == "pairs":
        wrong = rng.choice([d for d in range(digits) if d != b])
        return {"conversations": [{"role": "user", "content": DESCRIBE_QUESTION}],
                "chosen": f"{a} and {b}", "rejected": f"{a} and {wrong}"}
    if kind == "rl":
        return {"conversations": [{"role": "user", "content": SUM_QUESTION},
                                  {"role": "assistant", "content": str(a + b)}]}
    roll = rng.random()
    if roll < 0.5:
        question, answer = DESCRIBE_QUESTION, f"{a} and {b}"
    elif roll < 0.75:
        question, answer = SUM_QUESTION, str(a + b)
    else:
        question, answer = SUM_QUESTION, f"<think>\n{reasoning(a, b)}\n</think>\n\n{a + b}"
    return {"conversations": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}


def train_tokenizer(path: Path, vocab_size: int = 320) -> Path:
    """Byte-level BPE on the task's chat text, with every special token the package resolves by name."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

    from minicpmv.processor.tokenizer import SPECIAL_TOKENS

    specials = [t for t in SPECIAL_TOKENS.values() if t not in ("<think>", "</think>")]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    texts = [f"<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n<think>\n{reasoning(a, b)}\n</think>\n\n{a + b}"
             f"<|im_end|>\n{a} and {b} yes no Yes No" for q in (SUM_QUESTION, DESCRIBE_QUESTION)
             for a in range(10) for b in range(10)]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    tok.add_tokens([AddedToken("<think>", special=False), AddedToken("</think>", special=False)])
    tok.save(str(path))
    return path


def make_model(folder: Path, seed: int) -> Path:
    """A randomly initialised miniature MiniCPM-V folder (config, weights, tokenizer, pre-processor config)."""
    import torch

    from minicpmv.config import LLMConfig, ModelConfig, ProcessorConfig, ResamplerConfig, VisionConfig
    from minicpmv.model.minicpmv import MiniCPMV
    from minicpmv.processor.tokenizer import Tokenizer

    folder.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer.from_file(train_tokenizer(folder / "tokenizer.json"))
    queries = 8
    config = ModelConfig(
        vision=VisionConfig(hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2, image_size=56),
        resampler=ResamplerConfig(num_queries=queries, embed_dim=64, num_heads=2, kv_dim=32),
        llm=LLMConfig(vocab_size=tok.vocab_size, hidden_size=64, intermediate_size=192, num_layers=2, num_heads=4,
                      num_kv_heads=2, head_dim=16, max_position_embeddings=512, bos_token_id=tok.pad_id,
                      eos_token_id=tok.im_end_id),
        query_num=queries, scale_resolution=SIDE, max_slice_nums=1, torch_dtype="float32", name_or_path="rl-toy",
    )
    model = MiniCPMV.from_config(config, seed=seed)
    with torch.no_grad():  # N(0, 1 / fan_in) instead of N(0, 0.02): at width 32-64, 0.02 makes the visual
        for p in model.parameters():  # signal so weak that SFT learns the text prior long before it reads the digits
            if p.dim() >= 2:
                p.normal_(0.0, p[0].numel() ** -0.5, generator=torch.Generator().manual_seed(seed))
    model.save_pretrained(folder)
    pre = ProcessorConfig(max_slice_nums=1, scale_resolution=SIDE, use_image_id=False, image_feature_size=queries)
    (folder / "preprocessor_config.json").write_text(json.dumps(pre.to_hf_dict(), indent=2) + "\n")
    return folder


def main(args: ToyArgs) -> dict:
    import torch

    from minicpmv.rl.cli import DPOArgs, RLArgs
    from minicpmv.train.cli import SFTArgs

    torch.set_num_threads(args.threads)
    out = Path(args.out_dir)
    shutil.rmtree(out, ignore_errors=True)
    data = out / "data"
    base = make_model(out / "base", args.seed)
    sft_data = write_task(data, args.n_sft, args.seed + 1, "sft", args.digits)
    rl_data = write_task(data / "rl", args.n_rl, args.seed + 2, "rl", args.digits)
    held_out = write_task(data / "heldout", args.n_eval, args.seed + 3, "rl", args.digits)
    pairs = write_task(data / "pairs", args.n_pairs, args.seed + 4, "pairs", args.digits)
    held_pairs = write_task(data / "heldout_pairs", args.n_eval, args.seed + 5, "pairs", args.digits)

    sft = load_recipe("sft").main(SFTArgs(
        model=str(base), data=[str(sft_data)], max_slice_nums=1, max_length=128, batch_size=32, steps=args.sft_steps,
        lr=args.sft_lr, weight_decay=0.0, schedule="constant", parallel="ddp", seed=args.seed,
        out_dir=str(out / "sft"), plot=False, export=True))
    rl = load_recipe("rl").main(RLArgs(
        model=sft["export"], data=[str(rl_data)], eval_data=[str(held_out)], max_slice_nums=1,
        prompts_per_step=args.prompts_per_step, group_size=args.group_size, max_new_tokens=40, steps=args.rl_steps,
        lr=args.rl_lr, eval_every=args.eval_every, seed=args.seed, out_dir=str(out / "rl"), plot=True, export=True))
    dpo = load_recipe("dpo").main(DPOArgs(
        model=rl["export"], data=[str(pairs)], eval_data=[str(held_pairs)], max_slice_nums=1, batch_size=16,
        steps=args.dpo_steps, lr=args.dpo_lr, eval_every=max(args.dpo_steps // 8, 1), seed=args.seed,
        out_dir=str(out / "dpo"), plot=True, export=False))
    summary = toy_summary(out)
    if args.figures:
        figures = Path(args.figures)
        figures.mkdir(parents=True, exist_ok=True)
        for src, name in ((rl.get("plot"), "rl_curves.png"), (dpo.get("plot"), "rl_dpo_margin.png")):
            if src:
                shutil.copy(src, figures / name)
    print(json.dumps(summary, indent=2))
    return summary


def toy_summary(out: Path) -> dict:
    """Held-out numbers at the start and the end of the RL and DPO runs."""
    from minicpmv.train.loop import read_metrics

    rl = [r for r in read_metrics(out / "rl") if "eval/long/accuracy" in r]
    dpo = [r for r in read_metrics(out / "dpo") if "eval/margin" in r]
    keys = ("eval/long/accuracy", "eval/short/accuracy", "eval/long/format", "eval/short/format", "eval/long/length",
            "eval/short/length")
    return {
        "rl": {k: [rl[0][k], rl[-1][k]] for k in keys},
        "dpo": {k: [dpo[0][k], dpo[-1][k]] for k in ("eval/margin", "eval/accuracy")},
    }


if __name__ == "__main__":
    main(parse_args(ToyArgs, sys.argv[1:], prog="recipes/rl_toy.py"))
