"""Products with many rows of x (a prompt) and 8-bit activations: weights repacked, 16
rows at a time, so that one vpdpbusd multiplies 16 rows of W by the same 4 activations.

why: in q8.py's shapes a lane of vpdpbusd sums 4 values of one row, so its 16 lanes
cover 64 values of one row and every 32 values need their own float scale: a float
conversion, a multiply and an add per 64 multiply-adds. Here lane r holds row r's
codes, and a lane sums a whole unit of 32 values in integers (8 vpdpbusd) before its
one conversion: a quarter of the instructions per multiply-add. The weights' bytes are
read in GGUF's layout (a row's units one after another), so 16 rows are decoded, by
the pair decoders of q8.py, and transposed (lane r of vector j = codes 4j .. 4j+3 of
row r) into a scratch that stays in cache while every row of x goes by. llama.cpp
repacks its Q4_0 weights so at load (a second copy in memory); here the packing is redone
for every product, a small cost against T rows of x: 16 x 64 values take ~250
instructions to pack and T x 16 vpdpbusd to multiply.

Packed group of 16 rows (`pack`), per unit u of 32 values (units in their natural order):
    P[512 u + 64 j : +64]   codes 4j .. 4j+3 of rows 0..15 (unsigned: value = scale *
                            (code - K) [- min])
    S[32 u + 16 h : +16]    the rows' scales of values 16h .. 16h+15 of the unit
    M[32 u + 16 h : +16]    the rows' minimum terms (types with a minimum), as S
A unit's sum per row: dot4 over j from -K * (sum of x's codes), times scale * x's scale,
plus the minimum term times x's scale times the sum of its codes.
"""
from __future__ import annotations

import numpy as np
from numba import literally, njit, prange

from ..quants import GGMLType

from .simd import fetch_add, fma, load, splat, store, to_float, zeros
from .simd8 import at, at_i32, bcast4, dot4, izeros, store_bytes, transpose16, ubytes
from .q8 import block_rows, has_min, offset, pair, quantize, split, type_constant

GROUP = 16                  # rows of W per packed group (one per lane)
TILE = 8                    # rows of x per pass over a packed group
_J = dict(nogil=True, cache=True)


# types whose units have one scale per 16 values
HALVES = frozenset({GGMLType.Q2_K, GGMLType.Q3_K, GGMLType.Q6_K})


halves = type_constant("halves", lambda t: t in HALVES)


@njit(**_J)
def pack(qtype, W, r, hi, P, S, M):
    """Rows r .. r + 15 of W (rows past hi - 1 repeat it) into P, S, M (see above)."""
    row_bytes = W.shape[1]
    n_pairs = P.shape[0] // 1024
    last = hi - 1
    b0, b1, b2, b3 = r * row_bytes, min(r + 1, last) * row_bytes, min(r + 2, last) * row_bytes, min(r + 3, last) * row_bytes
    b4, b5, b6, b7 = (min(r + 4, last) * row_bytes, min(r + 5, last) * row_bytes,
                      min(r + 6, last) * row_bytes, min(r + 7, last) * row_bytes)
    b8, b9, b10, b11 = (min(r + 8, last) * row_bytes, min(r + 9, last) * row_bytes,
                        min(r + 10, last) * row_bytes, min(r + 11, last) * row_bytes)
    b12, b13, b14, b15 = (min(r + 12, last) * row_bytes, min(r + 13, last) * row_bytes,
                          min(r + 14, last) * row_bytes, min(r + 15, last) * row_bytes)
    for p in range(n_pairs):
        if split(qtype):                    # Q6_K: a pair is units j and j + 4 of a super-block
            ua = 8 * (p // 4) + p % 4
            ub = ua + 4
        else:
            ua = 2 * p
            ub = ua + 1
        u = 2 * p
        c0, s0, m0 = pair(qtype, W, b0, u)
        c1, s1, m1 = pair(qtype, W, b1, u)
        c2, s2, m2 = pair(qtype, W, b2, u)
        c3, s3, m3 = pair(qtype, W, b3, u)
        c4, s4, m4 = pair(qtype, W, b4, u)
        c5, s5, m5 = pair(qtype, W, b5, u)
        c6, s6, m6 = pair(qtype, W, b6, u)
        c7, s7, m7 = pair(qtype, W, b7, u)
        c8, s8, m8 = pair(qtype, W, b8, u)
        c9, s9, m9 = pair(qtype, W, b9, u)
        c10, s10, m10 = pair(qtype, W, b10, u)
        c11, s11, m11 = pair(qtype, W, b11, u)
        c12, s12, m12 = pair(qtype, W, b12, u)
        c13, s13, m13 = pair(qtype, W, b13, u)
        c14, s14, m14 = pair(qtype, W, b14, u)
        c15, s15, m15 = pair(qtype, W, b15, u)
        c = transpose16((c0, c1, c2, c3, c4, c5, c6, c7, c8, c9, c10, c11, c12, c13, c14, c15))
        for j in range(8):
            store_bytes(P, 512 * ua + 64 * j, c[j])
            store_bytes(P, 512 * ub + 64 * j, c[j + 8])
        s = transpose16((s0, s1, s2, s3, s4, s5, s6, s7, s8, s9, s10, s11, s12, s13, s14, s15))
        store(S, 32 * ua, s[0])
        store(S, 32 * ua + 16, s[4])
        store(S, 32 * ub, s[8])
        store(S, 32 * ub + 16, s[12])
        if has_min(qtype):
            m = transpose16((m0, m1, m2, m3, m4, m5, m6, m7, m8, m9, m10, m11, m12, m13, m14, m15))
            store(M, 32 * ua, m[0])
            store(M, 32 * ua + 16, m[4])
            store(M, 32 * ub, m[8])
            store(M, 32 * ub + 16, m[12])


@njit(**_J)
def _unit(qtype, w0, w1, w2, w3, w4, w5, w6, w7, sa, sb, ma, mb, xq, xk, xd, xm, t, u, n_in, nu, f):
    """f += unit u of the packed group times row t of x."""
    o = t * n_in + 32 * u
    i = t * nu + u
    dx = at(xd, i)
    if halves(qtype):
        a = izeros() + at_i32(xk, 2 * i)
        a = dot4(dot4(dot4(dot4(a, w0, bcast4(xq, o)), w1, bcast4(xq, o + 4)), w2, bcast4(xq, o + 8)), w3, bcast4(xq, o + 12))
        b = izeros() + at_i32(xk, 2 * i + 1)
        b = dot4(dot4(dot4(dot4(b, w4, bcast4(xq, o + 16)), w5, bcast4(xq, o + 20)), w6, bcast4(xq, o + 24)), w7, bcast4(xq, o + 28))
        f = fma(to_float(a), sa * dx, f)
        f = fma(to_float(b), sb * dx, f)
    else:
        a = izeros() + at_i32(xk, 2 * i)
        a = dot4(dot4(dot4(dot4(a, w0, bcast4(xq, o)), w1, bcast4(xq, o + 4)), w2, bcast4(xq, o + 8)), w3, bcast4(xq, o + 12))
        a = dot4(dot4(dot4(dot4(a, w4, bcast4(xq, o + 16)), w5, bcast4(xq, o + 20)), w6, bcast4(xq, o + 24)), w7, bcast4(xq, o + 28))
        f = fma(to_float(a), sa * dx, f)
    if has_min(qtype):
        f = fma(ma, splat(at(xm, 2 * i)), f)
        if halves(qtype):
            f = fma(mb, splat(at(xm, 2 * i + 1)), f)
    return f


@njit(**_J)
def _tile(qtype, P, S, M, xq, xk, xd, xm, t0, T, y, ycol, n, tmp):
    """y[t, ycol .. ycol + n] for rows t0 .. t0 + 7 of x (clamped to T - 1) and the
    packed group (its first n rows)."""
    nu = P.shape[0] // 512
    n_in = 32 * nu
    t1, t2, t3 = min(t0 + 1, T - 1), min(t0 + 2, T - 1), min(t0 + 3, T - 1)
    t4, t5, t6, t7 = min(t0 + 4, T - 1), min(t0 + 5, T - 1), min(t0 + 6, T - 1), min(t0 + 7, T - 1)
    f0, f1, f2, f3 = zeros(), zeros(), zeros(), zeros()
    f4, f5, f6, f7 = zeros(), zeros(), zeros(), zeros()
    for u in range(nu):
        q = 512 * u
        w0, w1, w2, w3 = ubytes(P, q), ubytes(P, q + 64), ubytes(P, q + 128), ubytes(P, q + 192)
        w4, w5, w6, w7 = ubytes(P, q + 256), ubytes(P, q + 320), ubytes(P, q + 384), ubytes(P, q + 448)
        sa, sb = load(S, 32 * u), load(S, 32 * u + 16)
        ma = load(M, 32 * u) if has_min(qtype) else sa
        mb = load(M, 32 * u + 16) if has_min(qtype) else sa
        f0 = _unit(qtype, w0, w1, w2, w3, w4, w5, w6, w7, sa, sb, ma, mb, xq, xk, xd, xm, t0, u, n_in, nu, f0)
        f1 = _unit(qtype, w0, w1, w2, w3, w4, w5, w6, w7, sa, sb, ma, mb, xq, xk, xd, xm, t1, u, n_in, nu, f1)
        f2 = _unit(qtype, w0, w1, w2, w3, w4, w5, w6, w7, sa, sb, ma, mb, xq, xk, xd, xm, t2, u, n_in, nu, f2)
        f3 = _unit(qtype, w0, w1, w2, w3, w4, w5, w6, w7, sa, sb, ma, mb, xq, xk, xd, xm, t3, u, n_in, nu, f3)
        f4 = _unit(qtype, w0, w1, w2, w3, w4, w5, w6, w7, sa, sb, ma, mb, xq, xk, xd, xm, t4, u, n_in, nu, f4)
        f5 = _unit(qtype, w0, w1, w2, w3, w4, w5, w6, w7, sa, sb, ma, mb, xq, xk, xd, xm, t5, u, n_in, nu, f5)
        f6 = _unit(qtype, w0, w1, w2, w3, w4, w5, w6, w7, sa, sb, ma, mb, xq, xk, xd, xm, t6, u, n_in, nu, f6)
        f7 = _unit(qtype, w0, w1, w2, w3, w4, w5, w6, w7, sa, sb, ma, mb, xq, xk, xd, xm, t7, u, n_in, nu, f7)
    n_out = y.shape[1]
    if n == GROUP:
        store(y, t0 * n_out + ycol, f0)
        store(y, t1 * n_out + ycol, f1)
        store(y, t2 * n_out + ycol, f2)
        store(y, t3 * n_out + ycol, f3)
        store(y, t4 * n_out + ycol, f4)
        store(y, t5 * n_out + ycol, f5)
        store(y, t6 * n_out + ycol, f6)
        store(y, t7 * n_out + ycol, f7)
        return
    for k, f in enumerate((f0, f1, f2, f3, f4, f5, f6, f7)):
        store(tmp, 16 * k, f)
    for k in range(min(TILE, T - t0)):
        for r in range(n):
            y[t0 + k, ycol + r] = tmp[16 * k + r]


@njit(**_J)
def _rows(qtype, W, lo, hi, xq, xk, xd, xm, y, ycol):
    """y[t, ycol + r] for rows lo <= r < hi of W (one part) and every row t of x."""
    T, n_in = xq.shape
    nu = n_in // 32
    P = np.empty(512 * nu, np.uint8)
    S = np.empty(32 * nu, np.float32)
    M = np.empty(32 * nu if has_min(qtype) else 16, np.float32)
    tmp = np.empty(16 * TILE, np.float32)
    for r in range(lo, hi, GROUP):
        pack(qtype, W, r, hi, P, S, M)
        n = min(GROUP, hi - r)
        for t0 in range(0, T, TILE):
            _tile(qtype, P, S, M, xq, xk, xd, xm, t0, T, y, ycol + r, n, tmp)


@njit(**_J)
def prepare(qtype, x, xq, xk, xd, xm):
    """x [T, n_in] quantized (q8.quantize, units in their natural order) into xq, and per
    row t and unit u: xk[t, 2u + h], what a lane's sum starts from (-K times the sum of
    the codes of half h, or of the whole unit in xk[t, 2u] when a unit has one scale),
    xd[t, u] the unit's scale, xm[t, 2u + h] the scale times the sum of the codes of
    half h (of the whole unit in xm[t, 2u] when a unit has one minimum)."""
    T, n_in = x.shape
    nu = n_in // 32
    xs = np.empty((T, n_in // 4), np.int32)
    xd4 = np.empty((T, n_in // 4), np.float32)
    xh = np.empty((T, n_in // 16), np.int32)
    quantize(x, xq, xs, xd4, xh, 0)
    K = offset(qtype)
    for t in range(T):
        for u in range(nu):
            i = t * nu + u
            h0, h1 = xh[t, 2 * u], xh[t, 2 * u + 1]
            if halves(qtype):
                xk[2 * i], xk[2 * i + 1] = -K * h0, -K * h1
            else:
                xk[2 * i], xk[2 * i + 1] = -K * (h0 + h1), 0
            d = xd4[t, 8 * u]
            xd[i] = d
            if halves(qtype):
                xm[2 * i], xm[2 * i + 1] = d * np.float32(h0), d * np.float32(h1)
            else:
                xm[2 * i], xm[2 * i + 1] = d * np.float32(h0 + h1), np.float32(0)


@njit(nogil=True, cache=True, parallel=True)
def matmul(qtype, W0, W1, W2, x, y, col, n_workers):
    """y[t, col + r] = sum_i x[t, i] * W_r[i] for every row r of W0 | W1 | W2 (one type,
    stacked by rows, as q8.matmul) and t < T, x quantized to 8 bits. Threads take blocks
    of whole groups from a counter; each packs its groups into its own scratch."""
    literally(qtype)
    n0, n01 = len(W0), len(W0) + len(W1)
    n_out = n01 + len(W2)
    T, n_in = x.shape
    nu = n_in // 32
    xq = np.empty((T, n_in), np.int8)
    xk = np.empty(2 * T * nu, np.int32)
    xd = np.empty(T * nu, np.float32)
    xm = np.empty(2 * T * nu, np.float32)
    prepare(qtype, x, xq, xk, xd, xm)
    rows = block_rows(n_out, n_workers, GROUP)
    n_blocks = (n_out + rows - 1) // rows
    counter = np.zeros(1, np.int64)
    for _ in prange(n_workers):
        while True:
            b = fetch_add(counter, 0)
            if b >= n_blocks:
                break
            r0, r1 = b * rows, min(n_out, b * rows + rows)
            if r0 < n0:
                _rows(qtype, W0, r0, min(r1, n0), xq, xk, xd, xm, y, col)
            if r1 > n0 and r0 < n01:
                _rows(qtype, W1, max(r0, n0) - n0, min(r1, n01) - n0, xq, xk, xd, xm, y, col + n0)
            if r1 > n01:
                _rows(qtype, W2, max(r0, n01) - n01, r1 - n01, xq, xk, xd, xm, y, col + n01)
