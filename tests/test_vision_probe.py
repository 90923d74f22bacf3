"""recipes/vision_probe.py: its labels, the attention-spread measure, and one tiny run."""

from __future__ import annotations

import json

import torch

from minicpmv.data.synthetic.draw import SHAPES
from minicpmv.demo import DEMO_DIR
from minicpmv.model.minicpmv import MiniCPMV
from minicpmv.processor.processor import Processor
from minicpmv.train.cli import load_recipe

probe = load_recipe("vision_probe")


def test_shape_labels_come_from_single_shape_images_and_are_seeded():
    for i in range(6):
        image, label = probe.labelled("shape", "train", i)
        assert label in range(len(SHAPES)) and image.size == (192, 192)
        again, label_again = probe.labelled("shape", "train", i)
        assert label_again == label and again.tobytes() == image.tobytes()
    assert {probe.labelled("count", "test", i)[1] for i in range(40)} <= set(range(6))


def test_uniform_attention_spreads_over_every_patch():
    model = MiniCPMV.from_pretrained(DEMO_DIR, dtype=torch.float32)
    with torch.no_grad():  # q = in_proj(ln_q(query)) = 0 for every query -> equal logits -> uniform attention
        model.resampler.ln_q.weight.zero_()
        model.resampler.ln_q.bias.zero_()
        model.resampler.attn.in_proj_bias.zero_()
    spread = probe.attention_spread(model, Processor.from_pretrained(DEMO_DIR), n_images=2)
    assert spread["patches"] == 64 and abs(spread["effective_keys"] - 64) < 1e-3


def test_tiny_run_writes_curves(tmp_path):
    args = probe.ProbeArgs(model=str(DEMO_DIR), out_dir=str(tmp_path), pools=["vit_max", "resampler_mean"], steps=2,
                           batch_size=2, eval_every=1, eval_n=4)
    result = probe.main(args)
    assert set(result["curves"]) == {"vit_max", "resampler_mean"}
    for curve in result["curves"].values():
        assert [p["step"] for p in curve] == [1, 2] and all(0 <= p["accuracy"] <= 1 for p in curve)
    saved = json.loads((tmp_path / "probe.json").read_text())
    assert saved["attention"]["patches"] == 64 and 1 <= saved["attention"]["effective_keys"] <= 64
    assert "| vit_max |" in (tmp_path / "probe.md").read_text()


def test_frozen_probe_trains_only_the_head(tmp_path):
    processor = Processor.from_pretrained(DEMO_DIR)
    for frozen in (True, False):
        args = probe.ProbeArgs(out_dir=str(tmp_path), steps=1, batch_size=2, eval_every=1, eval_n=2, frozen=frozen)
        model = MiniCPMV.from_pretrained(DEMO_DIR, dtype=torch.float32)
        before = model.vpm.embeddings.patch_embedding.weight.clone()
        curve = probe.train_probe(model, processor, "resampler_mean", args)
        assert len(curve) == 1 and 0 <= curve[0]["accuracy"] <= 1
        assert torch.equal(model.vpm.embeddings.patch_embedding.weight, before) == frozen
