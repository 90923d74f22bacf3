"""LoRA on the LLM projections with PEFT, adapter files, and merging back into a plain checkpoint.

The adapters are injected into the model in place (`peft.inject_adapter_in_model`): the module
stays a `MiniCPMV` with `.vpm`, `.resampler`, `.llm`, so the trainer, DDP/FSDP2 and checkpoints
treat it like any other model. As in the official fine-tune (training spec §6.4) the whole LLM is
frozen except the adapters, the resampler is trained in full, the vision tower optionally.

Adapter folder (`save_adapter`): `adapter_config.json` (PEFT LoraConfig fields plus
`modules_to_save`) and `adapter_model.safetensors` holding the LoRA matrices under PEFT's names
(`base_model.model.llm.model.layers.0.self_attn.q_proj.lora_A.weight`) and every parameter of the
fully trained modules (`base_model.model.resampler.query`, ...). `merge_adapter` folds it into a
base model and returns a plain model that `save_pretrained` writes in the official format.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.lora import LoraLayer
from safetensors.torch import load_file, save_file
from torch import nn

from minicpmv.model.minicpmv import MiniCPMV

PREFIX = "base_model.model."  # PEFT's key prefix in adapter files
ADAPTER = "default"
CONFIG_FILE, WEIGHTS_FILE = "adapter_config.json", "adapter_model.safetensors"


@dataclass(frozen=True)
class LoraSettings:
    """LoRA hyper-parameters (official fine-tune defaults: r 64, alpha 64, dropout 0.05).

    targets: regex over full module names; default every attention and MLP projection of the LLM
             (the official script uses q/k/v(/o) only: `llm\\..*layers\\.\\d+\\.self_attn\\.(q|k|v|o)_proj`).
    """

    r: int = 64
    alpha: int = 64
    dropout: float = 0.05
    targets: str = r"llm\.model\.layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)"

    def peft_config(self) -> LoraConfig:
        return LoraConfig(r=self.r, lora_alpha=self.alpha, lora_dropout=self.dropout, target_modules=self.targets,
                          bias="none")


def apply_lora(model: MiniCPMV, settings: LoraSettings) -> MiniCPMV:
    """Inject LoRA adapters (in place); freeze the LLM except the adapters; the vision tower and the
    resampler keep their trainable flags (PEFT freezes everything else, so they are restored). Returns `model`."""
    if not any(re.fullmatch(settings.targets, name) for name, _ in model.named_modules()):
        raise ValueError(f"LoRA targets {settings.targets!r} matched no module of the model; the regex must match "
                         "whole names such as llm.model.layers.0.self_attn.q_proj")
    flags = {name: p.requires_grad for name, p in model.named_parameters() if not name.startswith("llm.")}
    inject_adapter_in_model(settings.peft_config(), model, adapter_name=ADAPTER)
    for name, p in model.named_parameters():
        p.requires_grad_(flags[name] if name in flags else ".lora_" in name)
    model.lora_settings = settings
    return model


def lora_layers(model: nn.Module) -> dict[str, LoraLayer]:
    return {name: m for name, m in model.named_modules() if isinstance(m, LoraLayer)}


def merge_lora(model: MiniCPMV) -> MiniCPMV:
    """Fold every adapter into its base weight (W + B A * alpha / r) and remove the adapter modules,
    leaving plain `nn.Linear`s under the official names. In place; returns `model`."""
    for name, layer in lora_layers(model).items():
        layer.merge(adapter_names=[ADAPTER])
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, layer.get_base_layer())
    if hasattr(model, "lora_settings"):
        del model.lora_settings
    return model


def save_adapter(model: MiniCPMV, path: str | Path, full_modules: tuple[str, ...], base_model: str = "") -> None:
    """Write the adapter folder: LoRA matrices + the fully trained `full_modules` (e.g. resampler)."""
    settings: LoraSettings = model.lora_settings
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for name, p in model.named_parameters():
        if ".lora_" in name:
            tensors[PREFIX + name.replace(f".{ADAPTER}.", ".")] = p.detach().cpu().contiguous()
        elif name.split(".")[0] in full_modules:
            tensors[PREFIX + name] = p.detach().cpu().contiguous()
    save_file(tensors, path / WEIGHTS_FILE, metadata={"format": "pt"})
    config = settings.peft_config().to_dict()
    config.update(peft_type="LORA", task_type=None, base_model_name_or_path=base_model,
                  modules_to_save=list(full_modules), minicpmv_lora=asdict(settings))
    (path / CONFIG_FILE).write_text(json.dumps(config, indent=2, default=list) + "\n")


def load_adapter(model: MiniCPMV, path: str | Path) -> MiniCPMV:
    """Inject the adapter of folder `path` into `model` and load its weights (strictly)."""
    path = Path(path)
    config = json.loads((path / CONFIG_FILE).read_text())
    apply_lora(model, LoraSettings(**config["minicpmv_lora"]))
    stored = load_file(path / WEIGHTS_FILE)
    expected = {k for k in model.state_dict() if ".lora_" in k or k.split(".")[0] in config["modules_to_save"]}
    state = {}
    for key, value in stored.items():
        name = key.removeprefix(PREFIX)
        if ".lora_A." in name or ".lora_B." in name:
            name = name.replace(".lora_A.", f".lora_A.{ADAPTER}.").replace(".lora_B.", f".lora_B.{ADAPTER}.")
        state[name] = value
    missing, unexpected = sorted(expected - state.keys()), sorted(state.keys() - expected)
    if missing or unexpected:
        raise ValueError(f"adapter {path} does not fit the model: missing {missing[:5]} ({len(missing)}), "
                         f"unexpected {unexpected[:5]} ({len(unexpected)})")
    model.load_state_dict(state, strict=False)
    return model


def merge_adapter(base_path: str | Path, adapter_path: str | Path, dtype: torch.dtype | None = None) -> MiniCPMV:
    """Base model folder + adapter folder -> a plain merged MiniCPMV (write it with `save_pretrained`).

    The merge is computed in float32; the result has `dtype` (None = the base checkpoint's dtype)."""
    model = MiniCPMV.from_pretrained(base_path)
    dtype = dtype or next(model.parameters()).dtype
    merged = merge_lora(load_adapter(model.float(), adapter_path))
    return merged.to(dtype)
