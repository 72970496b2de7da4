"""Shared fixtures. The real model is required (scripts/setup.sh writes it); tests never
download anything."""
from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "models" / "gemma-3-270m-q4_k_m.gguf"


@pytest.fixture(scope="session")
def model_path() -> Path:
    if not MODEL.exists():
        pytest.fail(f"{MODEL} is missing: run scripts/setup.sh (or scripts/fetch_default_model.py)")
    return MODEL


@pytest.fixture(scope="session")
def llm(model_path):
    """The real 270M model, loaded once (the engine's cache is shared: tests that need a
    clean state reset it)."""
    import runner
    return runner.load(model_path, n_ctx=4096, threads=2)
