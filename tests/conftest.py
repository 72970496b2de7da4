"""Shared fixtures: the real 270M model (scripts/setup.sh writes it) and a tiny random one
(tests/tiny.py) for the fast tier; tests never download anything. `pytest -m fast` runs
the tests marked fast: no real weights, no torch, tmux, browser or build."""
from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "models" / "gemma-3-270m-q4_k_m.gguf"


def pytest_ignore_collect(collection_path: Path, config) -> bool | None:
    """Under `-m fast`, a test module that marks nothing fast is not imported at all.
    why: several import torch and transformers at the top (about 4 s of a one-minute
    tier) only for tests the tier deselects anyway."""
    if config.getoption("markexpr", "") != "fast" or collection_path.suffix != ".py" \
            or not collection_path.name.startswith("test_"):
        return None
    return "mark.fast" not in collection_path.read_text(encoding="utf-8") or None


@pytest.fixture(scope="session")
def model_path() -> Path:
    if not MODEL.exists():
        pytest.fail(f"{MODEL} is missing: run scripts/setup.sh (or scripts/fetch_default_model.py)")
    return MODEL


def generate_interrupted(llm, monkeypatch, ids, at_layer_call: int, **kw) -> list[int]:
    """Generate greedily from a fresh cache with Ctrl-C raised inside the at_layer_call-th
    decoder layer evaluated (counting from the prompt's); the token ids streamed before."""
    from runner import model as M
    from runner.engine import Prompt
    from runner.sampling import SamplingParams
    real_block, calls = M.block, {"n": 0}

    def flaky_block(*a, **k):
        calls["n"] += 1
        if calls["n"] == at_layer_call:
            raise KeyboardInterrupt
        return real_block(*a, **k)
    llm.engine.reset()
    monkeypatch.setattr(M, "block", flaky_block)
    got = []
    with pytest.raises(KeyboardInterrupt):
        for t in llm.engine.generate(Prompt(list(ids)), SamplingParams(temperature=0), ignore_eos=True, **kw):
            got.append(t.id)
    monkeypatch.setattr(M, "block", real_block)
    return got


@pytest.fixture(scope="session")
def tiny_path(tmp_path_factory) -> Path:
    """A tiny random Gemma 3 GGUF (tests/tiny.py), written once per session."""
    from tiny import write_tiny_gguf
    return write_tiny_gguf(tmp_path_factory.mktemp("tiny") / "tiny.gguf")


@pytest.fixture(scope="session")
def tiny(tiny_path):
    """The tiny random model, loaded once: the fast tier's model for plumbing tests."""
    import runner
    return runner.load(tiny_path, n_ctx=2048, threads=2)


def cold(llm):
    """llm with its cache emptied: a reference for output that another process computes
    from a cold start. why: with the activations rounded to 8 bits, a prompt found whole in
    the cache (its last token evaluated alone) and one evaluated from scratch can round a
    value one code apart, and a near-tie in greedy text go the other way."""
    llm.engine.reset()
    return llm


@pytest.fixture(scope="session")
def llm(model_path):
    """The real 270M model, loaded once (the engine's cache is shared: tests that need a
    clean state reset it)."""
    import runner
    return runner.load(model_path, n_ctx=4096, threads=2)
