"""The pieces every training recipe shares: the token loss, micro-batches, one optimizer step with
gradient accumulation / clipping / autocast, metrics (JSONL, optional TensorBoard), progress bar,
loss-curve plot and the final summary. Recipes keep their own loop and call these in order.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from minicpmv.data.datasets import SkipCounter
from minicpmv.data.packing import TrainBatch, pack, pad
from minicpmv.model.minicpmv import MiniCPMV
from minicpmv.processor.processor import IGNORE_INDEX, EncodedSample
from minicpmv.train import distributed
from minicpmv.train.distributed import DistEnv

log = logging.getLogger("minicpmv.train")


class TokenLoss(nn.Module):
    """MiniCPMV -> (weighted sum of next-token cross-entropies, sum of the weights of the supervised
    positions): with all weights 1 (the default) the plain sum and the number of supervised positions.

    Logits are computed only where a label exists (the vocabulary is 151k wide), and the sum (not
    the mean) lets `train_step` divide by the total weight of the whole global batch, so gradient
    accumulation, packing and the number of processes do not change the loss. label_weights:
    float32[R, T] (`TrainBatch.label_weights`; per-sample means when each sample's weights sum to 1).
    """

    def __init__(self, model: MiniCPMV):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, position_ids, labels, pixel_values=None, tgt_sizes=None,
                temporal_ids=None, image_bounds=None, label_weights=None) -> tuple[torch.Tensor, torch.Tensor]:
        embeds = self.model.embed(input_ids, pixel_values, tgt_sizes, temporal_ids, image_bounds)  # [R, T, D]
        hidden = self.model.llm(embeds, position_ids=position_ids, attention_mask=attention_mask)  # [R, T, D]
        target = labels[:, 1:]  # [R, T-1]: position t predicts token t+1
        keep = target != IGNORE_INDEX
        logits = self.model.llm.logits(hidden[:, :-1][keep])  # [N, V]
        if label_weights is None:
            return F.cross_entropy(logits.float(), target[keep], reduction="sum"), keep.sum()
        weights = label_weights[:, 1:][keep].float()  # [N]
        return (F.cross_entropy(logits.float(), target[keep], reduction="none") * weights).sum(), weights.sum()


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for plain fp32 ("auto": bf16 on GPU; fp32 on CPU, where bf16 is slow)."""
    if precision not in ("auto", "bf16", "fp32"):
        raise ValueError(f"precision {precision!r}; use 'auto', 'bf16' or 'fp32'")
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


class Optimization(NamedTuple):
    """What a supervised recipe trains with: the wrapped loss module, optimizer, schedule and autocast dtype."""

    train_model: nn.Module
    optimizer: torch.optim.Optimizer
    schedule: Any
    scheduler: torch.optim.lr_scheduler.LRScheduler
    amp: torch.dtype | None


def setup_optimization(model: MiniCPMV, args: Any, env: DistEnv) -> Optimization:
    """Wrap `TokenLoss(model)` for DDP/FSDP2 (decoder and ViT blocks as FSDP units), then build the
    per-module AdamW groups (after wrapping: FSDP2 swaps the parameters), the LR schedule and the
    autocast dtype from a `TrainArgs`."""
    from minicpmv.train.optim import Schedule, build_optimizer, build_scheduler

    blocks = [*model.llm.model.layers, *model.vpm.encoder.layers]
    train_model = distributed.wrap(TokenLoss(model), args.parallel, env, blocks)
    optimizer = build_optimizer(model, args.module_lrs(), args.weight_decay, betas=(0.9, args.beta2))
    schedule = Schedule(args.schedule, args.steps, args.warmup_steps, args.decay_steps, args.min_lr_ratio)
    scheduler = build_scheduler(optimizer, schedule)
    return Optimization(train_model, optimizer, schedule, scheduler, autocast_dtype(args.precision, env.device))


def next_batches(stream, batch_size: int, grad_accum: int, packing: bool, max_length: int, pad_id: int,
                 per_sample: bool = False) -> list[TrainBatch]:
    """The `grad_accum` micro-batches of `batch_size` samples of one optimizer step for this rank,
    packed into rows of `max_length` tokens or padded (one sample per row); per_sample: the loss is
    averaged per sample, then over samples (`minicpmv.data.packing`)."""
    out = []
    for _ in range(grad_accum):
        samples: list[EncodedSample] = [stream.next() for _ in range(batch_size)]
        out.append(pack(samples, max_length, pad_id, per_sample) if packing else pad(samples, pad_id, per_sample))
    return out


@dataclass
class StepStats:
    loss: float  # mean token loss over the global batch (mean of per-sample means with per-sample weights)
    grad_norm: float  # before clipping
    lr: float  # LR of the first parameter group in this step (the LLM's when it trains)
    tokens: int  # real tokens of the global batch
    targets: int  # supervised positions of the global batch


def train_step(
    model: nn.Module, batches: Sequence[TrainBatch], optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler, env: DistEnv, clip_grad: float, amp: torch.dtype | None,
) -> StepStats:
    """Forward/backward every micro-batch, then clip, step and advance the schedule.

    Each micro loss is (weighted) sum / W with W the total weight of the supervised positions of the
    whole global batch (all micro-batches, all ranks: their number, or the number of samples with
    per-sample weights), times world_size because DDP/FSDP average gradients over ranks.
    """
    counts = torch.tensor([sum(b.num_targets for b in batches), sum(b.num_tokens for b in batches)], device=env.device)
    n_targets, n_tokens = distributed.all_reduce_sum(counts).tolist()
    if n_targets == 0:
        raise RuntimeError("no supervised token in this global batch; every sample needs assistant text")
    weight = n_targets  # per-sample weights: their sum over the global batch instead
    if any(b.label_weights is not None for b in batches):
        weight = distributed.all_reduce_sum(torch.tensor(sum(b.target_weight for b in batches), device=env.device)).item()
    total = torch.zeros((), device=env.device)
    for i, batch in enumerate(batches):
        with distributed.grad_sync(model, enabled=i == len(batches) - 1):
            with torch.autocast(env.device.type, dtype=amp or torch.float32, enabled=amp is not None):
                loss_sum, _ = model(**_inputs(batch.to(env.device)))
            (loss_sum * (env.world_size / weight)).backward()
        total += loss_sum.detach()
    params = [p for g in optimizer.param_groups for p in g["params"]]
    grad_norm = torch.nn.utils.clip_grad_norm_(params, clip_grad if clip_grad > 0 else math.inf)
    lr = optimizer.param_groups[0]["lr"]
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    loss = distributed.all_reduce_sum(total).item() / weight
    norm = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm
    return StepStats(loss=loss, grad_norm=float(norm), lr=lr, tokens=int(n_tokens), targets=int(n_targets))


def _inputs(batch: TrainBatch) -> dict[str, Any]:
    return {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids", "labels", "pixel_values",
                                  "tgt_sizes", "temporal_ids", "image_bounds", "label_weights")}


class MetricsLogger:
    """One JSON line per step in `<out_dir>/metrics.jsonl` (+ TensorBoard scalars when asked), rank 0 only.

    On resume from step k, lines of later steps (written by the interrupted run) are dropped first,
    so the file always holds one line per step of the run's real history.
    """

    def __init__(self, out_dir: str | Path, env: DistEnv, start_step: int = 0, tensorboard: bool = False):
        self.path = Path(out_dir) / "metrics.jsonl"
        self.active = env.is_main
        self.writer = None
        if not self.active:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        kept = [line for line in _read_lines(self.path) if json.loads(line)["step"] <= start_step]
        self.path.write_text("".join(line + "\n" for line in kept))
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter  # optional dependency

            self.writer = SummaryWriter(str(Path(out_dir) / "tensorboard"))

    def log(self, step: int, values: Mapping[str, Any]) -> None:
        if not self.active:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": step, **values}) + "\n")
        if self.writer is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)):
                    self.writer.add_scalar(k, v, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _read_lines(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def read_metrics(out_dir: str | Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in _read_lines(Path(out_dir) / "metrics.jsonl")]


class Progress:
    """A tqdm bar on rank 0 showing loss, LR, tokens/s and the ETA."""

    def __init__(self, total: int, start: int, env: DistEnv):
        self.bar = None
        if env.is_main:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=start, unit="step", dynamic_ncols=True)

    def update(self, stats: StepStats, tokens_per_s: float) -> None:
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{stats.loss:.4f}", lr=f"{stats.lr:.2e}", tok_s=f"{tokens_per_s:,.0f}")
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def plot_loss_curve(out_dir: str | Path) -> Path | None:
    """`<out_dir>/loss.png` from metrics.jsonl; None (with a log line) when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed: no loss-curve PNG (pip install matplotlib)")
        return None
    rows = read_metrics(out_dir)
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot([r["step"] for r in rows], [r["loss"] for r in rows])
    ax.set(xlabel="step", ylabel="loss", title="training loss")
    ax.grid(alpha=0.3)
    path = Path(out_dir) / "loss.png"
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


def summary(steps: int, tokens: int, seconds: float, last_loss: float, skipped: SkipCounter) -> str:
    """The end-of-run report: steps, tokens, time, throughput, final loss, skipped samples by reason."""
    return "\n".join([
        f"steps {steps}  tokens {tokens:,}  time {seconds:.1f}s  ({tokens / max(seconds, 1e-9):,.0f} tokens/s)",
        f"final loss {last_loss:.4f}",
        skipped.report(),
    ])


def gather_skips(skipped: SkipCounter) -> SkipCounter:
    """Skip counts of all ranks merged (collective)."""
    merged = SkipCounter()
    for state in distributed.all_gather_object(skipped.state_dict()):
        part = SkipCounter()
        part.load_state_dict(state)
        merged = merged.merge(part)
    return merged
