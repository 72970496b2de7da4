"""Embeddings of the real Gemma 3 270M against llama.cpp (llama-cpp-python with
embedding=True, run by tests/llamacpp_embed.py in its own venv; skipped where it is
absent, as on CI), and the ranking they give.

Tolerances. Both sides compute the same model, but llama.cpp rounds each activation
to 8 bits before its products with quantized (Q4_K, Q6_K) weights, and its F16 KV
cache to 16; ours multiplies float32 by the exactly dequantized weights. That noise is
llama.cpp's own: the same tokens in llama.cpp, decoded in batches of 512 and of 1,
differ by as much as cosine 0.9972 per token (measured). So against the same GGUF the
bound is cosine >= 0.997 pooled and 0.985 per token. Against a copy of the file whose
layer matrices are stored as float32 (written by gguf-py: llama.cpp then rounds
nothing), the agreement is cosine >= 0.9999 for every pooling and every token (measured:
0.999999), which is the issue's 0.999 with a margin.
"""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

TESTS = Path(__file__).resolve().parent
REF_PYTHON = Path(os.environ.get("LLAMACPP_REF_VENV", Path.home() / ".cache" / "llamacpp-ref")) / "bin" / "python"
POOLINGS = ("mean", "last", "cls", "none")
TEXTS = ["Hello world",
         "The cat sat on the mat.",
         "Embeddings turn text into vectors, so that texts with similar meanings end up close together.",
         "A quick brown fox jumps over the lazy dog. " * 6]


def llama_cpp_present() -> bool:
    return REF_PYTHON.exists() and subprocess.run([str(REF_PYTHON), "-c", "import llama_cpp"],
                                                  capture_output=True).returncode == 0


needs_llama_cpp = pytest.mark.skipif(not llama_cpp_present(),
                                     reason=f"llama-cpp-python is not installed at {REF_PYTHON} (the reference: "
                                            "../shared/tools/llamacpp-ref setup)")


def llama_cpp_embeddings(model: Path, pooling: str, texts: list[str]) -> dict:
    r = subprocess.run([str(REF_PYTHON), str(TESTS / "llamacpp_embed.py"), str(model), pooling],
                       input=json.dumps(texts), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine of [.., d] arrays."""
    a, b = np.atleast_2d(a).astype(np.float64), np.atleast_2d(b).astype(np.float64)
    return (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)


def compare(llm, model: Path, pooling: str) -> tuple[float, float]:
    """(lowest cosine, largest |difference| relative to the largest |value|) of ours
    against llama.cpp's, over every text (and every token, unpooled)."""
    ref = llama_cpp_embeddings(model, pooling, TEXTS)
    assert ref["tokens"] == [llm.tokenize(t) for t in TEXTS]        # the same inputs
    lo, rel = 1.0, 0.0
    for text, want in zip(TEXTS, ref["embeddings"]):
        got = llm.embed(text, pooling=pooling, normalize=False)
        want = np.asarray(want, dtype=np.float32)
        assert got.shape == want.shape
        lo = min(lo, float(cosines(got, want).min()))
        rel = max(rel, float(np.abs(got - want).max() / np.abs(want).max()))
    return lo, rel


@needs_llama_cpp
@pytest.mark.parametrize("pooling", POOLINGS)
def test_embeddings_equal_llama_cpp_for_the_same_gguf(llm, model_path, pooling):
    lo, _ = compare(llm, model_path, pooling)
    assert lo >= (0.985 if pooling == "none" else 0.997), lo


@pytest.fixture(scope="module")
def f32_copy(model_path, tmp_path_factory) -> Path:
    """The model file with every layer matrix stored as float32 (gguf-py's own
    dequantization; the token embeddings stay quantized: looking rows up rounds
    nothing)."""
    import gguf
    reader = gguf.GGUFReader(str(model_path))
    path = tmp_path_factory.mktemp("f32") / "gemma-3-270m-f32-layers.gguf"
    w = gguf.GGUFWriter(str(path), reader.fields["general.architecture"].contents())
    for name, field in reader.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture":
            continue
        kind = field.types[0]
        w.add_key_value(name, field.contents(), kind,
                        sub_type=field.types[-1] if kind == gguf.GGUFValueType.ARRAY else None)
    for t in reader.tensors:
        if t.name.startswith("blk.") and t.tensor_type not in (gguf.GGMLQuantizationType.F32,):
            w.add_tensor(t.name, gguf.dequantize(t.data, t.tensor_type).astype(np.float32))
        else:
            w.add_tensor(t.name, t.data, raw_shape=t.data.shape, raw_dtype=t.tensor_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@needs_llama_cpp
def test_embeddings_equal_llama_cpp_exactly_without_its_rounding(f32_copy):
    import runner
    llm = runner.load(f32_copy, n_ctx=1024, threads=2)
    for pooling in POOLINGS:
        lo, rel = compare(llm, f32_copy, pooling)
        assert lo >= 0.9999 and rel <= 2e-3, (pooling, lo, rel)


# Each row: a sentence, a paraphrase of it, and an unrelated sentence.
TRIPLES = [("A man is playing a guitar.", "Someone plays an acoustic guitar.", "The stock market fell sharply today."),
           ("How do I bake bread at home?", "What is a simple recipe for homemade bread?",
            "The train leaves the station at noon."),
           ("The weather is sunny and warm.", "It is a bright, hot day outside.",
            "She is learning to program in Python."),
           ("My cat sleeps on the sofa all day.", "The kitten naps on the couch for hours.",
            "Interest rates were raised by the central bank.")]


@pytest.mark.parametrize("pooling", ["mean", "last"])
def test_paraphrases_rank_above_unrelated_text(llm, pooling):
    for a, b, other in TRIPLES:
        e = llm.embed([a, b, other], pooling=pooling)
        assert np.allclose(np.linalg.norm(e, axis=1), 1, atol=1e-5)
        assert e[0] @ e[1] > max(e[0] @ e[2], e[1] @ e[2]), (pooling, a)


def test_openai_client_embeddings_on_the_real_model(llm):
    """client.embeddings.create, base64 (what the client asks for by default, and decodes)
    and float, equal llm.embed and rank a paraphrase first."""
    import openai
    from runner.modes.api_common import Options
    from runner.modes.server import create_app, serve_in_thread
    texts = list(TRIPLES[0])
    with serve_in_thread(create_app(llm, Options(log=False))) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=120)
        packed = client.embeddings.create(model="gemma", input=texts)
        floats = client.embeddings.create(model="gemma", input=texts, encoding_format="float")
    want = llm.embed(texts)
    for r in (packed, floats):
        got = np.array([d.embedding for d in r.data], dtype=np.float32)
        assert np.allclose(got, want, atol=1e-6)
        assert r.usage.prompt_tokens == sum(len(llm.tokenize(t)) for t in texts)
    assert int(np.argmax(want[1:] @ want[0])) == 0
