"""Resume after a real SIGKILL reproduces the uninterrupted run bitwise (CPU, fp32): the loss curve,
the final weights and the optimizer state. Also: a half-written checkpoint is never picked up."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import ROOT, reference_path
from minicpmv.train import checkpoint
from minicpmv.train.loop import read_metrics
from train_fixtures import small_image_model, write_dataset

STEPS, SAVE_EVERY = 6, 2


def _command(model: Path, data: Path, out_dir: Path) -> list[str]:
    return [sys.executable, str(ROOT / "recipes" / "sft.py"), "--model", str(model), "--data", str(data),
            "--out-dir", str(out_dir), "--steps", str(STEPS), "--save-every", str(SAVE_EVERY), "--keep-checkpoints", "2",
            "--batch-size", "2", "--max-slice-nums", "1", "--lr", "1e-3", "--warmup-steps", "2", "--packing",
            "--max-length", "600", "--no-plot", "--no-export"]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}


def _kill_after_first_checkpoint(proc: subprocess.Popen, out_dir: Path, timeout_s: float = 300) -> int:
    """SIGKILL `proc` as soon as a checkpoint is complete; return the step of the newest one then."""
    pointer = out_dir / "checkpoints" / "latest"
    deadline = time.monotonic() + timeout_s
    while not pointer.is_file():
        assert proc.poll() is None, f"the run ended (code {proc.returncode}) before its first checkpoint"
        assert time.monotonic() < deadline, "no checkpoint within the timeout"
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return int(pointer.read_text().strip().removeprefix("step-"))


@pytest.mark.slow
def test_sigkill_then_resume_matches_the_uninterrupted_run_bitwise(tmp_path):
    model = small_image_model(reference_path("tiny_model"), tmp_path / "model")
    data = write_dataset(tmp_path / "data", ["image", "text", "video", "text", "image", "image", "text"])
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    reference = subprocess.Popen(_command(model, data, straight), env=_env(), stderr=subprocess.DEVNULL)
    victim = subprocess.Popen(_command(model, data, killed), env=_env(), stderr=subprocess.DEVNULL)
    k = _kill_after_first_checkpoint(victim, killed)
    assert victim.returncode == -signal.SIGKILL and k < STEPS
    assert reference.wait() == 0
    resumed = subprocess.run(_command(model, data, killed), env=_env(), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from {killed / 'checkpoints' / f'step-{k:06d}'} at step {k}" in resumed.stderr

    a, b = read_metrics(straight), read_metrics(killed)
    assert [r["step"] for r in b] == list(range(1, STEPS + 1))
    assert [(r["loss"], r["lr"], r["grad_norm"], r["tokens"]) for r in a] == [(r["loss"], r["lr"], r["grad_norm"], r["tokens"]) for r in b]
    final_a, final_b = (checkpoint.latest(d) for d in (straight, killed))
    weights_a, weights_b = (checkpoint.restore_model(p).state_dict() for p in (final_a, final_b))
    assert all(torch.equal(weights_a[n], weights_b[n]) for n in weights_a)
    rank_a, rank_b = (torch.load(p / "rank-00000.pt", weights_only=True) for p in (final_a, final_b))
    assert rank_a["data"] == rank_b["data"] and torch.equal(rank_a["rng"]["torch"], rank_b["rng"]["torch"])
    assert json.loads((final_a / "trainer.json").read_text()) == json.loads((final_b / "trainer.json").read_text())


def test_a_half_written_checkpoint_is_ignored(tmp_path):
    ckpts = tmp_path / "checkpoints"
    (ckpts / "step-000004").mkdir(parents=True)
    (ckpts / "step-000004" / "trainer.json").write_text("{}")
    (ckpts / ".tmp-step-000006").mkdir()  # a run killed while saving step 6
    (ckpts / "latest").write_text("step-000004\n")
    assert checkpoint.latest(tmp_path) == ckpts / "step-000004"
    (ckpts / "latest").write_text("step-000006\n")  # a pointer can never name an incomplete folder; if it did:
    with pytest.raises(FileNotFoundError, match="not a complete checkpoint"):
        checkpoint.latest(tmp_path)
    assert checkpoint.latest(tmp_path / "elsewhere") is None
