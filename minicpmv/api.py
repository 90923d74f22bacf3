"""`minicpmv.load`: a model and its processor on the best device and dtype, in one call."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from minicpmv.config import PRESETS
from minicpmv.errors import InputError

# CPU flags (Linux /proc/cpuinfo names) that mean bfloat16 matrix maths run natively.
_BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


def best_device() -> torch.device:
    """cuda > mps > cpu."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def cpu_has_native_bf16(capability: str, cpu_flags: set[str] | None) -> bool:
    """Whether this CPU computes bfloat16 natively (else float32 is faster and exact enough).

    `capability` is torch's SIMD level (`torch.backends.cpu.get_cpu_capability()`: 'AVX512',
    'AVX2', 'DEFAULT', ...). AVX512 alone is not enough (Skylake has no bf16 instructions): when the
    CPU flags are known (Linux), one of avx512_bf16 / amx_bf16 must be there. Examples:
    ('AVX2', None) -> False; ('AVX512', {'avx512f'}) -> False; ('AVX512', {'amx_bf16'}) -> True;
    ('AVX512', None) -> True (flags unknown: trust the SIMD level).
    """
    if "AVX512" not in capability.upper() and "AMX" not in capability.upper():
        return False
    return cpu_flags is None or any(f in cpu_flags for f in _BF16_CPU_FLAGS)


def _cpu_flags() -> set[str] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    line = next((l for l in text.splitlines() if l.startswith("flags")), None)
    return set(line.split(":", 1)[1].split()) if line else None


def best_dtype(device: torch.device) -> torch.dtype:
    """bfloat16 on CUDA (float16 on GPUs without bf16) and MPS; on CPU bfloat16 only when native."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "mps":
        return torch.bfloat16
    return torch.bfloat16 if cpu_has_native_bf16(torch.backends.cpu.get_cpu_capability(), _cpu_flags()) else torch.float32


def load(path_or_preset: str | Path | None = None, device: str | torch.device | None = None,
         dtype: torch.dtype | None = None, *, tokenizer: str | Path | None = None):
    """(model, processor) from a checkpoint folder or a preset name, on the best device and dtype.

    path_or_preset: None or "demo" for the embedded demo model (minicpmv/assets/demo, docs/demo-model.md),
                    a folder with config.json, model weights, tokenizer.json and
                    preprocessor_config.json (the official layout), or a name in PRESETS (random
                    weights, for tests and benchmarks); a preset needs `tokenizer=` a folder holding
                    tokenizer.json (and preprocessor_config.json, else the official settings are used).
    device / dtype: default `best_device()` / `best_dtype(device)`.
    """
    from minicpmv.model.minicpmv import MiniCPMV
    from minicpmv.processor.processor import Processor

    if path_or_preset is None or str(path_or_preset) == "demo":
        path_or_preset = _demo_dir()
    device = torch.device(device) if device is not None else best_device()
    dtype = dtype or best_dtype(device)
    folder = Path(path_or_preset)
    if folder.is_dir():
        return MiniCPMV.from_pretrained(folder, dtype=dtype, device=device), Processor.from_pretrained(tokenizer or folder)
    name = str(path_or_preset)
    if name not in PRESETS:
        raise InputError(f"{name!r} is neither a folder nor a preset; presets: {', '.join(sorted(PRESETS))}")
    if tokenizer is None:
        raise InputError(
            f"preset {name!r} has random weights and no tokenizer: pass tokenizer=<folder> with tokenizer.json "
            "and preprocessor_config.json (the files of the official openbmb/MiniCPM-V-4_5 repository)"
        )
    return MiniCPMV.from_config(name, dtype=dtype, device=device), _processor(Path(tokenizer))


def _demo_dir() -> Path:
    """The embedded demo model's folder; InputError when this install lacks it."""
    from minicpmv.demo import DEMO_DIR

    if not (DEMO_DIR / "config.json").is_file():
        raise InputError(f"no default model: the embedded demo model is missing from {DEMO_DIR} (a broken install?); "
                         "reinstall the package, or pass a checkpoint folder such as a download of openbmb/MiniCPM-V-4_5")
    return DEMO_DIR


def _processor(folder: Path):
    """Processor from a folder with tokenizer.json, and preprocessor_config.json if there (else the official settings)."""
    from minicpmv.processor.processor import Processor
    from minicpmv.processor.tokenizer import Tokenizer

    if (folder / "preprocessor_config.json").is_file():
        return Processor.from_pretrained(folder)
    return Processor(Tokenizer.from_pretrained(folder))
