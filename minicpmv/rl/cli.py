"""Run arguments and commands of the RL stage:

    minicpmv train rl --model runs/sft/model --data rl_prompts.jsonl --eval-data heldout.jsonl
    minicpmv data rlaifv --model runs/rl/model --data prompts.jsonl --out pairs.jsonl
    minicpmv train dpo --model runs/rl/model --data pairs.jsonl

Arguments are typed dataclasses turned into flags (and `--config` TOML/YAML files) by the training
CLI helpers (`minicpmv.train.cli.build_parser`). No torch import here: the `minicpmv` command builds
its parser on every start; the recipes and `build_rlaifv_pairs` do the heavy imports.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from minicpmv.cli import command_group
from minicpmv.errors import InputError
from minicpmv.train.cli import build_parser, load_config_file, load_recipe


@dataclass
class RLArgs:
    """Hybrid short/long GRPO (training spec §5.3; defaults: MiniCPM-V 4.5 and the RLPR recipe)."""

    # model and data
    model: str = ""  # model folder (official format) to start from, e.g. the SFT export
    processor: str = ""  # folder with tokenizer.json + preprocessor_config.json ("" = --model)
    data: list[str] = field(default_factory=list)  # prompt files; the last assistant turn is the reference
    eval_data: list[str] = field(default_factory=list)  # held-out prompt files, evaluated greedily per mode
    max_slice_nums: int = 9  # slices per image
    # rollouts
    prompts_per_step: int = 128  # prompts per step (per process)
    group_size: int = 8  # rollouts per prompt
    long_share: float = 0.5  # share of prompts whose whole group runs in long (thinking) mode
    max_new_tokens: int = 8192  # response length limit
    temperature: float = 1.0  # rollout temperature (top-p 1, top-k off)
    rollout_batch_size: int = 0  # engine rows decoding at once (0 = every rollout of the step)
    rollout_backend: str = "engine"  # engine (our batched engine) | vllm (CUDA + vllm; docs/rl.md)
    vllm_gpu_memory_utilization: float = 0.3  # share of the GPU vLLM takes (the policy trains on the same GPU)
    vllm_refresh_every: int = 1  # steps between vLLM weight refreshes (1 = on-policy)
    vllm_max_model_len: int = 0  # longest prompt + response vLLM plans for (0 = the model's max positions)
    vllm_max_images: int = 8  # images per prompt vLLM reserves room for
    # loss
    clip_low: float = 0.2  # ratio floor 1 - clip_low
    clip_high: float = 0.27  # ratio ceiling 1 + clip_high
    kl_coef: float = 0.0  # k3 KL to the frozen initial model (0 = off, the paper's choice)
    entropy_coef: float = 0.0  # entropy bonus (0 = off, the paper's choice)
    ppo_epochs: int = 1  # passes over a step's rollouts
    mini_batch_size: int = 0  # rollouts per optimizer step (0 = all of the step)
    # rewards
    short_words: int = 3  # references of at most this many words go to the rule verifier, longer ones to RLPR
    repetition_window: int = 10  # words per window of the repetition penalty
    repetition_limit: int = 6  # a window repeated this often costs -1
    reward_model: str = ""  # optional "module:function" scoring (questions, answers) -> floats, weighted 0.5
    std_filter: bool = False  # RLPR curriculum: drop groups whose reward std < beta * EMA(mean std)
    std_filter_beta: float = 0.5
    std_filter_ema: float = 0.99
    std_filter_start: int = 6  # steps before the filter starts
    # optimisation
    steps: int = 100  # RL steps
    lr: float = 1e-6  # constant LR (paper)
    tune_vision: bool = True  # train the vision tower too (the resampler and the LLM always train)
    weight_decay: float = 0.0
    beta2: float = 0.999
    clip_grad: float = 1.0  # max global gradient norm (0 = off)
    precision: str = "auto"  # log-prob passes and updates: auto (bf16 autocast on GPU, fp32 on CPU) | bf16 | fp32
    seed: int = 0
    # output
    eval_every: int = 10  # evaluate the held-out prompts every N steps (and at steps 0 and the end)
    eval_max_new_tokens: int = 0  # 0 = --max-new-tokens
    out_dir: str = "runs/rl"
    save_every: int = 0  # checkpoint every N steps (0 = only at the end)
    keep_checkpoints: int = 2
    resume: bool = True  # continue from <out_dir>/checkpoints/latest when it exists
    plot: bool = True  # <out_dir>/rl_curves.png at the end (needs matplotlib)
    export: bool = True  # <out_dir>/model in the official format at the end


@dataclass
class DPOArgs:
    """DPO on preference pairs against a frozen reference (training spec §5.6: beta 0.1, lr 1e-6, 400 steps)."""

    model: str = ""  # policy to start from (official format); the reference is a frozen copy
    processor: str = ""  # folder with tokenizer.json + preprocessor_config.json ("" = --model)
    data: list[str] = field(default_factory=list)  # pair files (records with 'chosen' and 'rejected')
    eval_data: list[str] = field(default_factory=list)  # held-out pair files: margin and accuracy
    max_slice_nums: int = 9
    batch_size: int = 8  # pairs per step (per process); the paper's global batch is 256
    steps: int = 400
    beta: float = 0.1
    sft_weight: float = 0.0  # weight of the chosen responses' NLL (RLAIF-V SFT_weight)
    lr: float = 1e-6
    schedule: str = "constant"  # wsd | cosine | constant
    warmup_steps: int = 0
    tune_vision: bool = False  # train the vision tower too (the resampler and the LLM always train)
    weight_decay: float = 0.0
    beta2: float = 0.999
    clip_grad: float = 1.0
    precision: str = "auto"  # auto (bf16 autocast on GPU, fp32 on CPU) | bf16 | fp32
    seed: int = 0
    eval_every: int = 20  # held-out margin every N steps (and at steps 0 and the end)
    out_dir: str = "runs/dpo"
    save_every: int = 0
    keep_checkpoints: int = 2
    resume: bool = True
    plot: bool = True  # <out_dir>/dpo_curves.png at the end
    export: bool = True


@dataclass
class RLAIFVArgs:
    """RLAIF-V preference pairs from the policy's own samples (training spec §5.6)."""

    model: str = ""  # the policy that samples (and, by default, splits claims and judges)
    processor: str = ""  # folder with tokenizer.json + preprocessor_config.json ("" = --model)
    data: list[str] = field(default_factory=list)  # prompt files (a final assistant turn is ignored)
    out: str = "rlaifv_pairs.jsonl"  # output pair file (JSONL, media paths absolute)
    samples_per_prompt: int = 10
    temperature: float = 1.0
    max_new_tokens: int = 512
    mode: str = "short"  # template of the sampled responses: short | long
    min_gap: int = 1  # minimum score difference of a pair
    pairs_per_prompt: int = 2
    max_slice_nums: int = 9
    text_model: str = ""  # "module:factory"; factory(model, processor) -> TextModel ("" = our model)
    text_max_new_tokens: int = 256  # completion limit of the default text model (claims, questions)
    judge: str = ""  # "module:factory"; factory(model, processor) -> Judge ("" = our model's P(yes) vs P(no))
    prompts_per_batch: int = 16  # prompts sampled together
    seed: int = 0


def parse(cls: type, argv: list[str] | None = None, prog: str = "rl") -> Any:
    """An instance of `cls` from `--config FILE` plus flags (flags win)."""
    return _from_namespace(cls, build_parser(cls, prog).parse_args(argv))


def _from_namespace(cls: type, ns: argparse.Namespace) -> Any:
    values = load_config_file(ns.config, cls) if getattr(ns, "config", None) else {}
    values.update({f.name: getattr(ns, f.name) for f in fields(cls) if getattr(ns, f.name, None) is not None})
    return cls(**values)


def load_callable(spec: str, what: str) -> Any:
    """The object named by "package.module:name"."""
    module, _, name = spec.partition(":")
    if not module or not name:
        raise InputError(f"{what} {spec!r}: write it as 'package.module:function'")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise InputError(f"{what} {spec!r} cannot be loaded: {e}") from None


# ---- `minicpmv data rlaifv` ----------------------------------------------------------------------------------
def build_rlaifv_pairs(args: RLAIFVArgs) -> Path:
    """Sample, split, judge, pair and length-balance; write the pair file. Returns its path."""
    import torch

    from minicpmv.inference.engine import Engine
    from minicpmv.model.minicpmv import MiniCPMV
    from minicpmv.processor.processor import Processor
    from minicpmv.rl.dpo import ModelJudge, ModelTextModel, PairConfig, build_pairs
    from minicpmv.rl.rollout import PromptSet

    if not args.model:
        raise InputError("--model is required: the policy whose samples become pairs")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = MiniCPMV.from_pretrained(args.model, dtype=torch.float32, device=device)
    processor = Processor.from_pretrained(args.processor or args.model)
    engine = Engine(model, processor.tokenizer, max_batch_size=args.prompts_per_batch * args.samples_per_prompt)
    text_model = (load_callable(args.text_model, "--text-model")(model, processor) if args.text_model
                  else ModelTextModel(engine, processor, args.text_max_new_tokens))
    judge = (load_callable(args.judge, "--judge")(model, processor) if args.judge
             else ModelJudge(model, processor, args.max_slice_nums))
    cfg = PairConfig(args.samples_per_prompt, args.temperature, args.max_new_tokens, args.mode, args.min_gap,
                     args.pairs_per_prompt, args.max_slice_nums, args.seed)
    prompts = PromptSet(args.data, need_reference=False)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w") as f:
        for start in range(0, len(prompts), args.prompts_per_batch):
            batch = [prompts[i] for i in range(start, min(start + args.prompts_per_batch, len(prompts)))]
            for record in build_pairs(batch, engine, processor, text_model, judge, cfg):
                f.write(json.dumps(record) + "\n")
    return out


# ---- registration --------------------------------------------------------------------------------------------
def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `train rl`, `train dpo` (under an existing `train` command when there is one) and `data rlaifv`."""
    train = command_group(subparsers, "train", "pre-train / fine-tune / RL")
    for name, cls in (("rl", RLArgs), ("dpo", DPOArgs)):
        p = train.add_parser(name, help=cls.__doc__.splitlines()[0], parents=[build_parser(cls, name)], add_help=False)
        p.set_defaults(func=lambda ns, name=name, cls=cls: _run_recipe(name, cls, ns))
    data = command_group(subparsers, "data", "build training data")
    p = data.add_parser("rlaifv", help=RLAIFVArgs.__doc__.splitlines()[0],
                        parents=[build_parser(RLAIFVArgs, "rlaifv")], add_help=False)
    p.set_defaults(func=_run_rlaifv)


def _run_recipe(name: str, cls: type, ns: argparse.Namespace) -> int:
    load_recipe(name).main(_from_namespace(cls, ns))
    return 0


def _run_rlaifv(ns: argparse.Namespace) -> int:
    out = build_rlaifv_pairs(_from_namespace(RLAIFVArgs, ns))
    print(f"wrote {sum(1 for _ in open(out))} preference pairs to {out}", file=sys.stderr)
    return 0
