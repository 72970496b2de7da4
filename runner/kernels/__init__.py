"""Products with quantized weights as the GGUF file stores them, compiled with numba.

    if kernels.available():
        y = kernels.matmul(W, qtype, x)          # x [T, n_in] @ W.T -> [T, n_out]
        w = kernels.dequantize(W, qtype, ids)    # rows ids of W as float32 [len(ids), n_in]

W is the tensor's raw bytes, uint8 [n_out, bytes per row] (`GGUFFile.raw`, a view of
the memory map: nothing is copied). Rows must hold whole units of 32 values
(`supported`).

Activations. For the quantized types (INT8_TYPES: Q4_0 to Q6_K, rows of whole 64 values)
a product first rounds each row of x to 8 bits per value in blocks of 32, as llama.cpp
does before its quantized products, and multiplies integers (VNNI's vpdpbusd, 64
multiply-adds an instruction): q8.py for a few rows of x (decode, batched decode,
drafting), gemm8.py for more (a prompt: 16 rows of W repacked per pass). F16, BF16 and
F32, and every type under GEMMA_RUNNER_KERNELS=float32 (the exact mode), keep x in
float32 and equal the float32 product with the dequantized weights up to summation order
(products.py). Both against references in tests/test_kernels.py; the fidelity of each
mode in tests/test_model_real.py. why 8 bits: decode reads every weight once per token,
and float32 lanes (16 products an instruction) could not keep up with the memory: 4B
decode 4.8 tok/s then, 10 now; and a prompt's products run at 2.5-3.7x float32 BLAS.

`available()` is False where numba cannot be imported or when the environment sets
GEMMA_RUNNER_KERNELS=numpy; callers then use the float32 numpy path (runner.quants).
`set_threads(n)` is the one thread knob (numba's OpenMP team; numpy's BLAS has its own).
"""
from __future__ import annotations

import functools
import os
from typing import Sequence

import numpy as np

from ..quants import QUANT_SIZES, GGMLType

ENV = "GEMMA_RUNNER_KERNELS"
UNIT = 32
TYPES = frozenset(QUANT_SIZES)      # every type Gemma 3 files use
# the types with 8-bit-activation products (q8.py); the others keep float32 activations
INT8_TYPES = frozenset(int(t) for t in (GGMLType.Q4_0, GGMLType.Q4_1, GGMLType.Q5_0, GGMLType.Q5_1, GGMLType.Q8_0,
                                        GGMLType.Q2_K, GGMLType.Q3_K, GGMLType.Q4_K, GGMLType.Q5_K, GGMLType.Q6_K))
F32 = np.float32


@functools.lru_cache(maxsize=1)
def available() -> bool:
    """Can the compiled kernels run here (numba importable, not switched off)?"""
    if os.environ.get(ENV, "").strip().lower() == "numpy":
        return False
    # why OpenMP: it allows parallel regions started from several Python threads at once,
    # and starts one fastest, provided its threads are awake. They spin a short while
    # after a region, then sleep (GOMP_SPINCOUNT: spins of a pause instruction). why: a
    # sleeping thread took ~80 us to wake on this machine (a VM: waking a halted vCPU),
    # as long as a 4B decode's attention-output product itself, so the second core
    # gained nothing (170 us on one thread, 176 on two; awake, 92 us). Spinning longer
    # takes the cores from numpy's BLAS threads in a prompt: the 270M (decode / prefill
    # tok/s): no spin 42.5 / 620, 5000 spins 63.6 / 608, 20000 66.2 / 521. Read when
    # OpenMP loads, at the first product; the environment wins.
    os.environ.setdefault("GOMP_SPINCOUNT", "5000")
    try:
        import numba
        numba.config.THREADING_LAYER_PRIORITY = ["omp", "workqueue", "tbb"]
        from . import cache
        cache.install()
        from . import products  # noqa: F401  (defines the kernels: fails here, not mid-product)
    except (ImportError, OSError, RuntimeError):
        return False
    return True


_threads = 0                        # set by set_threads; 0: not yet (every core numba sees)
# Products smaller than this many multiply-adds run on the calling thread alone: below,
# starting the team costs more than the second core gains. Kept awake (GOMP_SPINCOUNT,
# above), the team starts in ~6 us; the 270M's decode (layer matrices of 0.2-2.6 M
# multiply-adds) ran at 55.6, 63.6 and 66.5 tok/s with 4 M, 1 M and 0.5 M, its prefill at
# 628, 608 and 522 tok/s (more regions, more spinning against BLAS's threads).
SERIAL_WORK = 1 << 20


def threads() -> int:
    """Threads the kernels use."""
    if not _threads:
        set_threads(None)
    return _threads


def set_threads(n: int | None) -> None:
    """Use n threads in the kernels (None: every core numba sees)."""
    global _threads
    import numba
    most = numba.config.NUMBA_NUM_THREADS
    _threads = max(1, min(n or most, most))
    numba.set_num_threads(_threads)


def _team(n: int) -> None:
    """n threads for the next parallel region started from this thread (numba keeps the
    count per calling thread; setting it costs ~1 us)."""
    import numba
    numba.set_num_threads(n)


def supported(qtype: GGMLType | int, n_in: int) -> bool:
    """Do the kernels handle rows of n_in values of this type?"""
    return available() and qtype in TYPES and n_in % UNIT == 0 and n_in > 0


@functools.lru_cache(maxsize=None)
def _entries(qtype: int):
    """Per-type entry points. why: the type must reach the kernels as a compile-time
    constant; a closure over it is one, and calling these costs ~0.5 us where passing
    the type from Python (numba's `literally` re-dispatch) costs ~10 ms per call."""
    from numba import njit
    from . import products

    @njit(nogil=True, cache=True)
    def matmul(W0, W1, W2, x, y, col, n_workers):
        products.matmul(qtype, W0, W1, W2, x, y, col, n_workers)

    @njit(nogil=True, cache=True)
    def dequantize(W, ids, out, n_workers):
        products.dequantize(qtype, W, ids, out, n_workers)

    return matmul, dequantize


@functools.lru_cache(maxsize=None)
def _entry8(qtype: int, many: bool):
    """The 8-bit product's entry point for one type (as _entries): q8.py's for a few
    rows of x, gemm8.py's for many (`many`, a constant: numba keeps one branch)."""
    from numba import njit
    from . import gemm8, q8

    @njit(nogil=True, cache=True)
    def matmul8(W0, W1, W2, x, y, col, n_workers):
        if many:
            gemm8.matmul(qtype, W0, W1, W2, x, y, col, n_workers)
        else:
            q8.matmul(qtype, W0, W1, W2, x, y, col, n_workers)

    return matmul8


# More rows of x than this (a prompt): the 8-bit types' product packs 16 rows of W at a
# time (gemm8.py), 2.5-3.7x float32 BLAS's rate (2 threads, 2048 x 2048, 128 rows, G
# multiply-adds/s: Q4_0 279, Q8_0 281, Q6_K 256, Q4_K 227 against BLAS ~75 without even
# dequantizing). Up to this many (decode, batched decode, drafting) q8.py's shapes, whose
# result for a row does not depend on how many rows come with it (see q8._rows).
GEMM_ROWS = 16


def many_rows(qtype: GGMLType | int) -> bool:
    """Should a product against many rows of x (a prompt) use the kernels for this type
    (else dequantized blocks and numpy's BLAS)?"""
    return int(qtype) in INT8_TYPES and int8_activations()


def int8_activations() -> bool:
    """Do the products quantize activations to 8 bits (the default), or keep them float32
    (GEMMA_RUNNER_KERNELS=float32: exact against the dequantized weights)?"""
    return os.environ.get(ENV, "").strip().lower() != "float32"


def quantize_activations(x: np.ndarray, split: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x float32 [T, n_in] as the 8-bit products take it (q8.quantize): int8 codes
    [T, n_in], and per 4 values the sum of their codes (int32) and their block's scale
    (float32), [T, n_in/4]; blocks in pairs, split as q8.quantize says."""
    from . import q8
    T, n_in = x.shape
    xq = np.empty((T, n_in), dtype=np.int8)
    xs = np.empty((T, n_in // 4), dtype=np.int32)
    xd = np.empty((T, n_in // 4), dtype=F32)
    q8.quantize(np.ascontiguousarray(x, dtype=F32), xq, xs, xd, np.empty((T, n_in // 16), dtype=np.int32), split)
    return xq, xs, xd


def round_activations(x: np.ndarray) -> np.ndarray:
    """x float32 [T, n_in] (n_in a multiple of 64) rounded as the 8-bit products round
    it, as float32: codes times their block's scale (exact in float32). A product of
    this with the dequantized weights in float32 (BLAS, for prompts) equals the 8-bit
    product up to summation order, so a text's numbers do not depend on which path its
    rows took (a prompt's chunks, texts embedded together or alone)."""
    xq, _, xd = quantize_activations(x)
    T, n_in = x.shape
    return (xq.reshape(T, n_in // 32, 32).astype(F32) * xd[:, ::8, None]).reshape(T, n_in)


def _readonly(W: np.ndarray) -> np.ndarray:
    # why: numba compiles read-only and writable arrays separately; the memory map is
    # read-only, so every caller gets that one specialization
    if W.flags.writeable:
        W = W.view()
        W.flags.writeable = False
    return W


def _check(W: np.ndarray, qtype: int, n_in: int) -> None:
    values, nbytes = QUANT_SIZES[qtype]
    if W.dtype != np.uint8 or W.ndim != 2 or not W.flags.c_contiguous or W.shape[1] * values != n_in * nbytes:
        raise ValueError(f"kernels: expected uint8 [rows, {n_in * nbytes // values}] C-contiguous "
                         f"{GGMLType(qtype).name} rows of {n_in} values, found {W.dtype} {W.shape}")


def n_in_of(W: np.ndarray, qtype: GGMLType | int) -> int:
    """Values per row of the raw tensor W."""
    values, nbytes = QUANT_SIZES[GGMLType(qtype)]
    return W.shape[1] // nbytes * values


def matmul(W: np.ndarray | Sequence[np.ndarray], qtype: GGMLType | int, x: np.ndarray,
           out: np.ndarray | None = None, col: int = 0) -> np.ndarray:
    """x @ W.T for W's raw rows: float32 [T, n_out]; into out[:, col:col + n_out] when
    out is given (float32 [T, >= col + n_out], C-contiguous). W may be up to three
    tensors of one type stacked by rows (one call for attn_q | attn_k | attn_v). Reads
    W once for all T rows (more than GEMM_ROWS of the 8-bit types: once per 16 rows of W
    packed, gemm8.py); types without 8-bit products are meant for a few rows."""
    parts = [W] if isinstance(W, np.ndarray) else list(W)
    x = np.ascontiguousarray(x, dtype=F32)
    T, n_in = x.shape
    for p in parts:
        _check(p, int(qtype), n_in)
    if not 1 <= len(parts) <= 3:
        raise ValueError(f"kernels.matmul: 1 to 3 stacked tensors, found {len(parts)}")
    n_out = sum(len(p) for p in parts)
    if out is None:
        out, col = np.empty((T, n_out), dtype=F32), 0
    if out.dtype != F32 or not out.flags.c_contiguous or out.shape[0] != T or out.shape[1] < col + n_out:
        raise ValueError(f"kernels.matmul: out must be C-contiguous float32 [{T}, >= {col + n_out}]")
    if T and n_out:
        n = 1 if T * n_out * n_in < SERIAL_WORK else threads()
        _team(n)
        none = parts[0][:0]
        W0, W1, W2 = (_readonly(p) for p in parts + [none] * (3 - len(parts)))
        if int(qtype) in INT8_TYPES and n_in % 64 == 0 and int8_activations():
            _entry8(int(qtype), T > GEMM_ROWS)(W0, W1, W2, x, out, col, n)
        else:
            _entries(int(qtype))[0](W0, W1, W2, x, out, col, n)
    return out


def dequantize(W: np.ndarray, qtype: GGMLType | int, ids: np.ndarray | slice | None = None,
               out: np.ndarray | None = None) -> np.ndarray:
    """Rows of W (all, a slice, or the indices `ids`) as float32 [n, n_in], into `out`
    (C-contiguous float32 of that shape) when given. Bit-exact with ggml."""
    n_in = n_in_of(W, qtype)
    _check(W, int(qtype), n_in)
    if ids is None:
        ids = slice(0, W.shape[0])
    if isinstance(ids, slice):
        ids = np.arange(*ids.indices(W.shape[0]), dtype=np.int64)
    ids = np.asarray(ids, dtype=np.int64).ravel()
    if len(ids) and (ids.min() < 0 or ids.max() >= W.shape[0]):
        raise IndexError(f"kernels.dequantize: row ids outside [0, {W.shape[0]})")
    if out is None:
        out = np.empty((len(ids), n_in), dtype=F32)
    if out.dtype != F32 or not out.flags.c_contiguous or out.shape != (len(ids), n_in):
        raise ValueError(f"kernels.dequantize: out must be C-contiguous float32 [{len(ids)}, {n_in}]")
    if len(ids):
        n = 1 if len(ids) * n_in < SERIAL_WORK else threads()
        _team(n)
        _entries(int(qtype))[1](_readonly(W), ids, out, n)
    return out
