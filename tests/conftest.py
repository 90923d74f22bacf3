"""Shared test fixtures: where the reference data lives."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
REFERENCE_DIR = Path(os.environ.get("MINICPMV_REFERENCE_DIR", ROOT.parent / "shared" / "reference"))


def reference_path(*parts: str) -> Path:
    """Path inside the reference folder, skipping the test (with the reason) when it is absent."""
    p = REFERENCE_DIR.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"reference data {p} not found (set MINICPMV_REFERENCE_DIR to the folder of golden data)")
    return p


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    return reference_path()


@pytest.fixture(scope="module")
def single_thread():
    """One torch thread for a whole test module (tiny models: no sync per small op; restored afterwards).
    Use with `pytestmark = pytest.mark.usefixtures("single_thread")`."""
    from train_fixtures import one_thread

    with one_thread():
        yield
