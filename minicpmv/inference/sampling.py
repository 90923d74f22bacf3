"""Token choice as pure functions on a batch of logits [B, V], one parameter value per row.

Order and semantics follow Hugging Face `generate` (the official `chat()` runs on it):
repetition penalty and the `min_new_tokens` ban act on the raw scores, then temperature, top-k,
top-p and min-p reshape them, then a token is drawn (or the argmax is taken for greedy rows).
Every parameter is a per-row tensor so requests with different settings share one batch; a value
that switches a filter off (top_k 0, top_p 1, min_p 0, penalty 1, temperature 1) leaves the row
untouched.
"""

from __future__ import annotations

import torch


def apply_repetition_penalty(scores: torch.Tensor, seen: torch.Tensor, penalty: torch.Tensor) -> torch.Tensor:
    """Penalise every token already seen: positive scores are divided by the penalty, others multiplied.

    scores: float[B, V]; seen: bool[B, V] (True = the token occurred in the ids this row is
    penalised over); penalty: float[B] (1 = off). Example with penalty 1.2: scores [2.4, -1.0, 3.0]
    and seen [True, True, False] -> [2.0, -1.2, 3.0]. Applied to log-probabilities (beam search,
    as in HF) every seen token becomes less likely too.
    """
    p = penalty.to(scores.dtype)[:, None]  # [B, 1]
    penalised = torch.where(scores > 0, scores / p, scores * p)
    return torch.where(seen, penalised, scores)


def ban_tokens(scores: torch.Tensor, token_ids: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Set the scores of `token_ids` to -inf in the rows where `rows` is True (min_new_tokens: no stop yet).

    scores: float[B, V]; token_ids: int64[K]; rows: bool[B]. Example: ids [7], rows [True, False]
    -> row 0 can no longer pick token 7, row 1 is unchanged.
    """
    if token_ids.numel() == 0 or not bool(rows.any()):
        return scores
    out = scores.clone()
    out[rows.nonzero()[:, :1], token_ids[None, :]] = float("-inf")  # [n_rows, 1] x [1, K] -> [n_rows, K]
    return out


def apply_temperature(scores: torch.Tensor, temperature: torch.Tensor) -> torch.Tensor:
    """Divide each row by its temperature (> 0). Example: [2.0, 1.0] at 0.5 -> [4.0, 2.0] (sharper)."""
    if bool((temperature <= 0).any()):
        raise ValueError(f"temperatures must be > 0 for sampling rows, got {temperature.tolist()}")
    return scores / temperature.to(scores.dtype)[:, None]


def top_k_filter(scores: torch.Tensor, top_k: torch.Tensor) -> torch.Tensor:
    """Keep, per row, the tokens scoring at least the k-th best score (ties kept, as HF); k 0 = off.

    Example: [1, 5, 3, 4] with k 2 -> [-inf, 5, -inf, 4].
    """
    k = top_k.clamp(min=0, max=scores.shape[-1])
    if int(k.max()) == 0:
        return scores
    kth_best = scores.topk(int(k.max()), dim=-1).values  # [B, k_max], descending
    threshold = kth_best.gather(1, (k.clamp(min=1) - 1)[:, None])  # [B, 1]
    threshold = torch.where(k[:, None] > 0, threshold, torch.full_like(threshold, float("-inf")))
    return scores.masked_fill(scores < threshold, float("-inf"))


def top_p_filter(scores: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Nucleus filter: keep the smallest set of best tokens whose probability mass reaches top_p.

    HF formulation: sort ascending, drop every token whose cumulative probability (from the
    worst token up) is <= 1 - top_p; the best token always stays. Example: probabilities
    [0.5, 0.3, 0.15, 0.05] with top_p 0.75 -> ascending cumsum [0.05, 0.2, 0.5, 1.0] for
    [0.05, 0.15, 0.3, 0.5]; drop those <= 0.25 -> keep 0.5 and 0.3. top_p 1 = off.
    """
    if bool((top_p >= 1).all()):
        return scores
    ascending, order = scores.sort(dim=-1)  # [B, V]
    cumulative = ascending.softmax(-1).cumsum(-1)  # [B, V]
    drop_sorted = cumulative <= (1 - top_p.to(cumulative.dtype))[:, None]
    drop_sorted[:, -1] = False
    drop_sorted &= (top_p < 1)[:, None]
    drop = drop_sorted.scatter(1, order, drop_sorted)  # back to vocabulary order
    return scores.masked_fill(drop, float("-inf"))


def min_p_filter(scores: torch.Tensor, min_p: torch.Tensor) -> torch.Tensor:
    """Drop tokens whose probability is below min_p times the best token's probability; 0 = off.

    Example: probabilities [0.6, 0.3, 0.1] with min_p 0.2 -> threshold 0.12 -> the 0.1 token goes.
    """
    if bool((min_p <= 0).all()):
        return scores
    probs = scores.softmax(-1)  # [B, V]
    threshold = min_p.to(probs.dtype)[:, None] * probs.max(-1, keepdim=True).values  # [B, 1]
    return scores.masked_fill(probs < threshold, float("-inf"))


def warp(
    scores: torch.Tensor, temperature: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor, min_p: torch.Tensor
) -> torch.Tensor:
    """HF warper order for sampling rows: temperature, top-k, top-p, min-p. Returns filtered scores [B, V]."""
    scores = apply_temperature(scores, temperature)
    scores = top_k_filter(scores, top_k)
    scores = top_p_filter(scores, top_p)
    return min_p_filter(scores, min_p)


def draw(scores: torch.Tensor, generators: list[torch.Generator | None]) -> torch.Tensor:
    """One token per row from softmax(scores), row i using `generators[i]` (seeded per request).

    scores: float[B, V] (already warped; -inf = excluded) -> int64[B]. A row's draw depends only
    on its own scores and generator, so a seeded request gets the same tokens alone or in a batch.
    """
    if len(generators) != scores.shape[0]:
        raise ValueError(f"{len(generators)} generators for {scores.shape[0]} rows")
    probs = scores.float().softmax(-1)  # [B, V]
    picks = [torch.multinomial(probs[i], 1, generator=g) for i, g in enumerate(generators)]
    return torch.cat(picks)  # [B]


def greedy(scores: torch.Tensor) -> torch.Tensor:
    """argmax per row: float[B, V] -> int64[B] (the lowest id wins a tie, as torch.argmax)."""
    return scores.argmax(-1)


def sample(
    scores: torch.Tensor,
    temperature: torch.Tensor,
    top_k: torch.Tensor,
    top_p: torch.Tensor,
    min_p: torch.Tensor,
    generators: list[torch.Generator | None],
) -> torch.Tensor:
    """Warp and draw one token per row: float[B, V] -> int64[B].

    When every row has a top-k, the work is done on the k_max best candidates only (a sort of
    [B, k_max] instead of [B, V]: 100 instead of 151,748 entries per row for the official
    defaults). Tokens outside a row's top k are excluded either way, so the distribution is the
    same; only exact ties at the k-th score, which HF would keep, are cut.
    """
    k_max = int(top_k.max())
    if 0 < k_max < scores.shape[-1] and bool((top_k > 0).all()):
        candidates, ids = scores.topk(k_max, dim=-1)  # [B, k_max] each
        picks = draw(warp(candidates, temperature, top_k, top_p, min_p), generators)  # [B]
        return ids.gather(1, picks[:, None])[:, 0]
    return draw(warp(scores, temperature, top_k, top_p, min_p), generators)
