"""Gemma 3's eyes: a SigLIP vision tower and the Gemma 3 projector, from an mmproj GGUF
(llama.cpp's clip.cpp graph for Gemma 3), as small functions over numpy arrays.

    tower = VisionTower(GGUFFile("mmproj.gguf"))
    pixels = tower.resize(pil_image)               # [S, S, 3] uint8, as transformers resizes
    emb = tower.encode(tower.normalize(pixels))    # [256, d_text] float32 soft tokens

image [S, S, 3] -> patches as one matrix multiply -> + position -> n_layer pre-LN blocks
-> post LN -> k x k average pool -> RMSNorm (soft_emb_norm) -> @ input_projection.

The large per-layer matrices stay in the file as stored (any ggml type) and are
dequantized to float32 a layer at a time while encoding (into buffers reused from layer
to layer, by the compiled kernels where they run), after which their pages are handed
back to the OS: an image costs a layer's weights and the activations in memory, not the
whole tower in float32 (1.7 GB for the real one). Everything else (embeddings,
norms, biases, projection) is float32 in memory from load. The work is split across
`threads` Python threads calling single-threaded BLAS (see the forward pass). Pillow is
not imported here: `resize` takes a PIL image from runner.images.
"""
from __future__ import annotations

import contextlib
import hashlib
import mmap
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from . import kernels
from .gguf import GGUFError, GGUFFile, TensorInfo
from .model import gelu_tanh, rms_norm
from .quants import GGMLType, dequantize
from .threads import single_threaded_blas

F32 = np.float32
DEFAULT_POOL = 4          # llama.cpp's default for gemma3: 64x64 patches -> 16x16 tokens
ATTN_ROWS = 256           # query rows per attention step: scores [heads, 256, n_patches]
MLP_ROWS = 512            # rows per MLP step: the hidden activations are [512, d_ff]


# --- configuration --------------------------------------------------------------------

@dataclass(frozen=True)
class VisionConfig:
    image_size: int           # input side in pixels (896)
    patch_size: int           # 14
    d: int                    # embedding_length (1152)
    d_ff: int                 # feed_forward_length (4304)
    n_layer: int              # 27
    n_head: int               # 16
    eps: float                # LayerNorm and soft_emb_norm epsilon
    proj_dim: int             # projection_dim: the text model's width
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    pool: int                 # average-pool kernel and stride, in patches (4)

    @property
    def patches_per_side(self) -> int:
        return self.image_size // self.patch_size

    @property
    def n_patches(self) -> int:
        return self.patches_per_side ** 2

    @property
    def tokens_per_side(self) -> int:
        # why: AvgPool2d without padding drops a remainder that does not fill a kernel
        return self.patches_per_side // self.pool

    @property
    def n_tokens(self) -> int:
        return self.tokens_per_side ** 2

    @classmethod
    def from_gguf(cls, g: GGUFFile) -> "VisionConfig":
        arch = g.get("general.architecture")
        if arch != "clip":
            raise GGUFError(f"{g.path}: general.architecture: expected 'clip' (an mmproj file), found {arch!r}")
        proj = g.get("clip.projector_type", g.get("clip.vision.projector_type"))
        if proj != "gemma3":
            raise GGUFError(f"{g.path}: clip.projector_type: expected 'gemma3', found {proj!r}")

        def key(name, default=None, kind=int):
            return g.value(f"clip.vision.{name}", kind, default)

        def triple(name):
            v = g.get(f"clip.vision.{name}", [0.5, 0.5, 0.5])
            v = [float(x) for x in np.asarray(v).ravel()]
            if len(v) != 3 or (name == "image_std" and min(v) <= 0):
                raise GGUFError(f"{g.path}: clip.vision.{name}: expected 3 values, found {v}")
            return tuple(v)

        cfg = cls(image_size=key("image_size"), patch_size=key("patch_size"), d=key("embedding_length"),
                  d_ff=key("feed_forward_length"), n_layer=key("block_count"),
                  n_head=key("attention.head_count"), eps=key("attention.layer_norm_epsilon", 1e-6, float),
                  proj_dim=key("projection_dim"), mean=triple("image_mean"), std=triple("image_std"),
                  pool=key("projector.scale_factor", DEFAULT_POOL))
        if min(cfg.image_size, cfg.patch_size, cfg.d, cfg.d_ff, cfg.n_layer, cfg.n_head, cfg.pool) <= 0 \
                or cfg.d % cfg.n_head or cfg.n_tokens == 0:
            raise GGUFError(f"{g.path}: clip.vision sizes: expected positive sizes, width a multiple of the "
                            f"heads and at least one pooled token, found image {cfg.image_size} patch "
                            f"{cfg.patch_size} width {cfg.d} heads {cfg.n_head} pool {cfg.pool}")
        return cfg


# --- weights ----------------------------------------------------------------------------

@dataclass
class Matrix:
    """A weight [out, in] kept as the file stores it; `f32()` is its float32 value,
    `release()` lets the OS drop its pages from this process."""
    g: GGUFFile
    info: TensorInfo

    def f32(self, out: np.ndarray | None = None) -> np.ndarray:
        """The float32 value, written into `out` when given (C-contiguous, its shape:
        a buffer reused from layer to layer), else a view (F32 files) or a new array.
        Dequantized by the compiled kernels where they run (runner.kernels)."""
        if self.info.type == GGMLType.F32 and out is None:
            return self.g.array(self.info.name)
        if self.info.type == GGMLType.F32:
            np.copyto(out, self.g.array(self.info.name))
            return out
        raw, n_in = self.g.raw(self.info.name), self.info.shape[-1]
        if kernels.supported(self.info.type, n_in):
            return kernels.dequantize(raw, self.info.type, out=out)
        return dequantize(raw, self.info.type, out=out)

    def release(self) -> None:
        # why: a read-only file mapping can be re-read from the page cache at any time;
        # dropping our pages after use keeps a 1.7 GB tower from sitting in memory
        mm = getattr(self.g, "_mm", None)
        if mm is None or not hasattr(mm, "madvise"):
            return
        start = self.g.offset + self.g.data_offset + self.info.offset
        page = mmap.PAGESIZE
        a, b = -(-start // page) * page, (start + self.info.nbytes) // page * page
        if b > a:
            mm.madvise(mmap.MADV_DONTNEED, a, b - a)


@dataclass
class VisionLayer:
    ln1_w: np.ndarray          # [d]
    ln1_b: np.ndarray
    attn_q: Matrix             # [d, d]
    attn_q_b: np.ndarray       # [d]
    attn_k: Matrix
    attn_k_b: np.ndarray
    attn_v: Matrix
    attn_v_b: np.ndarray
    attn_out: Matrix
    attn_out_b: np.ndarray
    ln2_w: np.ndarray
    ln2_b: np.ndarray
    fc1: Matrix                # [d_ff, d]
    fc1_b: np.ndarray          # [d_ff]
    fc2: Matrix                # [d, d_ff]
    fc2_b: np.ndarray          # [d]

    def matrices(self) -> list[Matrix]:
        return [self.attn_q, self.attn_k, self.attn_v, self.attn_out, self.fc1, self.fc2]

    def qkv(self, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """attn_q | attn_k | attn_v as one float32 matrix [3 d, d], written into w, and
        bias [3 d]: one product instead of three."""
        d = self.attn_q_b.shape[0]
        for i, m in enumerate((self.attn_q, self.attn_k, self.attn_v)):
            m.f32(out=w[i * d:(i + 1) * d])
        return w, np.concatenate([self.attn_q_b, self.attn_k_b, self.attn_v_b])


@dataclass
class VisionWeights:
    patch_embd: np.ndarray     # [d, 3 p p]: the Conv2d kernel, flattened as (channel, row, col)
    patch_b: np.ndarray        # [d]
    position_embd: np.ndarray  # [n_patches, d], patch index row * side + col
    layers: list[VisionLayer]
    post_ln_w: np.ndarray      # [d]
    post_ln_b: np.ndarray
    soft_emb_norm: np.ndarray  # [d], already 1 + w
    input_projection: np.ndarray  # [d, proj_dim]: out = pooled @ W


def load_vision_weights(g: GGUFFile, cfg: VisionConfig) -> VisionWeights:
    d, p = cfg.d, cfg.patch_size

    def info(name: str, shape: tuple[int, ...]) -> TensorInfo:
        t = g.tensors.get(name)
        if t is None:
            raise GGUFError(f"{g.path}: tensor {name} is missing")
        if t.shape != shape:
            raise GGUFError(f"{g.path}: tensor {name}: expected shape {shape}, found {t.shape}")
        return t

    def f32(name: str, *shape: int) -> np.ndarray:
        t = info(name, shape)
        return np.ascontiguousarray(dequantize(g.raw(name), t.type).reshape(shape))

    def layer(il: int) -> VisionLayer:
        b = f"v.blk.{il}."
        # why: older converters swapped the names of fc1 and fc2; fc1 is the one d -> d_ff
        up, down = b + "ffn_up", b + "ffn_down"
        t_up = g.tensors.get(up + ".weight")
        if cfg.d != cfg.d_ff and t_up is not None and t_up.shape == (d, cfg.d_ff):
            up, down = down, up
        return VisionLayer(
            ln1_w=f32(b + "ln1.weight", d), ln1_b=f32(b + "ln1.bias", d),
            attn_q=Matrix(g, info(b + "attn_q.weight", (d, d))), attn_q_b=f32(b + "attn_q.bias", d),
            attn_k=Matrix(g, info(b + "attn_k.weight", (d, d))), attn_k_b=f32(b + "attn_k.bias", d),
            attn_v=Matrix(g, info(b + "attn_v.weight", (d, d))), attn_v_b=f32(b + "attn_v.bias", d),
            attn_out=Matrix(g, info(b + "attn_out.weight", (d, d))), attn_out_b=f32(b + "attn_out.bias", d),
            ln2_w=f32(b + "ln2.weight", d), ln2_b=f32(b + "ln2.bias", d),
            fc1=Matrix(g, info(up + ".weight", (cfg.d_ff, d))), fc1_b=f32(up + ".bias", cfg.d_ff),
            fc2=Matrix(g, info(down + ".weight", (d, cfg.d_ff))), fc2_b=f32(down + ".bias", d),
        )

    return VisionWeights(
        patch_embd=f32("v.patch_embd.weight", d, 3, p, p).reshape(d, 3 * p * p),
        patch_b=f32("v.patch_embd.bias", d),
        position_embd=f32("v.position_embd.weight", cfg.n_patches, d),
        layers=[layer(il) for il in range(cfg.n_layer)],
        post_ln_w=f32("v.post_ln.weight", d), post_ln_b=f32("v.post_ln.bias", d),
        soft_emb_norm=f32("mm.soft_emb_norm.weight", d),
        input_projection=f32("mm.input_projection.weight", d, cfg.proj_dim),
    )


# --- the forward pass -------------------------------------------------------------------
#
# Parallel by hand: `threads` Python threads each take a share of the rows (or heads) and
# call single-threaded BLAS, so the elementwise work (softmax, GELU, norms) runs on every
# core too, instead of on one while OpenBLAS's own threads spin (measured: attention
# 1.17 s -> 0.86 s per layer on 2 cores, the products as fast as threaded BLAS).

_pool: ThreadPoolExecutor | None = None


def parallel(fn, n: int, threads: int) -> None:
    """fn(lo, hi) over range(n) cut into `threads` parts, run at once (numpy releases the
    GIL inside products and ufunc loops). Exceptions are raised here."""
    global _pool
    parts = max(1, min(threads, n))
    if parts == 1:
        fn(0, n)
        return
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=os.cpu_count() or 2, thread_name_prefix="vision")
    bounds = [n * i // parts for i in range(parts + 1)]
    jobs = [_pool.submit(fn, bounds[i], bounds[i + 1]) for i in range(1, parts)]
    try:
        fn(bounds[0], bounds[1])
    finally:
        for j in jobs:
            j.result()


def layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
    """(x - mean) / sqrt(var + eps) * w + b over the last axis."""
    mu = x.mean(axis=-1, keepdims=True)
    xc = x - mu
    var = np.einsum("...i,...i->...", xc, xc)[..., None]       # [..., 1]
    var /= x.shape[-1]
    var += eps
    xc /= np.sqrt(var)
    xc *= w
    xc += b
    return xc


def patch_embed(pixels: np.ndarray, W: VisionWeights, cfg: VisionConfig) -> np.ndarray:
    """The stride-p convolution as one product: [3, S, S] -> [n_patches, d], plus bias
    and position embeddings."""
    p, n = cfg.patch_size, cfg.patches_per_side
    x = pixels[:, :n * p, :n * p].reshape(3, n, p, n, p)          # [c, row, i, col, j]
    cols = x.transpose(1, 3, 0, 2, 4).reshape(n * n, 3 * p * p)   # im2col: [n_patches, c p p]
    out = cols @ W.patch_embd.T                                   # [n_patches, d]
    out += W.patch_b
    out += W.position_embd
    return out


def attention(qkv: np.ndarray, n_head: int, threads: int = 1) -> np.ndarray:
    """Bidirectional multi-head attention, no mask. qkv [T, 3 d] (q already scaled);
    returns [T, d]. Each thread takes a group of heads; per block of ATTN_ROWS query
    rows its scores are [heads, ATTN_ROWS, T], never [n_head, T, T] (1 GB for SigLIP)."""
    T, d = qkv.shape[0], qkv.shape[1] // 3
    hd = d // n_head
    heads = qkv.reshape(T, 3, n_head, hd)
    out = np.empty((T, n_head, hd), dtype=F32)

    def group(h0: int, h1: int) -> None:
        q = np.ascontiguousarray(heads[:, 0, h0:h1].transpose(1, 0, 2))    # [h, T, hd]
        kT = np.ascontiguousarray(heads[:, 1, h0:h1].transpose(1, 2, 0))   # [h, hd, T]
        v = np.ascontiguousarray(heads[:, 2, h0:h1].transpose(1, 0, 2))    # [h, T, hd]
        for a in range(0, T, ATTN_ROWS):
            s = np.matmul(q[:, a:a + ATTN_ROWS], kT)                        # [h, r, T]
            for x in s:           # a head at a time: its [r, T] block stays in cache
                x -= x.max(axis=-1, keepdims=True)
                np.exp(x, out=x)
            sums = s.sum(axis=-1, keepdims=True)                            # [h, r, 1]
            o = np.matmul(s, v)                                             # [h, r, hd]
            o /= sums                                                       # normalize after the product
            out[a:a + ATTN_ROWS, h0:h1] = o.transpose(1, 0, 2)
    parallel(group, n_head, threads)
    return out.reshape(T, d)


_buffers = threading.local()      # per thread: the float32 weights of the layer being run


def _buffer(name: str, shape: tuple[int, int]) -> np.ndarray:
    """A float32 array of this shape, the same one for every layer and image (why: a
    layer's four matrices are 60 MB as float32 in the real tower; allocating them for
    each of 27 layers cost page faults on every image)."""
    bufs = getattr(_buffers, "d", None)
    if bufs is None:
        bufs = _buffers.d = {}
    if name not in bufs or bufs[name].shape != shape:
        bufs[name] = np.empty(shape, dtype=F32)
    return bufs[name]


def encoder_block(L: VisionLayer, cfg: VisionConfig, x: np.ndarray, threads: int = 1) -> np.ndarray:
    """One pre-LN SigLIP block on x [T, d], updated in place and returned:
    x += attn(LN1(x)); x += fc2(gelu_tanh(fc1(LN2(x))))."""
    T, d = x.shape
    w_qkv, b_qkv = L.qkv(_buffer("qkv", (3 * d, d)))               # [3 d, d], [3 d]
    w_qkv[:d] *= F32((d // cfg.n_head) ** -0.5)                    # fold the query scale in
    b_qkv[:d] *= F32((d // cfg.n_head) ** -0.5)
    w_out = L.attn_out.f32(_buffer("attn_out", (d, d)))
    w1 = L.fc1.f32(_buffer("fc1", (cfg.d_ff, d)))
    w2 = L.fc2.f32(_buffer("fc2", (d, cfg.d_ff)))
    qkv = np.empty((T, 3 * d), dtype=F32)

    def project(lo: int, hi: int) -> None:
        np.matmul(layer_norm(x[lo:hi], L.ln1_w, L.ln1_b, cfg.eps), w_qkv.T, out=qkv[lo:hi])
        qkv[lo:hi] += b_qkv
    parallel(project, T, threads)
    o = attention(qkv, cfg.n_head, threads)                        # [T, d]

    def rest(lo: int, hi: int) -> None:
        # rows are independent from here on: output projection and the whole MLP
        for a in range(lo, hi, MLP_ROWS):
            r = slice(a, min(hi, a + MLP_ROWS))
            h = o[r] @ w_out.T                                     # [rows, d]
            h += L.attn_out_b
            x[r] += h
            f = layer_norm(x[r], L.ln2_w, L.ln2_b, cfg.eps) @ w1.T    # [rows, d_ff]
            f += L.fc1_b
            f = gelu_tanh(f) @ w2.T                                # [rows, d]
            f += L.fc2_b
            x[r] += f
    parallel(rest, T, threads)
    return x


def pool(x: np.ndarray, cfg: VisionConfig) -> np.ndarray:
    """k x k average pool of the patch grid: [n_patches, d] -> [n_tokens, d], tokens in
    row-major order (as AvgPool2d, remainder rows and columns dropped)."""
    n, t, k = cfg.patches_per_side, cfg.tokens_per_side, cfg.pool
    grid = x.reshape(n, n, cfg.d)[:t * k, :t * k]                   # [rows, cols, d]
    return grid.reshape(t, k, t, k, cfg.d).mean(axis=(1, 3), dtype=F32).reshape(t * t, cfg.d)


def encode(W: VisionWeights, cfg: VisionConfig, pixels: np.ndarray, threads: int = 1) -> np.ndarray:
    """Normalized pixels [3, S, S] -> soft tokens [n_tokens, proj_dim] float32."""
    with single_threaded_blas() if threads > 1 else contextlib.nullcontext():
        x = patch_embed(pixels, W, cfg)                            # [n_patches, d]
        for L in W.layers:
            x = encoder_block(L, cfg, x, threads)
            for m in L.matrices():
                m.release()
    x = layer_norm(x, W.post_ln_w, W.post_ln_b, cfg.eps)
    pooled = pool(x, cfg)                                          # [n_tokens, d]
    pooled = rms_norm(pooled, W.soft_emb_norm, cfg.eps)
    return np.ascontiguousarray(pooled @ W.input_projection, dtype=F32)   # [n_tokens, proj_dim]


# --- the tower ------------------------------------------------------------------------

class VisionTower:
    """An mmproj file loaded: config, weights, and the image -> soft tokens steps."""

    def __init__(self, g: GGUFFile, threads: int | None = None):
        self.gguf = g
        self.cfg = VisionConfig.from_gguf(g)
        self.weights = load_vision_weights(g, self.cfg)
        self.threads = max(1, threads or os.cpu_count() or 1)     # threads sharing an encode

    def resize(self, image) -> np.ndarray:
        """An RGB PIL image -> [S, S, 3] uint8, resized as transformers' Gemma 3 image
        processor does (Pillow, bilinear, to image_size x image_size, aspect not kept)."""
        from PIL import Image
        s = self.cfg.image_size
        if image.size != (s, s):
            image = image.resize((s, s), resample=Image.Resampling.BILINEAR)
        return np.asarray(image.convert("RGB"), dtype=np.uint8)

    def normalize(self, pixels: np.ndarray) -> np.ndarray:
        """[S, S, 3] uint8 -> [3, S, S] float32: x / 255, then (x - mean) / std, rounded
        like transformers (the rescale in float64, the rest in float32)."""
        x = (pixels.astype(np.float64) * (1 / 255)).astype(F32)
        x = (x - np.asarray(self.cfg.mean, dtype=F32)) / np.asarray(self.cfg.std, dtype=F32)
        return np.ascontiguousarray(x.transpose(2, 0, 1))

    def encode(self, pixels: np.ndarray) -> np.ndarray:
        """Normalized pixels [3, S, S] -> [n_tokens, proj_dim] float32."""
        s = self.cfg.image_size
        if pixels.shape != (3, s, s):
            raise ValueError(f"encode: expected pixels of shape (3, {s}, {s}), found {pixels.shape}")
        return encode(self.weights, self.cfg, np.asarray(pixels, dtype=F32), self.threads)

    @staticmethod
    def key(pixels: np.ndarray) -> int:
        """A content hash of resized pixels: equal images share cache entries."""
        h = hashlib.blake2b(pixels.tobytes(), digest_size=8)
        h.update(repr(pixels.shape).encode())
        return int.from_bytes(h.digest(), "little")


def load_vision(src, threads: int | None = None) -> VisionTower:
    """An mmproj GGUF (a path or an open GGUFFile) as a VisionTower."""
    return VisionTower(src if isinstance(src, GGUFFile) else GGUFFile(src), threads)
