"""Process groups and data parallelism, one code path for 1 process and for `torchrun`.

Without torchrun a process group of one is created anyway (a FileStore in a temporary folder), so
DDP / FSDP2, collectives and torch.distributed.checkpoint run the very same code on a laptop as on
a cluster. Backend: NCCL when CUDA is available, gloo on CPU.

    torchrun --nproc-per-node 8 recipes/sft.py --config configs/sft_lora.toml
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Iterator

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.fsdp import FSDPModule, fully_shard
from torch.nn.parallel import DistributedDataParallel

STRATEGIES = ("ddp", "fsdp")


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits: rank / world size / local rank and its device."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    owns_group: bool  # this process created the group (and so destroys it in `cleanup`)

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init(backend: str | None = None, timeout_s: int = 1800) -> DistEnv:
    """Join (or create) the default process group; reuse it when one already exists."""
    cuda = torch.cuda.is_available()
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if dist.is_initialized():
        return DistEnv(dist.get_rank(), dist.get_world_size(), local_rank, device, owns_group=False)
    backend = backend or ("nccl" if cuda else "gloo")
    timeout = timedelta(seconds=timeout_s)
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:  # launched by torchrun
        dist.init_process_group(backend, timeout=timeout, device_id=device if cuda else None)
    else:  # one process: a private file store, no network port needed
        store = dist.FileStore(os.path.join(tempfile.mkdtemp(prefix="minicpmv-"), "store"), 1)
        dist.init_process_group(backend, store=store, rank=0, world_size=1, timeout=timeout)
    return DistEnv(dist.get_rank(), dist.get_world_size(), local_rank, device, owns_group=True)


def cleanup(env: DistEnv) -> None:
    """Destroy the process group if `init` created it."""
    if env.owns_group and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def wrap(model: nn.Module, strategy: str, env: DistEnv, blocks: list[nn.Module]) -> nn.Module:
    """Data-parallel wrapper: "ddp" (replicated weights) or "fsdp" (FSDP2 `fully_shard`).

    fsdp shards every module of `blocks` (the decoder and ViT layers) on its own, then the root,
    so only one block's full weights exist at a time. Build the optimizer after wrapping (FSDP2
    replaces the parameters by sharded DTensors). Mixed precision comes from autocast in the loop.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy {strategy!r}; use one of {STRATEGIES}")
    if strategy == "ddp":
        ids = [env.device.index] if env.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)
    for block in blocks:
        fully_shard(block)
    return fully_shard(model)


@contextlib.contextmanager
def grad_sync(model: nn.Module, enabled: bool) -> Iterator[None]:
    """Skip the gradient all-reduce / reduce-scatter inside the block when not `enabled`
    (every micro-batch of an accumulation step but the last)."""
    if isinstance(model, DistributedDataParallel) and not enabled:
        with model.no_sync():
            yield
    elif isinstance(model, FSDPModule):
        model.set_requires_gradient_sync(enabled)
        yield
        model.set_requires_gradient_sync(True)
    else:
        yield


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum of `x` over ranks (a new tensor)."""
    y = x.detach().clone()
    dist.all_reduce(y, op=dist.ReduceOp.SUM)
    return y


def all_gather_object(obj: Any) -> list[Any]:
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def barrier() -> None:
    dist.barrier()
