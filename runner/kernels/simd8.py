"""Sixty-four-lane byte vectors for the 8-bit products (q8.py): one zmm register of
bytes, and the one instruction that makes 8-bit products fast, VNNI's vpdpbusd.

    w = blend16(v & 15, v >> 4)              # 64 unsigned weight codes (Q4_0: two blocks)
    acc = dot4(acc, w, sbytes(xq, i))        # i32 lane k += sum of 4 products u8 * s8

`dot4` is one vpdpbusd where the CPU has AVX512-VNNI, and the same sums in plain LLVM
vector IR elsewhere (widening multiplies and adds: correct on every CPU, slower). Which
one is decided when numba compiles, from the CPU it compiles for; numba's cache keys its
machine code on that CPU, so a cache never crosses machines of different features.
"""
from __future__ import annotations

import functools
import operator

from llvmlite import ir
from numba import types
from numba.extending import intrinsic, models, overload, register_model

from .simd import _VF, _VI, _data, _load, _splat, f32x16, i32x16

_I8 = ir.IntType(8)
_I32 = ir.IntType(32)
_VB = ir.VectorType(_I8, 64)
LOCALITY = 2


class _Bytes(types.Type):
    def __init__(self):
        super().__init__(name="b8x64")


b8x64 = _Bytes()                 # 64 byte lanes: weight codes (unsigned) or activations (signed)


@register_model(_Bytes)
class _BytesModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, _VB)


@functools.lru_cache(maxsize=None)
def _has(feature: str) -> bool:
    """Does the CPU numba compiles for have this LLVM feature (NUMBA_CPU_NAME and
    NUMBA_CPU_FEATURES override the host, as they do for numba's own code)?"""
    import llvmlite.binding as ll
    from numba.core import config
    if config.CPU_FEATURES is not None:
        return f"+{feature}" in config.CPU_FEATURES.split(",")
    if config.CPU_NAME not in (None, "host"):
        return False
    return bool(ll.get_host_cpu_features().get(feature))


def vnni() -> bool:
    """vpdpbusd on zmm: AVX512-VNNI (and AVX512BW for the byte lanes)."""
    return _has("avx512vnni") and _has("avx512bw")


def _is_array(ty, dtype) -> bool:
    return isinstance(ty, types.Array) and ty.dtype == dtype and ty.layout == "C"


# --- loads ------------------------------------------------------------------------------

@intrinsic
def chunks(typingctx, W, o0, o1, o2, o3):
    """Lanes 16k .. 16k+15 = the 16 bytes at byte offset o_k of the uint8 array W."""
    if not (_is_array(W, types.uint8) and all(isinstance(o, types.Integer) for o in (o0, o1, o2, o3))):
        return None

    def codegen(context, builder, sig, args):
        v16 = ir.VectorType(_I8, 16)
        parts = [_load(builder, _data(context, builder, sig.args[0], args[0], o), v16, 1) for o in args[1:]]
        lo = builder.shuffle_vector(parts[0], parts[1], ir.Constant(ir.VectorType(_I32, 32), list(range(32))))
        hi = builder.shuffle_vector(parts[2], parts[3], ir.Constant(ir.VectorType(_I32, 32), list(range(32))))
        return builder.shuffle_vector(lo, hi, ir.Constant(ir.VectorType(_I32, 64), list(range(64))))
    return b8x64(W, o0, o1, o2, o3), codegen


def _loader(name, dtype, vty, llty, align, doc):
    """An intrinsic (a, i) -> one vector of vty from flat element i of the C-contiguous
    `dtype` array a."""
    def typer(typingctx, a, i):
        if not (_is_array(a, dtype) and isinstance(i, types.Integer)):
            return None

        def codegen(context, builder, sig, args):
            return _load(builder, _data(context, builder, sig.args[0], args[0], args[1]), llty, align)
        return vty(a, i), codegen
    typer.__name__, typer.__doc__ = name, doc
    return intrinsic(typer)


sbytes = _loader("sbytes", types.int8, b8x64, _VB, 1, "64 int8 of an int8 array from flat element i.")
ubytes = _loader("ubytes", types.uint8, b8x64, _VB, 1, "64 bytes of a uint8 array from flat element i.")
ints = _loader("ints", types.int32, i32x16, _VI, 4, "16 int32 of an int32 array from flat element i.")


@intrinsic
def bits(typingctx, W, o0, o1):
    """Lane k = bit k of the little-endian uint32 at byte o0 of W (k < 32), bit k - 32 of
    the one at o1 (k >= 32), as a 0/1 byte: Q5_0's fifth bits (kmov + vpmovm2b)."""
    if not (_is_array(W, types.uint8) and isinstance(o0, types.Integer) and isinstance(o1, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        words = [builder.load(builder.bitcast(_data(context, builder, sig.args[0], args[0], o), _I32.as_pointer()),
                              align=1) for o in args[1:]]
        pair = builder.insert_element(ir.Constant(ir.VectorType(_I32, 2), ir.Undefined), words[0], ir.Constant(_I32, 0))
        pair = builder.insert_element(pair, words[1], ir.Constant(_I32, 1))
        mask = builder.bitcast(pair, ir.VectorType(ir.IntType(1), 64))
        return builder.zext(mask, _VB)
    return b8x64(W, o0, o1), codegen


# --- lanes ------------------------------------------------------------------------------

def _shuffle_blend(name: str, first: list[bool]):
    """An intrinsic taking lane k from a where first[k], else from b (a constant blend)."""
    mask = [k if take_a else 64 + k for k, take_a in enumerate(first)]

    def typer(typingctx, a, b):
        if not (a is b8x64 and b is b8x64):
            return None

        def codegen(context, builder, sig, args):
            return builder.shuffle_vector(args[0], args[1], ir.Constant(ir.VectorType(_I32, 64), mask))
        return b8x64(a, b), codegen
    typer.__name__ = name
    return intrinsic(typer)


# lanes 0-15 and 32-47 from a, 16-31 and 48-63 from b: low then high nibbles of two blocks
blend16 = _shuffle_blend("blend16", [(k // 16) % 2 == 0 for k in range(64)])
# lanes 0-31 from a, 32-63 from b
blend32 = _shuffle_blend("blend32", [k < 32 for k in range(64)])


@intrinsic
def halves(typingctx, a, b):
    """Lanes 0-7 = a, lanes 8-15 = b (float32 scalars): one scale per 32-value unit of a
    pair of units, as `dot4` leaves their sums (8 lanes each)."""
    if not (isinstance(a, types.Float) and isinstance(b, types.Float)):
        return None

    def codegen(context, builder, sig, args):
        fa = context.cast(builder, args[0], sig.args[0], types.float32)
        fb = context.cast(builder, args[1], sig.args[1], types.float32)
        two = builder.insert_element(ir.Constant(ir.VectorType(ir.FloatType(), 2), ir.Undefined), fa, ir.Constant(_I32, 0))
        two = builder.insert_element(two, fb, ir.Constant(_I32, 1))
        return builder.shuffle_vector(two, two, ir.Constant(_VI, [0] * 8 + [1] * 8))
    return f32x16(a, b), codegen


@intrinsic
def quads(typingctx, v, fa, fb):
    """Lanes 0-3 = v[fa], 4-7 = v[fa + 1], 8-11 = v[fb], 12-15 = v[fb + 1]: the scales of
    two pairs of 16 values (Q2_K, Q3_K, Q6_K) spread over the lanes `dot4` sums those
    values into."""
    if not (v is f32x16 and isinstance(fa, types.Integer) and isinstance(fb, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        a = _splat(builder, context.cast(builder, args[1], sig.args[1], types.int32), _VI)
        b = _splat(builder, context.cast(builder, args[2], sig.args[2], types.int32), _VI)
        first = builder.select(ir.Constant(ir.VectorType(ir.IntType(1), 16), [k < 8 for k in range(16)]), a, b)
        idx = builder.add(first, ir.Constant(_VI, [(k // 4) % 2 for k in range(16)]))
        if _has("avx512f"):
            return _vcall(builder, "llvm.x86.avx512.permvar.sf.512", _VF, [args[0], idx])
        # elsewhere a permute by lane indices in plain IR (LLVM folds it to one shuffle
        # when `first` is a constant)
        out = ir.Constant(_VF, ir.Undefined)
        for k in range(16):
            e = builder.extract_element(args[0], builder.extract_element(idx, ir.Constant(_I32, k)))
            out = builder.insert_element(out, e, ir.Constant(_I32, k))
        return out
    return f32x16(v, fa, fb), codegen


@intrinsic
def dot4(typingctx, acc, u, s):
    """acc + (lane k: sum over j < 4 of u[4k + j] * s[4k + j]), u unsigned bytes, s signed
    (vpdpbusd). The sums of four products fit int32 exactly (at most 4 * 255 * 128)."""
    if not (acc is i32x16 and u is b8x64 and s is b8x64):
        return None

    def codegen(context, builder, sig, args):
        a, u_, s_ = args
        if vnni():
            return _vcall(builder, "llvm.x86.avx512.vpdpbusd.512", _VI, [a, builder.bitcast(u_, _VI), builder.bitcast(s_, _VI)])
        v64 = ir.VectorType(_I32, 64)
        prod = builder.mul(builder.zext(u_, v64), builder.sext(s_, v64))
        for j in range(4):
            part = builder.shuffle_vector(prod, prod, ir.Constant(_VI, [4 * k + j for k in range(16)]))
            a = builder.add(a, part)
        return a
    return i32x16(acc, u, s), codegen


# --- operators --------------------------------------------------------------------------

_OPS = {operator.and_: "and_", operator.or_: "or_", operator.xor: "xor",
        operator.rshift: "lshr", operator.lshift: "shl", operator.add: "add"}


def _register(op, method):
    def typer(typingctx, a, b):
        if a is not b8x64 or not (b is b8x64 or isinstance(b, types.Integer)):
            return None

        def codegen(context, builder, sig, args):
            rhs = args[1]
            if b is not b8x64:
                one = builder.trunc(context.cast(builder, rhs, b, types.int64), _I8)
                rhs = builder.shuffle_vector(builder.insert_element(ir.Constant(_VB, ir.Undefined), one, ir.Constant(_I32, 0)),
                                             ir.Constant(_VB, ir.Undefined), ir.Constant(ir.VectorType(_I32, 64), [0] * 64))
            return getattr(builder, method)(args[0], rhs)
        return b8x64(a, b), codegen
    typer.__name__ = f"{method}_b8x64"
    impl = intrinsic(typer)

    @overload(op)
    def _ov(a, b):
        if a is b8x64:
            return lambda a, b: impl(a, b)


for _op, _method in _OPS.items():
    _register(_op, _method)


# --- activations: float32 lanes to int8 codes -------------------------------------------

def _vcall(builder, name, ret, args):
    fn = builder.module.declare_intrinsic(name, fnty=ir.FunctionType(ret, [a.type for a in args]))
    return builder.call(fn, args)


@intrinsic
def absmax(typingctx, a, b):
    """max |lane| over the 32 lanes of a and b (float32: the scale of a block of 32)."""
    if not (a is f32x16 and b is f32x16):
        return None

    def codegen(context, builder, sig, args):
        fa = _vcall(builder, "llvm.fabs.v16f32", _VF, [args[0]])
        fb = _vcall(builder, "llvm.fabs.v16f32", _VF, [args[1]])
        m = _vcall(builder, "llvm.maxnum.v16f32", _VF, [fa, fb])
        return _vcall(builder, "llvm.vector.reduce.fmax.v16f32", ir.FloatType(), [m])
    return types.float32(a, b), codegen


@intrinsic
def store_i8(typingctx, a, i, q):
    """a[i:i+16] = q's lanes as int8 (a: int8 array, flat index; values must fit)."""
    if not (_is_array(a, types.int8) and isinstance(i, types.Integer) and q is i32x16):
        return None

    def codegen(context, builder, sig, args):
        v = builder.trunc(args[2], ir.VectorType(_I8, 16))
        ptr = _data(context, builder, sig.args[0], args[0], args[1])
        builder.store(v, builder.bitcast(ptr, v.type.as_pointer()), align=1)
    return types.none(a, i, q), codegen


@intrinsic
def store_i32(typingctx, a, i, v):
    """a[i:i+16] = v (a: int32 array, flat index)."""
    if not (_is_array(a, types.int32) and isinstance(i, types.Integer) and v is i32x16):
        return None

    def codegen(context, builder, sig, args):
        ptr = _data(context, builder, sig.args[0], args[0], args[1])
        builder.store(args[2], builder.bitcast(ptr, _VI.as_pointer()), align=4)
    return types.none(a, i, v), codegen


@intrinsic
def ones(typingctx):
    """64 unsigned bytes of 1: dot4(acc, ones(), s) sums s four lanes at a time."""
    def codegen(context, builder, sig, args):
        return ir.Constant(_VB, [1] * 64)
    return b8x64(), codegen


@intrinsic
def izeros(typingctx):
    def codegen(context, builder, sig, args):
        return ir.Constant(_VI, [0] * 16)
    return i32x16(), codegen


@intrinsic
def prefetch(typingctx, W, o):
    """Ask for the cache line at byte offset o of W ahead of its use (a hint: an
    address past the end is harmless). why: the products spend ~30 instructions on a
    64-byte line of weights, too long for the out-of-order window to keep enough lines in
    flight from memory; two threads read 17 GB/s without this, a plain read loop 28."""
    if not (_is_array(W, types.uint8) and isinstance(o, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        ptr = _data(context, builder, sig.args[0], args[0], args[1])
        _vcall(builder, "llvm.prefetch.p0i8", ir.VoidType(),
               [ptr, ir.Constant(_I32, 0), ir.Constant(_I32, LOCALITY), ir.Constant(_I32, 1)])
        return context.get_dummy_value()
    return types.none(W, o), codegen


# --- four rows at once ------------------------------------------------------------------

@intrinsic
def bcast16(typingctx, a, i):
    """The 16 int8 of the int8 array `a` from flat element i, in each quarter of the
    vector: the same activations for four rows of weights (vbroadcasti32x4)."""
    if not (_is_array(a, types.int8) and isinstance(i, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        v = _load(builder, _data(context, builder, sig.args[0], args[0], args[1]), ir.VectorType(_I8, 16), 1)
        return builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(_I32, 64), [k % 16 for k in range(64)]))
    return b8x64(a, i), codegen


@intrinsic
def scales4(typingctx, W, o0, o1, o2, o3):
    """Lanes 4k .. 4k+3 = the IEEE half at byte o_k of W, as float32: one scale per row of
    four rows, over the lanes `dot4` leaves that row's sums in."""
    if not (_is_array(W, types.uint8) and all(isinstance(o, types.Integer) for o in (o0, o1, o2, o3))):
        return None

    def codegen(context, builder, sig, args):
        hty = ir.VectorType(ir.HalfType(), 4)
        v = ir.Constant(hty, ir.Undefined)
        for k, o in enumerate(args[1:]):
            ptr = builder.bitcast(_data(context, builder, sig.args[0], args[0], o), ir.HalfType().as_pointer())
            v = builder.insert_element(v, builder.load(ptr, align=1), ir.Constant(_I32, k))
        f = builder.fpext(v, ir.VectorType(ir.FloatType(), 4))
        return builder.shuffle_vector(f, f, ir.Constant(_VI, [k // 4 for k in range(16)]))
    return f32x16(W, o0, o1, o2, o3), codegen


@intrinsic
def spaced(typingctx, c):
    """Lanes 0, 4, 8, 12 = c (int), the others 0: a sum to start each row's four lanes
    of `dot4` from (the offset K times the activation codes' sum, once per row)."""
    if not isinstance(c, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        v = _splat(builder, context.cast(builder, args[0], sig.args[0], types.int32), _VI)
        return builder.select(ir.Constant(ir.VectorType(ir.IntType(1), 16), [k % 4 == 0 for k in range(16)]),
                              v, ir.Constant(_VI, [0] * 16))
    return i32x16(c), codegen


@intrinsic
def sums4(typingctx, v):
    """(sum of lanes 0-3, of 4-7, of 8-11, of 12-15): each row's result of four rows."""
    if v is not f32x16:
        return None
    ret = types.UniTuple(types.float32, 4)

    def codegen(context, builder, sig, args):
        a = args[0]
        # two rounds of pairwise adds within each group of four lanes
        a = builder.fadd(a, builder.shuffle_vector(a, a, ir.Constant(_VI, [k ^ 2 for k in range(16)])))
        a = builder.fadd(a, builder.shuffle_vector(a, a, ir.Constant(_VI, [k ^ 1 for k in range(16)])))
        vals = [builder.extract_element(a, ir.Constant(_I32, 4 * k)) for k in range(4)]
        return context.make_tuple(builder, ret, vals)
    return ret(v), codegen


def _element(dtype):
    def typer(typingctx, a, i):
        if not (_is_array(a, dtype) and isinstance(i, types.Integer)):
            return None

        def codegen(context, builder, sig, args):
            return builder.load(_data(context, builder, sig.args[0], args[0], args[1]), align=4)
        return dtype(a, i), codegen
    return typer


# a[i] for a float32 / int32 array and a flat index known to be in range (no negative-
# index wrap-around code, which numba emits for every signed index)
at = intrinsic(_element(types.float32))
at_i32 = intrinsic(_element(types.int32))


@intrinsic
def round_even(typingctx, a):
    """Lanes rounded to the nearest integer, halves to even (ggml's x86 quantize_row_q8_0:
    _mm256_round_ps(_MM_ROUND_NEAREST)), as int32."""
    if a is not f32x16:
        return None

    def codegen(context, builder, sig, args):
        return builder.fptosi(_vcall(builder, "llvm.roundeven.v16f32", _VF, [args[0]]), _VI)
    return i32x16(a), codegen


@intrinsic
def via_half(typingctx, a):
    """float32 a rounded to an IEEE half and back (a Q8_0 block stores its scale as one)."""
    if not isinstance(a, types.Float):
        return None

    def codegen(context, builder, sig, args):
        f = context.cast(builder, args[0], sig.args[0], types.float32)
        return builder.fpext(builder.fptrunc(f, ir.HalfType()), ir.FloatType())
    return types.float32(a), codegen


# --- packed rows (gemm8.py) -------------------------------------------------------------

@intrinsic
def bcast4(typingctx, a, i):
    """The 4 int8 at flat element i of the int8 array `a`, in each of the 16 lanes of
    four bytes: the same 4 activations against 16 rows of weights (a broadcast operand
    of vpdpbusd)."""
    if not (_is_array(a, types.int8) and isinstance(i, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        ptr = builder.bitcast(_data(context, builder, sig.args[0], args[0], args[1]), _I32.as_pointer())
        return builder.bitcast(_splat(builder, builder.load(ptr, align=1), _VI), _VB)
    return b8x64(a, i), codegen


@intrinsic
def store_bytes(typingctx, a, i, v):
    """a[i:i+64] = v (a: uint8 array, flat index)."""
    if not (_is_array(a, types.uint8) and isinstance(i, types.Integer) and v is b8x64):
        return None

    def codegen(context, builder, sig, args):
        ptr = _data(context, builder, sig.args[0], args[0], args[1])
        builder.store(args[2], builder.bitcast(ptr, _VB.as_pointer()), align=1)
    return types.none(a, i, v), codegen


@intrinsic
def transpose16(typingctx, tup):
    """A tuple of 16 vectors of 16 four-byte lanes (b8x64 or f32x16, all one type) transposed: out[j]
    lane r = vs[r] lane j. Four rounds of two-input shuffles (64 in all): round b swaps
    the off-diagonal b x b blocks of every 2b x 2b block."""
    if not (isinstance(tup, types.UniTuple) and tup.count == 16 and tup.dtype in (b8x64, f32x16)):
        return None
    vty = tup.dtype
    ret = types.UniTuple(vty, 16)

    def codegen(context, builder, sig, args):
        args = [builder.extract_value(args[0], k) for k in range(16)]
        lanes = _VF if vty is f32x16 else _VI
        v = [builder.bitcast(a, lanes) for a in args]
        b = 8
        while b:
            for i in range(16):
                if i & b:
                    continue
                A, B = v[i], v[i + b]
                lo = [c if not c & b else 16 + c - b for c in range(16)]       # A's, then B's low lanes
                hi = [c + b if not c & b else 16 + c for c in range(16)]       # A's high lanes, then B's
                v[i] = builder.shuffle_vector(A, B, ir.Constant(_VI, lo))
                v[i + b] = builder.shuffle_vector(A, B, ir.Constant(_VI, hi))
            b //= 2
        out = [builder.bitcast(x, _VB) if vty is b8x64 else x for x in v]
        return context.make_tuple(builder, ret, out)
    return ret(tup), codegen


@intrinsic
def q3_scales(typingctx, W, o):
    """The 16 six-bit scales of a Q3_K super-block, less 32, as int32 lanes, from its
    scales[12] at byte o of W (bytes 0-7: low nibbles of scales 0-7, high nibbles of
    8-15; bytes 8-11: the top two bits, scale k in bits 2 (k // 4) of byte 8 + k % 4).
    Read as three words, never past the twelve bytes."""
    if not (_is_array(W, types.uint8) and isinstance(o, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        words = ir.Constant(ir.VectorType(_I32, 4), [0, 0, 0, 0])
        for k in range(3):
            ptr = _data(context, builder, sig.args[0], args[0], builder.add(args[1], ir.Constant(args[1].type, 4 * k)))
            words = builder.insert_element(words, builder.load(builder.bitcast(ptr, _I32.as_pointer()), align=1),
                                           ir.Constant(_I32, k))
        b = builder.zext(builder.bitcast(words, ir.VectorType(_I8, 16)), _VI)
        low = builder.lshr(builder.shuffle_vector(b, b, ir.Constant(_VI, [k % 8 for k in range(16)])),
                           ir.Constant(_VI, [0] * 8 + [4] * 8))
        high = builder.lshr(builder.shuffle_vector(b, b, ir.Constant(_VI, [8 + k % 4 for k in range(16)])),
                            ir.Constant(_VI, [2 * (k // 4) for k in range(16)]))
        v = builder.or_(builder.and_(low, ir.Constant(_VI, [15] * 16)),
                        builder.shl(builder.and_(high, ir.Constant(_VI, [3] * 16)), ir.Constant(_VI, [4] * 16)))
        return builder.sub(v, ir.Constant(_VI, [32] * 16))
    return i32x16(W, o), codegen
