"""The Qwen3 decoder (the `llm.` part of the checkpoint).

GQA attention with a per-head RMSNorm on q and k before RoPE, SwiGLU MLP, pre-RMSNorm blocks,
final RMSNorm and an untied `lm_head`. Module names mirror the official checkpoint:
`llm.model.embed_tokens`, `llm.model.layers.{i}.self_attn.q_proj`, ..., `llm.lm_head`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from minicpmv.config import LLMConfig
from minicpmv.model.kv_cache import KVCache


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in float32, multiply by the weight in the input dtype (as the reference does).
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


def rope_cos_sin(position_ids: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype):
    """cos/sin tables for positions [B, T] -> two [B, 1, T, head_dim] tensors (computed in float32)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64, device=position_ids.device).float() / head_dim))
    freqs = position_ids.float()[..., None] * inv_freq  # [B, T, hd/2]
    emb = torch.cat((freqs, freqs), dim=-1)[:, None]  # [B, 1, T, hd]
    return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


class Attention(nn.Module):
    def __init__(self, cfg: LLMConfig):
        super().__init__()
        self.cfg = cfg
        h, hd, kvh = cfg.num_heads, cfg.head_dim, cfg.num_kv_heads
        self.q_proj = nn.Linear(cfg.hidden_size, h * hd, bias=False)
        self.k_proj = nn.Linear(cfg.hidden_size, kvh * hd, bias=False)
        self.v_proj = nn.Linear(cfg.hidden_size, kvh * hd, bias=False)
        self.o_proj = nn.Linear(h * hd, cfg.hidden_size, bias=False)
        self.q_norm = RMSNorm(hd, cfg.rms_norm_eps)
        self.k_norm = RMSNorm(hd, cfg.rms_norm_eps)

    def forward(self, x, cos, sin, mask, layer: int, cache: KVCache | None) -> torch.Tensor:
        b, t, _ = x.shape
        hd = self.cfg.head_dim
        q = self.q_norm(self.q_proj(x).view(b, t, -1, hd)).transpose(1, 2)  # [B, H, T, hd]
        k = self.k_norm(self.k_proj(x).view(b, t, -1, hd)).transpose(1, 2)  # [B, kvH, T, hd]
        v = self.v_proj(x).view(b, t, -1, hd).transpose(1, 2)  # [B, kvH, T, hd]
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            k, v = cache.update(layer, k, v)  # [B, kvH, S, hd]
        causal = mask is None and t > 1  # no mask and several queries: nothing stored before them
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, enable_gqa=True)  # [B, H, T, hd]
        return self.o_proj(y.transpose(1, 2).reshape(b, t, -1))


class MLP(nn.Module):
    def __init__(self, cfg: LLMConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: LLMConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, cos, sin, mask, layer: int, cache: KVCache | None) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, layer, cache)
        return x + self.mlp(self.post_attention_layernorm(x))


class Qwen3Body(nn.Module):
    """`llm.model`: embeddings, decoder layers, final norm."""

    def __init__(self, cfg: LLMConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


def attention_bias_mask(key_mask: torch.Tensor | None, past: int, t: int, device) -> torch.Tensor | None:
    """Boolean attention mask [B, 1, T, S] (True = attend) for T new queries after `past` stored keys.

    Causal plus key padding. Every query may always see itself, so rows that are pure padding
    (left-pad positions) keep a finite softmax instead of NaNs that would leak into the cache.
    Returns None when no key is padding and either nothing is stored yet (plain causal attention,
    done by SDPA's `is_causal`) or there is one query (it may see every stored key).
    """
    if key_mask is not None and bool(key_mask.all()):
        key_mask = None
    if key_mask is None and (past == 0 or t == 1):
        return None
    s = past + t
    q_pos = torch.arange(past, s, device=device)[:, None]  # [T, 1]
    k_pos = torch.arange(s, device=device)[None, :]  # [1, S]
    allowed = (k_pos <= q_pos)[None]  # [1, T, S]
    if key_mask is not None:
        allowed = (allowed & key_mask.bool()[:, None, :]) | (k_pos == q_pos)[None]  # [B, T, S]
    return allowed[:, None]  # [B or 1, 1, T, S]


class Qwen3LM(nn.Module):
    """Qwen3ForCausalLM equivalent: `hidden = llm(inputs_embeds, ...)`, `logits = llm.logits(hidden)`."""

    def __init__(self, cfg: LLMConfig):
        super().__init__()
        self.cfg = cfg
        self.model = Qwen3Body(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.gradient_checkpointing = False

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.embed_tokens(input_ids)  # [B, T] -> [B, T, D]

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden)  # [B, T, D] -> [B, T, V]

    def forward(
        self,
        inputs_embeds: torch.Tensor,
        position_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        """inputs_embeds [B, T, D] -> final hidden states [B, T, D] (after the last RMSNorm).

        attention_mask: [B, S] over all keys (S = tokens already in `cache` + T), 1 = real token;
            or a boolean [B, 1, T, S] mask used as is (True = attend; packed training samples).
        position_ids: [B, T]; default cumsum(attention_mask) - 1 (left padding) or past..past+T-1.
        """
        b, t, _ = inputs_embeds.shape
        past = cache.length if cache is not None else 0
        if attention_mask is not None and attention_mask.dim() == 4:
            # A ready boolean mask [B, 1, T, S] (True = attend), e.g. block-diagonal for packed samples.
            if attention_mask.shape != (b, 1, t, past + t):
                raise ValueError(f"4D attention_mask shape {tuple(attention_mask.shape)} != (batch {b}, 1, {t}, {past + t})")
            if position_ids is None:
                raise ValueError("a 4D attention_mask needs explicit position_ids (they restart per packed sample)")
            mask = attention_mask.bool()
        else:
            if attention_mask is not None and attention_mask.shape != (b, past + t):
                raise ValueError(f"attention_mask shape {tuple(attention_mask.shape)} != (batch {b}, past {past} + new {t})")
            if position_ids is None:
                position_ids = default_position_ids(attention_mask, past, t, b, inputs_embeds.device)
            mask = attention_bias_mask(attention_mask, past, t, inputs_embeds.device)
        cos, sin = rope_cos_sin(position_ids, self.cfg.head_dim, self.cfg.rope_theta, inputs_embeds.dtype)
        x = inputs_embeds
        for i, layer in enumerate(self.model.layers):
            if self.gradient_checkpointing and self.training:
                x = checkpoint(layer, x, cos, sin, mask, i, cache, use_reentrant=False)
            else:
                x = layer(x, cos, sin, mask, i, cache)
        if cache is not None:
            cache.advance(t)
        return self.model.norm(x)


def default_position_ids(attention_mask, past: int, t: int, b: int, device) -> torch.Tensor:
    """Positions of the T new tokens: count of real tokens before each one (left padding aware)."""
    if attention_mask is None:
        return torch.arange(past, past + t, device=device).expand(b, t)
    pos = attention_mask.long().cumsum(-1) - 1  # [B, S]
    return pos.clamp(min=0)[:, past:]  # [B, T]
