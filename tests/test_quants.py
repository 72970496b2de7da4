"""Dequant kernels: bit-exact against gguf-py's `gguf.quants.dequantize` for every type."""
from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType, quants as ggq

from runner.quants import QUANT_SIZES, GGMLType, dequantize

# byte offsets of the fp16 fields (d, m, dmin) inside each block type
FP16_FIELDS = {
    GGMLType.Q4_0: [0], GGMLType.Q4_1: [0, 2], GGMLType.Q5_0: [0], GGMLType.Q5_1: [0, 2],
    GGMLType.Q8_0: [0], GGMLType.Q2_K: [80, 82], GGMLType.Q3_K: [108],
    GGMLType.Q4_K: [0, 2], GGMLType.Q5_K: [0, 2], GGMLType.Q6_K: [208],
}
TYPES = sorted(QUANT_SIZES, key=int)


def finite_fp16(rng, n: int) -> np.ndarray:
    """Finite fp16 values from subnormal to the largest (65504), both signs, and zeros."""
    bits = rng.integers(0, 0x7C00, n, dtype=np.uint16)          # exponent < 31: never inf/NaN
    bits |= rng.integers(0, 2, n, dtype=np.uint16) << 15
    bits[rng.random(n) < 0.02] = 0
    v = bits.view(np.float16)
    extremes = np.array([65504, -65504, 6e-8, -6e-8, 6.1e-5, 1.0, -0.0], dtype=np.float16)
    v[:len(extremes)] = extremes[:n]
    return v


def random_blocks(rng, qtype: GGMLType, n_rows: int, blocks_per_row: int) -> np.ndarray:
    """Random bytes as stored ([rows, bytes per row]), with every fp16 scale field finite."""
    block, size = QUANT_SIZES[qtype]
    n = n_rows * blocks_per_row
    if qtype == GGMLType.F32:
        raw = (rng.standard_normal(n) * 10.0 ** rng.integers(-30, 30, n)).astype(np.float32).view(np.uint8)
    elif qtype in (GGMLType.F16, GGMLType.BF16):
        raw = finite_fp16(rng, n).view(np.uint8) if qtype == GGMLType.F16 else \
            (rng.standard_normal(n).astype(np.float32).view(np.uint32) >> 16).astype(np.uint16).view(np.uint8)
    else:
        raw = rng.integers(0, 256, (n, size), dtype=np.uint8)
        for at in FP16_FIELDS[qtype]:
            raw[:, at:at + 2] = finite_fp16(rng, n).view(np.uint8).reshape(n, 2)
    return raw.reshape(n_rows, blocks_per_row * size)


def assert_bit_exact(ours: np.ndarray, ref: np.ndarray) -> None:
    assert ours.dtype == np.float32 and ours.shape == ref.shape
    diff = ours.view(np.uint32) != ref.astype(np.float32).view(np.uint32)
    assert not diff.any(), f"{diff.sum()} of {diff.size} values differ"


@pytest.mark.fast
@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_bit_exact_vs_gguf_py(qtype):
    rng = np.random.default_rng(int(qtype))
    raw = random_blocks(rng, qtype, n_rows=7, blocks_per_row=300 if QUANT_SIZES[qtype][0] == 1 else 9)
    ref = ggq.dequantize(raw, GGMLQuantizationType(int(qtype)))
    with np.errstate(all="ignore"):
        ours = dequantize(raw, qtype)
    assert ours.shape == (7, raw.shape[1] // QUANT_SIZES[qtype][1] * QUANT_SIZES[qtype][0])
    assert_bit_exact(ours, ref)


@pytest.mark.parametrize("qtype", [GGMLType.Q8_0, GGMLType.Q4_0, GGMLType.Q4_K, GGMLType.Q6_K, GGMLType.Q5_0],
                         ids=lambda t: t.name)
@pytest.mark.fast
def test_large_tensor_chunked_and_threaded(qtype):
    """Many chunks (the kernels work in 64k-value pieces) and several threads give the
    same bits as one gguf-py call."""
    rng = np.random.default_rng(100 + int(qtype))
    block = QUANT_SIZES[qtype][0]
    raw = random_blocks(rng, qtype, n_rows=300, blocks_per_row=2048 // block)
    ref = ggq.dequantize(raw, GGMLQuantizationType(int(qtype)))
    with np.errstate(all="ignore"):
        assert_bit_exact(dequantize(raw, qtype, threads=1), ref)
        assert_bit_exact(dequantize(raw, qtype, threads=3), ref)


def test_real_model_tensors(model_path):
    """One tensor of each type in the real model, whole, against gguf-py."""
    from runner.gguf import GGUFFile
    g = GGUFFile(model_path)
    seen = set()
    for name, info in g.tensors.items():
        if info.type in seen or info.type == GGMLType.F32:
            continue
        seen.add(info.type)
        raw = g.raw(name)
        ref = ggq.dequantize(np.asarray(raw), GGMLQuantizationType(int(info.type)))
        assert_bit_exact(dequantize(raw, info.type, threads=2), ref)
    assert seen == {GGMLType.Q8_0, GGMLType.Q5_0, GGMLType.Q4_K, GGMLType.Q6_K}


@pytest.mark.fast
def test_bad_input():
    with pytest.raises(ValueError, match="not whole Q4_0 blocks"):
        dequantize(np.zeros((2, 17), np.uint8), GGMLType.Q4_0)
    with pytest.raises(ValueError, match="not supported"):
        dequantize(np.zeros((2, 66), np.uint8), GGMLType.IQ2_XXS)
