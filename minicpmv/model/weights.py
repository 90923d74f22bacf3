"""Checkpoint I/O in the official layout, and random initialisation.

Our state-dict names ARE the official tensor names (`llm.model.layers.0.self_attn.q_proj.weight`,
`vpm.encoder.layers.0.mlp.fc1.bias`, `resampler.proj`, ...), so there is no key mapping: a folder
written by `save_checkpoint` loads in the official remote code and vice versa.

Loading is strict and memory-frugal: names and shapes of every shard are checked from the headers
before any tensor is read; then each shard is read with `pread` (no memory map kept alive), each
tensor is converted to its final dtype/device on its own and assigned into the meta-built module,
so host memory peaks near one copy of the weights.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from minicpmv.model.llm import RMSNorm

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
_SHARD_RE = re.compile(r"model-\d{5}-of-\d{5}\.safetensors")
_UNITS = {"KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "B": 1}


def checkpoint_files(path: str | Path) -> list[Path]:
    """The safetensors files of a model folder: the shards named by the index, or the single file."""
    path = Path(path)
    if (path / INDEX_FILE).exists():
        weight_map = json.loads((path / INDEX_FILE).read_text())["weight_map"]
        return [path / name for name in sorted(set(weight_map.values()))]
    if (path / SINGLE_FILE).exists():
        return [path / SINGLE_FILE]
    raise FileNotFoundError(f"no {SINGLE_FILE} or {INDEX_FILE} in {path}")


def stored_shapes(files: list[Path]) -> dict[str, tuple[tuple[int, ...], Path]]:
    """name -> (shape, file) read from the shard headers only (no tensor data is read)."""
    found: dict[str, tuple[tuple[int, ...], Path]] = {}
    for file in files:
        with safe_open(file, framework="pt") as handle:
            for name in handle.keys():
                if name in found:
                    raise ValueError(f"tensor {name} is stored twice: in {found[name][1].name} and {file.name}")
                found[name] = (tuple(handle.get_slice(name).get_shape()), file)
    return found


def check_layout(expected: dict[str, tuple[int, ...]], stored: dict[str, tuple[tuple[int, ...], Path]], where) -> None:
    """Raise one ValueError listing every missing, unexpected and mis-shaped tensor."""
    problems = [f"  missing: {n} expected {list(expected[n])}" for n in sorted(expected.keys() - stored.keys())]
    problems += [f"  unexpected: {n} {list(stored[n][0])} in {stored[n][1].name}" for n in sorted(stored.keys() - expected.keys())]
    problems += [
        f"  wrong shape: {n} expected {list(expected[n])} got {list(stored[n][0])} in {stored[n][1].name}"
        for n in sorted(expected.keys() & stored.keys())
        if tuple(expected[n]) != stored[n][0]
    ]
    if problems:
        raise ValueError(f"checkpoint {where} does not match the model config ({len(problems)} problems):\n" + "\n".join(problems))


def load_checkpoint(model: nn.Module, path: str | Path, dtype: torch.dtype | None = None, device=None) -> None:
    """Fill `model` (typically built on the meta device) from a model folder, strictly.

    dtype None keeps each tensor's stored dtype; device None means CPU. Non-persistent buffers are
    not touched (the caller recomputes them).
    """
    files = checkpoint_files(path)
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    check_layout(expected, stored_shapes(files), path)
    for file in files:
        # pread: every tensor gets its own memory; an mmap would keep the whole shard resident
        # (and tie the model to the file) while we also hold the converted copies.
        with safe_open(file, framework="pt", device="cpu", backend="pread") as handle:
            shard = {name: handle.get_tensor(name).to(device=device, dtype=dtype) for name in handle.keys()}
        model.load_state_dict(shard, strict=False, assign=True)
        del shard


def parse_size(size: int | str) -> int:
    """Bytes from an int or a string like "5GB" (10^9), "500MiB" (2^20), "1000000"."""
    if isinstance(size, int):
        return size
    m = re.fullmatch(r"\s*([\d.]+)\s*([A-Za-z]*)\s*", size)
    unit = (m.group(2) or "B").upper() if m else ""
    if not m or unit not in _UNITS:
        raise ValueError(f"cannot read shard size {size!r}; use e.g. 5GB, 500MB, 2GiB or a number of bytes")
    return int(float(m.group(1)) * _UNITS[unit])


def plan_shards(sizes: dict[str, int], max_bytes: int) -> list[list[str]]:
    """Greedy, order-preserving split of tensor names into shards of at most `max_bytes` each.

    A tensor larger than `max_bytes` gets a shard of its own. Example: sizes a=4, b=4, c=4 with
    max 9 -> [[a, b], [c]].
    """
    shards: list[list[str]] = [[]]
    used = 0
    for name, n in sizes.items():
        if shards[-1] and used + n > max_bytes:
            shards.append([])
            used = 0
        shards[-1].append(name)
        used += n
    return shards


def save_checkpoint(model: nn.Module, path: str | Path, max_shard_size: int | str = "5GB") -> None:
    """Write config.json and the state dict (official names) as one file or shards + index.

    `model` must have a `config` (ModelConfig). Stale weight files of an earlier save are removed.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    state = {name: t.detach() for name, t in model.state_dict().items()}
    dtype = next(iter(state.values())).dtype
    model.config.replace(torch_dtype=str(dtype).removeprefix("torch.")).save_json(path / "config.json")
    sizes = {name: t.numel() * t.element_size() for name, t in state.items()}
    shards = plan_shards(sizes, parse_size(max_shard_size))
    names = [SINGLE_FILE] if len(shards) == 1 else [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    for old in path.iterdir():
        if (old.name in (SINGLE_FILE, INDEX_FILE) or _SHARD_RE.fullmatch(old.name)) and old.name not in names:
            old.unlink()
    for file, shard in zip(names, shards):
        # safetensors >= 0.8 writes straight from the tensors' memory (no copy of the shard).
        save_file({n: state[n].cpu().contiguous() for n in shard}, path / file, metadata={"format": "pt"})
    if len(shards) > 1:
        index = {"metadata": {"total_size": sum(sizes.values())}, "weight_map": {n: f for f, s in zip(names, shards) for n in s}}
        (path / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")


INIT_SCHEMES = ("normal", "fan_in")


def init_random_(model: nn.Module, seed: int = 0, std: float = 0.02, scheme: str = "normal") -> None:
    """In-place random init; norm weights 1, biases 0.

    scheme "normal": every other tensor N(0, std) (the official checkpoints' `initializer_range`).
    scheme "fan_in": matrices N(0, 1 / fan_in) instead (Linear: in-features; Conv2d: in x kh x kw; the
    resampler's `proj`, stored [in, out]: its rows; its packed q/k/v `in_proj_weight` [3D, D]: D); embeddings,
    queries and position tables stay N(0, std).
    Use "fan_in" for narrow models trained from scratch: at width 192, std 0.02 is ~4x below
    1/sqrt(192) = 0.072, attention logits start ~16x too flat, and the resampler pools every patch alike,
    so the LLM learns the answers' text prior long before the visual path carries anything (the demo model's
    visual tokens collapsed to one vector that way; with "fan_in" one-shape colour naming is learnt in
    25 steps instead of plateauing at the prior, see docs/demo-model.md).
    """
    if scheme not in INIT_SCHEMES:
        raise ValueError(f"init scheme {scheme!r}; use one of {INIT_SCHEMES}")
    norm_weights = {id(m.weight) for m in model.modules() if isinstance(m, (nn.LayerNorm, RMSNorm))}
    fan_in = {}
    if scheme == "fan_in":
        fan_in = {id(m.weight): m.weight[0].numel() for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))}
        fan_in.update({id(p): p.shape[0] for n, p in model.named_parameters() if n.endswith("resampler.proj") or n == "proj"})
        # the resampler's packed q/k/v projection is a bare Parameter [3D, D] (nn.MultiheadAttention's layout)
        fan_in.update({id(p): p.shape[1] for n, p in model.named_parameters() if n.endswith("attn.in_proj_weight")})
    first = next(model.parameters())
    gen = torch.Generator(device=first.device).manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if id(p) in norm_weights:
                p.fill_(1.0)
            elif name.endswith("bias"):
                p.zero_()
            else:
                p.normal_(0.0, fan_in[id(p)] ** -0.5 if id(p) in fan_in else std, generator=gen)
