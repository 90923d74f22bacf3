"""Qwen3 decoder: KV-cache decode equals full recomputation, for one row and a left-padded batch."""

import torch

from minicpmv.config import PRESETS
from minicpmv.model.kv_cache import KVCache
from minicpmv.model.llm import Qwen3LM


def _tiny_llm(seed: int = 0) -> Qwen3LM:
    cfg = PRESETS["tiny"].llm
    torch.manual_seed(seed)
    llm = Qwen3LM(cfg).eval()
    with torch.no_grad():
        for p in llm.parameters():
            p.normal_(0, 0.3)
    return llm


def _full_logits(llm, embeds, mask):
    return llm.logits(llm(embeds, attention_mask=mask))


def test_cache_decode_equals_full_forward_batch1():
    llm = _tiny_llm()
    x = torch.randn(1, 12, llm.cfg.hidden_size)
    with torch.no_grad():
        full = _full_logits(llm, x, None)
        cache = KVCache.allocate(llm.cfg, 1, 12)
        parts = [llm.logits(llm(x[:, :5], cache=cache))]
        for i in range(5, 12):
            parts.append(llm.logits(llm(x[:, i : i + 1], cache=cache)))
    assert cache.length == 12
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-5, rtol=0)


def test_cache_decode_equals_full_forward_left_padded_batch3():
    llm = _tiny_llm(1)
    lengths = [10, 6, 3]
    total, steps = 10, 4
    x = torch.randn(3, total + steps, llm.cfg.hidden_size)
    mask = torch.zeros(3, total + steps, dtype=torch.long)
    for b, n in enumerate(lengths):
        mask[b, total - n :] = 1  # left padding
    with torch.no_grad():
        full = _full_logits(llm, x, mask)
        cache = KVCache.allocate(llm.cfg, 3, total + steps)
        parts = [llm.logits(llm(x[:, :total], attention_mask=mask[:, :total], cache=cache))]
        for i in range(total, total + steps):
            parts.append(llm.logits(llm(x[:, i : i + 1], attention_mask=mask[:, : i + 1], cache=cache)))
    got = torch.cat(parts, 1)
    real = mask.bool()
    torch.testing.assert_close(got[real], full[real], atol=1e-5, rtol=0)
    assert torch.isfinite(got).all(), "padding rows must not produce NaNs"


def test_padded_row_equals_row_alone():
    llm = _tiny_llm(2)
    x = torch.randn(1, 5, llm.cfg.hidden_size)
    padded = torch.cat([torch.zeros(1, 3, llm.cfg.hidden_size), x], 1)
    mask = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1]])
    with torch.no_grad():
        alone = _full_logits(llm, x, None)
        batched = _full_logits(llm, padded, mask)[:, 3:]
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=0)


def test_block_diagonal_mask_equals_separate_samples():
    """Two samples packed in one row with a block-diagonal mask and restarting positions."""
    llm = _tiny_llm(3)
    a, b = torch.randn(1, 4, llm.cfg.hidden_size), torch.randn(1, 3, llm.cfg.hidden_size)
    packed = torch.cat([a, b], 1)
    seg = torch.tensor([0, 0, 0, 0, 1, 1, 1])
    causal = torch.ones(7, 7, dtype=torch.bool).tril()
    mask = (causal & (seg[:, None] == seg[None, :]))[None, None]  # [1, 1, 7, 7]
    pos = torch.tensor([[0, 1, 2, 3, 0, 1, 2]])
    with torch.no_grad():
        got = _full_logits_4d(llm, packed, mask, pos)
        want = torch.cat([_full_logits(llm, a, None), _full_logits(llm, b, None)], 1)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def _full_logits_4d(llm, embeds, mask, pos):
    return llm.logits(llm(embeds, position_ids=pos, attention_mask=mask))
