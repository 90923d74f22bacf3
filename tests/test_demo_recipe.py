"""recipes/demo.py end to end at toy size: every stage runs, and the same seed gives the same model twice
(the reproducibility claim of docs/demo-model.md, checked bit for bit on a short run)."""

from __future__ import annotations

import hashlib
import json

import pytest

from minicpmv.train.cli import load_recipe

demo = load_recipe("demo")


def _run(out_dir):
    args = demo.DemoArgs(out_dir=str(out_dir), tokenizer_per_family=5, caption_per_family=2, sft_per_family=2,
                         batch_size=4, stage_steps=["4", "4", "4"], sft_steps=4, rl_steps=1, rl_prompts=4,
                         rl_prompts_per_step=2, rl_group_size=2, rl_max_new_tokens=8, eval_per_family=1, ship=False)
    result = demo.main(args)
    weights = (out_dir / "rl" / "model" / "model.safetensors").read_bytes()
    return result, hashlib.sha256(weights).hexdigest(), json.loads((out_dir / "eval_rl.json").read_text())


def test_pipeline_runs_every_stage_and_is_deterministic(tmp_path):
    result, digest, scores = _run(tmp_path / "a")
    for stage in ("tags", "dense", "stage1", "stage2", "stage3", "sft", "rl"):
        assert (tmp_path / "a" / stage / "model" / "config.json").is_file(), stage
    assert result["model"].endswith("rl/model") and result["total_s"] > 0
    assert {s["mode"] for s in scores} == {"short", "long"}
    again, digest_again, scores_again = _run(tmp_path / "b")
    assert digest_again == digest
    strip = lambda rows: [{k: v for k, v in r.items() if k != "latency_s"} for r in rows]
    assert strip(scores_again) == strip(scores)


def test_a_zero_step_stage_is_skipped_and_the_next_starts_from_the_one_before(tmp_path, monkeypatch):
    calls, vision_lrs = [], []

    def fake_stage(name, recipe, args, out):
        calls.append((name, args.model))
        vision_lrs.append(getattr(args, "lr_vision", None))
        return tmp_path / name / "model"

    monkeypatch.setattr(demo, "init_model_dir", lambda *a, **k: None)
    monkeypatch.setattr(demo, "corpus", lambda *a: [])
    monkeypatch.setattr(demo, "run_stage", fake_stage)
    args = demo.DemoArgs(out_dir=str(tmp_path), stage_steps=["4", "4", "0"], vision_lr=1e-4)
    sft_dir = demo.train(args, tmp_path, {"caption": tmp_path / "c.jsonl", "sft": tmp_path / "s.jsonl"})
    assert [name for name, _ in calls] == ["tags", "dense", "stage1", "stage2", "sft"]
    assert calls[1][1] == str(tmp_path / "tags" / "model")  # the dense stage starts from the tag-trained tower
    assert calls[2][1] == str(tmp_path / "dense" / "model")  # stage 1 from the dense stage's
    assert calls[-1][1] == str(tmp_path / "stage2" / "model")
    assert sft_dir == tmp_path / "sft" / "model"
    assert vision_lrs == [None, None, 1e-4, 1e-4, 1e-4]  # the vision stages have their own LR; the later get vision_lr


def test_training_files_are_kept_only_when_they_hold_as_many_samples(tmp_path):
    small = demo.DemoArgs(out_dir=str(tmp_path), caption_per_family=1, sft_per_family=1, rl_prompts=2)
    files = demo.build_data(small, tmp_path)
    assert len(files["rl"].read_text().splitlines()) == 2
    stamp = files["caption"].stat().st_mtime_ns
    more = demo.DemoArgs(out_dir=str(tmp_path), caption_per_family=1, sft_per_family=1, rl_prompts=5)
    files = demo.build_data(more, tmp_path)
    assert len(files["rl"].read_text().splitlines()) == 5  # a file of 2 prompts is not taken for one of 5
    assert files["caption"].stat().st_mtime_ns == stamp  # the unchanged caption file is kept


@pytest.fixture
def stage_calls(tmp_path, monkeypatch) -> list:
    """`demo.train` with every stage recorded as (name, args) instead of run (and no init or tokenizer)."""
    calls = []
    monkeypatch.setattr(demo, "init_model_dir", lambda *a, **k: None)
    monkeypatch.setattr(demo, "corpus", lambda *a: [])
    monkeypatch.setattr(demo, "run_stage", lambda name, recipe, args, out: calls.append((name, args)) or
                        tmp_path / name / "model")
    return calls


def test_a_focus_stage_runs_between_stage_3_and_the_sft_on_its_families_alone(tmp_path, stage_calls):
    calls = stage_calls
    args = demo.DemoArgs(out_dir=str(tmp_path), caption_per_family=1, sft_per_family=1, rl_prompts=1,
                         focus_families=["vid_dir", "color"], focus_per_family=2, focus_steps=7)
    data = demo.build_data(args, tmp_path)
    rows = [json.loads(line) for line in data["focus"].read_text().splitlines()]
    assert sorted(r["family"] for r in rows) == ["color", "color", "vid_dir", "vid_dir"]
    assert all("<think>" not in json.dumps(r["conversations"]) for r in rows)  # short answers only
    demo.train(args, tmp_path, data)
    assert [name for name, _ in calls][-3:] == ["stage3", "focus", "sft"]
    (_, focus), (_, sft) = calls[-2:]
    assert focus.steps == 7 and focus.data == [str(data["focus"])] and focus.model == str(tmp_path / "stage3" / "model")
    assert sft.model == str(tmp_path / "focus" / "model")
    other = demo.DemoArgs(out_dir=str(tmp_path), caption_per_family=1, sft_per_family=1, rl_prompts=1,
                          focus_families=["count", "color"], focus_per_family=2, focus_steps=7)
    rows = [json.loads(line) for line in demo.build_data(other, tmp_path)["focus"].read_text().splitlines()]
    assert {r["family"] for r in rows} == {"count", "color"}  # not the file of other families
    calls.clear()
    demo.train(demo.DemoArgs(out_dir=str(tmp_path), focus_families=["vid_dir"], focus_steps=0), tmp_path, data)
    assert "focus" not in [name for name, _ in calls]  # 0 steps: no focus stage


def test_boosted_families_add_samples_of_their_own_seed_to_the_mixed_sft(tmp_path, stage_calls):
    calls = stage_calls
    args = demo.DemoArgs(out_dir=str(tmp_path), caption_per_family=1, sft_per_family=1, rl_prompts=1,
                         boost_families=["color"], boost_per_family=3, sft_loss_per_sample=True)
    data = demo.build_data(args, tmp_path)
    boost = [json.loads(line) for line in data["boost"].read_text().splitlines()]
    mixed = [json.loads(line) for line in data["sft"].read_text().splitlines()]
    assert [r["family"] for r in boost] == ["color"] * 3
    mixed_color = next(r for r in mixed if r["family"] == "color")
    assert mixed_color["reasoning"] not in {r["reasoning"] for r in boost}  # other images: a seed of their own
    demo.train(args, tmp_path, data)
    (name, sft), = [c for c in calls if c[0] == "sft"]
    assert sft.data == [str(data["sft"]), str(data["boost"])] and sft.loss_per_sample
    assert "boost" not in demo.build_data(demo.DemoArgs(out_dir=str(tmp_path), caption_per_family=1, sft_per_family=1,
                                                        rl_prompts=1, boost_families=["color"]), tmp_path)
