"""Sixteen-lane vectors for numba kernels: the few SIMD operations the quantized
products need, written once as LLVM vector IR.

why: LLVM vectorizes plain numba loops over 32-value blocks only when its heuristics
agree (a block loop that is fully unrolled is left to the SLP vectorizer, which gives up
as soon as a store might alias a load; an accumulator kept in an array round-trips
through memory every block). Measured on Q8_0 rows, one core: plain loops 2-12 G
multiply-adds/s depending on how a loop was phrased; the same loop over these vectors
16-19 G/s, every time. A vector here is an LLVM `<16 x float>` or `<16 x i32>`: one zmm
register with AVX-512, two ymm with AVX2, four xmm with SSE; LLVM picks the instructions
for the CPU numba compiles for.

    acc = zeros()
    acc = fma(splat(d) * to_float(bytes_i8(W, o)), load(x, i), acc)   # acc += (d q) x
    s = hsum(acc)

Arithmetic on f32 vectors carries no fast-math flags, so a dequantized weight computed
here rounds exactly as ggml's reference; `fma` rounds once, as its name says.
"""
from __future__ import annotations

import operator

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, models, overload, register_model

LANES = 16
_I32 = ir.IntType(32)
_F32 = ir.FloatType()
_VF = ir.VectorType(_F32, LANES)
_VI = ir.VectorType(_I32, LANES)


class _Vec(types.Type):
    def __init__(self, name: str):
        super().__init__(name=name)


f32x16 = _Vec("f32x16")      # 16 float32 lanes
i32x16 = _Vec("i32x16")      # 16 int32 lanes (codes being unpacked)


@register_model(_Vec)
class _VecModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, _VF if fe_type is f32x16 else _VI)


# --- code generation helpers ------------------------------------------------------------

def _data(context, builder, arrty, arr, index):
    """Pointer to element `index` of a C-contiguous array's data (flat index)."""
    ary = context.make_array(arrty)(context, builder, value=arr)
    return builder.gep(ary.data, [index])


def _load(builder, ptr, vty, align):
    return builder.load(builder.bitcast(ptr, vty.as_pointer()), align=align)


def _splat(builder, value, vty):
    undef = ir.Constant(vty, ir.Undefined)
    one = builder.insert_element(undef, value, ir.Constant(_I32, 0))
    return builder.shuffle_vector(one, undef, ir.Constant(_VI, [0] * LANES))


def _is_bytes(ty) -> bool:
    return isinstance(ty, types.Array) and ty.dtype == types.uint8 and ty.layout == "C"


def _is_f32(ty) -> bool:
    return isinstance(ty, types.Array) and ty.dtype == types.float32 and ty.layout == "C"


# --- loads and stores -----------------------------------------------------------------

@intrinsic
def load(typingctx, a, i):
    """16 float32 of the float32 array `a` from flat element i."""
    if not (_is_f32(a) and isinstance(i, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        return _load(builder, _data(context, builder, sig.args[0], args[0], args[1]), _VF, 4)
    return f32x16(a, i), codegen


@intrinsic
def store(typingctx, a, i, v):
    """a[i:i+16] = v for the float32 array `a` (flat index)."""
    if not (_is_f32(a) and isinstance(i, types.Integer) and v is f32x16):
        return None

    def codegen(context, builder, sig, args):
        ptr = _data(context, builder, sig.args[0], args[0], args[1])
        builder.store(args[2], builder.bitcast(ptr, _VF.as_pointer()), align=4)
    return types.none(a, i, v), codegen


def _byte_loader(width: int, signed: bool):
    """16 little-endian integers of `width` bits from byte offset o of a uint8 array,
    widened to i32 lanes."""
    src = ir.VectorType(ir.IntType(width), LANES)

    def typer(typingctx, W, o):
        if not (_is_bytes(W) and isinstance(o, types.Integer)):
            return None

        def codegen(context, builder, sig, args):
            v = _load(builder, _data(context, builder, sig.args[0], args[0], args[1]), src, 1)
            return builder.sext(v, _VI) if signed else builder.zext(v, _VI)
        return i32x16(W, o), codegen
    return typer


bytes_i8 = intrinsic(_byte_loader(8, True))     # 16 int8  -> i32 lanes
bytes_u8 = intrinsic(_byte_loader(8, False))    # 16 uint8 -> i32 lanes
words_u16 = intrinsic(_byte_loader(16, False))  # 16 uint16 (32 bytes) -> i32 lanes


@intrinsic
def floats(typingctx, W, o):
    """16 float32 stored at byte offset o of a uint8 array."""
    if not (_is_bytes(W) and isinstance(o, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        return _load(builder, _data(context, builder, sig.args[0], args[0], args[1]), _VF, 1)
    return f32x16(W, o), codegen


@intrinsic
def halfs(typingctx, W, o):
    """16 IEEE halfs stored at byte offset o of a uint8 array, as float32 (exact)."""
    if not (_is_bytes(W) and isinstance(o, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        v = _load(builder, _data(context, builder, sig.args[0], args[0], args[1]),
                  ir.VectorType(ir.HalfType(), LANES), 1)
        return builder.fpext(v, _VF)
    return f32x16(W, o), codegen


@intrinsic
def half(typingctx, W, o):
    """The IEEE half at byte offset o of a uint8 array, as float32 (exact: F16C's
    vcvtph2ps on x86)."""
    if not (_is_bytes(W) and isinstance(o, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        ptr = builder.bitcast(_data(context, builder, sig.args[0], args[0], args[1]), ir.HalfType().as_pointer())
        return builder.fpext(builder.load(ptr, align=1), _F32)
    return types.float32(W, o), codegen


@intrinsic
def byte(typingctx, W, o):
    """The byte at flat offset o of a uint8 array (of any shape: flat, unlike W[o])."""
    if not (_is_bytes(W) and isinstance(o, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        return builder.load(_data(context, builder, sig.args[0], args[0], args[1]), align=1)
    return types.uint8(W, o), codegen


@intrinsic
def word32(typingctx, W, o):
    """The little-endian uint32 at byte offset o of a uint8 array."""
    if not (_is_bytes(W) and isinstance(o, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        ptr = builder.bitcast(_data(context, builder, sig.args[0], args[0], args[1]), _I32.as_pointer())
        return builder.load(ptr, align=1)
    return types.uint32(W, o), codegen


# --- lanes ------------------------------------------------------------------------------

@intrinsic
def zeros(typingctx):
    def codegen(context, builder, sig, args):
        return ir.Constant(_VF, [0.0] * LANES)
    return f32x16(), codegen


@intrinsic
def splat(typingctx, s):
    """s in every lane."""
    if not isinstance(s, types.Float):
        return None

    def codegen(context, builder, sig, args):
        return _splat(builder, context.cast(builder, args[0], sig.args[0], types.float32), _VF)
    return f32x16(s), codegen


@intrinsic
def lane_bits(typingctx, word, first, value):
    """Lane k holds `value` where bit first + k of `word` is set, else 0: Q5's fifth
    bits (a mask test and a masked move with AVX-512)."""
    if not all(isinstance(a, types.Integer) for a in (word, first, value)):
        return None

    def codegen(context, builder, sig, args):
        w = _splat(builder, context.cast(builder, args[0], word, types.uint32), _VI)
        first_ = _splat(builder, context.cast(builder, args[1], first, types.int32), _VI)
        bit = builder.shl(ir.Constant(_VI, [1] * LANES), builder.add(first_, ir.Constant(_VI, list(range(LANES)))))
        is_set = builder.icmp_unsigned("!=", builder.and_(w, bit), ir.Constant(_VI, [0] * LANES))
        v = _splat(builder, context.cast(builder, args[2], value, types.int32), _VI)
        return builder.select(is_set, v, ir.Constant(_VI, [0] * LANES))
    return i32x16(word, first, value), codegen


@intrinsic
def lane(typingctx, v, i):
    """Lane i of v in every lane (i a constant once the loops around are unrolled)."""
    if not (v is f32x16 and isinstance(i, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        one = builder.extract_element(args[0], context.cast(builder, args[1], i, types.int32))
        return _splat(builder, one, _VF)
    return f32x16(v, i), codegen


@intrinsic
def to_float(typingctx, q):
    """Signed i32 lanes -> float32 lanes (exact for the small codes here)."""
    if q is not i32x16:
        return None

    def codegen(context, builder, sig, args):
        return builder.sitofp(args[0], _VF)
    return f32x16(q), codegen


@intrinsic
def bits_to_float(typingctx, q):
    """Reinterpret i32 lanes as float32 (bf16 << 16 is a float32)."""
    if q is not i32x16:
        return None

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], _VF)
    return f32x16(q), codegen


@intrinsic
def fma(typingctx, a, b, c):
    """a * b + c, rounded once."""
    if not (a is f32x16 and b is f32x16 and c is f32x16):
        return None

    def codegen(context, builder, sig, args):
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_VF, [_VF] * 3), "llvm.fma.v16f32")
        return builder.call(fn, list(args))
    return f32x16(a, b, c), codegen


@intrinsic
def hsum(typingctx, a):
    """The sum of the lanes (in a tree: the order is the hardware's, not left to right)."""
    if a is not f32x16:
        return None

    def codegen(context, builder, sig, args):
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_F32, [_F32, _VF]),
                                            "llvm.vector.reduce.fadd.v16f32")
        return builder.call(fn, [ir.Constant(_F32, 0.0), args[0]], fastmath=("reassoc",))
    return types.float32(a), codegen


# --- operators --------------------------------------------------------------------------

def _binary(name: str, vty: _Vec, emit):
    """An intrinsic for `vec op vec` or `vec op scalar` (the scalar goes to every lane)."""
    elem = types.float32 if vty is f32x16 else types.int32
    llty = _VF if vty is f32x16 else _VI

    def typer(typingctx, a, b):
        if a is not vty or not (b is vty or isinstance(b, (types.Integer, types.Float))):
            return None

        def codegen(context, builder, sig, args):
            rhs = args[1]
            if b is not vty:
                rhs = _splat(builder, context.cast(builder, rhs, b, elem), llty)
            return emit(builder)(args[0], rhs)
        return vty(a, b), codegen
    typer.__name__ = name
    return intrinsic(typer)


_OPS = {
    (operator.add, f32x16): lambda b: b.fadd, (operator.sub, f32x16): lambda b: b.fsub,
    (operator.mul, f32x16): lambda b: b.fmul,
    (operator.add, i32x16): lambda b: b.add, (operator.sub, i32x16): lambda b: b.sub,
    (operator.mul, i32x16): lambda b: b.mul,
    (operator.and_, i32x16): lambda b: b.and_, (operator.or_, i32x16): lambda b: b.or_,
    (operator.rshift, i32x16): lambda b: b.lshr, (operator.lshift, i32x16): lambda b: b.shl,
}


def _register(op, vty, emit):
    impl = _binary(f"{op.__name__}_{vty.name}", vty, emit)

    @overload(op)
    def _ov(a, b):
        if a is vty:
            return lambda a, b: impl(a, b)


for (_op, _vty), _emit in _OPS.items():
    _register(_op, _vty, _emit)


# --- work sharing -----------------------------------------------------------------------

@intrinsic
def fetch_add(typingctx, a, i):
    """Atomically a[i] += 1 and return the old value (a: int64 array): threads take the
    next block of rows from a shared counter."""
    if not (isinstance(a, types.Array) and a.dtype == types.int64 and isinstance(i, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        ptr = _data(context, builder, sig.args[0], args[0], context.cast(builder, args[1], i, types.intp))
        return builder.atomic_rmw("add", ptr, ir.Constant(ir.IntType(64), 1), "monotonic")
    return types.int64(a, i), codegen
