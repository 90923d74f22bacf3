"""LoRA: after a short LoRA fine-tune, the merged model (via `train merge-lora` and via `train export`)
gives the adapter model's logits, loads with `from_pretrained`, and the adapter folder holds only
the adapters and the fully trained modules."""

from __future__ import annotations

import argparse

import pytest
import torch
from safetensors import safe_open

from conftest import reference_path
from minicpmv.data.datasets import SFTDataset
from minicpmv.data.packing import pad
from minicpmv.model.minicpmv import MiniCPMV
from minicpmv.processor.processor import Processor
from minicpmv.train import checkpoint
from minicpmv.train.cli import SFTArgs, load_recipe, register
from minicpmv.train.lora import LoraSettings, apply_lora, lora_layers, merge_lora
from train_fixtures import one_thread, small_image_model, write_dataset


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("lora")
    model = small_image_model(reference_path("tiny_model"), root / "base")
    data = write_dataset(root / "data", ["image", "text", "video", "image"])
    args = SFTArgs(model=str(model), data=[str(data)], max_slice_nums=1, steps=4, batch_size=2, lr=1e-2, lora=True,
                   lora_r=4, lora_alpha=8, lora_dropout=0.0, out_dir=str(root / "run"), plot=False)
    with one_thread():
        result = load_recipe("sft").main(args)
    return root, model, data, result


def _logits(model: MiniCPMV, batch) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(**batch).logits


def test_merged_model_logits_equal_the_adapter_model(lora_run):
    root, base, data, result = lora_run
    processor = Processor.from_pretrained(base)
    samples = SFTDataset([data], processor, 4096, max_slice_nums=1, strict=True)
    batch = pad([samples.encode(0), samples.encode(1)], processor.tokenizer.pad_id)  # an image and a text sample
    adapted = checkpoint.restore_model(result["checkpoint"])
    assert len(lora_layers(adapted)) == 14  # 2 layers x (q, k, v, o, gate, up, down)
    expected = _logits(adapted, batch)
    assert (expected - _logits(MiniCPMV.from_pretrained(base), batch)).abs().max() > 1e-3  # training moved the model

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    ns = parser.parse_args(["train", "merge-lora", "--base", str(base), "--adapter", str(root / "run" / "adapter"),
                            "--out", str(root / "merged")])
    assert ns.func(ns) == 0
    for folder in (root / "merged", root / "run" / "model"):  # merge-lora, and the export at the end of the run
        merged = MiniCPMV.from_pretrained(folder)
        assert not lora_layers(merged) and (folder / "tokenizer.json").is_file()
        assert (_logits(merged, batch) - expected).abs().max() <= 1e-5


def test_adapter_folder_holds_adapters_and_the_resampler_only(lora_run):
    root, base, _, _ = lora_run
    with safe_open(root / "run" / "adapter" / "adapter_model.safetensors", "pt") as f:
        names = list(f.keys())
    assert all(n.startswith("base_model.model.") for n in names)
    modules = {n.removeprefix("base_model.model.").split(".")[0] for n in names}
    assert modules == {"llm", "resampler", "vpm"}  # tune_vision defaults to True, as in the official script
    assert all(".lora_A.weight" in n or ".lora_B.weight" in n for n in names if ".llm." in f".{n}")


def test_merge_lora_is_the_identity_at_initialisation_and_refuses_a_bad_regex():
    model = MiniCPMV.from_config("tiny")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="matched no module"):
        apply_lora(MiniCPMV.from_config("tiny"), LoraSettings(targets=r"llm\.nothing"))
    apply_lora(model, LoraSettings(r=2, alpha=4, targets=r"llm\.model\.layers\.\d+\.self_attn\.(q|v)_proj"))
    assert len(lora_layers(model)) == 4
    assert [n for n, p in model.named_parameters() if p.requires_grad and n.startswith("llm.")] and all(
        ".lora_" in n for n, p in model.named_parameters() if p.requires_grad and n.startswith("llm."))
    after = merge_lora(model).state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)  # B = 0
