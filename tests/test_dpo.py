"""DPO loss against a hand-computed pair, pair encoding, and the RLAIF-V pieces: claim parsing,
scores, pair sampling, length balancing, the default judge, and the whole pair builder with a fake
text model and judge on the tiny model."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from conftest import reference_path
from minicpmv.errors import InputError
from minicpmv.inference.engine import Engine
from minicpmv.model.minicpmv import MiniCPMV
from minicpmv.processor.processor import Processor
from minicpmv.rl.dpo import (
    ModelJudge, PairConfig, build_pairs, claim_questions, dpo_loss, encode_pair, length_balance, pair_logprobs,
    pair_record, pair_texts, parse_lines, plain_text, preference_pairs, prompt_question, response_score, split_claims,
)
from minicpmv.rl.rollout import PromptSet, RLPrompt
from train_fixtures import small_image_model, write_image


pytestmark = pytest.mark.usefixtures("single_thread")  # conftest: tiny models run fastest on one thread


def test_dpo_loss_by_hand():
    pc = torch.tensor([-1.0], requires_grad=True)
    loss, stats = dpo_loss(pc, torch.tensor([-2.0]), torch.tensor([-1.5]), torch.tensor([-1.5]), beta=0.1)
    # margin (-1 + 1.5) - (-2 + 1.5) = 1 -> -log sigmoid(0.1) = log(1 + e^-0.1)
    assert loss.detach().item() == pytest.approx(math.log(1 + math.exp(-0.1)), abs=1e-6)
    assert stats["margin"] == pytest.approx(1.0) and stats["accuracy"] == 1.0
    assert stats["chosen_reward"] == pytest.approx(0.05) and stats["rejected_reward"] == pytest.approx(-0.05)
    loss.backward()
    assert pc.grad.item() == pytest.approx(-0.1 / (1 + math.exp(0.1)), abs=1e-6)  # -beta * sigmoid(-0.1)


def test_dpo_loss_batch_mean_and_sft_term():
    zero = torch.zeros(2)
    loss, stats = dpo_loss(torch.tensor([1.0, -1.0]), zero, zero, zero, beta=1.0)
    want = (math.log(1 + math.exp(-1)) + math.log(1 + math.exp(1))) / 2
    assert loss.item() == pytest.approx(want) and stats["accuracy"] == 0.5 and stats["margin"] == 0.0
    with_sft, _ = dpo_loss(torch.tensor([1.0, -1.0]), zero, zero, zero, beta=1.0, sft_nll=torch.tensor(2.0), sft_weight=0.5)
    assert with_sft.item() == pytest.approx(want + 1.0)
    with pytest.raises(ValueError, match="sft_nll"):
        dpo_loss(zero, zero, zero, zero, sft_weight=1.0)


def test_parse_lines_score_and_pair_sampling():
    assert parse_lines("1. A cat.\n- A mat.\n\n* It is red\n2) Blue sky") == ["A cat.", "A mat.", "It is red", "Blue sky"]
    assert response_score([True, False, False]) == -2 and response_score([]) == 0
    candidates = [(0, 1), (0, 2), (2, 1), (3, 1), (3, 2)]
    assert preference_pairs([0, -2, -1, 0], min_gap=1, per_prompt=10) == candidates
    sampled = preference_pairs([0, -2, -1, 0], min_gap=1, per_prompt=2)
    assert len(sampled) == 2 and set(sampled) <= set(candidates)
    assert preference_pairs([0, -2, -1, 0], min_gap=2, per_prompt=2) == [(0, 1), (3, 1)]
    assert preference_pairs([-1, -1], min_gap=1) == []


def test_length_balance_worked_example():
    assert length_balance([(10, 12), (10, 30), (20, 18)]) == [True, False, True]
    assert length_balance([(5, 5)]) == [True] and length_balance([]) == []
    kept = length_balance([(10, 11), (10, 9), (10, 40)])  # the 40-word rejected answer is the outlier
    assert kept == [True, True, False]


def test_claims_and_questions_use_the_text_model():
    calls = []

    def text_model(prompts):
        calls.append(list(prompts))
        return ["- The cat is black.\n- It sits.", "Is the cat black?\n(extra line)", ""]

    claims = split_claims("What is shown?", ["A black cat sits."], lambda p: text_model(p)[:1])
    assert claims == [["The cat is black.", "It sits."]]
    assert "Answer: A black cat sits." in calls[0][0] and "Question: What is shown?" in calls[0][0]
    questions = claim_questions(["The cat is black.", "It sits."], lambda p: text_model(p)[1:])
    assert questions == ["Is the cat black?", "It sits."]  # an empty completion falls back to the claim
    assert claim_questions([], text_model) == []


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = small_image_model(reference_path("tiny_model"), tmp_path_factory.mktemp("model"))  # 112-px slices
    return MiniCPMV.from_pretrained(path), Processor.from_pretrained(path)


def _prompt(tmp_path: Path, chosen: str, rejected: str) -> RLPrompt:
    write_image(tmp_path / "a.png", seed=0)
    record = {"image": "a.png", "conversations": [{"role": "user", "content": "<image>\nWhat is shown?"}],
              "chosen": chosen, "rejected": rejected}
    (tmp_path / "pairs.jsonl").write_text(json.dumps(record) + "\n")
    return PromptSet([tmp_path / "pairs.jsonl"], need_reference=False)[0]


def test_encode_pair_modes_and_checks(tmp_path, tiny):
    _, processor = tiny
    tok = processor.tokenizer
    long = encode_pair(processor, _prompt(tmp_path, "<think>\nlook\n</think>\n\nA cat.", "<think>\nhm\n</think>\n\nA dog."), 1)
    assert processor.tokenizer.decode(long.prompt.input_ids).endswith("<|im_start|>assistant\n<think>\n")
    assert tok.decode(long.chosen_ids) == "look\n</think>\n\nA cat.<|im_end|>"
    short = encode_pair(processor, _prompt(tmp_path, "A cat.", "A dog."), 1)
    assert tok.decode(short.prompt.input_ids).endswith("<think>\n\n</think>\n\n")
    assert tok.decode(short.rejected_ids) == "A dog.<|im_end|>"
    with pytest.raises(InputError, match="both"):
        pair_texts(_prompt(tmp_path, "<think>\nx\n</think>\n\nA", "B"))
    with pytest.raises(InputError, match="non-empty"):
        pair_texts(_prompt(tmp_path, "A", " "))


def test_pair_logprobs_sum_the_response_tokens(tmp_path, tiny):
    model, processor = tiny
    pair = encode_pair(processor, _prompt(tmp_path, "A cat.", "A dog on a mat."), 1)
    with torch.no_grad():
        chosen, rejected, nll = pair_logprobs(model, [pair])
        ids = torch.tensor([pair.prompt.input_ids + pair.chosen_ids])
        logits = model(ids, pixel_values=[pair.prompt.pixel_values], tgt_sizes=[pair.prompt.tgt_sizes],
                       image_bounds=[pair.prompt.image_bounds]).logits[0, len(pair.prompt.input_ids) - 1:-1]
        want = logits.log_softmax(-1).gather(1, torch.tensor(pair.chosen_ids)[:, None])
    assert chosen.item() == pytest.approx(want.sum().item(), abs=1e-3)
    assert nll.item() == pytest.approx(-want.mean().item(), abs=1e-4) and rejected.item() < 0


def test_pair_record_cuts_the_answer_and_makes_paths_absolute(tmp_path):
    prompt = RLPrompt([], "", "x", {"image": "img/a.png", "video": {"path": "v.mp4", "fps": 2},
                                    "conversations": [{"role": "user", "content": "Q"},
                                                      {"role": "assistant", "content": "A"}]}, tmp_path)
    record = pair_record(prompt, "good", "bad", 0, -2)
    assert record["image"] == str(tmp_path / "img" / "a.png") and record["video"]["path"] == str(tmp_path / "v.mp4")
    assert record["video"]["fps"] == 2 and record["conversations"] == [{"role": "user", "content": "Q"}]
    assert (record["chosen"], record["rejected"], record["chosen_score"], record["rejected_score"]) == ("good", "bad", 0, -2)


def test_model_judge_answers_every_question(tmp_path, tiny):
    model, processor = tiny
    judge = ModelJudge(model, processor, max_slice_nums=1)
    assert not set(judge.yes) & set(judge.no)
    prompt = _prompt(tmp_path, "a", "b")
    answers = judge(prompt, ["Is there a cat?", "Is the sky green?", "Is it day?"])
    assert len(answers) == 3 and all(isinstance(a, bool) for a in answers) and judge(prompt, []) == []
    image = prompt.messages[0]["content"][0]
    with torch.no_grad():  # the same decision from a plain forward of each question alone
        for question, answer in zip(["Is there a cat?", "Is the sky green?", "Is it day?"], answers):
            batch = processor([{"role": "user", "content": [image, question + " Please answer yes or no."]}], max_slice_nums=1)
            probs = model(**batch).logits[0, -1].softmax(-1)
            assert answer == bool(probs[judge.yes].sum() > probs[judge.no].sum())
    assert len(judge(prompt, ["Is it <slice>red</image>?"])) == 1  # generated text may hold span markers
    assert plain_text("a<image>b</slice>c") == "abc"
    assert prompt_question(prompt) == "What is shown?"


def test_build_pairs_with_a_fake_text_model_and_judge(tmp_path, tiny):
    model, processor = tiny
    prompt = _prompt(tmp_path, "a", "b")

    def words_as_claims(prompts):  # every word of the answer becomes a claim; questions repeat the claim
        return ["\n".join(p.split("Answer: ")[1].split("\nFacts:")[0].split()) if "Facts:" in p
                else p.split("Statement: ")[1].split("\n")[0] for p in prompts]

    def judge(p, questions):  # a claim is "true" when it has an even number of characters
        return [len(q) % 2 == 0 for q in questions]

    engine = Engine(model, processor.tokenizer, max_batch_size=16)
    cfg = PairConfig(samples_per_prompt=5, max_new_tokens=6, max_slice_nums=1, seed=3)
    records = build_pairs([prompt, prompt], engine, processor, words_as_claims, judge, cfg)
    assert records, "five random 6-token answers differ in their rejected words"
    for r in records:
        assert r["chosen_score"] - r["rejected_score"] >= 1 and r["conversations"][-1]["role"] == "user"
        assert r["chosen_score"] == -sum(len(c) % 2 for c in parse_lines("\n".join(r["chosen"].split())))
    assert len(records) <= 4  # at most 2 pairs per prompt, some dropped by length balancing
