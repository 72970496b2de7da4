"""ggml tensor types, their block layouts, and vectorized numpy dequantization.

Every kernel takes `blocks` (uint8, [n, bytes per block]) and writes float32 values
([n, values per block]) into `out`. They are bit-exact with ggml's reference
(`dequantize_row_*` in ggml-quants.c, mirrored by gguf-py): each float operation is
done in float32, one at a time, in ggml's order (for K-quants `(d*sc)*q - dmin*m`).

Speed comes from three habits: integer work on uint8 arrays (bytes, not int64) using
only numpy's fast uint8 ops, one cast of the finished codes to float32, and chunks large
enough to amortize numpy's per-call cost. `dequantize` can also split a big tensor across
threads: numpy releases the GIL inside these loops.
"""
from __future__ import annotations

import enum
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np


class GGMLType(enum.IntEnum):
    F32 = 0
    F16 = 1
    Q4_0 = 2
    Q4_1 = 3
    Q5_0 = 6
    Q5_1 = 7
    Q8_0 = 8
    Q8_1 = 9
    Q2_K = 10
    Q3_K = 11
    Q4_K = 12
    Q5_K = 13
    Q6_K = 14
    Q8_K = 15
    IQ2_XXS = 16
    IQ2_XS = 17
    IQ3_XXS = 18
    IQ1_S = 19
    IQ4_NL = 20
    IQ3_S = 21
    IQ2_S = 22
    IQ4_XS = 23
    I8 = 24
    I16 = 25
    I32 = 26
    I64 = 27
    F64 = 28
    IQ1_M = 29
    BF16 = 30


QK_K = 256  # values in a K-quant super-block

# type -> (values per block, bytes per block), for the types this runner reads
QUANT_SIZES: dict[GGMLType, tuple[int, int]] = {
    GGMLType.F32: (1, 4),
    GGMLType.F16: (1, 2),
    GGMLType.BF16: (1, 2),
    GGMLType.Q4_0: (32, 18),
    GGMLType.Q4_1: (32, 20),
    GGMLType.Q5_0: (32, 22),
    GGMLType.Q5_1: (32, 24),
    GGMLType.Q8_0: (32, 34),
    GGMLType.Q2_K: (QK_K, 84),
    GGMLType.Q3_K: (QK_K, 110),
    GGMLType.Q4_K: (QK_K, 144),
    GGMLType.Q5_K: (QK_K, 176),
    GGMLType.Q6_K: (QK_K, 210),
}

F32 = np.float32

# numpy's fast paths for uint8 are `&`, `>>` by a scalar, `+ - *`, and the cast to
# float32; `<<` and `np.take` are several times slower, so codes are built from the
# former (x * 16 instead of x << 4) and cast once.


def _fp16(blocks: np.ndarray, at: int) -> np.ndarray:
    """The fp16 field at byte `at` of every block, as float32 [n, 1]."""
    return blocks[:, at:at + 2].view("<f2").astype(F32)


def _nibbles(qs: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> None:
    """Split bytes into low nibbles (into `lo`) and high nibbles (into `hi`)."""
    np.bitwise_and(qs, 15, out=lo)
    np.right_shift(qs, 4, out=hi)


def _add_bits(codes: np.ndarray, src: np.ndarray, shift: int, mask: int, weight: int,
              tmp: np.ndarray) -> None:
    """codes |= ((src >> shift) & mask) * weight, through the scratch array `tmp`."""
    np.right_shift(src, shift, out=tmp)
    tmp &= mask
    tmp *= weight
    codes |= tmp


def _to_float(codes: np.ndarray, offset: int, out: np.ndarray) -> None:
    """out = codes - offset as float32 (codes are uint8; the subtraction wraps, so the
    int8 view holds the signed value)."""
    if offset:
        codes -= np.uint8(offset)
        np.copyto(out, codes.view(np.int8).reshape(out.shape), casting="unsafe")
    else:
        np.copyto(out, codes.reshape(out.shape), casting="unsafe")


# --- 32-value blocks -------------------------------------------------------------------

def _q4_codes(qs: np.ndarray) -> np.ndarray:
    """qs[j] = hhhh llll: value j is llll, value j+16 is hhhh. uint8 [n, 32]."""
    codes = np.empty((len(qs), 32), dtype=np.uint8)
    _nibbles(qs, codes[:, :16], codes[:, 16:])
    return codes


def _q4_0(blocks, out):
    # d (f16) | qs[16]:  y = (code - 8) * d
    _to_float(_q4_codes(blocks[:, 2:]), 8, out)
    out *= _fp16(blocks, 0)


def _q4_1(blocks, out):
    # d (f16) | m (f16) | qs[16]:  y = code * d + m
    _to_float(_q4_codes(blocks[:, 4:]), 0, out)
    out *= _fp16(blocks, 0)
    out += _fp16(blocks, 2)


def _q5_codes(blocks: np.ndarray, at_qh: int) -> np.ndarray:
    """Five-bit codes of Q5_0/Q5_1, uint8 [n, 32]: the Q4 nibbles, plus 16 where bit j of
    qh (u32, little-endian) is set for value j."""
    codes = _q4_codes(blocks[:, at_qh + 4:])
    high = np.unpackbits(blocks[:, at_qh:at_qh + 4], axis=1, bitorder="little")
    high *= 16
    codes |= high
    return codes


def _q5_0(blocks, out):
    # d (f16) | qh (u32) | qs[16]:  y = (code - 16) * d
    _to_float(_q5_codes(blocks, 2), 16, out)
    out *= _fp16(blocks, 0)


def _q5_1(blocks, out):
    # d (f16) | m (f16) | qh (u32) | qs[16]:  y = code * d + m
    _to_float(_q5_codes(blocks, 4), 0, out)
    out *= _fp16(blocks, 0)
    out += _fp16(blocks, 2)


def _q8_0(blocks, out):
    # d (f16) | int8 qs[32]:  y = qs * d
    np.copyto(out, blocks[:, 2:].view(np.int8), casting="unsafe")
    out *= _fp16(blocks, 0)


# --- 256-value K-quant super-blocks -----------------------------------------------------

def _k_2bit(qs: np.ndarray) -> np.ndarray:
    """2-bit codes of Q2_K/Q3_K, uint8 [n, 256] in output order.

    Value e: half h = e // 128, shift j = (e % 128) // 32, byte qs[32h + e % 32],
    code = (byte >> 2j) & 3; so each group of 32 output values is one shift of 32 bytes.
    """
    n = len(qs)
    src = qs.reshape(n, 2, 32)
    codes = np.empty((n, 2, 4, 32), dtype=np.uint8)               # [n, half, shift, 32]
    for j in range(4):
        np.right_shift(src, 2 * j, out=codes[:, :, j, :])
    codes &= 3
    return codes.reshape(n, QK_K)


def _q2_k(blocks, out):
    # scales[16] | qs[64] | d (f16) | dmin (f16)
    # scales[g] for the g-th group of 16 values: low nibble scale, high nibble min;
    # y = (d * scale) * code - (dmin * min)
    n = len(blocks)
    sc = blocks[:, :16]
    dl = _fp16(blocks, 80) * (sc & 15).astype(F32)          # [n, 16]
    ml = _fp16(blocks, 82) * (sc >> 4).astype(F32)
    _to_float(_k_2bit(blocks[:, 16:80]), 0, out)
    o = out.reshape(n, 16, 16)
    o *= dl[:, :, None]
    o -= ml[:, :, None]


def _q3_k(blocks, out):
    # hmask[32] | qs[64] | scales[12] | d (f16);  y = (d * scale) * (code - 4)
    # code = 2-bit value + 4 * (bit (4h + j) of hmask[e % 32]), with h, j as in _k_2bit.
    # Scales: 16 six-bit values, offset 32:
    #   b[0..7]:  low nibbles of scales 0..7 | low nibbles of scales 8..15 (high half)
    #   b[8..11]: 2-bit high parts: scale i takes bits 2*(i//4) of b[8 + i%4]
    n = len(blocks)
    b = blocks[:, 96:108]
    sc = np.empty((n, 16), dtype=np.uint8)
    _nibbles(b[:, :8], sc[:, :8], sc[:, 8:])
    high = np.empty((n, 4), dtype=np.uint8)
    for k in range(4):
        _add_bits(sc[:, 4 * k:4 * k + 4], b[:, 8:12], 2 * k, 3, 16, high)
    dl = _fp16(blocks, 108) * (sc.view(np.int8) - np.int8(32)).astype(F32)   # [n, 16]
    codes = _k_2bit(blocks[:, 32:96]).reshape(n, 8, 32)
    tmp = np.empty((n, 32), dtype=np.uint8)
    for bit in range(8):
        _add_bits(codes[:, bit, :], blocks[:, :32], bit, 1, 4, tmp)
    _to_float(codes, 4, out)
    o = out.reshape(n, 16, 16)
    o *= dl[:, :, None]


def _scale_min_k4(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The 8 six-bit scales and mins of Q4_K/Q5_K from their 12 packed bytes.

        s[0..3]  EEAAAAAA   sc 0..3 = A,   top bits of sc 4..7 = E
        s[4..7]  eeaaaaaa   m 0..3 = a,    top bits of m 4..7 = e
        s[8..11] eeeeEEEE   low 4 bits of sc 4..7 = EEEE, of m 4..7 = eeee
    """
    a, m, lo = s[:, 0:4], s[:, 4:8], s[:, 8:12]
    sc = np.concatenate([a & 63, (lo & 15) | ((a >> 6) * 16)], axis=1)
    mn = np.concatenate([m & 63, (lo >> 4) | ((m >> 6) * 16)], axis=1)
    return sc.astype(F32), mn.astype(F32)


def _k4_codes(qs: np.ndarray) -> np.ndarray:
    """Q4_K/Q5_K nibbles, uint8 [n, 8, 32]: group 2c is the low nibbles of qs[32c:32c+32],
    group 2c+1 their high nibbles."""
    n = len(qs)
    codes = np.empty((n, 4, 2, 32), dtype=np.uint8)
    q = qs.reshape(n, 4, 32)
    _nibbles(q, codes[:, :, 0, :], codes[:, :, 1, :])
    return codes.reshape(n, 8, 32)


def _k_scale_min(blocks, codes, out):
    """y = (d * sc[g]) * code - (dmin * m[g]) for the 8 groups of 32 of Q4_K/Q5_K."""
    n = len(blocks)
    sc, mn = _scale_min_k4(blocks[:, 4:16])
    d1 = _fp16(blocks, 0) * sc
    m1 = _fp16(blocks, 2) * mn
    o = out.reshape(n, 8, 32)
    _to_float(codes, 0, o)
    o *= d1[:, :, None]
    o -= m1[:, :, None]


def _q4_k(blocks, out):
    # d (f16) | dmin (f16) | scales[12] | qs[128]
    _k_scale_min(blocks, _k4_codes(blocks[:, 16:]), out)


def _q5_k(blocks, out):
    # d (f16) | dmin (f16) | scales[12] | qh[32] | qs[128]
    # the fifth bit of value l of group g (0..7) is bit g of qh[l]
    codes = _k4_codes(blocks[:, 48:])
    tmp = np.empty((len(blocks), 32), dtype=np.uint8)
    for g in range(8):
        _add_bits(codes[:, g, :], blocks[:, 16:48], g, 1, 16, tmp)
    _k_scale_min(blocks, codes, out)


def _q6_k(blocks, out):
    # ql[128] | qh[64] | int8 scales[16] | d (f16); two halves of 128 values.
    # In half k (ql[64k:64k+64], qh[32k:32k+32]), value i of 128:
    #   low 4 bits:  ql[i] & 15 for i < 64,  ql[i-64] >> 4 for i >= 64
    #   high 2 bits: (qh[i % 32] >> 2*(i // 32)) & 3
    # y = (d * scales[i // 16]) * (code - 32)
    n = len(blocks)
    codes = np.empty((n, 2, 2, 64), dtype=np.uint8)
    ql = blocks[:, :128].reshape(n, 2, 64)
    _nibbles(ql, codes[:, :, 0, :], codes[:, :, 1, :])
    codes = codes.reshape(n, 2, 4, 32)
    qh = blocks[:, 128:192].reshape(n, 2, 32)
    tmp = np.empty((n, 2, 32), dtype=np.uint8)
    for j in range(4):
        _add_bits(codes[:, :, j, :], qh, 2 * j, 3, 16, tmp)
    _to_float(codes, 32, out)
    dl = _fp16(blocks, 208) * blocks[:, 192:208].view(np.int8).astype(F32)   # [n, 16]
    o = out.reshape(n, 16, 16)
    o *= dl[:, :, None]


def _f16(blocks, out):
    np.copyto(out, blocks.view("<f2"), casting="same_kind")


def _bf16(blocks, out):
    # bf16 is the top half of an f32: widen the u16 to u32 and shift it into place
    u = out.view(np.uint32)
    np.copyto(u, blocks.view("<u2"), casting="same_kind")
    u <<= 16


def _f32(blocks, out):
    np.copyto(out, blocks.view("<f4"))


_KERNELS = {
    GGMLType.F32: _f32, GGMLType.F16: _f16, GGMLType.BF16: _bf16,
    GGMLType.Q4_0: _q4_0, GGMLType.Q4_1: _q4_1, GGMLType.Q5_0: _q5_0, GGMLType.Q5_1: _q5_1,
    GGMLType.Q8_0: _q8_0, GGMLType.Q2_K: _q2_k, GGMLType.Q3_K: _q3_k, GGMLType.Q4_K: _q4_k,
    GGMLType.Q5_K: _q5_k, GGMLType.Q6_K: _q6_k,
}

_CHUNK_VALUES = 1 << 18  # values per kernel call: amortizes numpy call overhead, stays in L3
_pool: ThreadPoolExecutor | None = None


def _threads(threads: int | None) -> int:
    return max(1, threads if threads is not None else (os.cpu_count() or 1))


def dequantize(raw: np.ndarray, qtype: GGMLType | int, threads: int | None = 1,
               out: np.ndarray | None = None) -> np.ndarray:
    """Dequantize `raw` (uint8, [..., bytes per row], as stored) to float32
    [..., values per row], into `out` if given (C-contiguous float32 of that size).
    `threads` > 1 splits a large tensor across a thread pool."""
    qtype = GGMLType(qtype)
    if qtype not in _KERNELS:
        raise ValueError(f"dequantize: ggml type {qtype.name} is not supported")
    block, type_size = QUANT_SIZES[qtype]
    raw = np.ascontiguousarray(raw, dtype=np.uint8)
    if raw.ndim == 0 or raw.shape[-1] % type_size:
        raise ValueError(f"dequantize: rows of {raw.shape[-1] if raw.ndim else 0} bytes are not "
                         f"whole {qtype.name} blocks of {type_size} bytes")
    shape = raw.shape[:-1] + (raw.shape[-1] // type_size * block,)
    blocks = raw.reshape(-1, type_size)
    if out is None:
        out = np.empty(shape, dtype=F32)
    if out.dtype != F32 or out.size != len(blocks) * block or not out.flags.c_contiguous:
        raise ValueError(f"dequantize: out must be C-contiguous float32 of {len(blocks) * block} values")
    result, out = out, out.reshape(len(blocks), block)
    kernel = _KERNELS[qtype]
    step = max(1, _CHUNK_VALUES // block)
    starts = range(0, len(blocks), step)

    def run(s: int) -> None:
        kernel(blocks[s:s + step], out[s:s + step])

    n_threads = min(_threads(threads), len(starts))
    if n_threads <= 1:
        for s in starts:
            run(s)
    else:
        global _pool
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=os.cpu_count() or 2, thread_name_prefix="dequant")
        list(_pool.map(run, starts))
    return result.reshape(shape)
