"""Products with 8-bit activations, as llama.cpp computes them: each row of x is rounded
to int8 in blocks of 32 as ggml's x86 quantize_row_q8_0 rounds it (`quantize`), and a
weight block's integer codes meet those bytes in integer dot products (VNNI's vpdpbusd:
64 multiply-adds per instruction), scaled to float once per unit of 32.

why: with float32 activations every weight is decoded to a float and multiplied in
float32 lanes, 16 per instruction: the one-row products ran at ~21 G multiply-adds/s per
core, bound by their instruction count, while the memory could feed more. Here a weight
byte is unpacked, never converted, and four products go through one lane. What bounds
them now is the memory: 4B decode, 2 threads, 22-28 GB/s of weights read in its large
products, where a plain read loop reads 26-30 GB/s (scripts/bench_kernels.py).

Two shapes of work, by type and number of rows of x (see `matmul`):
  pairs      a pair of units of one row of W (64 values: one zmm of bytes) per step:
             `pair(qtype, W, base, u)` gives
                 codes  b8x64, the 64 weights' codes as unsigned bytes
                        (value = scale * (code - K): K is folded into the integer sum,
                        dot4 starting from -K * the sum of the 4 activation codes),
                 scale  f32x16, the weight scale of the values each lane of `dot4` sums
                        (lanes 0-7: the first unit, 8-15: the second; Q2_K, Q3_K,
                        Q6_K: 4 per 16 values),
                 bias   f32x16, for the types with a minimum (value = scale * code +
                        bias): what multiplies the sum of the activation codes;
  four rows  one unit of four rows of W per step (`rows4`: the codes of values 0-15
             and 16-31 of each row, their scales), the same 32 activations against
             all four (Q4_0): fewer instructions per weight, one row of x or eight
             per pass (`_four_rows_x8`).
The pair decoders also feed gemm8.py, which packs 16 rows for prompts.

Activations of a row, from `quantize`: xq int8 [n_in], and per 4 values (one lane of
dot4) xs int32 (the sum of their 4 codes) and xd float32 (their block's scale).
"""
from __future__ import annotations

import numpy as np
from numba import literally, njit, prange, types
from numba.extending import overload

from ..quants import GGMLType
from .blocks import F32, _scale_min_k4
from .simd import bytes_i8, bytes_u8, fetch_add, fma, half, hsum, load, store, to_float, zeros
from .simd8 import (absmax, at, at_i32, bcast16, bits, blend16, blend32, chunks, dot4, halves, ints,
                    izeros, ones, prefetch, q3_scales, quads, round_even, sbytes, scales4, spaced, store_i8, store_i32, sums4,
                    via_half)

# Threads take blocks of rows from a counter: CHUNKS blocks per thread, of a multiple of
# ROWS rows. why large blocks: each thread then reads long runs of the matrix, which its
# prefetches (simd8.prefetch) keep ahead of; the counter still lets a thread the OS
# delayed leave its last blocks to the others.
ROWS = 16
CHUNKS = 4
PAIR = 64                 # values per pair of units: rows must hold whole pairs
_J = dict(nogil=True, cache=True)


@njit(**_J)
def block_rows(n_out, n_workers, unit):
    """Rows per block of the work-sharing counter: CHUNKS blocks per thread, a multiple of
    `unit` rows (at least one unit)."""
    return max(unit, (n_out // (CHUNKS * n_workers)) // unit * unit)


def type_constant(name, value_of):
    """A function of a ggml type that numba folds to a constant: value_of(GGMLType) for
    the literal type a kernel is compiled for (the kernels' per-type switches)."""
    def stub(qtype):
        raise NotImplementedError(f"{name}() runs inside numba kernels only")
    stub.__name__ = stub.__qualname__ = name

    @overload(stub, prefer_literal=True)
    def _constant(qtype):
        if isinstance(qtype, types.IntegerLiteral):
            value = value_of(GGMLType(qtype.literal_value))
            return lambda qtype: value
    return stub


# --- activations ------------------------------------------------------------------------

@njit(**_J)
def quantize(x, xq, xs, xd, xh, split):
    """x [T, n_in] (n_in a multiple of 64) as int8 codes in blocks of 32, rounded as
    ggml's x86 quantize_row_q8_0 rounds the activations before llama.cpp's products:
    a = max |x|, q = round-half-to-even(x * (127 / a)), the scale a / 127 rounded to a
    half (what its Q8_0 block stores). xq[t] = the codes, xs[t, k] = the sum of codes
    4k .. 4k+3, xd[t, k] = their block's scale, xh[t, h] = the sum of codes 16h .. 16h+15.
    Blocks are laid out in the order the products read them, in pairs: 2p, 2p + 1
    (split = 0), or within each 256 values j, j + 4 for j < 4 (split = 1: Q6_K, whose
    blocks j and j + 4 share bit positions).

    why llama.cpp's rounding: agreement with llama.cpp's predictions (270M as Q4_0,
    tests/test_fidelity_llamacpp.py) was 95.0% with float32 scales and halves rounded
    away from zero, 96.9% this way. Not its Q8_K (one scale per 256 values, against
    K-quants): coarser, and greedy continuations agreed with transformers less often
    (3 of 9 prompts, 5 of 9 this way)."""
    T, n = x.shape
    zero, m127 = F32(0), F32(127)
    for t in range(T):
        for p in range(n // PAIR):
            o = t * n + PAIR * p                       # where the pair goes
            if split:
                ia = t * n + 256 * (p // 4) + 32 * (p % 4)
                ib = ia + 128
            else:
                ia = o
                ib = o + 32
            v0, v1, v2, v3 = load(x, ia), load(x, ia + 16), load(x, ib), load(x, ib + 16)
            aa, ab = absmax(v0, v1), absmax(v2, v3)
            da, db = via_half(aa / m127), via_half(ab / m127)
            ra = m127 / aa if aa != zero else zero
            rb = m127 / ab if ab != zero else zero
            store_i8(xq, o, round_even(v0 * ra))
            store_i8(xq, o + 16, round_even(v1 * ra))
            store_i8(xq, o + 32, round_even(v2 * rb))
            store_i8(xq, o + 48, round_even(v3 * rb))
            store_i32(xs, o // 4, dot4(izeros(), ones(), sbytes(xq, o)))
            store(xd, o // 4, halves(da, db))
            for h in range(4):
                j = 16 * p + 4 * h
                xh[t, 4 * p + h] = xs[t, j] + xs[t, j + 1] + xs[t, j + 2] + xs[t, j + 3]


# --- pairs of units, per type -----------------------------------------------------------

@njit(**_J)
def _q4_0(W, base, u):
    # d (f16) | qs[16]; code = nibble, K = 8
    oa = base + 18 * u
    ob = oa + 18
    v = chunks(W, oa + 2, oa + 2, ob + 2, ob + 2)
    return blend16(v & 15, v >> 4), halves(half(W, oa), half(W, ob)), zeros()


@njit(**_J)
def _q5_0(W, base, u):
    # d (f16) | qh (u32) | qs[16]; code = nibble | bit j of qh << 4, K = 16
    oa = base + 22 * u
    ob = oa + 22
    v = chunks(W, oa + 6, oa + 6, ob + 6, ob + 6)
    return (blend16(v & 15, v >> 4) | (bits(W, oa + 2, ob + 2) << 4),
            halves(half(W, oa), half(W, ob)), zeros())


@njit(**_J)
def _q4_1(W, base, u):
    # d (f16) | m (f16) | qs[16]; value = d code + m
    oa = base + 20 * u
    ob = oa + 20
    v = chunks(W, oa + 4, oa + 4, ob + 4, ob + 4)
    return blend16(v & 15, v >> 4), halves(half(W, oa), half(W, ob)), halves(half(W, oa + 2), half(W, ob + 2))


@njit(**_J)
def _q5_1(W, base, u):
    # d (f16) | m (f16) | qh (u32) | qs[16]; code = nibble | bit j of qh << 4, value = d code + m
    oa = base + 24 * u
    ob = oa + 24
    v = chunks(W, oa + 8, oa + 8, ob + 8, ob + 8)
    return (blend16(v & 15, v >> 4) | (bits(W, oa + 4, ob + 4) << 4),
            halves(half(W, oa), half(W, ob)), halves(half(W, oa + 2), half(W, ob + 2)))


@njit(**_J)
def _q8_0(W, base, u):
    # d (f16) | int8 qs[32]; code = qs + 128 (an unsigned byte), K = 128
    oa = base + 34 * u
    ob = oa + 34
    v = chunks(W, oa + 2, oa + 18, ob + 2, ob + 18)
    return v ^ 128, halves(half(W, oa), half(W, ob)), zeros()


@njit(**_J)
def _q4_k(W, base, u):
    # super-block: d | dmin | scales[12] | qs[128]; groups g, g + 1 (g even) share
    # qs[32 (g//2) : +32], low and high nibbles. value = (d sc) code - dmin m
    o = base + 144 * (u >> 3)
    g = u & 7
    q = o + 16 + 16 * g
    v = chunks(W, q, q + 16, q, q + 16)
    d, dmin = half(W, o), half(W, o + 2)
    sa, ma = _scale_min_k4(W, o + 4, g)
    sb, mb = _scale_min_k4(W, o + 4, g + 1)
    return blend32(v & 15, v >> 4), halves(d * sa, d * sb), halves(-(dmin * ma), -(dmin * mb))


@njit(**_J)
def _q5_k(W, base, u):
    # d | dmin | scales[12] | qh[32] | qs[128]: as Q4_K, and 16 where bit g of qh[l] is set
    o = base + 176 * (u >> 3)
    g = u & 7
    q = o + 48 + 16 * g
    v = chunks(W, q, q + 16, q, q + 16)
    h = chunks(W, o + 16, o + 32, o + 16, o + 32) >> g
    d, dmin = half(W, o), half(W, o + 2)
    sa, ma = _scale_min_k4(W, o + 4, g)
    sb, mb = _scale_min_k4(W, o + 4, g + 1)
    return (blend32(v & 15, v >> 4) | (blend32(h & 1, (h >> 1) & 1) << 4),
            halves(d * sa, d * sb), halves(-(dmin * ma), -(dmin * mb)))


@njit(**_J)
def _q2_k(W, base, u):
    # scales[16] | qs[64] | d | dmin. Group g = 4h + j: 2-bit field j of qs[32h : +32],
    # 16-value halves with scales[2g], [2g + 1] (low nibble scale, high nibble min);
    # value = (d sc) code - dmin m. A pair: groups g, g + 1 (g even)
    o = base + 84 * (u >> 3)
    g = u & 7
    q = o + 16 + 32 * (g >> 2)
    c = chunks(W, q, q + 16, q, q + 16) >> (2 * (g & 3))
    sc = bytes_u8(W, o)                       # the super-block's 16 scale bytes
    scale = to_float(sc & 15) * half(W, o + 80)
    bias = to_float(sc >> 4) * -half(W, o + 82)
    return blend32(c & 3, (c >> 2) & 3), quads(scale, 2 * g, 2 * g + 2), quads(bias, 2 * g, 2 * g + 2)


@njit(**_J)
def _q3_k(W, base, u):
    # hmask[32] | qs[64] | scales[12] | d. Group g = 4h + j as Q2_K; code = 2-bit value
    # + 4 * bit g of hmask[l], K = 4; 16-value halves with six-bit scales 2g, 2g + 1
    o = base + 110 * (u >> 3)
    g = u & 7
    q = o + 32 + 32 * (g >> 2)
    c = chunks(W, q, q + 16, q, q + 16) >> (2 * (g & 3))
    m = chunks(W, o, o + 16, o, o + 16) >> g
    scales = to_float(q3_scales(W, o + 96)) * half(W, o + 108)
    return (blend32(c & 3, (c >> 2) & 3) | (blend32(m & 1, (m >> 1) & 1) << 2),
            quads(scales, 2 * g, 2 * g + 2), zeros())


@njit(**_J)
def _q6_k(W, base, u):
    # super-block: ql[128] | qh[64] | int8 scales[16] | d. Pair p = u // 2 of a super-
    # block is groups j = p % 4 and j + 4 (quantize(split=1) orders x so): group g takes
    # its low 4 bits from ql[64 (g // 4) + 32 (j & 1) : +32] >> 4 (j // 2), its high 2
    # from qh[32 (g // 4) : +32] >> 2j, scales 2j, 2j + 1 and 2j + 8, 2j + 9. K = 32
    o = base + 210 * (u >> 3)
    j = (u >> 1) & 3
    ql, qh = o + 32 * (j & 1), o + 128
    low = (chunks(W, ql, ql + 16, ql + 64, ql + 80) >> (4 * (j >> 1))) & 15
    high = (chunks(W, qh, qh + 16, qh + 32, qh + 48) >> (2 * j)) & 3
    scales = to_float(bytes_i8(W, o + 192)) * half(W, o + 208)
    return low | (high << 4), quads(scales, 2 * j, 2 * j + 8), zeros()


# --- four rows at once, one unit: (codes of values 0-15 of each row, codes of 16-31,
# their scales: lanes 4k .. 4k+3 row k) --------------------------------------------------

@njit(**_J)
def _q4_0_rows(W, b0, b1, b2, b3, u):
    o0, o1, o2, o3 = b0 + 18 * u, b1 + 18 * u, b2 + 18 * u, b3 + 18 * u
    v = chunks(W, o0 + 2, o1 + 2, o2 + 2, o3 + 2)
    s = scales4(W, o0, o1, o2, o3)
    return v & 15, v >> 4, s, s


# type: decoder of four rows, whether both halves of a unit share one scale, whether
# one row of x (decode) goes through it too. Only Q4_0: against one row of x, a pair of
# units per step read memory faster for Q8_0 and Q6_K (1B decode, 2 threads: 25.8 and
# 13.5 GB/s by pairs against 13.9 and 10.8 by four rows), Q4_0 the other way round (4B
# decode: 25 GB/s by four rows); and by pairs their results do not depend on how many
# rows of x come together (see `_rows`), which four rows against one or eight rows of x
# do not guarantee (different orders of summation).
ROWS4 = {GGMLType.Q4_0: (_q4_0_rows, True, True)}


def rows4(qtype, W, b0, b1, b2, b3, u):
    raise NotImplementedError("rows4() runs inside numba kernels only")


@overload(rows4, prefer_literal=True)
def _rows4(qtype, W, b0, b1, b2, b3, u):
    if isinstance(qtype, types.IntegerLiteral):
        # a type without a four-row decoder never runs that path (rows4_kind 0), but
        # numba types it: give it one that compiles
        decode = ROWS4.get(GGMLType(qtype.literal_value), (_q4_0_rows,))[0]
        return lambda qtype, W, b0, b1, b2, b3, u: decode(W, b0, b1, b2, b3, u)


# 0: no four-row decoder; 1: one scale per unit; 2: one per 16 values
rows4_kind = type_constant("rows4_kind", lambda t: 0 if t not in ROWS4 else 1 if ROWS4[t][1] else 2)
rows4_one = type_constant("rows4_one", lambda t: t in ROWS4 and ROWS4[t][2])


@njit(**_J)
def _unit4(qtype, W, b0, b1, b2, b3, u, xq, xk, xdu, a0, a1, odd):
    lo, hi, s_lo, s_hi = rows4(qtype, W, b0, b1, b2, b3, u)
    xa, xb = bcast16(xq, 32 * u), bcast16(xq, 32 * u + 16)
    dx = at(xdu, u)
    if rows4_kind(qtype) == 1:
        acc = to_float(dot4(dot4(spaced(at_i32(xk, u)), lo, xa), hi, xb))
        if odd:
            return a0, fma(acc, s_lo * dx, a1)
        return fma(acc, s_lo * dx, a0), a1
    return (fma(to_float(dot4(spaced(at_i32(xk, 2 * u)), lo, xa)), s_lo * dx, a0),
            fma(to_float(dot4(spaced(at_i32(xk, 2 * u + 1)), hi, xb)), s_hi * dx, a1))


@njit(**_J)
def starts(qtype, xh, xd, K, xk, xdu):
    """For one row of x: xk, what each row's dot4 sums start from (`spaced`): K times the
    sum of the activation codes, per unit of 32 when rows4_kind is 1, per 16 values
    when it is 2; and xdu[u], the scale of unit u."""
    T, n_units = xdu.shape
    for t in range(T):
        for u in range(n_units):
            xdu[t, u] = xd[t, 8 * u]
            if rows4_kind(qtype) == 1:
                xk[t, u] = K * (xh[t, 2 * u] + xh[t, 2 * u + 1])
            else:
                xk[t, 2 * u] = K * xh[t, 2 * u]
                xk[t, 2 * u + 1] = K * xh[t, 2 * u + 1]


@njit(**_J)
def _four_rows(qtype, W, b0, b1, b2, b3, n_units, xq, xk, xdu, ahead):
    """The four rows at bytes b0..b3 of W times one row of x, as four float32: x
    quantized (xq), with per unit its scale (xdu) and the sums that start each row's
    lanes (xk: K times the codes' sum, per unit or per 16 values, see `starts`).
    Meanwhile the 4 rows from byte `ahead` on are prefetched, a fraction per group of
    units as large as the group's (see simd8.prefetch)."""
    a0, a1 = zeros(), zeros()
    span = 4 * (b1 - b0)
    for u8 in range(0, n_units - 7, 8):
        for line in range(ahead + (span * u8) // n_units, ahead + (span * (u8 + 8)) // n_units, 64):
            prefetch(W, line)
        for v in range(8):            # a K-quant super-block: unrolled, offsets become constants
            a0, a1 = _unit4(qtype, W, b0, b1, b2, b3, u8 + v, xq, xk, xdu, a0, a1, v % 2)
    for u in range(n_units - n_units % 8, n_units):
        a0, a1 = _unit4(qtype, W, b0, b1, b2, b3, u, xq, xk, xdu, a0, a1, u % 2)
    return sums4(a0 + a1)


@njit(**_J)
def _unit_x(qtype, lo, hi, s_lo, s_hi, xq, xk, xdu, t, u, n_in, n_units, acc):
    """acc += one unit of four rows of W (decoded: lo, hi, s_lo, s_hi) times row t of x."""
    xa, xb = bcast16(xq, t * n_in + 32 * u), bcast16(xq, t * n_in + 32 * u + 16)
    dx = at(xdu, t * n_units + u)
    if rows4_kind(qtype) == 1:
        return fma(to_float(dot4(dot4(spaced(at_i32(xk, 2 * t * n_units + u)), lo, xa), hi, xb)), s_lo * dx, acc)
    acc = fma(to_float(dot4(spaced(at_i32(xk, 2 * (t * n_units + u))), lo, xa)), s_lo * dx, acc)
    return fma(to_float(dot4(spaced(at_i32(xk, 2 * (t * n_units + u) + 1)), hi, xb)), s_hi * dx, acc)


@njit(**_J)
def _four_rows_x8(qtype, W, b0, b1, b2, b3, n_units, xq, xk, xdu, t0, T, y, ycol):
    """y[t, ycol .. ycol + 3] for the four rows at bytes b0..b3 of W and rows t0 .. t0 + 7
    of x (clamped to T - 1: a repeated row lands where its real result does): each unit
    of W decoded once for the eight. Each row of x sums as `_four_rows` sums one row
    (even and odd units apart, then together), so its result does not depend on how
    many rows of x came with it."""
    n_in = 32 * n_units
    t1, t2, t3 = min(t0 + 1, T - 1), min(t0 + 2, T - 1), min(t0 + 3, T - 1)
    t4, t5, t6, t7 = min(t0 + 4, T - 1), min(t0 + 5, T - 1), min(t0 + 6, T - 1), min(t0 + 7, T - 1)
    a0, a1, a2, a3 = zeros(), zeros(), zeros(), zeros()
    a4, a5, a6, a7 = zeros(), zeros(), zeros(), zeros()
    e0, e1, e2, e3 = zeros(), zeros(), zeros(), zeros()
    e4, e5, e6, e7 = zeros(), zeros(), zeros(), zeros()
    for u in range(n_units):
        lo, hi, s_lo, s_hi = rows4(qtype, W, b0, b1, b2, b3, u)
        if u % 2 == 0:
            a0 = _unit_x(qtype, lo, hi, s_lo, s_hi, xq, xk, xdu, t0, u, n_in, n_units, a0)
            a1 = _unit_x(qtype, lo, hi, s_lo, s_hi, xq, xk, xdu, t1, u, n_in, n_units, a1)
            a2 = _unit_x(qtype, lo, hi, s_lo, s_hi, xq, xk, xdu, t2, u, n_in, n_units, a2)
            a3 = _unit_x(qtype, lo, hi, s_lo, s_hi, xq, xk, xdu, t3, u, n_in, n_units, a3)
            a4 = _unit_x(qtype, lo, hi, s_lo, s_hi, xq, xk, xdu, t4, u, n_in, n_units, a4)
            a5 = _unit_x(qtype, lo, hi, s_lo, s_hi, xq, xk, xdu, t5, u, n_in, n_units, a5)
            a6 = _unit_x(qtype, lo, hi, s_lo, s_hi, xq, xk, xdu, t6, u, n_in, n_units, a6)
            a7 = _unit_x(qtype, lo, hi, s_lo, s_hi, xq, xk, xdu, t7, u, n_in, n_units, a7)
        else:
            e0 = _unit_x(qtype, lo, hi, s_lo, s_hi, xq, xk, xdu, t0, u, n_in, n_units, e0)
            e1 = _unit_x(qtype, lo, hi, s_lo, s_hi, xq, xk, xdu, t1, u, n_in, n_units, e1)
            e2 = _unit_x(qtype, lo, hi, s_lo, s_hi, xq, xk, xdu, t2, u, n_in, n_units, e2)
            e3 = _unit_x(qtype, lo, hi, s_lo, s_hi, xq, xk, xdu, t3, u, n_in, n_units, e3)
            e4 = _unit_x(qtype, lo, hi, s_lo, s_hi, xq, xk, xdu, t4, u, n_in, n_units, e4)
            e5 = _unit_x(qtype, lo, hi, s_lo, s_hi, xq, xk, xdu, t5, u, n_in, n_units, e5)
            e6 = _unit_x(qtype, lo, hi, s_lo, s_hi, xq, xk, xdu, t6, u, n_in, n_units, e6)
            e7 = _unit_x(qtype, lo, hi, s_lo, s_hi, xq, xk, xdu, t7, u, n_in, n_units, e7)
    for t, a in ((t0, a0 + e0), (t1, a1 + e1), (t2, a2 + e2), (t3, a3 + e3),
                 (t4, a4 + e4), (t5, a5 + e5), (t6, a6 + e6), (t7, a7 + e7)):
        y0, y1, y2, y3 = sums4(a)
        y[t, ycol], y[t, ycol + 1], y[t, ycol + 2], y[t, ycol + 3] = y0, y1, y2, y3


@njit(**_J)
def _tail_x8(qtype, W, b0, b1, b2, b3, n_units, xq, xk, xdu, t0, T, y, ycol, n):
    """As _four_rows_x8 for the last n < 4 rows of a part (into a scratch, then the n)."""
    tmp = np.empty((T, 4), np.float32)
    _four_rows_x8(qtype, W, b0, b1, b2, b3, n_units, xq, xk, xdu, t0, T, tmp, 0)
    for t in range(t0, min(t0 + 8, T)):
        for k in range(n):
            y[t, ycol + k] = tmp[t, k]


# type: (pair decoder, offset K, has a minimum, split order of x)
PAIRS = {GGMLType.Q4_0: (_q4_0, 8, False, 0), GGMLType.Q4_1: (_q4_1, 0, True, 0),
         GGMLType.Q5_0: (_q5_0, 16, False, 0), GGMLType.Q5_1: (_q5_1, 0, True, 0),
         GGMLType.Q8_0: (_q8_0, 128, False, 0), GGMLType.Q2_K: (_q2_k, 0, True, 0),
         GGMLType.Q3_K: (_q3_k, 4, False, 0), GGMLType.Q4_K: (_q4_k, 0, True, 0),
         GGMLType.Q5_K: (_q5_k, 0, True, 0), GGMLType.Q6_K: (_q6_k, 32, False, 1)}
TYPES = frozenset(PAIRS)


def pair(qtype, W, base, u):
    raise NotImplementedError("pair() runs inside numba kernels only")


@overload(pair, prefer_literal=True)
def _pair(qtype, W, base, u):
    if isinstance(qtype, types.IntegerLiteral):
        decode = PAIRS[GGMLType(qtype.literal_value)][0]
        return lambda qtype, W, base, u: decode(W, base, u)


offset = type_constant("offset", lambda t: PAIRS[t][1])
has_min = type_constant("has_min", lambda t: PAIRS[t][2])
split = type_constant("split", lambda t: PAIRS[t][3])


# --- the product ------------------------------------------------------------------------

@njit(**_J)
def _rows(qtype, W, lo, hi, xq, xs, xd, xk, xdu, y, ycol, K, by_rows):
    """y[t, ycol + r] for rows lo <= r < hi of W (one part: why a function of its own,
    see `matmul`)."""
    row_bytes = W.shape[1]
    T, n_in = xq.shape
    n_units, n4, n_pairs = n_in // 32, n_in // 4, n_in // PAIR
    group = (4 * row_bytes) // n_pairs                # bytes of 4 pairs
    if by_rows and T == 1:                             # one row of x: four rows of W at once
        xq1, xk1, xdu1 = xq[0], xk[0], xdu[0]
        r = lo
        while r + 4 <= hi:
            b = r * row_bytes
            y0, y1, y2, y3 = _four_rows(qtype, W, b, b + row_bytes, b + 2 * row_bytes, b + 3 * row_bytes,
                                        n_units, xq1, xk1, xdu1, b + 4 * row_bytes)
            y[0, ycol + r], y[0, ycol + r + 1], y[0, ycol + r + 2], y[0, ycol + r + 3] = y0, y1, y2, y3
            r += 4
        while r < hi:                                  # a row left over: four times over
            b = r * row_bytes
            y[0, ycol + r] = _four_rows(qtype, W, b, b, b, b, n_units, xq1, xk1, xdu1, b)[0]
            r += 1
        return
    if by_rows:                                        # several rows of x: four of W by eight of x
        for r in range(lo, hi, 4):
            # rows past hi repeat row hi - 1 (their results land where its own do)
            b0 = r * row_bytes
            b1, b2, b3 = min(r + 1, hi - 1) * row_bytes, min(r + 2, hi - 1) * row_bytes, min(r + 3, hi - 1) * row_bytes
            for t0 in range(0, T, 8):
                if r + 4 <= hi:
                    _four_rows_x8(qtype, W, b0, b1, b2, b3, n_units, xq, xk, xdu, t0, T, y, ycol + r)
                else:
                    _tail_x8(qtype, W, b0, b1, b2, b3, n_units, xq, xk, xdu, t0, T, y, ycol + r, hi - r)
        return
    for r in range(lo, hi):
        base = r * row_bytes
        if T == 1:
            # groups of four pairs (256 values: a K-quant super-block, unrolled), the next
            # row's as many bytes prefetched meanwhile (see simd8.prefetch), then the rest.
            # One accumulator, pairs in order, as for several rows of x (below): a row's
            # result does not depend on how many rows of x came with it. why: the 8-bit
            # rounding turns a last-bit difference upstream into a whole code step, and the
            # greedy text of a drafted round or a batch could differ from one decoded alone
            a0 = zeros()
            for p4 in range(0, n_pairs - 3, 4):
                for line in range(base + row_bytes + p4 * group, base + row_bytes + (p4 + 4) * group, 64):
                    prefetch(W, line)
                for p in range(p4, p4 + 4):
                    w, sc, bias = pair(qtype, W, base, 2 * p)
                    s = ints(xs, 16 * p)
                    a0 = fma(to_float(dot4(s * K, w, sbytes(xq, PAIR * p))), sc * load(xd, 16 * p), a0)
                    if has_min(qtype):
                        a0 = fma(to_float(s), bias * load(xd, 16 * p), a0)
            for p in range(n_pairs - n_pairs % 4, n_pairs):
                w, sc, bias = pair(qtype, W, base, 2 * p)
                s = ints(xs, 16 * p)
                a0 = fma(to_float(dot4(s * K, w, sbytes(xq, PAIR * p))), sc * load(xd, 16 * p), a0)
                if has_min(qtype):
                    a0 = fma(to_float(s), bias * load(xd, 16 * p), a0)
            y[0, ycol + r] = hsum(a0)
            continue
        for t0 in range(0, T, 4):
            t1, t2, t3 = min(t0 + 1, T - 1), min(t0 + 2, T - 1), min(t0 + 3, T - 1)
            a0, a1, a2, a3 = zeros(), zeros(), zeros(), zeros()
            for p in range(n_pairs):
                w, sc, bias = pair(qtype, W, base, 2 * p)
                j, o = 16 * p, PAIR * p
                s0, s1 = ints(xs, t0 * n4 + j), ints(xs, t1 * n4 + j)
                s2, s3 = ints(xs, t2 * n4 + j), ints(xs, t3 * n4 + j)
                e0, e1 = load(xd, t0 * n4 + j), load(xd, t1 * n4 + j)
                e2, e3 = load(xd, t2 * n4 + j), load(xd, t3 * n4 + j)
                a0 = fma(to_float(dot4(s0 * K, w, sbytes(xq, t0 * n_in + o))), sc * e0, a0)
                a1 = fma(to_float(dot4(s1 * K, w, sbytes(xq, t1 * n_in + o))), sc * e1, a1)
                a2 = fma(to_float(dot4(s2 * K, w, sbytes(xq, t2 * n_in + o))), sc * e2, a2)
                a3 = fma(to_float(dot4(s3 * K, w, sbytes(xq, t3 * n_in + o))), sc * e3, a3)
                if has_min(qtype):
                    a0 = fma(to_float(s0), bias * e0, a0)
                    a1 = fma(to_float(s1), bias * e1, a1)
                    a2 = fma(to_float(s2), bias * e2, a2)
                    a3 = fma(to_float(s3), bias * e3, a3)
            y[t0, ycol + r] = hsum(a0)
            y[t1, ycol + r] = hsum(a1)
            y[t2, ycol + r] = hsum(a2)
            y[t3, ycol + r] = hsum(a3)


@njit(nogil=True, cache=True, parallel=True)
def matmul(qtype, W0, W1, W2, x, y, col, n_workers):
    """y[t, col + r] = sum_i x[t, i] * W_r[i] with x [T, n_in] quantized to 8 bits
    (quantize), for every row r of W0 | W1 | W2 (as products.matmul) and t < T.

    Where the type has a four-row decoder (ROWS4: Q4_0), four rows of W at once, against
    one row of x (_four_rows) or eight per pass (_four_rows_x8); else a pair of units per
    step, one row of x at a time or four per pass over a row of W, each pair decoded once
    for the four (the last pass repeats the last row when T % 4 != 0). Either way a row
    of x sums in the same order whatever the number of rows with it.

    Threads take blocks of rows from a counter, and a block is done part by part, each
    part's rows in a function of its own. why: an array variable that takes W0, W1 or W2
    row by row costs numba two calls to its reference counter per row, atomic on one
    shared word: the two threads' decode ran at half the speed the memory allows."""
    literally(qtype)
    n0, n01 = len(W0), len(W0) + len(W1)
    n_out = n01 + len(W2)
    T, n_in = x.shape
    xq = np.empty((T, n_in), np.int8)
    xs = np.empty((T, n_in // 4), np.int32)
    xd = np.empty((T, n_in // 4), np.float32)
    xh = np.empty((T, n_in // 16), np.int32)
    # four rows of W at once where the type has a decoder for that (Q4_0): against one
    # row of x, and against eight per pass (fewer repeat the last), each row of x summed
    # as a lone one is: a row's result does not depend on how many rows came with it
    by_rows = rows4_kind(qtype) != 0 and (T >= 2 or rows4_one(qtype))
    quantize(x, xq, xs, xd, xh, 0 if by_rows else split(qtype))
    K = -offset(qtype)
    xk = np.empty((T, 2 * (n_in // 32)) if by_rows else (0, 0), np.int32)
    xdu = np.empty((T, n_in // 32) if by_rows else (0, 0), np.float32)
    if by_rows:
        starts(qtype, xh, xd, K, xk, xdu)
    rows = block_rows(n_out, n_workers, ROWS)
    n_blocks = (n_out + rows - 1) // rows
    counter = np.zeros(1, np.int64)
    for _ in prange(n_workers):
        while True:
            b = fetch_add(counter, 0)
            if b >= n_blocks:
                break
            r0, r1 = b * rows, min(n_out, b * rows + rows)
            if r0 < n0:
                _rows(qtype, W0, r0, min(r1, n0), xq, xs, xd, xk, xdu, y, col, K, by_rows)
            if r1 > n0 and r0 < n01:
                _rows(qtype, W1, max(r0, n0) - n0, min(r1, n01) - n0, xq, xs, xd, xk, xdu, y, col + n0, K, by_rows)
            if r1 > n01:
                _rows(qtype, W2, max(r0, n01) - n01, r1 - n01, xq, xs, xd, xk, xdu, y, col + n01, K, by_rows)
