"""Products with quantized weights as the GGUF file stores them, compiled with numba.

    if kernels.available():
        y = kernels.matmul(W, qtype, x)          # x [T, n_in] @ W.T -> [T, n_out], T = 1..16
        w = kernels.dequantize(W, qtype, ids)    # rows ids of W as float32 [len(ids), n_in]

W is the tensor's raw bytes, uint8 [n_out, bytes per row] (`GGUFFile.raw`, a view of
the memory map: nothing is copied). Rows must hold whole units of 32 values
(`supported`). Activations stay float32: a product equals the float32 product with the
dequantized weights up to summation order (see tests/test_kernels.py).

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
F32 = np.float32


@functools.lru_cache(maxsize=1)
def available() -> bool:
    """Can the compiled kernels run here (numba importable, not switched off)?"""
    if os.environ.get(ENV, "").strip().lower() == "numpy":
        return False
    # why OpenMP: it starts a parallel region in ~10 us, numba's own workqueue in 50-80 us
    # (a decode step runs ~75 products; scripts/bench_kernels.py, "layers"), and it
    # allows regions started from several Python threads at once. Its threads must sleep,
    # not spin, between regions: spinning ones took the cores from numpy's BLAS threads
    # (the 270M's prefill ran at less than half speed). Both are read when OpenMP loads,
    # at the first product.
    os.environ.setdefault("OMP_WAIT_POLICY", "passive")
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
# Products smaller than this many multiply-adds run on the calling thread alone. why: a
# sleeping OpenMP thread takes ~15-20 us to wake on this kind of machine (a VM), and the
# caller sleeps at the end of the region too: the 270M's layer matrices (0.2-2.6 M
# multiply-adds, 20-260 us on one core) were no faster on 2 threads, and its decode
# fastest with this threshold (1, 2 and 4 M tried).
SERIAL_WORK = 1 << 22


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
    W once for all T rows; meant for a few rows (decode, batched decode, drafting)."""
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
