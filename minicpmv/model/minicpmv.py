"""MiniCPM-V 4.5: vision tower -> 3D-Resampler -> visual rows spliced into the Qwen3 token embeddings.

`encode_vision` and `embed` are the reusable halves (the inference engine caches the first and the
trainer calls `forward`); `from_pretrained` / `save_pretrained` / `from_config` live in `weights.py`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from minicpmv.config import PRESETS, ModelConfig
from minicpmv.errors import InputError
from minicpmv.model import weights
from minicpmv.model.kv_cache import KVCache
from minicpmv.model.llm import Qwen3LM
from minicpmv.model.resampler import Resampler
from minicpmv.model.vision import SiglipVisionTower


@dataclass
class MiniCPMVOutput:
    """logits: float[B, T or num_logits_to_keep, V]; hidden_states: final hidden [B, T, D] when asked;
    loss: mean next-token cross-entropy over labels != -100 when labels were given."""

    logits: torch.Tensor
    hidden_states: torch.Tensor | None = None
    loss: torch.Tensor | None = None


class MiniCPMV(nn.Module):
    """`vpm` (SigLIP ViT) + `resampler` (3D-Resampler) + `llm` (Qwen3); names = official checkpoint names."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        _check_widths(config)
        self.config = config
        self.vpm = SiglipVisionTower(config.vision)
        self.resampler = Resampler(config.resampler)
        self.llm = Qwen3LM(config.llm)

    # ---- construction and checkpoints (see weights.py) -------------------------------------
    @classmethod
    def from_pretrained(cls, path: str | Path, dtype: torch.dtype | None = None, device=None) -> "MiniCPMV":
        """Load `config.json` + `model.safetensors` (or shards) from a model folder, strictly."""
        if not (Path(path) / "config.json").is_file():
            raise InputError(f"{path}: no config.json there; give a model folder in the official format "
                             f"(config.json + model.safetensors), e.g. a training stage's <out-dir>/model")
        config = ModelConfig.from_json(Path(path) / "config.json")
        with torch.device("meta"):
            model = cls(config)
        weights.load_checkpoint(model, path, dtype=dtype, device=device)
        model.reset_buffers()
        return model.eval()

    @classmethod
    def from_config(
        cls, config: ModelConfig | str, dtype: torch.dtype | None = None, device=None, seed: int = 0,
        init: str = "normal",
    ) -> "MiniCPMV":
        """A randomly initialised model (`weights.init_random_`, scheme `init`) from a config or a PRESETS name."""
        if isinstance(config, str):
            if config not in PRESETS:
                raise KeyError(f"unknown preset {config!r}; known: {sorted(PRESETS)}")
            config = PRESETS[config]
        with torch.device("meta"):
            model = cls(config)
        model = model.to(dtype=dtype or torch.float32).to_empty(device=device or "cpu")
        weights.init_random_(model, seed, scheme=init)
        model.reset_buffers()
        return model.eval()

    def save_pretrained(self, path: str | Path, max_shard_size: int | str = "5GB") -> None:
        """Write `config.json` and the weights under their official names (sharded above max_shard_size)."""
        weights.save_checkpoint(self, path, max_shard_size)

    def chat(self, *args, **kwargs):
        """The official `chat()` API (see `minicpmv.chat.chat`), so code written for the official model runs."""
        from minicpmv.chat import chat

        return chat(self, *args, **kwargs)

    def reset_buffers(self) -> None:
        """Recompute the non-persistent buffers (they are not in checkpoints): the resampler's sincos cache."""
        self.resampler.reset_pos_cache()

    # ---- vision -------------------------------------------------------------------------
    def encode_vision(
        self, slices: list[torch.Tensor], tgt_sizes: torch.Tensor, temporal_ids: list[list[int]] | None = None
    ) -> torch.Tensor:
        """Slices [3, H_i, W_i] (n of them) -> resampler output [G, num_queries, llm width].

        The ViT runs in chunks of `config.vision_batch_size` slices; the resampler runs once over
        all groups (`temporal_ids`, None = one group per slice without a time embedding).
        """
        tgt_sizes = torch.as_tensor(tgt_sizes).reshape(-1, 2)
        x = vit_in_chunks(self.vpm, slices, tgt_sizes, self.config.vision_batch_size)  # [n, L_max, D_vision]
        return self.resampler(x, tgt_sizes, temporal_ids)  # [G, Q, D]

    def vision_per_item(
        self,
        pixel_values: list[list[torch.Tensor]],
        tgt_sizes: list[torch.Tensor],
        temporal_ids: list[list[list[int]] | None] | None,
    ) -> list[torch.Tensor | None]:
        """encode_vision over all slices of the batch at once, split per item by its number of GROUPS.

        Returns, per item, [G_b, Q, D] or None for an item without slices. Missing temporal ids
        mean every slice is its own `[-1]` group (an image).
        """
        if tgt_sizes is None or len(tgt_sizes) != len(pixel_values):
            raise InputError(f"pixel_values has {len(pixel_values)} items but tgt_sizes has {len(tgt_sizes or [])}")
        counts, groups = [], []
        for b, slices in enumerate(pixel_values):
            if len(tgt_sizes[b]) != len(slices):
                raise InputError(f"item {b}: {len(slices)} pixel slices but {len(tgt_sizes[b])} tgt_sizes rows")
            item_groups = (temporal_ids[b] if temporal_ids and b < len(temporal_ids) else None) or [[-1]] * len(slices)
            covered = sum(len(g) for g in item_groups)
            if slices and covered != len(slices):
                raise InputError(
                    f"item {b}: temporal_ids {item_groups} cover {covered} slices but the item has {len(slices)} "
                    "pixel slices; pass one id per slice (frames of a group in order) or leave temporal_ids empty"
                )
            counts.append(len(item_groups) if slices else 0)
            groups.extend(item_groups if slices else [])
        if not groups:
            return [None] * len(pixel_values)
        all_slices = [s for item in pixel_values for s in item]
        all_sizes = torch.cat([torch.as_tensor(t).reshape(-1, 2) for t, s in zip(tgt_sizes, pixel_values) if s])
        out = self.encode_vision(all_slices, all_sizes, groups).split(counts)  # per item [G_b, Q, D]
        return [o if n else None for o, n in zip(out, counts)]

    # ---- embeddings -------------------------------------------------------------------------
    def embed(
        self,
        input_ids: torch.Tensor,
        pixel_values: list[list[torch.Tensor]] | None = None,
        tgt_sizes: list[torch.Tensor] | None = None,
        temporal_ids: list[list[list[int]] | None] | None = None,
        image_bounds: list[torch.Tensor] | None = None,
        vision_embeds: list[torch.Tensor | None] | None = None,
    ) -> torch.Tensor:
        """Token embeddings [B, T, D] with span k of item b overwritten by vision output k of item b.

        `vision_embeds` (per item [G_b, Q, D] or None) skips `encode_vision`, e.g. from a vision cache.
        """
        embeds = self.llm.embed(input_ids)  # [B, T, D]
        b = input_ids.shape[0]
        if vision_embeds is None:
            has_pixels = pixel_values is not None and any(len(p) for p in pixel_values)
            vision_embeds = self.vision_per_item(pixel_values, tgt_sizes, temporal_ids) if has_pixels else [None] * b
        if len(vision_embeds) != b:
            raise InputError(f"vision inputs for {len(vision_embeds)} items, but input_ids has {b} rows")
        rows, where_b, where_t = [], [], []
        for i in range(b):
            idx = self._span_positions(i, image_bounds[i] if image_bounds and i < len(image_bounds) else None, vision_embeds[i])
            if idx is not None:
                rows.append(vision_embeds[i].reshape(-1, embeds.shape[-1]))  # [G_b * Q, D]
                where_b.append(torch.full_like(idx, i))
                where_t.append(idx)
        if rows:
            positions = (torch.cat(where_b).to(embeds.device), torch.cat(where_t).to(embeds.device))
            return embeds.index_put(positions, torch.cat(rows).to(embeds.dtype))
        if self.training:  # text-only batch: touch every vision parameter so DDP/FSDP see them used
            return embeds + 0.0 * self._dummy_vision().sum().to(embeds.dtype)
        return embeds

    def _span_positions(self, item: int, bounds: torch.Tensor | None, vision: torch.Tensor | None) -> torch.Tensor | None:
        """Token positions of all visual spans of one item, in span order (None when there are none)."""
        n_spans = 0 if bounds is None else len(bounds)
        n_groups = 0 if vision is None else vision.shape[0]
        if n_spans != n_groups:
            raise InputError(
                f"item {item}: {n_spans} visual spans in image_bounds but {n_groups} vision outputs (groups); "
                "the prompt placeholders and the pixel inputs must come from the same processor call"
            )
        if n_spans == 0:
            return None
        bounds = torch.as_tensor(bounds).reshape(-1, 2).cpu()
        q = self.config.query_num
        lengths = (bounds[:, 1] - bounds[:, 0]).tolist()
        if any(n != q for n in lengths):
            raise InputError(f"item {item}: visual span lengths {lengths}, every span must hold exactly {q} tokens")
        return torch.cat([torch.arange(s, e) for s, e in bounds.tolist()])  # [n_spans * Q]

    def _dummy_vision(self) -> torch.Tensor:
        """Resampler output for one black 1-patch slice (used with zero weight in text-only training)."""
        p = self.config.vision.patch_size
        dummy = torch.zeros(self.config.vision.num_channels, p, p, device=self.resampler.query.device)
        return self.encode_vision([dummy], torch.tensor([[1, 1]]))  # [1, Q, D]

    # ---- full forward ---------------------------------------------------------------------
    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        pixel_values: list[list[torch.Tensor]] | None = None,
        tgt_sizes: list[torch.Tensor] | None = None,
        temporal_ids: list[list[list[int]] | None] | None = None,
        image_bounds: list[torch.Tensor] | None = None,
        labels: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cache: KVCache | None = None,
        output_hidden_states: bool = False,
        num_logits_to_keep: int = 0,
        vision_embeds: list[torch.Tensor | None] | None = None,
    ) -> MiniCPMVOutput:
        """input_ids int64[B, T] (+ the processor's per-item vision inputs) -> MiniCPMVOutput.

        num_logits_to_keep > 0 computes logits for the last that many positions only (generation).
        """
        if labels is not None and num_logits_to_keep:
            raise ValueError("labels need the logits of every position; do not combine them with num_logits_to_keep")
        embeds = self.embed(input_ids, pixel_values, tgt_sizes, temporal_ids, image_bounds, vision_embeds)
        hidden = self.llm(embeds, position_ids=position_ids, attention_mask=attention_mask, cache=cache)  # [B, T, D]
        logits = self.llm.logits(hidden[:, -num_logits_to_keep:] if num_logits_to_keep else hidden)  # [B, T', V]
        loss = None if labels is None else next_token_loss(logits, labels)
        return MiniCPMVOutput(logits=logits, hidden_states=hidden if output_hidden_states else None, loss=loss)


def vit_in_chunks(vpm: SiglipVisionTower, slices: list[torch.Tensor], tgt_sizes: torch.Tensor, chunk: int) -> torch.Tensor:
    """ViT over `chunk` slices of EQUAL patch count at a time -> padded features [n, L_max, D_vision].

    Slices are grouped by h*w first, so no ViT call pads or masks: padded keys would cost compute and
    a mask keeps SDPA off its fused flash kernel on CUDA. Rows >= h_i*w_i of the result are zeros
    (the resampler reads only the valid rows). Example: an image cut into an overview of 32x24
    patches + 6 slices of 30x26 (chunk 16) -> 2 ViT calls, [1, 768, D] and [6, 780, D], -> [7, 780, D]
    in input order; 48 video frames of 32x32 patches -> 3 calls on [16, 1024, D] -> [48, 1024, D].
    """
    lengths = (tgt_sizes[:, 0] * tgt_sizes[:, 1]).tolist()
    order = sorted(range(len(slices)), key=lambda i: -lengths[i])  # longest first, stable within a length
    longest = lengths[order[0]]
    parts, start = [], 0
    while start < len(order):
        same = [i for i in order[start:start + chunk] if lengths[i] == lengths[order[start]]]  # one patch count
        hidden = vpm([slices[i] for i in same], tgt_sizes[same]).hidden  # [len(same), h*w, D_vision]
        parts.append(F.pad(hidden, (0, 0, 0, longest - hidden.shape[1])))  # [len(same), L_max, D_vision]
        start += len(same)
    inverse = torch.empty(len(order), dtype=torch.long)
    inverse[torch.tensor(order)] = torch.arange(len(order))  # sorted position of each input slice
    return torch.cat(parts)[inverse.to(parts[0].device)]  # [n, L_max, D_vision], input order


def next_token_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of logits[:, t] against labels[:, t + 1] over labels != -100.

    Example: labels [[-100, -100, 7, 9]] -> positions 1 and 2 predict 7 and 9; loss = mean of 2 terms.
    With no supervised position the loss is 0 (still attached to the graph).
    """
    pred = logits[:, :-1].flatten(0, 1).float()  # [B*(T-1), V]
    target = labels[:, 1:].flatten().to(logits.device)  # [B*(T-1)]
    if not bool((target != -100).any()):
        return pred.sum() * 0.0
    return F.cross_entropy(pred, target, ignore_index=-100)


def _check_widths(config: ModelConfig) -> None:
    r, v, l = config.resampler, config.vision, config.llm
    if r.kv_dim != v.hidden_size or r.embed_dim != l.hidden_size or r.num_queries != config.query_num:
        raise ValueError(
            f"inconsistent config: resampler kv_dim {r.kv_dim} / embed_dim {r.embed_dim} / queries {r.num_queries} "
            f"must equal vision width {v.hidden_size} / LLM width {l.hidden_size} / query_num {config.query_num}"
        )
