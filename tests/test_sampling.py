"""Sampling functions: the docstring examples, per-row parameters, HF semantics, seeded draws."""

from __future__ import annotations

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from minicpmv.inference import sampling

INF = float("-inf")


def rows(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


def test_repetition_penalty_hf_semantics():
    scores = torch.tensor([[2.4, -1.0, 3.0], [2.4, -1.0, 3.0]])
    seen = torch.tensor([[True, True, False], [True, True, True]])
    out = sampling.apply_repetition_penalty(scores, seen, rows(1.2, 1.0))
    torch.testing.assert_close(out, torch.tensor([[2.0, -1.2, 3.0], [2.4, -1.0, 3.0]]))


def test_ban_tokens_only_in_chosen_rows():
    scores = torch.zeros(2, 5)
    out = sampling.ban_tokens(scores, torch.tensor([1, 3]), torch.tensor([True, False]))
    assert out[0].tolist() == [0, INF, 0, INF, 0] and out[1].tolist() == [0] * 5


def test_temperature():
    torch.testing.assert_close(sampling.apply_temperature(torch.tensor([[2.0, 1.0]]), rows(0.5)), torch.tensor([[4.0, 2.0]]))


def test_top_k_keeps_ties_and_zero_is_off():
    scores = torch.tensor([[1.0, 5.0, 3.0, 4.0], [1.0, 5.0, 4.0, 4.0], [1.0, 5.0, 3.0, 4.0]])
    out = sampling.top_k_filter(scores, torch.tensor([2, 2, 0]))
    assert out[0].tolist() == [INF, 5.0, INF, 4.0]
    assert out[1].tolist() == [INF, 5.0, 4.0, 4.0]  # the tie at the 2nd score stays (HF)
    assert out[2].tolist() == scores[2].tolist()


def test_top_p_docstring_example_and_off():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05], [0.5, 0.3, 0.15, 0.05]])
    out = sampling.top_p_filter(probs.log(), rows(0.75, 1.0))
    assert torch.isfinite(out[0]).tolist() == [True, True, False, False]
    assert torch.isfinite(out[1]).all()


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-8, 8), min_size=2, max_size=12), st.floats(0.05, 0.99))
def test_top_p_keeps_the_smallest_sufficient_set(logits, top_p):
    scores = torch.tensor([logits], dtype=torch.float32)
    kept = torch.isfinite(sampling.top_p_filter(scores, rows(top_p)))[0]
    probs = scores.softmax(-1)[0]
    assert float(probs[kept].max()) == float(probs.max())
    mass = float(probs[kept].sum())
    assert mass >= top_p - 1e-5 or kept.all()
    # without its least likely member the kept set would fall short (up to float rounding)
    weakest = float(probs[kept].min())
    assert mass - weakest <= top_p + 1e-5 or int(kept.sum()) == 1


def test_min_p():
    out = sampling.min_p_filter(torch.tensor([[0.6, 0.3, 0.1]]).log(), rows(0.2))
    assert torch.isfinite(out)[0].tolist() == [True, True, False]


def test_greedy_lowest_id_wins_ties():
    assert sampling.greedy(torch.tensor([[1.0, 3.0, 3.0]])).tolist() == [1]


def test_seeded_draw_is_reproducible_and_independent_of_the_batch():
    scores = torch.randn(3, 50, generator=torch.Generator().manual_seed(0))

    def gens(*seeds):
        return [torch.Generator().manual_seed(s) for s in seeds]

    batch = sampling.draw(scores, gens(1, 2, 3))
    assert batch.tolist() == sampling.draw(scores, gens(1, 2, 3)).tolist()
    alone = sampling.draw(scores[1:2], gens(2))
    assert alone.item() == batch[1].item()
    many = torch.stack([sampling.draw(scores[:1], gens(s)) for s in range(20)])
    assert len(set(many.flatten().tolist())) > 1, "different seeds should not all give the same token"


def test_sample_on_top_k_candidates_matches_the_filtered_distribution():
    """The top-k shortcut draws from softmax over the k best (here 3 of 6), nothing else."""
    logits = torch.tensor([[0.0, 2.0, 1.0, -1.0, 1.5, -3.0]])
    g = torch.Generator().manual_seed(0)
    n = 3000
    picks = torch.cat([
        sampling.sample(logits, rows(1.0), torch.tensor([3]), rows(1.0), rows(0.0), [g]) for _ in range(n)
    ])
    counts = torch.bincount(picks, minlength=6).float() / n
    expected = torch.zeros(6)
    expected[[1, 2, 4]] = torch.tensor([2.0, 1.0, 1.5]).softmax(0)
    assert counts[[0, 3, 5]].sum() == 0
    assert torch.allclose(counts, expected, atol=4 * math.sqrt(0.25 / n))


def test_sample_mixed_rows_without_top_k_uses_the_full_vocabulary():
    logits = torch.zeros(2, 8)
    logits[0, 5] = 30.0  # near one-hot
    logits[1, 2] = 30.0
    out = sampling.sample(logits, rows(1.0, 1.0), torch.tensor([0, 2]), rows(1.0, 0.9), rows(0.0, 0.0),
                          [torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)])
    assert out.tolist() == [5, 2]
