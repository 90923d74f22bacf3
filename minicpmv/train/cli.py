"""Run arguments of the training recipes and the `minicpmv train ...` commands.

    minicpmv train pretrain --config configs/pretrain_tiny.toml --stage 2 --steps 50
    minicpmv train sft --config configs/sft_lora_tiny.toml
    minicpmv train vision-tags --model out/demo/init --data out/demo/data/train_caption_p3_s0.jsonl
    minicpmv train export runs/sft runs/sft/model        # checkpoint (or run folder) -> official format
    minicpmv train merge-lora --base MODEL --adapter runs/sft/adapter --out merged

Arguments are typed dataclasses; every field is a flag (`max_length` -> `--max-length`, booleans as
`--packing / --no-packing`) and may also come from a TOML or YAML file given with `--config` (keys are
the field names); flags override the file. This module stays light (no torch import) because the
`minicpmv` command builds its parser on every start; the recipes do the heavy imports.
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import re
import sys
import types
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from minicpmv.cli import command_group
from minicpmv.errors import InputError

RECIPES_DIR = Path(__file__).resolve().parents[2] / "recipes"


@dataclass
class TrainArgs:
    """Arguments shared by the pre-training and fine-tuning recipes."""

    # model
    model: str = ""  # model folder (official format) to start from; "" = random init of --preset
    preset: str = "tiny"  # PRESETS name used when --model is ""
    processor: str = ""  # folder with tokenizer.json + preprocessor_config.json ("" = --model)
    # data
    data: list[str] = field(default_factory=list)  # dataset files (.json / .jsonl)
    max_length: int = 2048  # longer samples are skipped (reason too_long); also the packed row length
    max_slice_nums: int = 9  # slices per image
    packing: bool = False  # pack each micro-batch into rows of --max-length tokens
    strict: bool = False  # a bad sample stops the run instead of being skipped and counted
    batch_size: int = 1  # samples per micro-batch per process
    grad_accum: int = 1  # micro-batches per optimizer step
    loss_per_sample: bool = False  # mean of each sample's token-mean loss (a 1-token answer weighs as much as a
    # long trace) instead of the mean over all supervised tokens of the batch
    # optimisation
    steps: int = 100  # optimizer steps
    lr: float = 1e-5  # peak LR of the LLM
    lr_vision: float = 0.0  # peak LR of the vision tower (0 = --lr)
    lr_resampler: float = 0.0  # peak LR of the resampler (0 = --lr)
    weight_decay: float = 0.1
    beta2: float = 0.95  # AdamW beta2 (official fine-tune value)
    clip_grad: float = 1.0  # max global gradient norm (0 = no clipping)
    schedule: str = "cosine"  # wsd | cosine | constant
    warmup_steps: int = 0
    decay_steps: int = 0  # wsd: length of the decay phase
    min_lr_ratio: float = 0.1  # final LR / peak LR
    # system
    parallel: str = "fsdp"  # fsdp (FSDP2 fully_shard) | ddp; the same with one process
    precision: str = "auto"  # auto (bf16 autocast on GPU, fp32 on CPU) | bf16 | fp32
    gradient_checkpointing: bool = False  # recompute LLM layers in backward (less memory)
    seed: int = 0
    # output
    out_dir: str = "runs/train"
    save_every: int = 0  # checkpoint every N steps (0 = only at the end)
    keep_checkpoints: int = 2  # newest checkpoints kept
    resume: bool = True  # continue from <out_dir>/checkpoints/latest when it exists
    tensorboard: bool = False  # also log to <out_dir>/tensorboard
    plot: bool = True  # <out_dir>/loss.png at the end (needs matplotlib)
    export: bool = True  # <out_dir>/model in the official format at the end

    def module_lrs(self) -> dict[str, float]:
        return {"llm": self.lr, "vpm": self.lr_vision or self.lr, "resampler": self.lr_resampler or self.lr}


@dataclass
class PretrainArgs(TrainArgs):
    """Pre-training (training spec §2.1): stage 1 trains the resampler, 2 vision + resampler, 3 all."""

    stage: int = 1  # 1: resampler only | 2: vision + resampler | 3: everything
    decay_data: list[str] = field(default_factory=list)  # data mixed in during the WSD decay phase
    decay_mix: float = 0.0  # share of --decay-data reached at the end of the decay (linear ramp)
    lr: float = 5e-5  # paper: stable LR 5e-5 ...
    min_lr_ratio: float = 0.2  # ... decaying to 1e-5
    schedule: str = "wsd"
    out_dir: str = "runs/pretrain"


@dataclass
class SFTArgs(TrainArgs):
    """Supervised fine-tuning on conversations (the official fine-tune, with video and packing)."""

    tune_vision: bool = True  # train the vision tower (official default)
    tune_llm: bool | None = None  # train the whole LLM (default: yes, unless --lora)
    lora: bool = False  # LoRA adapters on the LLM instead of tuning it
    lora_r: int = 64
    lora_alpha: int = 64
    lora_dropout: float = 0.05
    lora_targets: str = ""  # regex over module names ("" = every LLM attention and MLP projection)
    out_dir: str = "runs/sft"


@dataclass
class VisionTagArgs:
    """Vision pre-training on caption tags: the vision tower + resampler learn each image's caption n-grams.

    Runs before stage 1 of a model trained from scratch (minicpmv/train/tags.py, recipes/vision_tags.py)."""

    model: str = ""  # model folder (official format) to start from, e.g. a fresh init
    data: list[str] = field(default_factory=list)  # caption datasets (.json / .jsonl, official format; the
    # last assistant turn is the caption); records with a video or with other than one image are skipped
    tags: int = 512  # tag vocabulary: the caption word n-grams found in most training images
    ngrams: list[int] = field(default_factory=lambda: [2])  # n-gram sizes within a phrase (1 2 adds words)
    tag_min_count: int = 2  # ... and in at least this many
    steps: int = 1000
    lr: float = 1e-3  # peak LR (warmup 10 steps, cosine to a tenth)
    batch_size: int = 16  # images per step
    weight_decay: float = 0.1
    precision: str = "bf16"  # bf16 autocast | fp32
    eval_n: int = 200  # the last eval_n usable images of --data are held out and scored (exact tag set, F1)
    eval_every: int = 250
    seed: int = 0
    out_dir: str = "runs/vision_tags"  # metrics.jsonl, tags.json (the vocabulary) and model/


@dataclass
class VisionDenseArgs:
    """Dense vision pre-training: every ViT patch learns the object or character it shows (synthetic images).

    Runs after the caption tags and before stage 1 of the demo model (minicpmv/train/dense.py,
    recipes/vision_dense.py)."""

    model: str = ""  # model folder (official format) to start from, e.g. the caption-tag stage's model
    steps: int = 1000
    lr: float = 1e-3  # peak LR (warmup 10 steps, cosine to a tenth)
    batch_size: int = 16  # images per step, generated on the fly
    text_share: float = 0.5  # share of text images (the rest: 1-6 coloured shapes)
    weight_decay: float = 0.1
    precision: str = "bf16"  # bf16 autocast | fp32
    eval_n: int = 200  # held-out images (their own seed), scored every eval_every steps
    eval_every: int = 250
    seed: int = 0
    out_dir: str = "runs/vision_dense"  # metrics.jsonl and model/


# ---- dataclass <-> flags / config file ------------------------------------------------------------------
def build_parser(cls: type, prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=cls.__doc__)
    parser.add_argument("--config", help="TOML or YAML file of field = value; flags given here override it")
    hints, comments = typing.get_type_hints(cls), _field_comments(cls)
    for f in fields(cls):
        flag, typ = "--" + f.name.replace("_", "-"), hints[f.name]
        default = f.default_factory() if f.default is MISSING else f.default
        kwargs: dict[str, Any] = {"default": None, "help": f"{comments.get(f.name, '')} (default: {default!r})"}
        if typ in (bool, bool | None):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
        elif typ in (list[str], list[int]):
            parser.add_argument(flag, nargs="+", type=typing.get_args(typ)[0], **kwargs)
        else:
            parser.add_argument(flag, type=typ, **kwargs)
    return parser


def parse_args(cls: type, argv: list[str] | None = None, prog: str = "train") -> Any:
    """An instance of the dataclass `cls` from `--config FILE` plus flags (flags win)."""
    ns = build_parser(cls, prog).parse_args(argv)
    values = load_config_file(ns.config, cls) if ns.config else {}
    values.update({k: v for k, v in vars(ns).items() if v is not None and k != "config"})
    return cls(**values)


def load_config_file(path: str | Path, cls: type) -> dict[str, Any]:
    """Field values from a TOML (.toml) or YAML (.yaml/.yml) file; unknown keys are an error."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"config file {path} not found")
    if path.suffix == ".toml":
        import tomllib

        values = tomllib.loads(path.read_text())
    elif path.suffix in (".yaml", ".yml"):
        import yaml

        values = yaml.safe_load(path.read_text()) or {}
    else:
        raise InputError(f"config file {path}: use a .toml, .yaml or .yml file")
    values = {k.replace("-", "_"): v for k, v in values.items()}
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise InputError(f"config file {path}: unknown keys {unknown}; known keys: {sorted(known)}")
    return values


def _field_comments(cls: type) -> dict[str, str]:
    """The `# comment` after each field in the class source (used as the flag's help)."""
    comments: dict[str, str] = {}
    for klass in reversed(cls.__mro__[:-1]):
        try:
            source = inspect.getsource(klass)
        except OSError:  # installed without sources: flags simply have no help text
            continue
        for m in re.finditer(r"^\s+(\w+): [^=\n]+=.*?#\s*(.+)$", source, re.M):
            comments[m.group(1)] = m.group(2)
    return comments


def resolved_config(args: Any) -> dict[str, Any]:
    """The run configuration as plain data (printed at start, saved in every checkpoint)."""
    return {"recipe": type(args).__name__, **asdict(args)}


# ---- `minicpmv train ...` -----------------------------------------------------------------------------
def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `train {pretrain,sft,vision-tags,vision-dense,export,merge-lora}` to the `minicpmv` command."""
    sub = command_group(subparsers, "train", "pre-train / fine-tune (with LoRA), export checkpoints, merge LoRA")
    for name, cls in (("pretrain", PretrainArgs), ("sft", SFTArgs), ("vision_tags", VisionTagArgs),
                      ("vision_dense", VisionDenseArgs)):
        command = name.replace("_", "-")  # `minicpmv train vision-tags` runs recipes/vision_tags.py
        p = sub.add_parser(command, help=cls.__doc__.splitlines()[0], parents=[build_parser(cls, command)],
                           add_help=False)
        p.set_defaults(func=lambda ns, name=name, cls=cls: _run_recipe(name, cls, ns))
    p = sub.add_parser("export", help="checkpoint -> model folder in the official format (LoRA merged)")
    p.add_argument("checkpoint", help="a checkpoint folder (step-XXXXXX) or a run folder (its latest checkpoint)")
    p.add_argument("out", help="output model folder")
    p.add_argument("--max-shard-size", default="5GB")
    p.set_defaults(func=_export)
    p = sub.add_parser("merge-lora", help="base model + LoRA adapter folder -> plain model folder")
    p.add_argument("--base", required=True, help="base model folder (official format)")
    p.add_argument("--adapter", required=True, help="adapter folder written by `train sft --lora`")
    p.add_argument("--out", required=True, help="output model folder")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="default: the base model's dtype")
    p.set_defaults(func=_merge_lora)


def load_recipe(name: str) -> types.ModuleType:
    """recipes/<name>.py of the source checkout, imported by path (the library never imports recipes)."""
    path = RECIPES_DIR / f"{name}.py"
    if not path.is_file():
        raise InputError(f"recipe {path} not found: `minicpmv train {name}` runs the recipes of a source checkout")
    spec = importlib.util.spec_from_file_location(f"minicpmv_recipe_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses (with `from __future__ import annotations`) look the module up
    spec.loader.exec_module(module)
    return module


def _run_recipe(name: str, cls: type, ns: argparse.Namespace) -> int:
    values = load_config_file(ns.config, cls) if ns.config else {}
    values.update({f.name: getattr(ns, f.name) for f in fields(cls) if getattr(ns, f.name, None) is not None})
    load_recipe(name).main(cls(**values))
    return 0


def _export(ns: argparse.Namespace) -> int:
    from minicpmv.train import checkpoint

    path = Path(ns.checkpoint)
    if not (path / "trainer.json").is_file():
        found = checkpoint.latest(path)
        if found is None:
            raise InputError(f"{path} is neither a checkpoint folder nor a run folder with checkpoints/latest")
        path = found
    print(f"exported {path} -> {checkpoint.export(path, ns.out, ns.max_shard_size)}", file=sys.stderr)
    return 0


def _merge_lora(ns: argparse.Namespace) -> int:
    import torch

    from minicpmv.train.checkpoint import copy_model_files
    from minicpmv.train.lora import merge_adapter

    model = merge_adapter(ns.base, ns.adapter, getattr(torch, ns.dtype) if ns.dtype else None)
    model.save_pretrained(ns.out)
    copy_model_files(Path(ns.base), Path(ns.out))
    print(f"merged {ns.adapter} into {ns.base} -> {ns.out}", file=sys.stderr)
    return 0
