"""Decoders of GGUF blocks into 16-lane float vectors, one per ggml type
(the block layouts of ggml-common.h).

Every decoder reads one *unit*: the 32 consecutive weights u*32 .. u*32+31 of a row that
starts at byte `base` of the uint8 array W, and returns them as two f32x16 vectors (the
first and the last 16). The values are bit-exact with ggml's `dequantize_row_*` (and
gguf-py): the same float32 operations in the same order, no fused multiply-adds.

Units of 32 fit every type: the 32-value blocks are one unit each, the 256-value
K-quant super-blocks eight (their scales come in groups of 16 or 32).
"""
from __future__ import annotations

import numpy as np
from numba import njit, types
from numba.extending import overload

from ..quants import GGMLType, QUANT_SIZES
from .simd import (bits_to_float, byte, bytes_i8, bytes_u8, floats, half, halfs, lane, lane_bits, splat,
                   to_float, word32, words_u16)

F32 = np.float32
UNIT = 32
_J = dict(nogil=True, cache=True)


@njit(**_J)
def _int(W, o):
    # a byte as a signed machine int, so that bit twiddling never mixes signedness
    return np.int64(byte(W, o))


# --- plain floats -----------------------------------------------------------------------

@njit(**_J)
def _f32(W, base, u):
    # 4 bytes per value
    o = base + 128 * u
    return floats(W, o), floats(W, o + 64)


@njit(**_J)
def _f16(W, base, u):
    # 2 bytes per value, IEEE half
    o = base + 64 * u
    return halfs(W, o), halfs(W, o + 32)


@njit(**_J)
def _bf16(W, base, u):
    # 2 bytes per value: the top half of a float32
    o = base + 64 * u
    return bits_to_float(words_u16(W, o) << 16), bits_to_float(words_u16(W, o + 32) << 16)


# --- 32-value blocks ------------------------------------------------------------------
#
#   qs[j] = hhhh llll : value j is llll, value j + 16 is hhhh

@njit(**_J)
def _q4_0(W, base, u):
    # d (f16) | qs[16]:  y = (code - 8) * d
    o = base + 18 * u
    d = splat(half(W, o))
    q = bytes_u8(W, o + 2)
    return to_float((q & 15) - 8) * d, to_float((q >> 4) - 8) * d


@njit(**_J)
def _q4_1(W, base, u):
    # d (f16) | m (f16) | qs[16]:  y = code * d + m
    o = base + 20 * u
    d, m = splat(half(W, o)), splat(half(W, o + 2))
    q = bytes_u8(W, o + 4)
    return to_float(q & 15) * d + m, to_float(q >> 4) * d + m


@njit(**_J)
def _q5_0(W, base, u):
    # d (f16) | qh (u32) | qs[16]:  code = nibble | bit j of qh << 4;  y = (code - 16) * d
    o = base + 22 * u
    d = splat(half(W, o))
    qh = word32(W, o + 2)
    q = bytes_u8(W, o + 6)
    lo = (q & 15) + lane_bits(qh, 0, 16)
    hi = (q >> 4) + lane_bits(qh, 16, 16)
    return to_float(lo - 16) * d, to_float(hi - 16) * d


@njit(**_J)
def _q5_1(W, base, u):
    # d (f16) | m (f16) | qh (u32) | qs[16]:  y = code * d + m
    o = base + 24 * u
    d, m = splat(half(W, o)), splat(half(W, o + 2))
    qh = word32(W, o + 4)
    q = bytes_u8(W, o + 8)
    lo = (q & 15) + lane_bits(qh, 0, 16)
    hi = (q >> 4) + lane_bits(qh, 16, 16)
    return to_float(lo) * d + m, to_float(hi) * d + m


@njit(**_J)
def _q8_0(W, base, u):
    # d (f16) | int8 qs[32]:  y = qs * d
    o = base + 34 * u
    d = splat(half(W, o))
    return to_float(bytes_i8(W, o + 2)) * d, to_float(bytes_i8(W, o + 18)) * d


# --- 256-value K-quant super-blocks: unit u is group g = u % 8 of super-block u // 8 ------

@njit(**_J)
def _q2_k(W, base, u):
    # scales[16] | qs[64] | d (f16) | dmin (f16)
    # group g: half h = g // 4 (qs[32h:32h+32]), 2-bit field j = g % 4 of each byte;
    # its two 16-value halves use scales[8h + 2j] and [8h + 2j + 1]: low nibble scale,
    # high nibble min.  y = (d * scale) * code - (dmin * min)
    o = base + 84 * (u >> 3)
    g = u & 7
    h, j = g >> 2, g & 3
    d, dmin = half(W, o + 80), half(W, o + 82)
    s0, s1 = _int(W, o + 8 * h + 2 * j), _int(W, o + 8 * h + 2 * j + 1)
    q0 = (bytes_u8(W, o + 16 + 32 * h) >> (2 * j)) & 3
    q1 = (bytes_u8(W, o + 32 + 32 * h) >> (2 * j)) & 3
    return (to_float(q0) * splat(d * F32(s0 & 15)) - splat(dmin * F32(s0 >> 4)),
            to_float(q1) * splat(d * F32(s1 & 15)) - splat(dmin * F32(s1 >> 4)))


@njit(**_J)
def _q3_scale(W, o, i):
    # 16 six-bit scales, offset 32, in scales[12] at o:
    #   b[0..7]:  low nibbles of scales 0..7 | low nibbles of scales 8..15 (high half)
    #   b[8..11]: 2-bit high parts: scale i takes bits 2*(i//4) of b[8 + i%4]
    low = (_int(W, o + i) & 15) if i < 8 else (_int(W, o + i - 8) >> 4)
    high = (_int(W, o + 8 + (i & 3)) >> (2 * (i >> 2))) & 3
    return F32((low | (high << 4)) - 32)


@njit(**_J)
def _q3_k(W, base, u):
    # hmask[32] | qs[64] | scales[12] | d (f16);  indexing as Q2_K, and
    # code = 2-bit value + 4 * (bit (4h + j) of hmask[l]) - 4;  y = (d * scale) * code
    o = base + 110 * (u >> 3)
    g = u & 7
    h, j = g >> 2, g & 3
    d = half(W, o + 108)
    q0 = ((bytes_u8(W, o + 32 + 32 * h) >> (2 * j)) & 3) + (((bytes_u8(W, o) >> g) & 1) << 2)
    q1 = ((bytes_u8(W, o + 48 + 32 * h) >> (2 * j)) & 3) + (((bytes_u8(W, o + 16) >> g) & 1) << 2)
    d0, d1 = d * _q3_scale(W, o + 96, 8 * h + 2 * j), d * _q3_scale(W, o + 96, 8 * h + 2 * j + 1)
    return to_float(q0 - 4) * splat(d0), to_float(q1 - 4) * splat(d1)


@njit(**_J)
def _scale_min_k4(W, o, g):
    # The 6-bit scale and min of group g of Q4_K/Q5_K, from scales[12] at o:
    #   s[0..3]  EEAAAAAA   sc 0..3 = A,   top bits of sc 4..7 = E
    #   s[4..7]  eeaaaaaa   m 0..3 = a,    top bits of m 4..7 = e
    #   s[8..11] eeeeEEEE   low 4 bits of sc 4..7 = EEEE, of m 4..7 = eeee
    if g < 4:
        return F32(_int(W, o + g) & 63), F32(_int(W, o + g + 4) & 63)
    sc = (_int(W, o + g + 4) & 15) | ((_int(W, o + g - 4) >> 6) << 4)
    m = (_int(W, o + g + 4) >> 4) | ((_int(W, o + g) >> 6) << 4)
    return F32(sc), F32(m)


@njit(**_J)
def _q4_k(W, base, u):
    # d (f16) | dmin (f16) | scales[12] | qs[128]
    # group g: the low (g even) or high (g odd) nibbles of qs[32 (g//2) : +32]
    # y = (d * sc) * code - (dmin * m)
    o = base + 144 * (u >> 3)
    g = u & 7
    sc, m = _scale_min_k4(W, o + 4, g)
    scale, bias = splat(half(W, o) * sc), splat(half(W, o + 2) * m)
    shift = 4 * (g & 1)
    q = o + 16 + 32 * (g >> 1)
    return (to_float((bytes_u8(W, q) >> shift) & 15) * scale - bias,
            to_float((bytes_u8(W, q + 16) >> shift) & 15) * scale - bias)


@njit(**_J)
def _q5_k(W, base, u):
    # d (f16) | dmin (f16) | scales[12] | qh[32] | qs[128]
    # as Q4_K, plus 16 where bit g of qh[l] is set
    o = base + 176 * (u >> 3)
    g = u & 7
    sc, m = _scale_min_k4(W, o + 4, g)
    scale, bias = splat(half(W, o) * sc), splat(half(W, o + 2) * m)
    shift = 4 * (g & 1)
    q = o + 48 + 32 * (g >> 1)
    lo = ((bytes_u8(W, q) >> shift) & 15) | (((bytes_u8(W, o + 16) >> g) & 1) << 4)
    hi = ((bytes_u8(W, q + 16) >> shift) & 15) | (((bytes_u8(W, o + 32) >> g) & 1) << 4)
    return to_float(lo) * scale - bias, to_float(hi) * scale - bias


@njit(**_J)
def _q6_k(W, base, u):
    # ql[128] | qh[64] | int8 scales[16] | d (f16); group g: half n = g // 4, k = g % 4:
    #   low 4 bits:  ql[64n + 32 (k & 1) + l] >> 4 (k // 2)
    #   high 2 bits: qh[32n + l] >> 2k
    # its 16-value halves use scales[8n + 2k] and [8n + 2k + 1];  y = (d * sc) * (code - 32)
    o = base + 210 * (u >> 3)
    g = u & 7
    n, k = g >> 2, g & 3
    ql = o + 64 * n + 32 * (k & 1)
    qh = o + 128 + 32 * n
    shift = 4 * (k >> 1)
    q0 = ((bytes_u8(W, ql) >> shift) & 15) | (((bytes_u8(W, qh) >> (2 * k)) & 3) << 4)
    q1 = ((bytes_u8(W, ql + 16) >> shift) & 15) | (((bytes_u8(W, qh + 16) >> (2 * k)) & 3) << 4)
    # the 16 products d * scale at once (the same for the 8 units of a super-block, so a
    # kernel computes them once), then one lane each
    scales = splat(half(W, o + 208)) * to_float(bytes_i8(W, o + 192))
    return to_float(q0 - 32) * lane(scales, 8 * n + 2 * k), to_float(q1 - 32) * lane(scales, 8 * n + 2 * k + 1)


DECODERS = {
    GGMLType.F32: _f32, GGMLType.F16: _f16, GGMLType.BF16: _bf16,
    GGMLType.Q4_0: _q4_0, GGMLType.Q4_1: _q4_1, GGMLType.Q5_0: _q5_0, GGMLType.Q5_1: _q5_1,
    GGMLType.Q8_0: _q8_0, GGMLType.Q2_K: _q2_k, GGMLType.Q3_K: _q3_k, GGMLType.Q4_K: _q4_k,
    GGMLType.Q5_K: _q5_k, GGMLType.Q6_K: _q6_k,
}


def unit_bytes(qtype: GGMLType) -> float:
    """Bytes a unit of 32 values takes (fractional for K-quants: 1/8 super-block)."""
    values, nbytes = QUANT_SIZES[qtype]
    return nbytes * UNIT / values


def unit(qtype, W, base, u):
    """The two f32x16 halves of unit u of the row at byte `base` of W (in kernels only)."""
    raise NotImplementedError("unit() runs inside numba kernels only")


@overload(unit, prefer_literal=True)
def _unit(qtype, W, base, u):
    # why: the type is a compile-time constant, so each kernel specialization holds only
    # its own decoder and no branch per unit
    if isinstance(qtype, types.IntegerLiteral):
        decode = DECODERS[GGMLType(qtype.literal_value)]
        return lambda qtype, W, base, u: decode(W, base, u)
