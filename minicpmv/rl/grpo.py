"""Hybrid short/long GRPO (training spec §5.3): modes per prompt, group advantages, the clipped
policy-gradient loss, the policy update, and per-mode statistics.

One step, as `recipes/rl.py` runs it:
1. `draw_modes`: each prompt is 'long' with probability `long_share`, else 'short'; its whole
   group of `group_size` rollouts uses that mode (GRPO normalises within a group).
2. Rollouts and rewards (`rollout.py`, `rewards.py`) -> rewards [G, n].
3. `group_advantages`: (r - mean) / std per group (sample std), 0 where std ~ 0.
4. `update_policy`: for `ppo_epochs` x mini-batches, teacher-forced log-probs of the sampled
   tokens, `policy_loss` (clip ratios 1 - clip_low .. 1 + clip_high, token-mean over the
   mini-batch; KL to a frozen reference and an entropy bonus only when their coefficients are set,
   both 0 by default as in MiniCPM-V 4.5), backward, clip, optimizer step.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from minicpmv.rl.rollout import Rollout, TokenLogprobs, rollout_logprobs


@dataclass(frozen=True)
class GRPOConfig:
    """GRPO settings. Defaults: MiniCPM-V 4.5 (n 8, 50% long, no KL, no entropy) and, where the paper
    is silent, the sibling RLPR recipe (clip 0.2 / 0.27, token-mean, 1 PPO epoch)."""

    group_size: int = 8  # rollouts per prompt
    long_share: float = 0.5  # probability that a prompt's group runs in long (thinking) mode
    clip_low: float = 0.2  # ratio floor 1 - clip_low
    clip_high: float = 0.27  # ratio ceiling 1 + clip_high ("clip-higher")
    kl_coef: float = 0.0  # weight of the k3 KL estimate to a frozen reference model
    entropy_coef: float = 0.0  # weight of the entropy bonus
    ppo_epochs: int = 1  # passes over the step's rollouts
    mini_batch_size: int = 0  # rollouts per optimizer step (0 = all rollouts of the step in one)
    clip_grad: float = 1.0  # max global gradient norm (0 = off)
    adv_eps: float = 1e-6  # groups with a reward std below this get zero advantages

    def __post_init__(self) -> None:
        if not 0.0 <= self.long_share <= 1.0:
            raise ValueError(f"long_share must be in [0, 1], got {self.long_share}")
        if self.group_size < 2:
            raise ValueError(f"group_size must be >= 2 (advantages compare samples of a prompt), got {self.group_size}")
        if not (0 <= self.clip_low < 1 and self.clip_high >= 0):
            raise ValueError(f"clip ratios must satisfy 0 <= clip_low < 1 and clip_high >= 0, got {self.clip_low}, {self.clip_high}")


def draw_modes(n_prompts: int, long_share: float, rng: random.Random) -> list[str]:
    """'long' with probability long_share, else 'short', independently per prompt."""
    return ["long" if rng.random() < long_share else "short" for _ in range(n_prompts)]


def group_advantages(rewards: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """GRPO outcome advantages: rewards [G, n] -> (r - mean_g) / std_g [G, n], with the sample std
    (n - 1, as verl) and zeros for groups whose std < eps (all samples equally good: no signal).

    Example: [[1, 0, 0, 1], [1, 1, 1, 1]] -> std 0.577 -> [[0.866, -0.866, -0.866, 0.866], [0, 0, 0, 0]].
    """
    mean = rewards.mean(dim=1, keepdim=True)  # [G, 1]
    std = rewards.std(dim=1, keepdim=True)  # [G, 1]
    adv = (rewards - mean) / (std + eps)  # [G, n]
    return torch.where(std < eps, torch.zeros_like(adv), adv)


def policy_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    clip_low: float = 0.2,
    clip_high: float = 0.27,
    ref_logp: torch.Tensor | None = None,
    kl_coef: float = 0.0,
    entropy: torch.Tensor | None = None,
    entropy_coef: float = 0.0,
    num_tokens: float | None = None,
    mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Clipped policy-gradient loss over N sampled tokens (all float[N]; advantages repeated per token).

    per token: ratio = exp(logp - old_logp);  l = max(-A * ratio, -A * clip(ratio, 1 - clip_low, 1 + clip_high))
    loss = sum(mask * l) / num_tokens  (token-mean; num_tokens defaults to sum(mask), pass the global
           count when a batch is split; mask 0 = a token left out of the batch, default all 1)
           + kl_coef * mean(k3) - entropy_coef * mean(entropy), where
           k3 = exp(ref - logp) - (ref - logp) - 1 >= 0 (the low-variance KL estimate).
    Worked example: A = +1, ratio 1.5 -> clipped to 1.27 -> l = -1.27 (no gain past the ceiling);
    A = -1, ratio 0.5 -> max(0.5, 0.8) = 0.8 (the floor stops pushing a bad token further down).
    """
    mask = torch.ones_like(logp) if mask is None else mask.to(logp.dtype)
    count = float(num_tokens) if num_tokens is not None else max(float(mask.sum()), 1.0)
    ratio = torch.exp(logp - old_logp)  # [N]
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1 - clip_low, 1 + clip_high)
    loss = (torch.maximum(unclipped, clipped) * mask).sum() / count
    stats = {"pg_loss": float(loss.detach()), "clip_frac": float(((clipped > unclipped).float() * mask).sum()) / count,
             "ratio_max": float(ratio.detach().max()) if ratio.numel() else 1.0}
    if kl_coef and ref_logp is None:
        raise ValueError("kl_coef > 0 needs the reference model's log-probs (ref_logp)")
    if ref_logp is not None:
        delta = ref_logp - logp  # [N]
        kl = ((torch.exp(delta) - delta - 1) * mask).sum() / count
        loss = loss + kl_coef * kl
        stats["kl"] = float(kl.detach())
    if entropy is not None:
        ent = (entropy * mask).sum() / count
        loss = loss - entropy_coef * ent
        stats["entropy"] = float(ent.detach())
    return loss, stats


class PolicyLogprobs(nn.Module):
    """Wraps the policy so DDP sees the teacher-forced log-prob pass as its forward
    (`rollout.sequence_logprobs` over rollouts; gradients are all-reduced in backward)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, rollouts: Sequence[Rollout], with_entropy: bool = False) -> TokenLogprobs:
        return rollout_logprobs(self.model, rollouts, with_entropy=with_entropy)


def update_policy(
    policy: nn.Module,
    rollouts: Sequence[Rollout],
    advantages: Sequence[float],
    old_logp: TokenLogprobs,
    optimizer: torch.optim.Optimizer,
    cfg: GRPOConfig,
    ref_logp: TokenLogprobs | None = None,
    rng: random.Random | None = None,
    in_batch: Sequence[bool] | None = None,
) -> dict[str, float]:
    """`ppo_epochs` passes over `rollouts` in shuffled mini-batches, one optimizer step each.

    policy: a `PolicyLogprobs` (possibly DDP-wrapped); advantages: one per rollout; old_logp /
    ref_logp: per-token log-probs of all rollouts from before the update (row i = rollout i);
    in_batch: False for rollouts of groups dropped by a filter: they stay in the mini-batches (so
    every process takes the same number of steps, as DDP needs) but carry no loss and no token
    count. The token-mean of a mini-batch divides by its token count summed over ranks. Returns the
    mean of the per-step statistics plus `grad_norm`.
    """
    rng = rng or random.Random(0)
    keep = list(in_batch) if in_batch is not None else [True] * len(rollouts)
    order = list(range(len(rollouts)))
    size = cfg.mini_batch_size or len(rollouts)
    totals: dict[str, float] = {}
    steps = 0
    for _ in range(cfg.ppo_epochs):
        rng.shuffle(order)
        for start in range(0, len(order), size):
            rows = order[start:start + size]
            stats = _mini_batch_step(policy, [rollouts[i] for i in rows], [advantages[i] for i in rows],
                                     [keep[i] for i in rows], old_logp.select(rows),
                                     None if ref_logp is None else ref_logp.select(rows), optimizer, cfg)
            for k, v in stats.items():
                totals[k] = totals.get(k, 0.0) + v
            steps += 1
    return {k: v / max(steps, 1) for k, v in totals.items()}


def _mini_batch_step(policy, rollouts, advantages, keep, old: TokenLogprobs, ref: TokenLogprobs | None, optimizer,
                     cfg: GRPOConfig) -> dict[str, float]:
    new = policy(rollouts, with_entropy=cfg.entropy_coef > 0)
    device = new.logp.device
    mask = torch.tensor(keep, dtype=new.logp.dtype, device=device)[new.row]  # [N]
    count, world = float(mask.sum()), 1
    if torch.distributed.is_initialized():  # token-mean over the mini-batches of all ranks
        world = torch.distributed.get_world_size()
        total = torch.tensor(count, device=device)
        torch.distributed.all_reduce(total)
        count = float(total)
    adv = torch.tensor(advantages, dtype=new.logp.dtype, device=device)[new.row]  # [N]
    loss, stats = policy_loss(new.logp, old.logp.to(device), adv, cfg.clip_low, cfg.clip_high,
                              None if ref is None else ref.logp.to(device), cfg.kl_coef, new.entropy,
                              cfg.entropy_coef, num_tokens=max(count, 1.0) / world, mask=mask)
    # DDP averages gradients over ranks; dividing by count / world makes the result sum / count.
    loss.backward()
    params = [p for g in optimizer.param_groups for p in g["params"]]
    grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.clip_grad if cfg.clip_grad > 0 else math.inf)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return {**stats, "grad_norm": float(grad_norm)}


def mode_stats(
    modes: Sequence[str], totals: Sequence[float], lengths: Sequence[int], correct: Sequence[bool],
    formatted: Sequence[bool],
) -> dict[str, float]:
    """Per-mode means over rollouts: '{mode}/reward', '/length' (tokens), '/accuracy' (rule verifier
    accepted), '/format' (structure of the mode), '/count'. Modes without rollouts are left out."""
    out: dict[str, float] = {}
    for mode in ("long", "short"):
        idx = [i for i, m in enumerate(modes) if m == mode]
        if not idx:
            continue
        n = len(idx)
        out[f"{mode}/reward"] = sum(totals[i] for i in idx) / n
        out[f"{mode}/length"] = sum(lengths[i] for i in idx) / n
        out[f"{mode}/accuracy"] = sum(bool(correct[i]) for i in idx) / n
        out[f"{mode}/format"] = sum(bool(formatted[i]) for i in idx) / n
        out[f"{mode}/count"] = float(n)
    return out
