"""2-process `torchrun` on CPU (gloo) with DDP and with FSDP2 gives the loss curve of one process with
the same global batch; the FSDP2 checkpoint is sharded (one file per rank) and exports to one model."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, reference_path
from minicpmv.model.minicpmv import MiniCPMV
from minicpmv.train import checkpoint
from minicpmv.train.cli import SFTArgs, load_recipe
from minicpmv.train.loop import read_metrics
from train_fixtures import one_thread, small_image_model, write_dataset

STEPS, GLOBAL_BATCH = 4, 4

# Runs in each torchrun process: one process group, the SFT recipe twice (DDP, then FSDP2).
WORKER = """
import json, sys
from minicpmv.train import distributed
from minicpmv.train.cli import SFTArgs, load_recipe

base, out = json.loads(sys.argv[1]), sys.argv[2]
env = distributed.init()
recipe = load_recipe("sft")
for strategy in ("ddp", "fsdp"):
    recipe.main(SFTArgs(**base, parallel=strategy, out_dir=f"{out}/{strategy}"))
distributed.cleanup(env)
"""


@pytest.mark.slow
def test_two_process_ddp_and_fsdp_match_one_process(tmp_path):
    model = small_image_model(reference_path("tiny_model"), tmp_path / "model")
    data = write_dataset(tmp_path / "data", ["image", "text", "video", "text", "image", "text", "image", "text"])
    base = dict(model=str(model), data=[str(data)], steps=STEPS, max_slice_nums=1, lr=1e-3, warmup_steps=1,
                plot=False, export=False, save_every=STEPS)
    (tmp_path / "worker.py").write_text(WORKER)
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
              str(tmp_path / "worker.py"), json.dumps({**base, "batch_size": GLOBAL_BATCH // 2}), str(tmp_path)]
    run = subprocess.run(launch, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-4000:]

    with one_thread():
        load_recipe("sft").main(SFTArgs(**base, batch_size=GLOBAL_BATCH, out_dir=str(tmp_path / "single")))
    single = [r["loss"] for r in read_metrics(tmp_path / "single")]
    assert len(single) == STEPS and single[-1] < single[0]
    for strategy in ("ddp", "fsdp"):
        rows = read_metrics(tmp_path / strategy)
        assert max(abs(r["loss"] - s) for r, s in zip(rows, single)) <= 1e-5, (strategy, [r["loss"] for r in rows], single)
        assert [r["tokens"] for r in rows] == [r["tokens"] for r in read_metrics(tmp_path / "single")]

    sharded = checkpoint.latest(tmp_path / "fsdp")
    assert sorted(p.name for p in sharded.glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
    assert sorted(p.name for p in sharded.glob("rank-*.pt")) == ["rank-00000.pt", "rank-00001.pt"]
    weights = {name: checkpoint.restore_model(checkpoint.latest(tmp_path / name)).state_dict()
               for name in ("single", "ddp", "fsdp")}
    # Weights agree up to rounding noise amplified by Adam: a key bias (ViT k_proj, resampler in_proj k
    # part) has an exactly zero gradient in exact arithmetic (softmax ignores a per-query shift), so its
    # gradient is pure summation-order noise, which Adam's m / sqrt(v) scales up to ~lr-sized steps.
    for strategy in ("ddp", "fsdp"):
        worst = max((weights[strategy][n] - weights["single"][n]).abs().max().item() for n in weights["single"])
        assert worst <= 1e-4, (strategy, worst)
    exported = MiniCPMV.from_pretrained(checkpoint.export(sharded, tmp_path / "exported")).state_dict()
    assert exported.keys() == weights["fsdp"].keys()
    assert all(torch.equal(exported[n], weights["fsdp"][n]) for n in exported)
