"""minicpmv: an independent PyTorch implementation of MiniCPM-V 4.5.

Public API: `MiniCPMV`, `Processor`, `Video`, `InputError`, `load`, `ModelConfig`, `PRESETS`.
Heavy modules are imported lazily so `import minicpmv` stays fast.
"""

from __future__ import annotations

from typing import Any

from minicpmv.config import PRESETS, LLMConfig, ModelConfig, ProcessorConfig, ResamplerConfig, VisionConfig
from minicpmv.errors import InputError

__version__ = "0.1.0"

_LAZY = {
    "MiniCPMV": ("minicpmv.model.minicpmv", "MiniCPMV"),
    "Processor": ("minicpmv.processor.processor", "Processor"),
    "Video": ("minicpmv.processor.video", "Video"),
    "Batch": ("minicpmv.processor.types", "Batch"),
    "load": ("minicpmv.api", "load"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'minicpmv' has no attribute {name!r}")


__all__ = [
    "MiniCPMV", "Processor", "Video", "Batch", "InputError", "load",
    "ModelConfig", "VisionConfig", "ResamplerConfig", "LLMConfig", "ProcessorConfig", "PRESETS",
]
