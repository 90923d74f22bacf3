"""Typed configuration for MiniCPM-V 4.5: one frozen dataclass per box of the model diagram.

`ModelConfig.from_hf_dict` / `to_hf_dict` convert to and from the official `config.json`
(Qwen3 fields at the top level, the vision tower under `vision_config`). Each module receives
only its own sub-config.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class VisionConfig:
    """SigLIP so400m/14 NaViT vision tower."""

    hidden_size: int = 1152  # width of every ViT token
    intermediate_size: int = 4304  # MLP width
    num_layers: int = 27  # pre-LN encoder blocks (all used: drop_vision_last_layer is false)
    num_heads: int = 16  # attention heads (head dim 72)
    patch_size: int = 14  # conv kernel = stride
    image_size: int = 980  # position table side = image_size // patch_size = 70
    layer_norm_eps: float = 1e-6
    num_channels: int = 3

    @property
    def num_patches_per_side(self) -> int:
        return self.image_size // self.patch_size


@dataclass(frozen=True)
class ResamplerConfig:
    """3D-Resampler: learned queries cross-attending over one slice or one group of frames."""

    num_queries: int = 64  # output tokens per image slice or per frame group
    embed_dim: int = 4096  # = LLM hidden size
    num_heads: int = 32  # official: embed_dim // 128
    kv_dim: int = 1152  # = vision hidden size
    max_size: int = 70  # side of the initial 2D sincos table (grows on demand)
    layer_norm_eps: float = 1e-6


@dataclass(frozen=True)
class LLMConfig:
    """Qwen3 decoder."""

    vocab_size: int = 151748
    hidden_size: int = 4096
    intermediate_size: int = 12288  # SwiGLU width
    num_layers: int = 36
    num_heads: int = 32
    num_kv_heads: int = 8  # GQA
    head_dim: int = 128
    rope_theta: float = 1_000_000.0
    rms_norm_eps: float = 1e-6
    max_position_embeddings: int = 40960
    tie_word_embeddings: bool = False
    bos_token_id: int = 151643
    eos_token_id: int = 151645


@dataclass(frozen=True)
class ModelConfig:
    """The whole MiniCPM-V 4.5 model plus the multimodal fields of the official config."""

    vision: VisionConfig = field(default_factory=VisionConfig)
    resampler: ResamplerConfig = field(default_factory=ResamplerConfig)
    llm: LLMConfig = field(default_factory=LLMConfig)
    query_num: int = 64  # visual tokens per span (= resampler.num_queries)
    scale_resolution: int = 448  # `image_size` of the official config: target area side of a slice
    patch_size: int = 14
    max_slice_nums: int = 9
    slice_mode: bool = True
    vision_batch_size: int = 16  # slices per ViT chunk (official default)
    torch_dtype: str = "bfloat16"  # dtype recorded in config.json
    name_or_path: str = ""

    # ---- official config.json <-> ours -------------------------------------------------------
    @classmethod
    def from_hf_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        """Build from the official `config.json` dict. Missing required fields raise KeyError."""
        if d.get("model_type", "minicpmv") != "minicpmv":
            raise ValueError(f"config.json model_type is {d.get('model_type')!r}, expected 'minicpmv'")
        if float(d.get("version", 4.5)) != 4.5:
            raise ValueError(f"config.json version is {d.get('version')}; this package implements MiniCPM-V 4.5 only")
        if d.get("drop_vision_last_layer", False):
            raise ValueError("drop_vision_last_layer=true is not MiniCPM-V 4.5 (its config sets false)")
        v = d["vision_config"]
        hidden = d["hidden_size"]
        vision = VisionConfig(
            hidden_size=v.get("hidden_size", 1152),
            intermediate_size=v.get("intermediate_size", 4304),
            num_layers=v.get("num_hidden_layers", 27),
            num_heads=v.get("num_attention_heads", 16),
            patch_size=v.get("patch_size", 14),
            image_size=v.get("image_size", 980),
            layer_norm_eps=v.get("layer_norm_eps", 1e-6),
            num_channels=v.get("num_channels", 3),
        )
        num_heads = d.get("resampler_num_heads") or hidden // 128
        resampler = ResamplerConfig(
            num_queries=d.get("query_num", 64), embed_dim=hidden, num_heads=num_heads, kv_dim=vision.hidden_size
        )
        n_heads = d["num_attention_heads"]
        llm = LLMConfig(
            vocab_size=d["vocab_size"],
            hidden_size=hidden,
            intermediate_size=d["intermediate_size"],
            num_layers=d["num_hidden_layers"],
            num_heads=n_heads,
            num_kv_heads=d.get("num_key_value_heads", n_heads),
            head_dim=d.get("head_dim") or hidden // n_heads,
            rope_theta=float(d.get("rope_theta", 1_000_000.0)),
            rms_norm_eps=d.get("rms_norm_eps", 1e-6),
            max_position_embeddings=d.get("max_position_embeddings", 40960),
            tie_word_embeddings=d.get("tie_word_embeddings", False),
            bos_token_id=d.get("bos_token_id", 151643),
            eos_token_id=_first(d.get("eos_token_id", 151645)),
        )
        slice_cfg = d.get("slice_config") or {}
        return cls(
            vision=vision,
            resampler=resampler,
            llm=llm,
            query_num=d.get("query_num", 64),
            scale_resolution=d.get("image_size", 448),
            patch_size=d.get("patch_size", 14),
            max_slice_nums=slice_cfg.get("max_slice_nums", 9),
            slice_mode=d.get("slice_mode", True),
            vision_batch_size=d.get("vision_batch_size", 16),
            torch_dtype=d.get("torch_dtype", "bfloat16"),
            name_or_path=d.get("_name_or_path", ""),
        )

    def to_hf_dict(self) -> dict[str, Any]:
        """The official `config.json` layout (loadable by the official remote code and by vLLM)."""
        llm, vis = self.llm, self.vision
        d: dict[str, Any] = {
            "_name_or_path": self.name_or_path,
            "version": 4.5,
            "architectures": ["MiniCPMV"],
            "auto_map": {
                "AutoConfig": "configuration_minicpm.MiniCPMVConfig",
                "AutoModel": "modeling_minicpmv.MiniCPMV",
                "AutoModelForCausalLM": "modeling_minicpmv.MiniCPMV",
            },
            "attention_bias": False,
            "attention_dropout": 0.0,
            "bos_token_id": llm.bos_token_id,
            "eos_token_id": llm.eos_token_id,
            "head_dim": llm.head_dim,
            "hidden_act": "silu",
            "hidden_size": llm.hidden_size,
            "initializer_range": 0.02,
            "intermediate_size": llm.intermediate_size,
            "max_position_embeddings": llm.max_position_embeddings,
            "max_window_layers": llm.num_layers,
            "num_attention_heads": llm.num_heads,
            "num_hidden_layers": llm.num_layers,
            "num_key_value_heads": llm.num_kv_heads,
            "rms_norm_eps": llm.rms_norm_eps,
            "rope_scaling": None,
            "rope_theta": llm.rope_theta,
            "sliding_window": None,
            "tie_word_embeddings": llm.tie_word_embeddings,
            "torch_dtype": self.torch_dtype,
            "transformers_version": "4.51.0",
            "use_cache": True,
            "use_sliding_window": False,
            "vocab_size": llm.vocab_size,
            "batch_vision_input": True,
            "batch_3d_resampler": True,
            "drop_vision_last_layer": False,
            "image_size": self.scale_resolution,
            "model_type": "minicpmv",
            "patch_size": self.patch_size,
            "query_num": self.query_num,
            "slice_config": {"max_slice_nums": self.max_slice_nums, "patch_size": self.patch_size, "model_type": "minicpmv"},
            "slice_mode": self.slice_mode,
            "vision_config": {
                "hidden_size": vis.hidden_size,
                "image_size": vis.image_size,
                "intermediate_size": vis.intermediate_size,
                "model_type": "siglip",
                "num_attention_heads": vis.num_heads,
                "num_hidden_layers": vis.num_layers,
                "patch_size": vis.patch_size,
            },
        }
        if self.resampler.num_heads != llm.hidden_size // 128:
            d["resampler_num_heads"] = self.resampler.num_heads
        return d

    @classmethod
    def from_json(cls, path: str | Path) -> "ModelConfig":
        return cls.from_hf_dict(json.loads(Path(path).read_text()))

    def save_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_hf_dict(), indent=2) + "\n")

    def replace(self, **changes: Any) -> "ModelConfig":
        return replace(self, **changes)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _first(x: int | list[int]) -> int:
    return x[0] if isinstance(x, list) else x


def _tiny() -> ModelConfig:
    """The sizes of the reference tiny random model (vision 16 wide so `kv_proj` exists)."""
    vision = VisionConfig(hidden_size=16, intermediate_size=64, num_layers=2, num_heads=2)
    llm = LLMConfig(hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8)
    resampler = ResamplerConfig(embed_dim=32, num_heads=2, kv_dim=16)
    return ModelConfig(vision=vision, resampler=resampler, llm=llm, torch_dtype="float32", name_or_path="tiny")


PRESETS: dict[str, ModelConfig] = {
    "minicpmv-4.5": ModelConfig(name_or_path="openbmb/MiniCPM-V-4_5"),
    "tiny": _tiny(),
}


@dataclass(frozen=True)
class ProcessorConfig:
    """Image/video pre-processing settings (`preprocessor_config.json`)."""

    max_slice_nums: int = 9  # at most this many slices besides the overview
    scale_resolution: int = 448  # every slice is resized to about this side squared
    patch_size: int = 14
    use_image_id: bool = True  # prefix `<image_id>k</image_id>` before each image
    image_feature_size: int = 64  # `<unk>` placeholders per span (= query_num)
    slice_mode: bool = True
    norm_mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    norm_std: tuple[float, float, float] = (0.5, 0.5, 0.5)

    @classmethod
    def from_hf_dict(cls, d: dict[str, Any]) -> "ProcessorConfig":
        return cls(
            max_slice_nums=d.get("max_slice_nums", 9),
            scale_resolution=d.get("scale_resolution", 448),
            patch_size=d.get("patch_size", 14),
            use_image_id=d.get("use_image_id", True),
            image_feature_size=d.get("image_feature_size", 64),
            slice_mode=d.get("slice_mode", True),
            norm_mean=tuple(d.get("norm_mean", (0.5, 0.5, 0.5))),
            norm_std=tuple(d.get("norm_std", (0.5, 0.5, 0.5))),
        )

    def to_hf_dict(self) -> dict[str, Any]:
        return {
            "image_processor_type": "MiniCPMVImageProcessor",
            "auto_map": {
                "AutoProcessor": "processing_minicpmv.MiniCPMVProcessor",
                "AutoImageProcessor": "image_processing_minicpmv.MiniCPMVImageProcessor",
            },
            "processor_class": "MiniCPMVProcessor",
            "max_slice_nums": self.max_slice_nums,
            "scale_resolution": self.scale_resolution,
            "patch_size": self.patch_size,
            "use_image_id": self.use_image_id,
            "image_feature_size": self.image_feature_size,
            "im_start": "<image>",
            "im_end": "</image>",
            "slice_start": "<slice>",
            "slice_end": "</slice>",
            "unk": "<unk>",
            "im_id_start": "<image_id>",
            "im_id_end": "</image_id>",
            "slice_mode": self.slice_mode,
            "norm_mean": list(self.norm_mean),
            "norm_std": list(self.norm_std),
            "version": 2.6,
        }
