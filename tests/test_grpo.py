"""GRPO: advantages and the clipped loss against hand-computed groups, the optional KL and entropy
terms, mode drawing, per-mode statistics, flattened log-prob bookkeeping, teacher forcing against a
plain forward, and one policy update on the tiny model moving log-probs the right way."""

from __future__ import annotations

import math
import random

import pytest
import torch

from conftest import reference_path
from minicpmv.model.minicpmv import MiniCPMV
from minicpmv.processor.processor import Processor
from minicpmv.rl.grpo import GRPOConfig, PolicyLogprobs, draw_modes, group_advantages, mode_stats, policy_loss, update_policy
from minicpmv.rl.rollout import Rollout, TokenLogprobs, rollout_logprobs, sequence_logprobs


pytestmark = pytest.mark.usefixtures("single_thread")  # conftest: tiny models run fastest on one thread


def test_group_advantages_by_hand():
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0], [2.0, 0.0, 1.0, 1.0]])
    adv = group_advantages(rewards)
    a = 0.5 / math.sqrt(1 / 3)  # mean 0.5, sample std sqrt(4 * 0.25 / 3)
    assert adv[0].tolist() == pytest.approx([a, -a, -a, a], rel=1e-5)
    assert adv[1].tolist() == [0.0, 0.0, 0.0, 0.0]  # std 0: no signal, not NaN
    b = 1 / math.sqrt(2 / 3)  # mean 1, sample std sqrt(2 / 3)
    assert adv[2].tolist() == pytest.approx([b, -b, 0.0, 0.0], rel=1e-5)


def test_policy_loss_by_hand():
    # four tokens: (advantage, ratio) = (+1, 1.5) clipped to 1.27; (-1, 0.5) floored at 0.8; (+1, 0.9); (-1, 1.2)
    old = torch.log(torch.tensor([0.2, 0.4, 0.5, 0.5]))
    ratio = torch.tensor([1.5, 0.5, 0.9, 1.2])
    logp = (old + ratio.log()).requires_grad_(True)
    adv = torch.tensor([1.0, -1.0, 1.0, -1.0])
    loss, stats = policy_loss(logp, old, adv, clip_low=0.2, clip_high=0.27)
    assert loss.detach().item() == pytest.approx((-1.27 + 0.8 - 0.9 + 1.2) / 4)
    assert stats["clip_frac"] == 0.5 and stats["ratio_max"] == pytest.approx(1.5)
    loss.backward()
    # clipped tokens get no gradient; the others d/dlogp (-A * ratio) / N
    assert logp.grad.tolist() == pytest.approx([0.0, 0.0, -0.9 / 4, 1.2 / 4])


def test_policy_loss_token_mean_over_a_global_count():
    logp = torch.zeros(2)
    loss, _ = policy_loss(logp, logp, torch.tensor([1.0, 1.0]), num_tokens=8)
    assert float(loss) == pytest.approx(-2 / 8)


def test_masked_tokens_carry_no_loss_and_no_count():
    logp = torch.log(torch.tensor([0.5, 0.5, 0.5, 0.5])).requires_grad_(True)
    old = torch.log(torch.tensor([0.25, 0.5, 0.9, 0.1]))
    adv = torch.tensor([1.0, -1.0, 1.0, 1.0])
    masked, _ = policy_loss(logp, old, adv, mask=torch.tensor([1.0, 1.0, 0.0, 0.0]))
    first_two, _ = policy_loss(logp[:2], old[:2], adv[:2])
    assert masked.detach().item() == pytest.approx(first_two.detach().item())
    masked.backward()
    assert logp.grad[2:].tolist() == [0.0, 0.0]


def test_kl_and_entropy_terms():
    logp = torch.log(torch.tensor([0.5, 0.25]))
    ref = torch.log(torch.tensor([0.25, 0.25]))
    zero_adv = torch.zeros(2)
    delta = ref - logp  # [-log 2, 0]
    k3 = float((delta.exp() - delta - 1).mean())
    assert k3 == pytest.approx((0.5 + math.log(2) - 1) / 2)
    loss, stats = policy_loss(logp, logp, zero_adv, ref_logp=ref, kl_coef=0.1, entropy=torch.tensor([1.0, 3.0]),
                              entropy_coef=0.01)
    assert float(loss) == pytest.approx(0.1 * k3 - 0.01 * 2.0)
    assert stats["kl"] == pytest.approx(k3) and stats["entropy"] == pytest.approx(2.0)
    with pytest.raises(ValueError, match="ref_logp"):
        policy_loss(logp, logp, zero_adv, kl_coef=0.1)


def test_draw_modes_share_and_config_checks():
    rng = random.Random(0)
    modes = draw_modes(4000, 0.5, rng)
    assert set(modes) == {"long", "short"} and abs(modes.count("long") / 4000 - 0.5) < 0.03
    assert draw_modes(10, 0.0, rng) == ["short"] * 10 and draw_modes(10, 1.0, rng) == ["long"] * 10
    for bad in ({"long_share": 1.5}, {"group_size": 1}, {"clip_low": 1.0}):
        with pytest.raises(ValueError):
            GRPOConfig(**bad)


def test_mode_stats():
    stats = mode_stats(["long", "long", "short"], [1.0, -1.0, 0.5], [10, 20, 3], [True, False, False], [True, False, True])
    assert stats == {"long/reward": 0.0, "long/length": 15.0, "long/accuracy": 0.5, "long/format": 0.5, "long/count": 2.0,
                     "short/reward": 0.5, "short/length": 3.0, "short/accuracy": 0.0, "short/format": 1.0,
                     "short/count": 1.0}
    assert "short/reward" not in mode_stats(["long"], [1.0], [4], [True], [True])


def test_token_logprobs_bookkeeping():
    lp = TokenLogprobs(torch.tensor([-1.0, -2.0, -3.0, -4.0, -5.0]), torch.tensor([0, 0, 1, 2, 2]))
    assert lp.sums(3).tolist() == [-3.0, -3.0, -9.0]
    assert lp.per_row(3) == [[-1.0, -2.0], [-3.0], [-4.0, -5.0]]
    picked = lp.select([2, 0])
    assert picked.logp.tolist() == [-4.0, -5.0, -1.0, -2.0] and picked.row.tolist() == [0, 0, 1, 1]


@pytest.fixture(scope="module")
def tiny():
    path = reference_path("tiny_model")
    return MiniCPMV.from_pretrained(path), Processor.from_pretrained(path)


def _rollouts(processor, texts):
    tok = processor.tokenizer
    prompt = processor.encode([{"role": "user", "content": "Is the sky blue?"}])
    return [Rollout(prompt, "short", tok.encode(t) + [tok.im_end_id], t, "stop", 0) for t in texts]


def test_teacher_forcing_equals_a_plain_forward(tiny):
    model, processor = tiny
    rollouts = _rollouts(processor, ["yes", "no, it is not blue at all"])
    with torch.no_grad():
        batched = rollout_logprobs(model, rollouts).per_row(2)
        for r, got in zip(rollouts, batched):
            ids = torch.tensor([r.prompt.input_ids + r.response_ids])
            logits = model(ids).logits[0, len(r.prompt.input_ids) - 1:-1].float()  # [L, V]
            want = logits.log_softmax(-1).gather(1, torch.tensor(r.response_ids)[:, None])[:, 0]
            assert got == pytest.approx(want.tolist(), abs=1e-4)
        # score_from skips the first tokens of a continuation
        tail = sequence_logprobs(model, [rollouts[1].prompt], [rollouts[1].response_ids], score_from=[3]).per_row(1)[0]
        assert tail == pytest.approx(batched[1][3:], abs=1e-4)


def test_one_update_moves_probability_towards_the_better_rollout(tiny):
    model, processor = tiny
    model = MiniCPMV.from_pretrained(reference_path("tiny_model"))  # a private copy: this test trains it
    rollouts = _rollouts(processor, ["yes", "no"])
    with torch.no_grad():
        before = rollout_logprobs(model, rollouts)
    optimizer = torch.optim.SGD(model.llm.parameters(), lr=1.0)
    model.vpm.requires_grad_(False)
    model.resampler.requires_grad_(False)
    stats = update_policy(PolicyLogprobs(model), rollouts, [1.0, -1.0], before, optimizer, GRPOConfig(group_size=2))
    with torch.no_grad():
        after = rollout_logprobs(model, rollouts)
    gain = after.sums(2) - before.sums(2)
    assert float(gain[0]) > 0 > float(gain[1]), gain.tolist()
    assert stats["grad_norm"] > 0 and stats["clip_frac"] == 0.0  # ratio 1 on the first (only) mini-batch
