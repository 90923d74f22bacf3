"""Training checkpoints: atomic, sharded (torch.distributed.checkpoint), exactly resumable.

Layout of `<run>/checkpoints/step-000100/`:
    .metadata, __*.distcp     model + optimizer state (DCP: every rank writes its own shards)
    rank-00000.pt ...         per rank: RNG states (torch, CUDA, numpy, random) and data position
    trainer.json              step, scheduler state, world size, extra run metadata
    train_config.json         the resolved run configuration
    config.json               the model config (official format), for `export`
`<run>/checkpoints/latest` names the newest complete checkpoint.

Atomicity: everything is written into `.tmp-step-000100/`, then renamed to `step-000100/` (one
`rename`) and only then is `latest` replaced (write a temporary file, then `os.replace`). A run
killed at any moment leaves either the previous or the new checkpoint, never a half-written one.
"""

from __future__ import annotations

import json
import random
import shutil
import sys
import warnings
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from minicpmv.config import ModelConfig
from minicpmv.model.minicpmv import MiniCPMV
from minicpmv.train import distributed
from minicpmv.train.distributed import DistEnv

LATEST = "latest"
# Everything of a model folder except weights and model config: tokenizer, pre-processor, generation config.
_MODEL_FILES_SKIPPED = ("config.json", "model.safetensors.index.json")


def step_dir(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"step-{step:06d}"


def rng_state() -> dict[str, Any]:
    """Every random generator training touches (numpy's as plain lists so it loads with weights_only)."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [name, keys.tolist(), pos, has_gauss, gauss],
        "python": _tuples_to_lists(random.getstate()),
    }


def set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"]:
        torch.cuda.set_rng_state_all(state["cuda"])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))


def _tuples_to_lists(x: Any) -> Any:
    return [_tuples_to_lists(v) for v in x] if isinstance(x, (tuple, list)) else x


def save(
    run_dir: str | Path,
    step: int,
    model: MiniCPMV,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    data_state: Mapping[str, Any],
    train_config: Mapping[str, Any],
    env: DistEnv,
    keep: int = 2,
) -> Path:
    """Write the checkpoint of `step` atomically (collective: every rank calls it). Keeps the newest `keep`."""
    final = step_dir(run_dir, step)
    tmp = final.with_name(f".tmp-{final.name}")
    if env.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    distributed.barrier()
    model_state, optim_state = get_state_dict(model, optimizer)
    dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=tmp)
    torch.save({"rng": rng_state(), "data": dict(data_state)}, tmp / f"rank-{env.rank:05d}.pt")
    if env.is_main:
        trainer = {"step": step, "world_size": env.world_size, "scheduler": scheduler.state_dict()}
        (tmp / "trainer.json").write_text(json.dumps(trainer, indent=2) + "\n")
        (tmp / "train_config.json").write_text(json.dumps(train_config, indent=2, default=str) + "\n")
        model.config.save_json(tmp / "config.json")
    distributed.barrier()
    if env.is_main:
        if final.exists():  # re-saving a step (e.g. after a resume): keep the new one
            shutil.rmtree(final)
        tmp.rename(final)
        _write_atomic(final.parent / LATEST, final.name + "\n")
        _prune(final.parent, keep)
    distributed.barrier()
    return final


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".tmp-{path.name}")
    tmp.write_text(text)
    tmp.replace(path)


def _prune(folder: Path, keep: int) -> None:
    done = sorted(p for p in folder.glob("step-*") if p.is_dir())
    for old in done[: max(0, len(done) - keep)]:
        shutil.rmtree(old)


def latest(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint of a run, or None."""
    pointer = Path(run_dir) / "checkpoints" / LATEST
    if not pointer.is_file():
        return None
    path = pointer.parent / pointer.read_text().strip()
    if not (path / "trainer.json").is_file():
        raise FileNotFoundError(f"{pointer} names {path.name}, which is not a complete checkpoint")
    return path


def load(
    path: str | Path,
    model: MiniCPMV,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    env: DistEnv,
) -> tuple[int, dict[str, Any]]:
    """Restore model, optimizer, scheduler and this rank's RNG states; return (step, data state).

    Resuming needs the same world size (the data position and RNG streams are per rank).
    """
    path = Path(path)
    trainer = json.loads((path / "trainer.json").read_text())
    if trainer["world_size"] != env.world_size:
        raise ValueError(f"{path} was written by {trainer['world_size']} ranks, this run has {env.world_size}; "
                         "resume with the same number of processes (or export and start a new run)")
    model_state, optim_state = get_state_dict(model, optimizer)
    state = {"model": model_state, "optim": optim_state}
    dcp.load(state, checkpoint_id=path)
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    scheduler.load_state_dict(trainer["scheduler"])
    per_rank = torch.load(path / f"rank-{env.rank:05d}.pt", weights_only=True)
    set_rng_state(per_rank["rng"])
    return int(trainer["step"]), per_rank["data"]


def load_model_weights(path: str | Path, model: nn.Module) -> None:
    """Fill `model` (not distributed) with the model weights of a checkpoint, in one process."""
    state = {"model": model.state_dict()}
    with warnings.catch_warnings():  # DCP warns that it loads "in a single process": that is the point here
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load(state, checkpoint_id=Path(path), no_dist=True)
    model.load_state_dict(state["model"])


def restore_model(path: str | Path) -> MiniCPMV:
    """The float32 model of a checkpoint, in one process (no process group needed), with its LoRA
    adapters when the run had them (`lora_settings` in train_config.json)."""
    path = Path(path)
    run = json.loads((path / "train_config.json").read_text())
    with torch.device("meta"):
        model = MiniCPMV(ModelConfig.from_json(path / "config.json"))
    model.to_empty(device="cpu")  # filled from the checkpoint below
    model.reset_buffers()
    if run.get("lora_settings"):
        from minicpmv.train.lora import LoraSettings, apply_lora  # PEFT only for LoRA runs

        apply_lora(model, LoraSettings(**run["lora_settings"]))
    load_model_weights(path, model)
    return model.eval()


def export(path: str | Path, out_dir: str | Path, max_shard_size: str = "5GB") -> Path:
    """Checkpoint -> model folder in the official format (weights, config.json, tokenizer and
    pre-processor files), loadable by `MiniCPMV.from_pretrained` and by vLLM. LoRA runs are merged;
    the weights get the dtype recorded in the model config (`torch_dtype`, e.g. bfloat16).

    The tokenizer/pre-processor files come from `processor_dir` of the checkpoint's train_config.json.
    """
    path, out_dir = Path(path), Path(out_dir)
    run = json.loads((path / "train_config.json").read_text())
    model = restore_model(path)
    if run.get("lora_settings"):
        from minicpmv.train.lora import merge_lora

        merge_lora(model)
    model.to(getattr(torch, model.config.torch_dtype)).save_pretrained(out_dir, max_shard_size=max_shard_size)
    copy_model_files(Path(run["processor_dir"]), out_dir)
    return out_dir


def copy_model_files(src: Path, out_dir: Path) -> None:
    """Tokenizer, pre-processor and generation files of the source model folder (not its weights)."""
    if not (src / "preprocessor_config.json").is_file():
        raise FileNotFoundError(f"{src} has no preprocessor_config.json; point `processor` at a model folder")
    for f in src.iterdir():
        if f.is_file() and f.name not in _MODEL_FILES_SKIPPED and not f.name.endswith(".safetensors"):
            shutil.copy2(f, out_dir / f.name)


def resume(
    out_dir: str | Path,
    enabled: bool,
    model: MiniCPMV,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    env: DistEnv,
) -> tuple[int, dict[str, Any] | None]:
    """(step to start from, saved extra state) from the latest checkpoint in `out_dir`; (0, None) when none."""
    last = latest(out_dir) if enabled else None
    if last is None:
        return 0, None
    start, state = load(last, model, optimizer, scheduler, env)
    if env.is_main:
        print(f"resumed from {last} at step {start}", file=sys.stderr)
    return start, state
