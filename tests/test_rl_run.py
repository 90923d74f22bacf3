"""Short runs of the RL pieces on the miniature model of `recipes/rl_toy.py` (its tokenizer, model and
synthetic sum task): engine rollouts in groups, RLPR scoring, two steps of `recipes/rl.py` with every
option on (KL, entropy, std filter, reward model) and a resume, two steps of `recipes/dpo.py`,
`minicpmv data rlaifv` with the default text model and judge, and the CLI registration.

The full toy run (SFT -> GRPO -> DPO, a few minutes) is `python recipes/rl_toy.py`; it writes the
curves to docs/figures/rl_curves.png and docs/figures/rl_dpo_margin.png."""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

from minicpmv.inference.engine import Engine
from minicpmv.inference.types import SamplingParams
from minicpmv.model.minicpmv import MiniCPMV
from minicpmv.processor.processor import Processor
from minicpmv.rl import cli as rl_cli
from minicpmv.rl.cli import DPOArgs, RLArgs, RLAIFVArgs, build_rlaifv_pairs
from minicpmv.rl.rewards import rlpr_reward
from minicpmv.rl.rollout import PromptSet, Rollout, encode_prompt, generate_rollouts, rlpr_scores, rollout_logprobs, sequence_logprobs
from minicpmv.train import cli as train_cli
from minicpmv.train.cli import load_recipe
from minicpmv.train.loop import read_metrics

def _import_recipe(name: str):
    """recipes/<name>.py registered in sys.modules first (its dataclass needs that; `load_recipe` does not do it)."""
    spec = importlib.util.spec_from_file_location(f"recipe_{name}", train_cli.RECIPES_DIR / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


toy = _import_recipe("rl_toy")


pytestmark = pytest.mark.usefixtures("single_thread")  # conftest: tiny models run fastest on one thread


def answer_length_rm(questions, answers):
    """A reward model for the recipe test (loaded as 'test_rl_run:answer_length_rm')."""
    return [float(len(a)) for a in answers]


def odd_length_judge(model, processor):
    """A judge factory for the command test (`--judge test_rl_run:odd_length_judge`): a claim
    question of odd length is rejected, so differently long random answers get different scores."""
    return lambda prompt, questions: [len(q) % 2 == 0 for q in questions]


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy")
    model = toy.make_model(root / "model", seed=0)
    return {
        "model": model,
        "rl": toy.write_task(root / "rl", 12, 1, "rl", 5),
        "heldout": toy.write_task(root / "heldout", 4, 2, "rl", 5),
        "pairs": toy.write_task(root / "pairs", 8, 3, "pairs", 5),
        "heldout_pairs": toy.write_task(root / "heldout_pairs", 4, 4, "pairs", 5),
    }


@pytest.fixture(scope="module")
def loaded(task):
    return MiniCPMV.from_pretrained(task["model"]), Processor.from_pretrained(task["model"])


def test_rollouts_come_in_groups_and_match_teacher_forcing(task, loaded):
    model, processor = loaded
    prompts = PromptSet([task["rl"]])
    samples = [encode_prompt(processor, prompts[i], mode, 1) for i, mode in enumerate(["long", "short"])]
    engine = Engine(model, processor.tokenizer, max_batch_size=8)
    rollouts = generate_rollouts(engine, samples, ["long", "short"], SamplingParams(max_new_tokens=10, n=3, seed=0))
    assert [r.group for r in rollouts] == [0, 0, 0, 1, 1, 1] and [r.mode for r in rollouts] == ["long"] * 3 + ["short"] * 3
    assert all(r.prompt is samples[r.group] for r in rollouts)
    end = processor.tokenizer.im_end_id
    for r in rollouts:  # the stop id is kept so the policy learns to end its turn
        if r.finish_reason == "stop":
            assert r.response_ids[-1] == end and end not in r.response_ids[:-1]
        else:
            assert len(r.response_ids) == 10 and end not in r.response_ids
    assert rollouts[0].assistant_text.startswith("<think>\n") and rollouts[3].assistant_text.startswith("<think>\n\n</think>")
    greedy = generate_rollouts(engine, samples, ["long", "short"], SamplingParams(max_new_tokens=10, temperature=0.0))
    with torch.no_grad():
        logits_argmax = []
        for r in greedy:  # each greedy token must be the argmax of the teacher-forced distribution
            ids = torch.tensor([r.prompt.input_ids + r.response_ids])
            out = model(ids, pixel_values=[r.prompt.pixel_values], tgt_sizes=[r.prompt.tgt_sizes],
                        image_bounds=[r.prompt.image_bounds]).logits[0, len(r.prompt.input_ids) - 1:-1]
            logits_argmax.append(out.argmax(-1).tolist())
        per_row = rollout_logprobs(model, greedy).per_row(2)
    assert logits_argmax == [r.response_ids for r in greedy]
    assert [len(row) for row in per_row] == [len(r.response_ids) for r in greedy]


def test_rlpr_scores_match_a_manual_computation(task, loaded):
    model, processor = loaded
    tok = processor.tokenizer
    prompt = encode_prompt(processor, PromptSet([task["rl"]])[0], "long", 1)
    reference = "three plus four makes seven"
    with_think = tok.encode("I add them.\n</think>\n\nseven") + [tok.im_end_id]
    without = tok.encode("no closing tag")
    rollouts = [Rollout(prompt, "long", with_think, "", "stop", 0), Rollout(prompt, "long", without, "", "length", 0)]
    scores = rlpr_scores(model, tok, rollouts, reference)
    ref_ids = tok.encode(reference)
    prefix = with_think[: with_think.index(tok.think_end_id) + 1] + tok.encode("\n\n")
    base = tok.encode("\n</think>\n\n")
    with torch.no_grad():
        lp = sequence_logprobs(model, [prompt, prompt], [prefix + ref_ids, base + ref_ids], [len(prefix), len(base)])
    rows = lp.per_row(2)
    assert scores == pytest.approx([rlpr_reward(rows[0], rows[1]), 0.0], abs=1e-5)


def _rl_args(task, out_dir, steps, **extra) -> RLArgs:
    return RLArgs(model=str(task["model"]), data=[str(task["rl"])], eval_data=[str(task["heldout"])], max_slice_nums=1,
                  prompts_per_step=2, group_size=4, max_new_tokens=12, steps=steps, lr=1e-3, eval_every=2,
                  out_dir=str(out_dir), **extra)


def test_rl_recipe_runs_logs_per_mode_and_resumes(task, tmp_path):
    options = dict(kl_coef=0.05, entropy_coef=0.01, std_filter=True, std_filter_start=1, mini_batch_size=4,
                   reward_model="test_rl_run:answer_length_rm", long_share=0.5, seed=1)
    result = load_recipe("rl").main(_rl_args(task, tmp_path / "run", steps=2, **options))
    rows = read_metrics(tmp_path / "run")
    assert [r["step"] for r in rows] == [0, 1, 2] and "eval/long/accuracy" not in rows[1]
    for row in (rows[0], rows[2]):
        assert {"eval/long/accuracy", "eval/short/accuracy", "eval/long/format", "eval/short/length"} <= row.keys()
    for row in rows[1:]:
        modes = {k.split("/")[0] for k in row if k.endswith("/count") and not k.startswith("eval")}
        assert modes and sum(row[f"{m}/count"] for m in modes) == 8  # 2 prompts x 4 rollouts
        assert {"kl", "entropy", "grad_norm", "rollout_tokens_per_s", "kept_groups"} <= row.keys()
    assert MiniCPMV.from_pretrained(result["export"]).config.query_num == 8
    assert (tmp_path / "run" / "rl_curves.png").stat().st_size > 1000
    resumed = load_recipe("rl").main(_rl_args(task, tmp_path / "run", steps=3, export=False, plot=False, **options))
    assert resumed["steps"] == 1 and [r["step"] for r in read_metrics(tmp_path / "run")] == [0, 1, 2, 3]
    finished = load_recipe("rl").main(_rl_args(task, tmp_path / "run", steps=3, plot=False, **options))
    assert finished["steps"] == 0 and finished["checkpoint"].endswith("step-000003")  # nothing left: export only


def test_dpo_recipe_logs_the_held_out_margin(task, tmp_path):
    args = DPOArgs(model=str(task["model"]), data=[str(task["pairs"])], eval_data=[str(task["heldout_pairs"])],
                   max_slice_nums=1, batch_size=4, steps=2, lr=1e-3, eval_every=1, sft_weight=0.1,
                   out_dir=str(tmp_path / "dpo"), export=False)
    result = load_recipe("dpo").main(args)
    rows = read_metrics(tmp_path / "dpo")
    assert [r["step"] for r in rows] == [0, 1, 2] and rows[0]["eval/margin"] == 0.0  # policy == reference
    assert rows[1]["margin"] == pytest.approx(0.0, abs=1e-5)  # first step: still the reference
    assert rows[2]["eval/margin"] != 0.0 and result["plot"].endswith("dpo_curves.png")


def test_rlaifv_command_writes_balanced_pairs(task, tmp_path):
    out = tmp_path / "pairs.jsonl"
    args = RLAIFVArgs(model=str(task["model"]), data=[str(task["heldout"])], out=str(out), samples_per_prompt=4,
                      max_new_tokens=8, max_slice_nums=1, prompts_per_batch=2, text_max_new_tokens=16, seed=0,
                      judge="test_rl_run:odd_length_judge")  # the default text model splits the claims
    build_rlaifv_pairs(args)
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert 0 < len(records) <= 8  # 4 prompts, at most 2 pairs each
    for r in records:
        assert r["chosen_score"] - r["rejected_score"] >= 1 and r["conversations"][-1]["role"] == "user"
        assert Path(r["image"]).is_absolute() and Path(r["image"]).is_file()


def test_cli_adds_rl_commands_next_to_the_training_ones():
    parser = argparse.ArgumentParser(prog="minicpmv")
    sub = parser.add_subparsers(dest="command")
    train_cli.register(sub)
    rl_cli.register(sub)
    ns = parser.parse_args(["train", "rl", "--model", "m", "--steps", "3", "--no-tune-vision", "--data", "a.jsonl"])
    args = rl_cli._from_namespace(RLArgs, ns)
    assert (args.model, args.steps, args.tune_vision, args.data, args.group_size) == ("m", 3, False, ["a.jsonl"], 8)
    assert parser.parse_args(["train", "sft", "--steps", "2"]).steps == 2  # the training commands are still there
    ns = parser.parse_args(["data", "rlaifv", "--model", "m", "--data", "p.jsonl", "--out", "o.jsonl"])
    assert rl_cli._from_namespace(RLAIFVArgs, ns).out == "o.jsonl" and callable(ns.func)
    alone = argparse.ArgumentParser().add_subparsers(dest="command")
    rl_cli.register(alone)  # without a `train` command one is created
    assert {"train", "data"} <= set(alone.choices)
