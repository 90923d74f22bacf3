"""The paper's Table 5 in miniature: does 3D packing pay on the video tasks at a fixed visual-token budget?

    .venv/bin/python recipes/packing_ablation.py --base out/demo/stage3/model     # ~15-25 min on 2 CPU cores

Two fine-tunes of the same pre-trained model (default: the demo pipeline's stage-3 checkpoint), with the same
data seeds, steps, batch and learning rate, on the video families of the synthetic suite:

* packed: all 6 frames of each clip, 3 frames per resampler group -> 2 groups = 2 x 32 visual tokens;
* single: 2 of the 6 frames (the first and the last), 1 frame per group -> 2 groups = 2 x 32 visual tokens.

Same number of visual tokens, so the LLM does the same work; the packed model sees 3x more frames (the
resampler folds them together). Both are then scored on the held-out test split, each seeing its clips
the way it was trained, in short mode, greedily: accuracy per family, visual tokens and latency per sample.
Output: `<out-dir>/ablation.md` (the table docs/demo-model.md quotes) and `ablation.json`.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from minicpmv.data.synthetic import FAMILIES
from minicpmv.data.synthetic.evaluate import evaluate
from minicpmv.data.synthetic.suite import VIDEO_FAMILIES, iter_split, save_record
from minicpmv.data.synthetic.tasks import with_mode
from minicpmv.model.minicpmv import MiniCPMV
from minicpmv.processor.processor import Processor
from minicpmv.train.cli import SFTArgs, load_recipe, parse_args

VARIANTS = {"packed": (None, 3), "single": ((0, -1), 1)}  # name -> (kept frame indices or None = all, frames per group)


@dataclass
class AblationArgs:
    """3D packing vs one frame per group at the same visual-token budget (video families only)."""

    base: str = "out/demo/stage3/model"  # the model both variants start from
    out_dir: str = "out/packing_ablation"
    per_family: int = 400  # training clips per video family
    steps: int = 300
    batch_size: int = 16
    lr: float = 1e-3
    eval_per_family: int = 40
    seed: int = 0


def reshape_clip(sample: dict[str, Any], keep: tuple[int, ...] | None, packing: int) -> dict[str, Any]:
    """The clip with only the frames `keep` (None = all), grouped `packing` per span.

    Example: 6 frames at ids [0, 2, 4, 6, 8, 10] in groups [[0, 2, 4], [6, 8, 10]]; keep (0, -1), packing 1
    -> 2 frames with ids [[0], [10]] (the kept frames keep their timestamps).
    """
    video = sample["video"]
    ids = [t for group in video["temporal_ids"] for t in group]
    index = list(range(len(ids))) if keep is None else [k % len(ids) for k in keep]
    frames, kept = [video["frames"][i] for i in index], [ids[i] for i in index]
    groups = [kept[i:i + packing] for i in range(0, len(kept), packing)]
    return {**sample, "video": {"frames": frames, "temporal_ids": groups}}


def write_variant(out: Path, name: str, families: list[str], args: AblationArgs) -> Path:
    """The training file of one variant (same clips and answers as the other variant, short mode)."""
    keep, packing = VARIANTS[name]
    path, media = out / f"train_{name}.jsonl", out / f"train_{name}_media"
    if path.is_file():
        return path
    media.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".partial"), "w") as f:
        for sample in iter_split(families, "train", args.per_family, args.seed):
            sample = with_mode(reshape_clip(sample, keep, packing), "short")
            f.write(json.dumps(save_record(sample, media, f"{sample['family']}_{sample['index']:06d}")) + "\n")
    path.with_suffix(".partial").replace(path)
    return path


def train_variant(name: str, data: Path, args: AblationArgs, out: Path) -> Path:
    model_dir = out / name / "model"
    if not (model_dir / "config.json").is_file():
        sft = SFTArgs(model=args.base, data=[str(data)], steps=args.steps, lr=args.lr, batch_size=args.batch_size,
                      schedule="cosine", warmup_steps=min(10, args.steps // 10), seed=args.seed, parallel="ddp", precision="fp32",
                      plot=False, out_dir=str(out / name))
        load_recipe("sft").main(sft)
    return model_dir


def table(results: dict[str, list]) -> str:
    """| family | packed acc | single acc | visual tokens | latency | ... from the per-variant FamilyScores."""
    by = {(name, s.family): s for name, scores in results.items() for s in scores}
    families = list(dict.fromkeys(s.family for scores in results.values() for s in scores))
    lines = ["| family | packed (6 frames, 3 per group): accuracy | single (2 frames, 1 per group): accuracy "
             "| visual tokens packed / single | latency packed / single (s) |", "|---|---|---|---|---|"]
    for f in families + ["mean"]:
        rows = [[by[(n, g)] for g in families] if f == "mean" else [by[(n, f)]] for n in ("packed", "single")]
        acc = [f"{100 * sum(s.accuracy for s in r) / len(r):.0f}%" for r in rows]
        tok = [f"{sum(s.visual_tokens for s in r) / len(r):.0f}" for r in rows]
        lat = [f"{sum(s.latency_s for s in r) / len(r):.2f}" for r in rows]
        lines.append(f"| {f} | {acc[0]} | {acc[1]} | {' / '.join(tok)} | {' / '.join(lat)} |")
    return "\n".join(lines)


def main(args: AblationArgs) -> dict:
    torch.manual_seed(args.seed)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    families = [f for f in VIDEO_FAMILIES if f in FAMILIES]
    results = {}
    for name, (keep, packing) in VARIANTS.items():
        model_dir = train_variant(name, write_variant(out, name, families, args), args, out)
        model = MiniCPMV.from_pretrained(model_dir, dtype=torch.float32)
        results[name] = evaluate(model, Processor.from_pretrained(model_dir), families, args.eval_per_family,
                                 modes=("short",), seed=args.seed,
                                 transform=lambda s, keep=keep, packing=packing: reshape_clip(s, keep, packing))
    text = table(results)
    (out / "ablation.md").write_text(text + "\n")
    (out / "ablation.json").write_text(json.dumps({"args": asdict(args), "results": {
        n: [asdict(s) for s in scores] for n, scores in results.items()}}, indent=2) + "\n")
    print(text)
    return results


if __name__ == "__main__":
    main(parse_args(AblationArgs, sys.argv[1:], prog="recipes/packing_ablation.py"))
