"""The numpy Gemma 3 against transformers on tiny random models written to GGUF."""
from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q

import runner
from runner.cache import make_caches
from runner import model as M
from hf_fixtures import build_text_model, hf_logits, text_config, write_text_gguf

# Relative tolerance on logits: both sides compute in float32 with different summation
# orders; over a few layers the differences stay near 1e-6 of the logit scale. 1e-4
# leaves room for that and is still far below any difference a bug produces (a wrong
# sign, scale, mask or RoPE base moves logits by whole percents).
RTOL = 1e-4


def compare(path, hf, ids, **load):
    llm = runner.load(path, n_ctx=max(64, len(ids) + 8), **load)
    ours = llm.logits(ids)
    ref = hf_logits(hf, ids)
    scale = np.abs(ref).max()
    err = np.abs(ours - ref).max()
    print(f"\n{path.name}: {len(ids)} tokens, max |diff| {err:.2e} (logit scale {scale:.2f}, "
          f"relative {err / scale:.1e})")
    assert ours.shape == ref.shape
    assert err <= RTOL * scale
    assert (ours.argmax(-1) == ref.argmax(-1)).all()
    return llm


def random_ids(n, vocab, seed=0):
    rng = np.random.default_rng(seed)
    return [2] + rng.integers(10, vocab, n - 1).tolist()


def test_f32_gqa_sliding_window_shorter_than_prompt(tmp_path):
    cfg = text_config(vocab=300, d=64, layers=7, heads=4, kv_heads=2, head_dim=32, window=16)
    hf = build_text_model(cfg, seed=1)
    path = write_text_gguf(hf, tmp_path / "f32.gguf")
    llm = compare(path, hf, random_ids(70, 300))          # 70 tokens through a window of 16
    assert llm.cfg.sliding_window == 16 and llm.cfg.sliding.count(False) == 1
    assert llm.cfg.query_scale == pytest.approx(32 ** -0.5)


def test_4b_like_rope_scaling_several_global_layers(tmp_path):
    """Linear RoPE scaling (x8) on global layers only, a local base of its own, three
    global layers, GQA 8 -> 2, the per-layer pattern written as an array of flags."""
    cfg = text_config(vocab=300, d=64, d_ff=96, layers=9, heads=8, kv_heads=2, head_dim=16, window=24,
                      pattern=3, rope_base=1e6, rope_base_local=20000.0, linear_scale=8.0)
    hf = build_text_model(cfg, seed=2)
    flags = [t == "sliding_attention" for t in cfg.layer_types]
    path = write_text_gguf(hf, tmp_path / "4b_like.gguf", pattern=flags)
    llm = compare(path, hf, random_ids(120, 300, seed=2))
    assert llm.cfg.rope_scale == 8.0 and llm.cfg.rope_base_local == 20000.0
    assert llm.cfg.sliding.count(False) == 3


def test_27b_query_scale(tmp_path):
    """62 layers: Gemma 3 27B's query scale 1/sqrt(d/n_head), not 1/sqrt(head_dim)."""
    cfg = text_config(vocab=300, d=64, d_ff=64, layers=62, heads=4, kv_heads=1, head_dim=32, window=8,
                      query_scalar=64 // 4)
    hf = build_text_model(cfg, seed=3)
    path = write_text_gguf(hf, tmp_path / "27b_like.gguf")
    llm = compare(path, hf, random_ids(20, 300, seed=3))
    assert llm.cfg.query_scale == pytest.approx((64 / 4) ** -0.5)


QUANT_CYCLE = [Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q2_K, Q.Q3_K, Q.Q4_K, Q.Q5_K, Q.Q6_K,
               Q.F16, Q.BF16]


def test_every_weight_type(tmp_path, monkeypatch):
    """Every ggml type the loader knows, spread over the model's tensors (rows of 256 so
    the K-quants fit), including a quantized tied embedding; in the exact mode (float32
    activations: the weights' handling against transformers, at float32 tolerances)."""
    monkeypatch.setenv("GEMMA_RUNNER_KERNELS", "float32")
    cfg = text_config(vocab=512, d=256, d_ff=512, layers=3, heads=4, kv_heads=1, head_dim=64, window=8)
    hf = build_text_model(cfg, seed=4)
    order = iter(QUANT_CYCLE * 10)
    chosen = {}

    def types(name, shape):
        chosen[name] = Q.Q8_0 if name == "token_embd.weight" else next(order)
        return chosen[name]
    path = write_text_gguf(hf, tmp_path / "quant.gguf", types=types)
    assert set(chosen.values()) >= set(QUANT_CYCLE)
    compare(path, hf, random_ids(40, 512, seed=4))


def test_quantized_weights_equal_float32(tmp_path, monkeypatch):
    """Quantized weights multiplied by the compiled kernels (quantized=True) compute the
    same logits as float32 weights (quantized=False, the numpy path), in the exact mode
    (float32 activations; the default 8-bit ones: tests/test_kernels.py)."""
    monkeypatch.setenv("GEMMA_RUNNER_KERNELS", "float32")
    cfg = text_config(vocab=512, d=256, d_ff=512, layers=2, heads=4, kv_heads=2, head_dim=64, window=8)
    hf = build_text_model(cfg, seed=5)
    path = write_text_gguf(hf, tmp_path / "stream.gguf", types=lambda n, s: Q.Q4_K if "ffn" in n else Q.Q8_0)
    ids = random_ids(30, 512, seed=5)
    f32 = runner.load(path, n_ctx=64, quantized=False).logits(ids)
    quant = runner.load(path, n_ctx=64, quantized=True).logits(ids)
    np.testing.assert_allclose(quant, f32, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(quant, hf_logits(hf, ids), rtol=0, atol=RTOL * np.abs(f32).max())


def test_incremental_decode_and_chunks_equal_full_pass(tmp_path):
    """Prefill in small chunks then one token at a time, through a sliding window, gives
    the logits of one teacher-forced pass."""
    cfg = text_config(vocab=300, d=64, layers=7, heads=4, kv_heads=2, head_dim=32, window=16)
    hf = build_text_model(cfg, seed=6)
    path = write_text_gguf(hf, tmp_path / "inc.gguf")
    llm = runner.load(path, n_ctx=128)
    ids = random_ids(60, 300, seed=6)
    full = llm.logits(ids)
    caches = make_caches(llm.cfg, 128)
    got = []
    for s, e in [(0, 7), (7, 20), (20, 41)]:
        got.append(M.forward(llm.weights, llm.cfg, caches, np.array(ids[s:e]), s, logits="all"))
    for p in range(41, 60):
        got.append(M.forward(llm.weights, llm.cfg, caches, np.array(ids[p:p + 1]), p, logits="all"))
    np.testing.assert_allclose(np.concatenate(got), full, rtol=0, atol=1e-5 * np.abs(full).max())


def test_batched_decode_equals_one_sequence_at_a_time(tmp_path):
    """Several sequences at different positions (some past the sliding window), one token
    each in one pass over the weights, give the logits each gets decoded alone."""
    from runner.engine import Prompt, decode_batch
    cfg = text_config(vocab=300, d=64, layers=7, heads=4, kv_heads=2, head_dim=32, window=16)
    hf = build_text_model(cfg, seed=7)
    path = write_text_gguf(hf, tmp_path / "batch.gguf")
    llm = runner.load(path, n_ctx=128)
    lengths = [5, 17, 40, 3]
    prompts = [random_ids(n, 300, seed=20 + i) for i, n in enumerate(lengths)]
    nxt = [11, 12, 13, 14]
    alone = []
    for p, t in zip(prompts, nxt):
        e = llm.engine.spawn()
        e.prefill(Prompt(p))
        alone.append(decode_batch([e], [t])[0])
    engines = [llm.engine.spawn() for _ in prompts]
    for e, p in zip(engines, prompts):
        e.prefill(Prompt(p))
    together = decode_batch(engines, nxt)
    np.testing.assert_allclose(together, np.stack(alone), rtol=0, atol=1e-5 * np.abs(together).max())
    assert [e.ids for e in engines] == [p + [t] for p, t in zip(prompts, nxt)]
    # and they go on from there, each its own way
    again = decode_batch(engines, [1, 2, 3, 4])
    ref = llm.engine.spawn()
    ref.prefill(Prompt(prompts[2] + [13]))
    np.testing.assert_allclose(again[2], decode_batch([ref], [3])[0], rtol=0, atol=1e-5 * np.abs(again).max())
