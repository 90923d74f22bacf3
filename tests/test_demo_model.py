"""The embedded demo model: its files match the published checksums, it is small and in the official
format, `minicpmv.load()` finds it, and it answers the README's example correctly."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors import safe_open

import minicpmv
from minicpmv.demo import DEMO_DIR

ROOT = Path(__file__).resolve().parents[1]
# The README's run command: bash scripts/run.sh chat --image examples/shapes.png --temperature 0 "<question>"
README_QUESTION = "What colour is the square?"
README_ANSWER = "blue"

pytestmark = pytest.mark.skipif(not (DEMO_DIR / "SHA256SUMS").is_file(), reason=f"no demo model in {DEMO_DIR}")


def _sums() -> dict[str, str]:
    lines = (DEMO_DIR / "SHA256SUMS").read_text().splitlines()
    return {name: digest for digest, name in (line.split("  ") for line in lines if line.strip())}


def test_files_match_the_checksums_here_and_in_the_model_card():
    sums = _sums()
    assert set(sums) == {"config.json", "model.safetensors", "tokenizer.json", "preprocessor_config.json"}
    for name, digest in sums.items():
        assert hashlib.sha256((DEMO_DIR / name).read_bytes()).hexdigest() == digest, name
    card = ROOT / "docs" / "demo-model.md"
    if card.is_file():
        assert all(digest in card.read_text() for digest in sums.values())


def test_weights_are_small_half_precision_official_format():
    path = DEMO_DIR / "model.safetensors"
    assert path.stat().st_size <= 25 * 2**20
    with safe_open(str(path), "pt") as f:
        names = list(f.keys())
        assert {str(f.get_slice(n).get_dtype()) for n in names} <= {"BF16", "F16"}
    assert any(n.startswith("vpm.") for n in names) and any(n.startswith("resampler.") for n in names)
    assert any(n.startswith("llm.model.layers.") for n in names)
    config = json.loads((DEMO_DIR / "config.json").read_text())
    assert config["model_type"] == "minicpmv" and config["version"] == 4.5 and config["torch_dtype"] == "bfloat16"


def test_default_load_is_the_demo_model():
    model, processor = minicpmv.load(device="cpu")
    again, _ = minicpmv.load("demo", device="cpu")
    assert model.config == again.config and model.config.name_or_path == "minicpmv-demo"
    assert processor.tokenizer.vocab_size == model.config.llm.vocab_size
    assert processor.cfg.image_feature_size == model.config.query_num


def test_readme_example_answers_correctly():
    """The README's command itself (its wall time is measured by benchmarks/readme_command.py, not here)."""
    cmd = [sys.executable, "-m", "minicpmv.cli", "chat", "--image", "examples/shapes.png", "--temperature", "0",
           README_QUESTION]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().rstrip(".").lower() == README_ANSWER, out.stdout

