"""Short runs of every pre-training stage and of SFT (full and LoRA) on the tiny model with generated
data (images, a short video, text-only): freezing is exact, trainable parts move, outputs are written,
and a small set is overfitted. Optimiser and schedule pieces are checked on their own."""

from __future__ import annotations

import argparse
import json

import pytest
import torch

from conftest import ROOT, reference_path
from minicpmv.model.minicpmv import MiniCPMV
from minicpmv.train import checkpoint
from minicpmv.train.cli import PretrainArgs, SFTArgs, load_config_file, load_recipe, parse_args, register
from minicpmv.train.loop import read_metrics
from minicpmv.train.optim import Schedule, decay_mix, param_groups, set_trainable
from train_fixtures import one_thread, small_image_model, write_dataset

KINDS = ["image", "text", "video", "image", "text", "image"]
STEPS_OVERFIT = 22


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    with one_thread():
        yield


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return small_image_model(reference_path("tiny_model"), tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return str(write_dataset(tmp_path_factory.mktemp("train_data"), KINDS))


@pytest.fixture(scope="module")
def initial(tiny_dir):
    return {k: v.clone() for k, v in MiniCPMV.from_pretrained(tiny_dir).state_dict().items()}


@pytest.fixture(scope="module")
def base(tiny_dir, data) -> dict:
    """Arguments of a 5-step run on the tiny model (2 samples per step, no plot or export)."""
    return dict(model=str(tiny_dir), data=[data], max_slice_nums=1, steps=5, batch_size=2, lr=1e-3, plot=False,
                export=False)


def _common(tmp_path, base, **overrides) -> dict:
    return {**base, "out_dir": str(tmp_path / "run"), **overrides}


def _changed(initial: dict, final: dict) -> dict[str, bool]:
    """Top-level module -> whether any of its weights moved; asserts frozen ones are bit-identical."""
    moved: dict[str, bool] = {}
    for name, value in final.items():
        module = name.split(".")[0]
        moved[module] = moved.get(module, False) or not torch.equal(initial[name], value)
    return moved


@pytest.mark.parametrize("stage, trained", [(1, {"resampler"}), (2, {"vpm", "resampler"}), (3, {"vpm", "resampler", "llm"})])
def test_pretrain_stage_trains_exactly_its_modules(tmp_path, base, initial, stage, trained):
    precision = "bf16" if stage == 2 else "auto"  # stage 2 also runs the bf16-autocast path (on CPU)
    result = load_recipe("pretrain").main(PretrainArgs(stage=stage, **_common(tmp_path, base, precision=precision)))
    final = checkpoint.restore_model(result["checkpoint"]).state_dict()
    moved = _changed(initial, final)
    assert {m for m, yes in moved.items() if yes} == trained  # frozen modules are bit-identical
    rows = read_metrics(tmp_path / "run")
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5] and all(r["tokens"] > 0 for r in rows)
    assert result["skipped"] == {} and result["steps"] == 5


def test_train_cli_runs_pretrain_from_a_toml_file_with_decay_data(tmp_path, base, data):
    config = tmp_path / "run.toml"
    config.write_text(f'model = "{base["model"]}"\ndata = ["{data}"]\nmax_slice_nums = 1\nbatch_size = 2\n'
                      f'steps = 4\ndecay_steps = 2\nplot = false\nexport = false\nout_dir = "{tmp_path / "run"}"\n')
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    ns = parser.parse_args(["train", "pretrain", "--config", str(config), "--stage", "2", "--decay-data", data,
                            "--decay-mix", "0.5"])
    assert ns.func(ns) == 0
    rows = read_metrics(tmp_path / "run")
    assert [r["decay_share"] for r in rows] == [0.0, 0.0, 0.0, 0.25]  # wsd: decay over the last 2 steps
    saved = json.loads((checkpoint.latest(tmp_path / "run") / "train_config.json").read_text())
    assert (saved["recipe"], saved["stage"], saved["steps"]) == ("PretrainArgs", 2, 4)


def test_sft_full_run_writes_checkpoint_export_plot_and_summary(tmp_path, base, initial, capsys):
    args = SFTArgs(**_common(tmp_path, base, tune_vision=False, plot=True, export=True, packing=True, max_length=600,
                             gradient_checkpointing=True, parallel="ddp", schedule="wsd", warmup_steps=1, decay_steps=2,
                             tensorboard=True))
    result = load_recipe("sft").main(args)
    exported = MiniCPMV.from_pretrained(result["export"]).state_dict()
    assert {m for m, yes in _changed(initial, exported).items() if yes} == {"resampler", "llm"}
    run = tmp_path / "run"
    assert (run / "loss.png").stat().st_size > 1000 and (run / "model" / "tokenizer.json").is_file()
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    saved = json.loads((run / "checkpoints" / "step-000005" / "train_config.json").read_text())
    assert saved["packing"] is True and saved["recipe"] == "SFTArgs"
    lrs = [r["lr"] for r in read_metrics(run)]
    assert lrs[0] == pytest.approx(1e-3) and lrs[-1] < lrs[2]  # warmup 1, stable, decay
    err = capsys.readouterr().err
    assert '"max_length": 600' in err and "steps 5" in err and "no samples skipped" in err


def test_sft_lora_trains_adapters_and_resampler_only(tmp_path, base, initial):
    args = SFTArgs(**_common(tmp_path, base, lora=True, lora_r=4, lora_alpha=8, lora_dropout=0.0, tune_vision=False))
    result = load_recipe("sft").main(args)
    restored = checkpoint.restore_model(result["checkpoint"]).state_dict()
    base = {k.replace(".base_layer.", "."): v for k, v in restored.items() if ".lora_" not in k}
    assert base.keys() == initial.keys()
    assert {m for m, yes in _changed(initial, base).items() if yes} == {"resampler"}
    lora_b = [v for k, v in restored.items() if ".lora_B." in k]
    assert lora_b and all(bool(v.abs().sum() > 0) for v in lora_b)  # B starts at zero and has moved
    adapter = tmp_path / "run" / "adapter"
    assert (adapter / "adapter_config.json").is_file() and (adapter / "adapter_model.safetensors").is_file()


@pytest.mark.slow
def test_overfits_eight_samples(tmp_path, tiny_dir):
    """8 distinct conversations (4 with an image) are learned: the loss falls below 10% of its start."""
    path = write_dataset(tmp_path / "data", ["text", "image"] * 4)
    records = [json.loads(line) for line in path.read_text().splitlines()]
    for i, record in enumerate(records):  # make every prompt unique, so the answers are learnable
        record["conversations"][0]["content"] += f" (item {i})"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    args = SFTArgs(model=str(tiny_dir), data=[str(path)], max_slice_nums=1, steps=STEPS_OVERFIT, batch_size=8,
                   lr=1e-2, schedule="constant", weight_decay=0.0, out_dir=str(tmp_path / "run"), plot=False, export=False)
    load_recipe("sft").main(args)
    losses = [r["loss"] for r in read_metrics(tmp_path / "run")]
    assert losses[-1] < 0.1 * losses[0], f"loss {losses[0]:.3f} -> {losses[-1]:.3f}"


def test_lora_with_tune_llm_is_refused(tmp_path, base):
    with pytest.raises(ValueError, match="--lora"):
        load_recipe("sft").main(SFTArgs(**_common(tmp_path, base, lora=True, tune_llm=True)))


def test_schedules_follow_their_worked_examples():
    wsd = Schedule("wsd", total_steps=100, warmup_steps=10, decay_steps=20, min_lr_ratio=0.2)
    assert [wsd.factor(s) for s in (0, 9, 10, 80)] == [0.1, 1.0, 1.0, 1.0]
    assert wsd.factor(90) == pytest.approx(0.2**0.5) and wsd.factor(100) == pytest.approx(0.2)
    assert decay_mix(wsd, 79, 0.5) == 0 and decay_mix(wsd, 90, 0.5) == pytest.approx(0.25)
    cosine = Schedule("cosine", total_steps=10, warmup_steps=0, min_lr_ratio=0.1)
    assert cosine.factor(0) == 1.0 and cosine.factor(5) == pytest.approx(0.55) and cosine.factor(10) == pytest.approx(0.1)
    with pytest.raises(ValueError):
        Schedule("wsd", total_steps=10, warmup_steps=5, decay_steps=6)


def test_param_groups_split_modules_and_decay():
    model = MiniCPMV.from_config("tiny")
    set_trainable(model, ("vpm", "resampler"))
    groups = param_groups(model, {"vpm": 1e-4, "resampler": 1e-3}, weight_decay=0.1)
    assert [g["name"] for g in groups] == ["resampler/no_decay", "resampler/decay", "vpm/no_decay", "vpm/decay"]
    assert [g["lr"] for g in groups] == [1e-3, 1e-3, 1e-4, 1e-4] and [g["weight_decay"] for g in groups] == [0, 0.1, 0, 0.1]
    assert sum(len(g["params"]) for g in groups) == sum(p.requires_grad for p in model.parameters())
    with pytest.raises(ValueError, match="resampler"):
        param_groups(model, {"vpm": 1e-4}, 0.0)


def test_args_come_from_a_config_file_with_flags_overriding(tmp_path):
    config = tmp_path / "run.toml"
    config.write_text('data = ["a.jsonl"]\nsteps = 7\nlora = true\nlora-r = 8\n')
    args = parse_args(SFTArgs, ["--config", str(config), "--steps", "9", "--no-tune-vision"])
    assert (args.data, args.steps, args.lora, args.lora_r, args.tune_vision) == (["a.jsonl"], 9, True, 8, False)
    config.write_text("stepz = 3\n")
    with pytest.raises(ValueError, match="stepz"):
        parse_args(SFTArgs, ["--config", str(config)])
    yaml_config = tmp_path / "run.yaml"
    yaml_config.write_text("stage: 2\ndecay_data: [b.jsonl]\nlr: 2.0e-5\n")
    args = parse_args(PretrainArgs, ["--config", str(yaml_config), "--data", "a.jsonl"])
    assert (args.stage, args.decay_data, args.lr, args.data, args.schedule) == (2, ["b.jsonl"], 2e-5, ["a.jsonl"], "wsd")


@pytest.mark.parametrize("per_sample", [False, True])
def test_gradient_accumulation_equals_one_large_batch(tmp_path, base, per_sample):
    runs = {}
    for name, batch_size, grad_accum in (("big", 4, 1), ("accum", 2, 2)):
        overrides = dict(steps=2, batch_size=batch_size, grad_accum=grad_accum, out_dir=str(tmp_path / name),
                         loss_per_sample=per_sample)
        load_recipe("pretrain").main(PretrainArgs(stage=3, **{**base, **overrides}))
        runs[name] = read_metrics(tmp_path / name)
    assert [r["tokens"] for r in runs["big"]] == [r["tokens"] for r in runs["accum"]]
    assert max(abs(a["loss"] - b["loss"]) for a, b in zip(runs["big"], runs["accum"])) <= 1e-5


def test_sft_loss_per_sample_is_a_different_mean_of_the_same_first_batch(tmp_path, base):
    first = {}
    for per_sample in (False, True):
        out = tmp_path / str(per_sample)
        load_recipe("sft").main(SFTArgs(**{**base, "steps": 1, "batch_size": 4, "out_dir": str(out),
                                           "loss_per_sample": per_sample}))
        first[per_sample] = read_metrics(out)[0]
    assert first[False]["tokens"] == first[True]["tokens"]  # the same samples
    assert abs(first[False]["loss"] - first[True]["loss"]) > 1e-3  # weighted otherwise (tests/test_packing.py)


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("pretrain_*.toml")) + sorted((ROOT / "configs").glob("sft_*.toml")))
def test_example_configs_parse_and_say_how_to_launch_them(path):
    cls = PretrainArgs if path.name.startswith("pretrain_") else SFTArgs
    args = cls(**load_config_file(path, cls))
    assert args.data and (args.model or args.processor)
    header = path.read_text().split("\n\n")[0]
    assert f"--config configs/{path.name}" in header
