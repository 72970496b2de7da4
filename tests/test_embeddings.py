"""Embeddings plumbing on the tiny random model: pooling and normalization by their
definitions, the states against the library's teacher-forced logits (states times the
output matrix are the logits), packing and chunking against inputs computed alone, the
cache left alone, and the HTTP routes (OpenAI's through its client, llama-server's
shapes) against llm.embed. The values themselves are checked against llama.cpp on the
real model in test_embeddings_real.py."""
from __future__ import annotations

import base64
import json
import threading

import httpx
import numpy as np
import openai
import pytest

from runner import kernels
from runner.embedding import normalize, packs
from runner.modes.api_common import Options
from runner.modes.server import create_app, serve_in_thread

pytestmark = pytest.mark.fast

TEXTS = ["the cat is here", "a", "he is to the an in the er " * 3]


# -- pooling and normalization, by definition ---------------------------------------------------

def test_normalize_follows_llama_cpp_definitions():
    v = np.array([[3.0, -4.0, 0.0], [0.0, 0.0, 0.0]], dtype=np.float32)
    assert np.allclose(normalize(v, 2), [[0.6, -0.8, 0], [0, 0, 0]])            # euclidean; zero stays zero
    assert np.allclose(normalize(v, 1), [[3 / 7, -4 / 7, 0], [0, 0, 0]])        # taxicab
    assert np.allclose(normalize(v, 0), [[3 * 32760 / 4, -32760, 0], [0, 0, 0]])  # int16 range
    assert np.allclose(normalize(v, 3), v / (27 + 64) ** (1 / 3))
    assert np.array_equal(normalize(v, -1), v)
    # a large p: (|3|^p + |4|^p)^(1/p) -> 4 (the largest magnitude), no overflow to zeros
    big = np.array([[300.0, -400.0, 0.0]], dtype=np.float32)
    assert np.allclose(normalize(big, 1000), big / 400 / (1 + 0.75 ** 1000) ** 0.001)


def test_packs_hold_at_most_a_batch():
    assert packs([3, 4, 5, 600, 2, 2], 8) == [[0, 1], [2], [3], [4, 5]]
    assert packs([1] * 5, 512) == [[0, 1, 2, 3, 4]]


def test_default_pooling_is_the_files_else_mean():
    from types import SimpleNamespace
    from runner.embedding import Pooling, default_pooling

    def gguf(value):
        return SimpleNamespace(get=lambda key, default=None: value if key == "gemma3.pooling_type" else default)
    assert default_pooling(gguf(-1)) is Pooling.MEAN                   # the key absent
    assert default_pooling(gguf(3)) is Pooling.LAST and default_pooling(gguf(0)) is Pooling.NONE


def test_flags():
    from runner.args import parse_args
    assert Options.from_args(parse_args(["--server", "--embeddings", "--pooling", "last"])).pooling == "last"
    assert Options.from_args(parse_args(["--server", "--embedding"])).pooling is None
    with pytest.raises(SystemExit) as e:
        parse_args(["--server", "--pooling", "max"])
    assert e.value.code == 2


def test_pooling_of_the_states(tiny):
    states = tiny.embed(TEXTS[0], pooling="none", normalize=False)          # [n, d]
    n = len(tiny.tokenize(TEXTS[0]))
    assert states.shape == (n, tiny.cfg.d)
    for pooling, want in [("mean", states.mean(0)), ("last", states[-1]), ("cls", states[0])]:
        raw = tiny.embed(TEXTS[0], pooling=pooling, normalize=False)
        assert np.allclose(raw, want, atol=1e-5)
        assert np.allclose(tiny.embed(TEXTS[0], pooling=pooling), want / np.linalg.norm(want), atol=1e-6)


def test_states_times_the_output_matrix_are_the_logits(tiny):
    """The final normed states are what the logits are made from: the library's own
    teacher-forced forward pass (engine.prompt_logits) is the reference."""
    ids = tiny.tokenize(TEXTS[2])
    states = tiny.embed(ids, pooling="none", normalize=False)
    emb = tiny.weights.token_embd
    w = emb.rows(np.arange(emb.n_out))                  # the output matrix as float32
    (_, qtype), = emb.parts
    if int(qtype) in kernels.INT8_TYPES and kernels.int8_activations():
        states = kernels.round_activations(states)     # the output product rounds them to 8 bits
    assert np.allclose(states @ w.T, tiny.logits(ids), atol=1e-4)


def test_packed_and_chunked_inputs_equal_each_computed_alone(tiny, tiny_path):
    import runner
    long = "the cat is here and " * 20                 # longer than the sliding window and than 64
    texts = TEXTS + [long]
    together = tiny.embed(texts)
    alone = np.stack([tiny.embed(t) for t in texts])
    # packed, the rows go through the many-row product (gemm8); alone, through q8's: the same rounded
    # activations, summed in another order (1e-6 before the activations were rounded; a
    # last-bit difference can move a code by one step, 1/127 of its block's largest value)
    assert np.allclose(together, alone, atol=1e-5)
    small_batch = runner.load(tiny_path, n_ctx=2048, n_batch=64)              # the long input in chunks
    assert len(tiny.tokenize(long)) > 64
    assert np.allclose(small_batch.embed(long, pooling="none", normalize=False),
                       tiny.embed(long, pooling="none", normalize=False), atol=1e-4)


def test_embedding_leaves_the_cache_alone(tiny):
    tiny.complete("the cat", max_tokens=4, temperature=0)
    ids = list(tiny.engine.ids)
    tiny.embed(TEXTS)
    assert tiny.engine.ids == ids


@pytest.mark.parametrize("bad", [[], [[]], [1.5], [["a"]], {"a": 1}, None, [True], [[-1]]])
def test_library_input_errors(tiny, bad):
    with pytest.raises(ValueError):
        tiny.embed(bad)


def test_library_shapes(tiny):
    d = tiny.cfg.d
    assert tiny.embed("x").shape == (d,) and tiny.embed(["x"]).shape == (1, d)
    assert tiny.embed([2, 40, 41]).shape == (d,) and tiny.embed([[2, 40], [2, 41]]).shape == (2, d)
    assert tiny.embed("x").dtype == np.float32
    with pytest.raises(ValueError, match="one text"):
        tiny.embed(["a", "b"], pooling="none")


# -- the HTTP routes ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def base(tiny):
    with serve_in_thread(create_app(tiny, Options(log=False, n_predict=8))) as url:
        yield url


@pytest.fixture(scope="module")
def client(base):
    return openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0, timeout=120)


def vectors(r) -> np.ndarray:
    """The vectors of a client's answer (explicit base64 stays a string: decode it)."""
    return np.array([np.frombuffer(base64.b64decode(d.embedding), "<f4") if isinstance(d.embedding, str)
                     else d.embedding for d in r.data], dtype=np.float32)


def test_openai_client_both_encodings(tiny, client):
    """Without encoding_format the client asks for base64 and decodes it itself."""
    want = tiny.embed(TEXTS)
    for fmt in ({}, {"encoding_format": "float"}, {"encoding_format": "base64"}):
        r = client.embeddings.create(model="m", input=TEXTS, **fmt)
        got = vectors(r)
        assert np.allclose(got, want, atol=1e-6) and [d.index for d in r.data] == [0, 1, 2]
        assert r.usage.prompt_tokens == r.usage.total_tokens == sum(len(tiny.tokenize(t)) for t in TEXTS)
    one = client.embeddings.create(model="m", input=[2, 40, 41], encoding_format="float")
    assert np.allclose(one.data[0].embedding, tiny.embed([2, 40, 41]), atol=1e-6)


def test_openai_base64_is_little_endian_float32(tiny, base):
    r = httpx.post(base + "/v1/embeddings", json={"input": "a", "encoding_format": "base64"}).json()
    raw = base64.b64decode(r["data"][0]["embedding"])
    assert np.array_equal(np.frombuffer(raw, dtype="<f4"), tiny.embed("a"))
    assert r["object"] == "list" and r["data"][0]["object"] == "embedding"


def test_llama_server_shapes(tiny, base):
    r = httpx.post(base + "/embedding", json={"content": TEXTS[0]}).json()
    assert len(r) == 1 and r[0]["index"] == 0 and np.allclose(r[0]["embedding"], [tiny.embed(TEXTS[0])], atol=1e-6)
    r = httpx.post(base + "/embeddings", json={"content": TEXTS[:2], "embd_normalize": -1}).json()
    assert [x["index"] for x in r] == [0, 1]
    assert np.allclose(r[1]["embedding"][0], tiny.embed(TEXTS[1], normalize=False), atol=1e-5)
    r = httpx.post(base + "/v1/embeddings", json={"content": "a"}).json()       # llama-server: its own shape
    assert isinstance(r, list) and r[0]["index"] == 0


def test_pooling_none_gives_raw_token_states_and_no_openai_route(tiny):
    with serve_in_thread(create_app(tiny, Options(log=False, pooling="none"))) as url:
        r = httpx.post(url + "/embedding", json={"content": TEXTS[0]})
        vectors = np.array(r.json()[0]["embedding"], dtype=np.float32)
        assert np.allclose(vectors, tiny.embed(TEXTS[0], pooling="none", normalize=False), atol=1e-5)
        r = httpx.post(url + "/v1/embeddings", json={"input": "a"})
        assert r.status_code == 400 and "--pooling" in r.json()["error"]["message"]
    with serve_in_thread(create_app(tiny, Options(log=False, pooling="last"))) as url:
        r = httpx.post(url + "/v1/embeddings", json={"input": TEXTS[0], "encoding_format": "float"}).json()
        assert np.allclose(r["data"][0]["embedding"], tiny.embed(TEXTS[0], pooling="last"), atol=1e-6)


@pytest.mark.parametrize("body, param", [
    ({}, "input"), ({"input": []}, "input"), ({"input": [[]]}, "input"), ({"input": 5}, "input"),
    ({"input": [1.5]}, "input"), ({"input": ["a", 3]}, "input"), ({"input": [10**9]}, "input"),
    ({"input": [[2, -1]]}, "input"), ({"input": "a", "encoding_format": "int8"}, "encoding_format"),
    ({"input": "a", "dimensions": 8}, "dimensions"), ({"input": "a", "embd_normalize": "l2"}, "embd_normalize"),
    ({"input": "a", "model": 3}, "model"), ({"input": "word " * 3000}, "input")])
def test_bad_requests_are_400_naming_the_field(base, body, param):
    r = httpx.post(base + "/v1/embeddings", json=body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and err["param"] == param and err["message"]


def test_nothing_a_client_sends_is_a_500(base):
    for path in ("/v1/embeddings", "/embedding"):
        for body in [b"", b"[1]", b"{", json.dumps({"content": None}).encode(), json.dumps({"input": {}}).encode(),
                     json.dumps({"content": "\ud800"}).encode(), json.dumps({"input": [[True]]}).encode()]:
            r = httpx.post(base + path, content=body, headers={"content-type": "application/json"})
            assert r.status_code < 500, (path, body, r.text)


def test_embeddings_run_between_the_steps_of_a_stream(tiny, base, client):
    """An embedding request while a reply streams: it is served on the compute thread
    between decoding steps, and neither result is disturbed."""
    chat = [{"role": "user", "content": "the cat"}]
    want_text = tiny.chat(chat, max_tokens=48, temperature=0)
    want = tiny.embed(TEXTS)
    got: dict = {}

    def talk():
        got["text"] = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
            model="m", messages=chat, max_tokens=48, temperature=0, stream=True))
    t = threading.Thread(target=talk)
    t.start()
    r = client.embeddings.create(model="m", input=TEXTS)
    t.join(120)
    assert np.allclose([d.embedding for d in r.data], want, atol=1e-6)
    assert got["text"] == want_text
