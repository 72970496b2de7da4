"""The numba kernels: products of quantized rows with float32 activations, and
dequantization of chosen rows, over blocks as the GGUF file stores them (blocks.py).

Each kernel takes the ggml type as a compile-time constant (`literally`): one machine-
code specialization per type, compiled on first use and kept in numba's disk cache.
Rows are shared out in blocks of ROWS from an atomic counter, so a thread that the OS
delays (the machine is shared) leaves its blocks to the others instead of holding up
the call, as a static split would.
"""
from __future__ import annotations

import numpy as np
from numba import literally, njit, prange

from .blocks import UNIT, unit
from .simd import fetch_add, fma, hsum, load, store, zeros

ROWS = 16          # output rows per block of work: small enough to balance, big enough to amortize
_J = dict(nogil=True, cache=True, parallel=True)


@njit(nogil=True, cache=True)
def _rows(qtype, W, lo, hi, x, y, ycol):
    """y[t, ycol + r] for rows lo <= r < hi of W (one part: why a function of its own,
    see `matmul`)."""
    row_bytes = W.shape[1]
    T, n_units = x.shape[0], x.shape[1] // UNIT
    n_in = x.shape[1]
    for r in range(lo, hi):
        base = r * row_bytes
        if T == 1:
            a0, a1, a2, a3 = zeros(), zeros(), zeros(), zeros()
            for u8 in range(0, n_units - 7, 8):
                for g in range(0, 8, 2):
                    u = u8 + g
                    w0, w1 = unit(qtype, W, base, u)
                    w2, w3 = unit(qtype, W, base, u + 1)
                    a0 = fma(w0, load(x, UNIT * u), a0)
                    a1 = fma(w1, load(x, UNIT * u + 16), a1)
                    a2 = fma(w2, load(x, UNIT * u + 32), a2)
                    a3 = fma(w3, load(x, UNIT * u + 48), a3)
            for u in range(n_units - n_units % 8, n_units):
                w0, w1 = unit(qtype, W, base, u)
                a0 = fma(w0, load(x, UNIT * u), a0)
                a1 = fma(w1, load(x, UNIT * u + 16), a1)
            y[0, ycol + r] = hsum((a0 + a1) + (a2 + a3))
            continue
        for t0 in range(0, T, 4):
            # x rows t0..t0+3 as flat offsets (clamped to the last row)
            i0 = t0 * n_in
            i1 = min(t0 + 1, T - 1) * n_in
            i2 = min(t0 + 2, T - 1) * n_in
            i3 = min(t0 + 3, T - 1) * n_in
            a0, a1, a2, a3 = zeros(), zeros(), zeros(), zeros()
            c0, c1, c2, c3 = zeros(), zeros(), zeros(), zeros()
            for u in range(n_units):
                w0, w1 = unit(qtype, W, base, u)
                o = UNIT * u
                a0 = fma(w0, load(x, i0 + o), a0)
                c0 = fma(w1, load(x, i0 + o + 16), c0)
                a1 = fma(w0, load(x, i1 + o), a1)
                c1 = fma(w1, load(x, i1 + o + 16), c1)
                a2 = fma(w0, load(x, i2 + o), a2)
                c2 = fma(w1, load(x, i2 + o + 16), c2)
                a3 = fma(w0, load(x, i3 + o), a3)
                c3 = fma(w1, load(x, i3 + o + 16), c3)
            y[t0, ycol + r] = hsum(a0 + c0)
            y[min(t0 + 1, T - 1), ycol + r] = hsum(a1 + c1)
            y[min(t0 + 2, T - 1), ycol + r] = hsum(a2 + c2)
            y[min(t0 + 3, T - 1), ycol + r] = hsum(a3 + c3)


@njit(**_J)
def matmul(qtype, W0, W1, W2, x, y, col, n_workers):
    """y[t, col + r] = sum_i x[t, i] * W_r[i] for every row r of W = W0 | W1 | W2 (uint8
    [rows, row_bytes] each, stacked by rows: attn_q | attn_k | attn_v in one call, W1 and
    W2 may have no rows) and t < T = len(x) (x float32 [T, n_in], n_in a multiple of 32).

    One row of x: four accumulators (the FMAs of one chain would wait on each other),
    units in groups of eight (a K-quant super-block: unrolled, its field offsets become
    constants), then the units left over. Several rows: four rows of x per pass over a
    row of W, each unit decoded once for the four (a last pass repeats the last row of
    x when T is not a multiple of 4; the duplicate results land where the real ones
    do). The two paths stay in one function: as separate numba functions called per
    row they ran 15-40% slower (calls LLVM did not inline).

    Threads take blocks of rows from a counter, and a block is done part by part, each
    part's rows in `_rows`. why: an array variable that takes W0, W1 or W2 row by row
    costs numba two calls to its reference counter per row, atomic on one shared word
    (see q8.matmul)."""
    literally(qtype)
    n0, n01 = len(W0), len(W0) + len(W1)
    n_out = n01 + len(W2)
    n_blocks = (n_out + ROWS - 1) // ROWS
    counter = np.zeros(1, np.int64)
    for _ in prange(n_workers):
        while True:
            b = fetch_add(counter, 0)
            if b >= n_blocks:
                break
            r0, r1 = b * ROWS, min(n_out, b * ROWS + ROWS)
            if r0 < n0:
                _rows(qtype, W0, r0, min(r1, n0), x, y, col)
            if r1 > n0 and r0 < n01:
                _rows(qtype, W1, max(r0, n0) - n0, min(r1, n01) - n0, x, y, col + n0)
            if r1 > n01:
                _rows(qtype, W2, max(r0, n01) - n01, r1 - n01, x, y, col + n01)


@njit(**_J)
def dequantize(qtype, W, ids, out, n_workers):
    """out[i] = row ids[i] of W as float32 (out float32 [len(ids), n_in], n_in a
    multiple of 32); bit-exact with ggml's dequantization."""
    literally(qtype)
    row_bytes = W.shape[1]
    n, n_units = len(ids), out.shape[1] // UNIT
    n_in = out.shape[1]
    n_blocks = (n + ROWS - 1) // ROWS
    counter = np.zeros(1, np.int64)
    for _ in prange(n_workers):
        while True:
            b = fetch_add(counter, 0)
            if b >= n_blocks:
                break
            for i in range(b * ROWS, min(n, b * ROWS + ROWS)):
                base = ids[i] * row_bytes
                for u in range(n_units):
                    w0, w1 = unit(qtype, W, base, u)
                    store(out, i * n_in + UNIT * u, w0)
                    store(out, i * n_in + UNIT * u + 16, w1)
