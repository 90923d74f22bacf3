"""Optimiser pieces: parameter groups with per-module learning rates, AdamW, LR schedules.

Schedules are pure functions of the step returning a factor of the peak LR (LambdaLR applies the
factor to every group's own peak, so per-module LRs keep their ratios):
  * "wsd": warmup-stable-decay (MiniCPM, arXiv 2404.06395; the MiniCPM-V 4.5 pre-training schedule
    with stable LR 5e-5 decaying to 1e-5, training spec §2.1); the decay is exponential;
  * "cosine": warmup then half a cosine down to min_lr_ratio;
  * "constant": warmup then constant (what the official DeepSpeed fine-tune configs end up doing).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

import torch
from torch import nn

MODULES = ("vpm", "resampler", "llm")  # top-level boxes of the model: each gets its own LR


@dataclass(frozen=True)
class Schedule:
    """LR schedule over `total_steps` optimizer steps.

    kind:          "wsd" | "cosine" | "constant"
    warmup_steps:  linear warmup from 0 to the peak
    decay_steps:   wsd only: length of the final decay phase (the stable phase fills the rest)
    min_lr_ratio:  final LR / peak LR (the paper's 1e-5 / 5e-5 = 0.2)
    """

    kind: str = "cosine"
    total_steps: int = 1000
    warmup_steps: int = 0
    decay_steps: int = 0
    min_lr_ratio: float = 0.1

    def __post_init__(self) -> None:
        if self.kind not in ("wsd", "cosine", "constant"):
            raise ValueError(f"schedule kind {self.kind!r}; use 'wsd', 'cosine' or 'constant'")
        if not 0 <= self.warmup_steps + (self.decay_steps if self.kind == "wsd" else 0) <= self.total_steps:
            raise ValueError(f"warmup {self.warmup_steps} + decay {self.decay_steps} steps exceed total {self.total_steps}")
        if not 0 < self.min_lr_ratio <= 1:
            raise ValueError(f"min_lr_ratio {self.min_lr_ratio} must be in (0, 1]")

    @property
    def decay_start(self) -> int:
        return self.total_steps - self.decay_steps if self.kind == "wsd" else self.warmup_steps

    def factor(self, step: int) -> float:
        """LR / peak LR at optimizer step `step` (0-based).

        Example, wsd with total 100, warmup 10, decay 20, min ratio 0.2: step 0 -> 0.1, step 9 -> 1.0,
        steps 10..80 -> 1.0 (stable), step 90 -> 0.2 ** 0.5 = 0.447, step 100 -> 0.2.
        """
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.kind == "constant":
            return 1.0
        progress = self.decay_progress(step)
        if self.kind == "wsd":
            return self.min_lr_ratio**progress  # exponential decay from 1 to min_lr_ratio
        return self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    def decay_progress(self, step: int) -> float:
        """0 before the decay phase, rising linearly to 1 at `total_steps` (cosine: decays after warmup)."""
        span = self.total_steps - self.decay_start
        if span <= 0 or step < self.decay_start:
            return 0.0
        return min(1.0, (step - self.decay_start) / span)


def decay_mix(schedule: Schedule, step: int, final_share: float) -> float:
    """Decay-phase data-mixing hook: share of the decay-phase data (high-quality instruction and
    knowledge-dense data, spec §2.1) at `step`, growing linearly from 0 when the decay starts to
    `final_share` at the end. Example: wsd total 100, decay 20, final 0.5 -> step 80: 0, step 90: 0.25."""
    return final_share * schedule.decay_progress(step)


def set_trainable(model: nn.Module, modules: tuple[str, ...]) -> None:
    """requires_grad on for the parameters of the named top-level `modules`, off for all others."""
    unknown = set(modules) - set(MODULES)
    if unknown:
        raise ValueError(f"unknown module(s) {sorted(unknown)}; choose from {MODULES}")
    for name in MODULES:
        getattr(model, name).requires_grad_(name in modules)


def param_groups(model: nn.Module, lrs: Mapping[str, float], weight_decay: float) -> list[dict]:
    """AdamW groups per module of `MODULES` x (decayed, not decayed), trainable parameters only.

    Matrices (ndim >= 2: linears, embeddings, queries) are decayed; norms and biases are not.
    `lrs` maps every module that has trainable parameters to its peak LR.
    """
    groups: dict[tuple[str, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        module = name.split(".")[0]
        if module not in MODULES:
            raise ValueError(f"parameter {name} is outside the modules {MODULES}")
        groups.setdefault((module, p.ndim >= 2), []).append(p)
    missing = sorted({m for m, _ in groups} - set(lrs))
    if missing:
        raise ValueError(f"no learning rate for trainable module(s) {missing}; given {dict(lrs)}")
    return [
        {"params": params, "lr": lrs[module], "weight_decay": weight_decay if decayed else 0.0,
         "name": f"{module}/{'decay' if decayed else 'no_decay'}"}
        for (module, decayed), params in sorted(groups.items())
    ]


def build_optimizer(
    model: nn.Module, lrs: Mapping[str, float], weight_decay: float = 0.0, betas: tuple[float, float] = (0.9, 0.95),
    eps: float = 1e-8,
) -> torch.optim.AdamW:
    """AdamW over `param_groups` (betas default to the official fine-tune's (0.9, 0.95))."""
    groups = param_groups(model, lrs, weight_decay)
    if not groups:
        raise ValueError("no trainable parameters: every module is frozen")
    return torch.optim.AdamW(groups, betas=betas, eps=eps)


def build_scheduler(optimizer: torch.optim.Optimizer, schedule: Schedule) -> torch.optim.lr_scheduler.LambdaLR:
    """LambdaLR applying `schedule.factor(step)` to every group's peak LR."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: schedule.factor(step))


def optimizer_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer, params: list[torch.nn.Parameter],
                   scheduler: torch.optim.lr_scheduler.LRScheduler | None = None, max_norm: float = 1.0) -> None:
    """One single-process step on one loss: clear the gradients, backward, clip their norm to `max_norm`, step the
    optimiser, then the schedule (when given). The loop of the small vision recipes (tags, dense, probe)."""
    optimizer.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, max_norm)
    optimizer.step()
    if scheduler is not None:
        scheduler.step()
