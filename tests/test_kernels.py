"""The compiled kernels (runner/kernels) against independent references: gguf-py's
dequantization (bit-exact oracle) and float64 products of its dequantized weights.

Two kinds of product. By default the types Q4_0, Q5_0, Q8_0, Q4_K, Q6_K quantize each
row of activations to 8 bits in blocks of 32 first, as llama.cpp's x86 code does
(runner/kernels/q8.py); their reference is then the float64 product of gguf-py's
dequantized weights with the activations so rounded (`q8_0_activations`, numpy written
from ggml's quantize_row_q8_0). The integer sums are exact, so what is left is, as for
the float32 products (every type under GEMMA_RUNNER_KERNELS=float32), float32 rounding.

Tolerance of a product. A kernel's result differs from the exact product only by
float32 rounding while it sums n_in terms w_i x_i. Rounding errors of a sum of n terms add up like a random walk: about
u sqrt(n) ||w * x||_2, with u = 2^-24 (float32) and ||w * x||_2 the 2-norm of the
terms. We allow twice that of the kernels: over every type, row length and T below,
the largest error measured was 0.97 of it. numpy's float32 BLAS (what Linear uses for
many rows, and the numpy path) rounds more (its micro-kernel sums a row in one chain):
up to 3.2 of it over 30 draws of the Linear test, which allows 6. A wrong scale,
nibble, sign or bit lands at whole percents of the result instead, ~10^4 times further.
"""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from gguf import GGMLQuantizationType, quants as ggq

from runner import kernels
from runner import model as M
from runner.quants import QUANT_SIZES, GGMLType

from test_quants import random_blocks

pytestmark = pytest.mark.skipif(not kernels.available(), reason="numba is not installed")

U = 2.0 ** -24
KERNEL_TOLERANCE = 2.0              # in units of u sqrt(n_in) ||w * x||_2 (see above)
BLAS_TOLERANCE = 6.0
TYPES = sorted(kernels.TYPES, key=int)


def values_per_block(qtype: GGMLType) -> int:
    return QUANT_SIZES[qtype][0]


def row_lengths(qtype: GGMLType) -> list[int]:
    """One unit, a few, and lengths that leave units after whole groups of eight."""
    if values_per_block(qtype) == 256:
        return [256, 768, 2304]
    return [32, 96, 288, 640]


def raw_rows(qtype: GGMLType, n_out: int, n_in: int, seed: int) -> np.ndarray:
    """Random stored rows with extreme but finite fp16 scales (test_quants.random_blocks)."""
    rng = np.random.default_rng(seed)
    return random_blocks(rng, qtype, n_out, n_in // values_per_block(qtype))


def oracle(raw: np.ndarray, qtype: GGMLType) -> np.ndarray:
    return ggq.dequantize(raw, GGMLQuantizationType(int(qtype)))


def q8_0_codes(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ggml's x86 quantize_row_q8_0 in numpy, per block of 32 of x [..., n]: a = max|x|,
    codes = round-half-to-even(x * (127 / a)), scale = a / 127 rounded to a half.
    Returns (codes int8 [..., n], scale float32 [..., n / 32])."""
    blocks = x.reshape(*x.shape[:-1], -1, 32).astype(np.float32)
    a = np.abs(blocks).max(-1, keepdims=True)
    with np.errstate(divide="ignore"):
        inv = np.where(a == 0, np.float32(0), np.float32(127) / a).astype(np.float32)
    codes = np.rint(blocks * inv).astype(np.int8)
    scale = (a[..., 0] / np.float32(127)).astype(np.float16).astype(np.float32)
    return codes.reshape(x.shape), scale


def quantized_activations(x: np.ndarray) -> np.ndarray:
    """x [T, n_in] as the 8-bit products see it (float64)."""
    codes, scale = q8_0_codes(x)
    return (codes.reshape(*scale.shape, 32).astype(np.float64) * scale[..., None]).reshape(x.shape)


def int8_product(qtype: GGMLType, n_in: int) -> bool:
    """Does kernels.matmul quantize the activations for this type and row length?"""
    return int(qtype) in kernels.INT8_TYPES and n_in % 64 == 0 and kernels.int8_activations()


def assert_close_to_float64(y: np.ndarray, w: np.ndarray, x: np.ndarray, tolerance: float = KERNEL_TOLERANCE) -> None:
    """y [T, out] against the float64 product of x [T, in] and w [out, in]."""
    terms = x.astype(np.float64)[:, None, :] * w.astype(np.float64)[None, :, :]   # [T, out, in]
    exact = terms.sum(-1)
    bound = tolerance * U * np.sqrt(x.shape[1]) * np.sqrt((terms ** 2).sum(-1))
    err = np.abs(y - exact)
    assert y.dtype == np.float32 and y.shape == exact.shape
    assert (err <= bound).all(), f"worst error {(err / np.maximum(bound, 1e-300)).max():.2f} x the bound"


@pytest.fixture
def one_thread():
    before = kernels.threads()
    kernels.set_threads(1)
    yield
    kernels.set_threads(before)


@pytest.mark.fast
@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_float32_product_equals_float64_of_dequantized(qtype, monkeypatch):
    monkeypatch.setenv(kernels.ENV, "float32")
    for i, n_in in enumerate(row_lengths(qtype)):
        raw = raw_rows(qtype, 37, n_in, seed=int(qtype) * 10 + i)     # 37: blocks of 16 rows and a tail
        w = oracle(raw, qtype)
        rng = np.random.default_rng(i)
        for T in range(1, 17) if i == 1 else (1, 4, 7):
            x = rng.standard_normal((T, n_in)).astype(np.float32)
            assert not int8_product(qtype, n_in)
            assert_close_to_float64(kernels.matmul(raw, qtype, x), w, x)


INT8 = sorted((GGMLType(t) for t in kernels.INT8_TYPES), key=int)


@pytest.mark.fast
@pytest.mark.parametrize("qtype", INT8, ids=lambda t: t.name)
def test_int8_product_equals_float64_with_q8_0_activations(qtype):
    """Rows of x: 1 to 16 (one row: four rows of W at once for Q4_0, pairs of units for
    the others; 2-7: pairs against four rows of x; 8-16: pairs, or for Q4_0 four rows of
    W against eight of x) and 17, 40 (a prompt: 16 rows of W packed, gemm8.py); 37 rows
    of W (a tail of a block, of a group of four and of a group of 16); row lengths with
    and without whole groups of four pairs."""
    lengths = [256, 768, 2304] if values_per_block(qtype) == 256 else [64, 640, 2560]
    for i, n_in in enumerate(lengths):
        raw = raw_rows(qtype, 37, n_in, seed=int(qtype) * 10 + i)
        w = oracle(raw, qtype)
        rng = np.random.default_rng(i)
        for T in list(range(1, 18)) + [40] if i == 1 else (1, 5, 8, 40):
            x = rng.standard_normal((T, n_in)).astype(np.float32)
            x[:, :32] *= 1e3                       # one block of large values, one of zeros
            x[:, 32:64] = 0
            assert int8_product(qtype, n_in)
            assert_close_to_float64(kernels.matmul(raw, qtype, x), w, quantized_activations(x))


@pytest.mark.fast
@pytest.mark.parametrize("qtype", INT8, ids=lambda t: t.name)
def test_int8_row_results_do_not_depend_on_the_rows_with_them(qtype):
    """Up to 16 rows of x (decode, a batch of streams, a drafted round) each row's result
    is bit-for-bit the one it gets alone. why: the 8-bit rounding turns a last-bit
    difference into a whole code step downstream, and a greedy text would then depend on
    drafting or on the other streams of a batch."""
    n_in = 768 if values_per_block(qtype) == 256 else 640
    raw = raw_rows(qtype, 37, n_in, seed=int(qtype) + 7)
    x = np.random.default_rng(9).standard_normal((16, n_in)).astype(np.float32)
    alone = np.concatenate([kernels.matmul(raw, qtype, x[t:t + 1]) for t in range(16)])
    for T in range(2, 17):
        np.testing.assert_array_equal(kernels.matmul(raw, qtype, x[:T]), alone[:T])


@pytest.mark.fast
def test_activation_codes_are_ggml_q8_0():
    """q8.quantize against ggml's Q8_0 activation rounding (q8_0_codes; halves to even:
    values built to land on them; a block of zeros): the same codes and scales, and the
    sums the products start from; in both layouts (Q6_K's splits each 256 values'
    blocks). The scale's half also matches gguf-py's Q8_0 quantizer's stored one."""
    rng = np.random.default_rng(8)
    magnitudes = 10.0 ** rng.integers(-3, 4, (3, 16, 1)).repeat(32, -1).reshape(3, 512)
    x = (rng.standard_normal((3, 512)) * magnitudes).astype(np.float32)
    x[0, :32] = np.append(np.arange(31) - 15.5, 127)        # scale 1: codes exactly k + 1/2
    x[1, 64:96] = 0
    codes, scale = q8_0_codes(x)
    stored = ggq.quantize(x.reshape(-1, 32), GGMLQuantizationType.Q8_0).reshape(-1, 34)[:, :2].copy()
    np.testing.assert_array_equal(stored.view(np.float16).astype(np.float32).reshape(3, 16), scale)
    assert (codes[0, :31] % 2 == 0).all()                      # the ties went to even
    for split in (0, 1):
        xq, xs, xd = kernels.quantize_activations(x, split)
        order = np.arange(16).reshape(2, 2, 4).transpose(0, 2, 1).ravel() if split else np.arange(16)
        np.testing.assert_array_equal(xq.reshape(3, 16, 32), codes.reshape(3, 16, 32)[:, order])
        np.testing.assert_array_equal(xd.reshape(3, 16, 8), np.repeat(scale[:, order, None], 8, -1))
        np.testing.assert_array_equal(xs, xq.reshape(3, 128, 4).astype(np.int32).sum(-1))


@pytest.mark.fast
@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_threaded_equals_single_threaded(qtype, one_thread):
    raw = raw_rows(qtype, 300, row_lengths(qtype)[1], seed=int(qtype))
    x = np.random.default_rng(2).standard_normal((5, raw.shape[1] * values_per_block(qtype)
                                                  // QUANT_SIZES[qtype][1])).astype(np.float32)
    x = np.concatenate([x] * 5)                                    # 25 rows: the many-row product
    single = [kernels.matmul(raw, qtype, x[:T]) for T in (1, 5, 25)]
    kernels.set_threads(2)
    assert kernels.threads() == 2
    for T, ref in zip((1, 5, 25), single):
        np.testing.assert_array_equal(kernels.matmul(raw, qtype, x[:T]), ref)   # a row is one thread's work


@pytest.mark.fast
@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_dequantize_and_rows_are_bit_exact(qtype):
    raw = raw_rows(qtype, 41, row_lengths(qtype)[-1], seed=int(qtype) + 1)
    ref = oracle(raw, qtype).astype(np.float32)
    out = np.full(ref.shape, np.nan, dtype=np.float32)
    assert kernels.dequantize(raw, qtype, out=out) is out
    np.testing.assert_array_equal(out.view(np.uint32), ref.view(np.uint32))
    ids = np.array([40, 0, 7, 7, 13])
    np.testing.assert_array_equal(kernels.dequantize(raw, qtype, ids).view(np.uint32), ref[ids].view(np.uint32))
    np.testing.assert_array_equal(kernels.dequantize(raw, qtype, slice(5, 9)), ref[5:9])


@pytest.mark.fast
def test_linear_parts_of_different_types_write_their_columns():
    """A fused matrix (attn_q | attn_k | attn_v) of three types: the kernels for a few
    rows (q8.py) and for many (gemm8.py), float32 weights for the numpy path."""
    n_in = 256
    types = [GGMLType.Q4_K, GGMLType.Q8_0, GGMLType.Q6_K]
    parts = [(raw_rows(t, n, n_in, seed=i), t) for i, (t, n) in enumerate(zip(types, (64, 16, 40)))]
    w = np.concatenate([oracle(raw, t) for raw, t in parts])
    quantized, f32 = M.Linear(parts, n_in, quantized=True), M.Linear(parts, n_in, quantized=False)
    assert quantized.w is None and quantized.n_out == 120
    rng = np.random.default_rng(3)
    for T in (1, 3, 16, 17, 40):
        x = rng.standard_normal((T, n_in)).astype(np.float32)
        # all three types take 8-bit activations, for a few rows of x as for many
        assert_close_to_float64(quantized(x), w, quantized_activations(x))
        assert_close_to_float64(f32(x), w, x, BLAS_TOLERANCE)
    emb = M.Linear(parts[:1], n_in, quantized=True)
    ids = np.array([3, 63, 3])
    np.testing.assert_array_equal(emb.rows(ids), w[ids].astype(np.float32))


@pytest.mark.fast
def test_blocks_of_rows_for_blas_cover_the_matrix(monkeypatch):
    """Many rows of x, where a part has no 8-bit product (F16) or in the exact mode, go
    through BLAS a block of W's rows at a time: blocks smaller than the matrix, across the
    boundary of two parts, and a last partial one give the whole product."""
    monkeypatch.setattr(M.Linear, "BLOCK_VALUES", 7 * 640)
    parts = [(raw_rows(GGMLType.F16, 50, 640, seed=4), GGMLType.F16),
             (raw_rows(GGMLType.Q8_0, 23, 640, seed=5), GGMLType.Q8_0)]
    x = np.random.default_rng(5).standard_normal((20, 640)).astype(np.float32)
    lin = M.Linear(parts, 640, quantized=True)
    w = np.concatenate([oracle(r, t) for r, t in parts])
    assert_close_to_float64(lin(x), w, x, BLAS_TOLERANCE)
    lin = M.Linear(parts[1:], 640, quantized=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(kernels.ENV, "float32")
        assert_close_to_float64(lin(x), w[50:], x, BLAS_TOLERANCE)


@pytest.mark.fast
def test_rows_that_are_not_whole_units_are_refused_and_fall_back():
    assert kernels.supported(GGMLType.F16, 64) and not kernels.supported(GGMLType.F16, 48)
    raw = np.random.default_rng(6).standard_normal((9, 48)).astype(np.float16).view(np.uint8)
    lin = M.Linear([(raw, GGMLType.F16)], 48, quantized=True)      # numpy dequantization inside
    x = np.random.default_rng(7).standard_normal((2, 48)).astype(np.float32)
    assert_close_to_float64(lin(x), raw.view(np.float16), x, BLAS_TOLERANCE)
    with pytest.raises(ValueError, match="rows of 64 values"):
        kernels.matmul(raw, GGMLType.F16, np.zeros((1, 64), dtype=np.float32))


@pytest.mark.fast
def test_environment_selects_the_numpy_path(monkeypatch):
    kernels.available.cache_clear()
    try:
        monkeypatch.setenv(kernels.ENV, "numpy")
        assert not kernels.available() and not kernels.supported(GGMLType.Q8_0, 64)
        kernels.available.cache_clear()
        monkeypatch.delenv(kernels.ENV)
        assert kernels.available()
    finally:
        kernels.available.cache_clear()


def test_int8_products_without_avx512_vnni(tmp_path):
    """On a CPU without AVX512-VNNI (most laptops: AVX2) the 8-bit products take plain
    vector IR for vpdpbusd and vpermps: compiled for such a CPU (NUMBA_CPU_NAME, a cache
    of its own), they give the same results against the same references. Four types
    cover the kinds of decoder and scale (four rows, a split order and 16-value scales,
    a minimum per unit and per 16 values); each compile here costs ~15 s."""
    code = """
import numpy as np
from runner import kernels
from runner.kernels import simd8
from test_kernels import INT8, assert_close_to_float64, oracle, quantized_activations, raw_rows
assert kernels.available() and not simd8.vnni()
for qt in (kernels.GGMLType.Q4_0, kernels.GGMLType.Q6_K, kernels.GGMLType.Q4_K, kernels.GGMLType.Q2_K):
    n_in = 768 if qt.name.endswith("K") else 640
    raw = raw_rows(qt, 21, n_in, seed=3)
    for T in (1, 3, 9, 20):
        x = np.random.default_rng(T).standard_normal((T, n_in)).astype(np.float32)
        assert_close_to_float64(kernels.matmul(raw, qt, x), oracle(raw, qt), quantized_activations(x))
"""
    tests = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, NUMBA_CPU_NAME="x86-64-v3", GEMMA_RUNNER_CACHE=str(tmp_path),
               PYTHONPATH=os.pathsep.join([tests, os.path.dirname(tests)]))
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
