"""The Gemma 3 text decoder as small functions over numpy arrays (the computation of
llama.cpp's gemma3 graph).

Weights are named like the GGUF tensors and stay as the file stores them, mapped, not
copied: the compiled kernels (runner/kernels) multiply the quantized blocks directly, so
memory is the file plus the KV cache, as with llama.cpp. Two pairs act as one matrix each
(attn_q|attn_k|attn_v and ffn_gate|ffn_up) so that a decode step makes four products per
layer. Where numba is missing (or GEMMA_RUNNER_KERNELS=numpy), every weight is
dequantized to float32 at load and multiplied by numpy's BLAS: the reference path.
"""
from __future__ import annotations

import contextlib
import functools
import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from . import kernels
from .gguf import GGUFError, GGUFFile
from .quants import GGMLType, dequantize
from .threads import single_threaded_blas

F32 = np.float32


# --- configuration --------------------------------------------------------------------

@dataclass(frozen=True)
class Config:
    n_vocab: int
    d: int                      # embedding_length
    n_layer: int
    d_ff: int
    n_head: int
    n_kv: int
    head_dim: int
    eps: float
    rope_base: float            # global layers
    rope_base_local: float      # sliding-window layers
    rope_scale: float           # linear scaling factor of global layers (1 = none)
    sliding_window: int         # 0: no sliding layers
    sliding: tuple[bool, ...]   # per layer: does it use the sliding window?
    n_ctx_train: int
    query_scale: float
    name: str = ""
    path: str = ""              # the GGUF file, for error messages

    def is_sliding(self, il: int) -> bool:
        return self.sliding[il]

    @classmethod
    def from_gguf(cls, g: GGUFFile) -> "Config":
        arch = g.get("general.architecture")
        if arch != "gemma3":
            raise GGUFError(f"{g.path}: general.architecture: expected 'gemma3', found {arch!r}")

        def key(name, default=None, kind=int):
            return g.value(f"gemma3.{name}", kind, default)

        d, n_head, n_layer = key("embedding_length"), key("attention.head_count"), key("block_count")
        head_dim = key("attention.key_length", d // max(n_head, 1))
        if head_dim != key("attention.value_length", head_dim):
            raise GGUFError(f"{g.path}: key_length and value_length differ; Gemma 3 uses one head size")
        n_kv = key("attention.head_count_kv", n_head)
        if min(d, n_head, n_layer, head_dim, n_kv) <= 0 or n_head % n_kv:
            raise GGUFError(f"{g.path}: gemma3 sizes: expected positive sizes with head_count a multiple "
                            f"of head_count_kv, found d={d} heads={n_head} kv={n_kv} head_dim={head_dim}")
        window = key("attention.sliding_window", 0)
        pattern = g.get("gemma3.attention.sliding_window_pattern", 6)
        if isinstance(pattern, (list, np.ndarray)):          # per-layer flags, newer converters
            sliding = tuple(bool(x) for x in pattern)
            if len(sliding) != n_layer:
                raise GGUFError(f"{g.path}: gemma3.attention.sliding_window_pattern: expected {n_layer} "
                                f"flags, found {len(sliding)}")
        else:
            # every pattern-th layer is global (5, 11, 17, ...), the others slide
            sliding = tuple(int(pattern) > 1 and il % int(pattern) < int(pattern) - 1 for il in range(n_layer))
        if window <= 0:
            sliding = (False,) * n_layer
        scale = 1.0
        if g.get("gemma3.rope.scaling.type", "linear" if "gemma3.rope.scaling.factor" in g.metadata else None) == "linear":
            scale = key("rope.scaling.factor", 1.0, float)
        elif "gemma3.rope.scale_linear" in g.metadata:
            scale = key("rope.scale_linear", 1.0, float)
        # why: Gemma 3 27B scales queries by 1/sqrt(d/n_head) = 1/sqrt(168); the other sizes
        # by 1/sqrt(head_dim). Like llama.cpp, recognize 27B by its 62 layers.
        q_scalar = d / n_head if n_layer == 62 else head_dim
        vocab = g.tensors.get("token_embd.weight")
        if vocab is None:
            raise GGUFError(f"{g.path}: tensor token_embd.weight is missing")

        def positive(name, default, kind=float):
            # why: a NaN epsilon or a zero RoPE base loads fine and then computes NaN logits
            v = key(name, default, kind)
            if not (math.isfinite(v) and v > 0):
                raise GGUFError(f"{g.path}: gemma3.{name}: expected a finite number > 0, found {v!r}")
            return v

        if not (math.isfinite(scale) and scale > 0):
            raise GGUFError(f"{g.path}: gemma3.rope scaling factor: expected a finite number > 0, found {scale!r}")
        return cls(
            n_vocab=vocab.shape[0], d=d, n_layer=n_layer, d_ff=positive("feed_forward_length", None, int),
            n_head=n_head, n_kv=n_kv, head_dim=head_dim,
            eps=positive("attention.layer_norm_rms_epsilon", 1e-6),
            rope_base=positive("rope.freq_base", 1e6),
            rope_base_local=positive("rope.freq_base_swa", 10000.0),
            rope_scale=scale,
            sliding_window=window, sliding=sliding,
            n_ctx_train=positive("context_length", 8192, int), query_scale=q_scalar ** -0.5,
            name=str(g.get("general.name", "") or ""), path=g.path,
        )


# --- weights ----------------------------------------------------------------------------

class Linear:
    """y = x @ W.T for W [n_out, n_in]: one GGUF tensor, or several stacked by rows
    (attn_q|attn_k|attn_v, ffn_gate|ffn_up; each part writes its own output columns).

    Quantized (the default where the compiled kernels run): each part stays as the file
    stores it, a view of the memory map. A few rows of x (decode, batched decode, drafted
    tokens) are multiplied straight from the blocks, each weight read once for all rows;
    more rows (a prompt) too where the kernels' many-row product beats BLAS for every
    part's type (kernels.many_rows: the 8-bit types), else a block of W's rows at a time is
    dequantized into a reused float32 buffer and multiplied with numpy's BLAS. Float32 (`quantized=False`, the numpy path):
    the whole matrix dequantized at load, `w`, and BLAS for everything."""

    FEW_ROWS = 16            # up to this many rows of x: the kernels
    # float32 values dequantized at once for BLAS (64 MB, reused). why so many: every
    # BLAS call synchronizes OpenBLAS's threads, and on a busy machine that cost up to
    # ~80 ms a call: in blocks of 1M values the 1B's ffn_gate|ffn_up took 3.5x as long
    # as the float32 product, in blocks of 16M values 1.15x (400 rows, load ~9)
    BLOCK_VALUES = 1 << 24
    # The float32 path against a few rows of x, where OpenBLAS is weakest (its gemm
    # repacks all of W for every call). Measured on the 270M weights: against the 262k-row
    # output matrix, 2-16 rows go fastest as W-block @ x.T products over blocks of 2048
    # rows (8 rows: 55-60 ms, one row: 27 ms); against the layer matrices, 2-3 rows as one
    # matrix-vector product each.
    PER_ROW = 3
    BLOCK_ROWS = 2048

    def __init__(self, parts: list[tuple[np.ndarray, GGMLType]], n_in: int, quantized: bool):
        self.parts = parts                          # [(raw uint8 [rows, row bytes], type)]
        self.starts = [sum(len(raw) for raw, _ in parts[:i]) for i in range(len(parts))]   # first row of each
        self.n_out = sum(len(raw) for raw, _ in parts)
        self.n_in = n_in
        self.w: np.ndarray | None = None            # [n_out, n_in] float32: the numpy path only
        # the kernels' calls: runs of consecutive parts of one type (first column, raws,
        # type), one call each (why: a call costs ~5 us, and a larger product can use
        # both cores); none when a part's rows are not whole units (BLAS for every x)
        self.runs: list[tuple[int, list[np.ndarray], GGMLType]] = []
        if all(kernels.supported(qtype, n_in) for _, qtype in parts):
            for start, (raw, qtype) in zip(self.starts, parts):
                if self.runs and self.runs[-1][2] == qtype and len(self.runs[-1][1]) < 3:
                    self.runs[-1][1].append(raw)
                else:
                    self.runs.append((start, [raw], qtype))
        if not quantized:
            self.w = np.empty((self.n_out, n_in), dtype=F32)
            for start, (raw, qtype) in zip(self.starts, parts):
                dequantize(raw, qtype, out=self.w[start:start + len(raw)])

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if self.w is not None:
            return self._f32(x)
        T = x.shape[0]
        out = np.empty((T, self.n_out), dtype=F32)
        x = np.ascontiguousarray(x, dtype=F32)
        if self.runs and (T <= self.FEW_ROWS or self.in_kernels()):
            for col, raws, qtype in self.runs:
                kernels.matmul(raws, qtype, x, out, col)
            return out
        step = max(1, self.BLOCK_VALUES // self.n_in)
        for r in range(0, self.n_out, step):
            w = self._dequantized(r, min(self.n_out, r + step))
            np.matmul(x, w.T, out=out[:, r:r + len(w)])                # [T, in] @ [in, rows]
        return out

    def in_kernels(self) -> bool:
        """Does every product, of any number of rows, run in the compiled kernels?"""
        return self.w is None and bool(self.runs) and self.n_in % 64 == 0 and \
            all(kernels.many_rows(qtype) for _, _, qtype in self.runs)

    def _dequantized(self, r0: int, r1: int) -> np.ndarray:
        """Rows r0..r1 of W (across parts) as float32 [r1 - r0, n_in], in this thread's
        reused buffer (valid until the next call): one BLAS call for all the parts."""
        n = r1 - r0
        buf = getattr(_scratch, "buf", None)
        if buf is None or buf.size < n * self.n_in:
            buf = _scratch.buf = np.empty(max(n * self.n_in, self.BLOCK_VALUES), dtype=F32)
        w = buf[:n * self.n_in].reshape(n, self.n_in)
        for start, (raw, qtype) in zip(self.starts, self.parts):
            a, b = max(r0, start), min(r1, start + len(raw))
            if a < b and kernels.supported(qtype, self.n_in):
                kernels.dequantize(raw, qtype, slice(a - start, b - start), out=w[a - r0:b - r0])
            elif a < b:
                dequantize(raw[a - start:b - start], qtype, out=w[a - r0:b - r0])
        return w

    def _f32(self, x: np.ndarray) -> np.ndarray:
        T = x.shape[0]
        if 1 < T <= self.FEW_ROWS and self.n_out >= 4 * self.BLOCK_ROWS:
            outT = np.empty((self.n_out, T), dtype=F32)
            for r in range(0, self.n_out, self.BLOCK_ROWS):
                np.matmul(self.w[r:r + self.BLOCK_ROWS], x.T, out=outT[r:r + self.BLOCK_ROWS])
            return np.ascontiguousarray(outT.T)
        if 1 < T <= self.PER_ROW:
            out = np.empty((T, self.n_out), dtype=F32)
            for i in range(T):
                np.matmul(self.w, x[i], out=out[i])                    # [out, in] @ [in] -> [out]
            return out
        return x @ self.w.T                                            # [T, in] -> [T, out]

    def rows(self, ids: np.ndarray) -> np.ndarray:
        """W[ids] as float32 [len(ids), n_in] (the embedding look-up of a tied output
        matrix, and the draft vocabulary's rows); a single-part matrix only."""
        if self.w is not None:
            return self.w[ids]
        (raw, qtype), = self.parts
        ids = np.asarray(ids, dtype=np.int64).ravel()
        if kernels.supported(qtype, self.n_in):
            return kernels.dequantize(raw, qtype, ids)
        return dequantize(raw[ids], qtype)


_scratch = threading.local()     # per thread: the float32 buffer of Linear's BLAS path


@dataclass
class Layer:
    attn_norm: np.ndarray          # [d]
    attn_qkv: Linear               # [(n_head + 2 n_kv) hd, d]: attn_q | attn_k | attn_v
    attn_q_norm: np.ndarray        # [hd]
    attn_k_norm: np.ndarray        # [hd]
    attn_output: Linear            # [d, n_head hd]
    post_attention_norm: np.ndarray
    ffn_norm: np.ndarray
    ffn_gate_up: Linear            # [2 d_ff, d]: ffn_gate | ffn_up
    ffn_down: Linear               # [d, d_ff]
    post_ffw_norm: np.ndarray


@dataclass
class Weights:
    token_embd: Linear             # [n_vocab, d], also the output matrix (tied)
    output_norm: np.ndarray        # [d]
    layers: list[Layer]

    @functools.cached_property
    def products_in_kernels(self) -> bool:
        """Do the compiled kernels take every product of the layers, for any number of
        rows? Then numpy's BLAS is left with attention alone, and runs it on one thread
        (`_layers`). why: OpenBLAS's threads spin a while (~0.1 s) after each call before
        they sleep, and took the cores from the kernels' threads: prompts ran at half
        speed (270M, 400 tokens: 655 tok/s, 922 with BLAS on one thread; 1B 152 -> 247)."""
        return all(lin.in_kernels() for L in self.layers
                   for lin in (L.attn_qkv, L.attn_output, L.ffn_gate_up, L.ffn_down))


def f32_bytes(cfg: Config) -> int:
    """Bytes the weights take as float32 (the numpy path)."""
    per_layer = cfg.d * (cfg.n_head + 2 * cfg.n_kv) * cfg.head_dim + cfg.n_head * cfg.head_dim * cfg.d \
        + 3 * cfg.d * cfg.d_ff
    return 4 * (cfg.n_vocab * cfg.d + cfg.n_layer * per_layer)


def available_memory() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def load_weights(g: GGUFFile, cfg: Config, quantized: bool | None = None, threads: int | None = None) -> Weights:
    """Map every tensor (quantized) or dequantize it to float32 (the numpy path).

    quantized=None: quantized where the compiled kernels run (`kernels.available()`:
    numba importable and GEMMA_RUNNER_KERNELS is not "numpy"). threads sets
    the kernels' threads (None: every core)."""
    quantized = kernels.available() if quantized is None else quantized and kernels.available()
    if quantized:
        kernels.set_threads(threads)
    elif f32_bytes(cfg) > available_memory():
        raise GGUFError(f"{g.path}: the numpy path needs {f32_bytes(cfg) / 1e9:.1f} GB for float32 weights, "
                        f"{available_memory() / 1e9:.1f} GB are available; the compiled kernels keep "
                        f"the weights quantized (install numba, unset {kernels.ENV})")

    def tensor(name: str, shape: tuple[int, ...]) -> tuple[np.ndarray, GGMLType]:
        info = g.tensors.get(name)
        if info is None:
            raise GGUFError(f"{g.path}: tensor {name} is missing")
        if info.shape != shape:
            raise GGUFError(f"{g.path}: tensor {name}: expected shape {shape}, found {info.shape}")
        return g.raw(name), info.type

    def norm(name: str, n: int) -> np.ndarray:
        raw, qtype = tensor(name, (n,))
        return np.ascontiguousarray(dequantize(raw, qtype))

    d, hd = cfg.d, cfg.head_dim

    def layer(il: int) -> Layer:
        p = f"blk.{il}."
        return Layer(
            attn_norm=norm(p + "attn_norm.weight", d),
            attn_qkv=Linear([tensor(p + "attn_q.weight", (cfg.n_head * hd, d)),
                             tensor(p + "attn_k.weight", (cfg.n_kv * hd, d)),
                             tensor(p + "attn_v.weight", (cfg.n_kv * hd, d))], d, quantized),
            attn_q_norm=norm(p + "attn_q_norm.weight", hd),
            attn_k_norm=norm(p + "attn_k_norm.weight", hd),
            attn_output=Linear([tensor(p + "attn_output.weight", (d, cfg.n_head * hd))], cfg.n_head * hd,
                               quantized),
            post_attention_norm=norm(p + "post_attention_norm.weight", d),
            ffn_norm=norm(p + "ffn_norm.weight", d),
            ffn_gate_up=Linear([tensor(p + "ffn_gate.weight", (cfg.d_ff, d)),
                                tensor(p + "ffn_up.weight", (cfg.d_ff, d))], d, quantized),
            ffn_down=Linear([tensor(p + "ffn_down.weight", (d, cfg.d_ff))], cfg.d_ff, quantized),
            post_ffw_norm=norm(p + "post_ffw_norm.weight", d),
        )

    embd = lambda: Linear([tensor("token_embd.weight", (cfg.n_vocab, d))], d, quantized)   # noqa: E731
    if quantized:             # mapping only: nothing to spread over threads
        return Weights(token_embd=embd(), output_norm=norm("output_norm.weight", d),
                       layers=[layer(il) for il in range(cfg.n_layer)])
    # numpy releases the GIL while dequantizing: load tensors on several threads
    with ThreadPoolExecutor(max(1, threads or os.cpu_count() or 1)) as pool:
        first = pool.submit(embd)
        layers = list(pool.map(layer, range(cfg.n_layer)))
        return Weights(token_embd=first.result(), output_norm=norm("output_norm.weight", d), layers=layers)


# --- the forward pass -------------------------------------------------------------------

def rms_norm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    """x / sqrt(mean(x^2) + eps) * w over the last axis; w already holds Gemma's 1 + w."""
    ms = np.einsum("...i,...i->...", x, x)[..., None]       # sum of squares, [..., 1]
    ms /= x.shape[-1]
    ms += eps
    return x / np.sqrt(ms) * w


_GELU_C = F32(-2.0 * math.sqrt(2.0 / math.pi))


def gelu_tanh(x: np.ndarray) -> np.ndarray:
    """GELU, tanh approximation: 0.5 x (1 + tanh(u)), u = sqrt(2/pi) (x + 0.044715 x^3),
    computed as the equal x / (1 + exp(-2u)): numpy's exp is twice as fast as its tanh."""
    y = x * x
    y *= F32(0.044715)
    y += 1
    y *= x
    y *= _GELU_C                                  # -2u
    with np.errstate(over="ignore"):              # exp -> inf for very negative x: x/inf = -0
        np.exp(y, out=y)
    y += 1
    return np.divide(x, y, out=y)


@functools.lru_cache(maxsize=16)
def _inv_freq(base: float, scale: float, head_dim: int) -> np.ndarray:
    inv = F32(1.0) / (F32(base) ** (np.arange(0, head_dim, 2, dtype=F32) / F32(head_dim)))
    return (inv / F32(scale)).astype(F32)


def rope_tables(cfg: Config, positions: np.ndarray, local: bool) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin [T, hd/2] of NEOX RoPE. why: Gemma 3 gives sliding layers their own
    base (10k) and applies linear scaling only to global layers. Computed in float32 the
    way transformers does, so positions far into the context round alike."""
    base, scale = (cfg.rope_base_local, 1.0) if local else (cfg.rope_base, cfg.rope_scale)
    angles = positions.astype(F32)[:, None] * _inv_freq(base, scale, cfg.head_dim)[None, :]
    return np.cos(angles), np.sin(angles)


def apply_rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """NEOX rotation of pairs (i, i + hd/2). x [T, heads, hd]; cos, sin [T, hd/2]."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    c, s = cos[:, None, :], sin[:, None, :]
    out = np.empty_like(x)
    out[..., :half] = x1 * c - x2 * s
    out[..., half:] = x2 * c + x1 * s
    return out


def attention_mask(qpos: np.ndarray, kpos: np.ndarray, window: int, groups: np.ndarray | None,
                   kgroups: np.ndarray | None) -> np.ndarray | None:
    """Additive mask [T, S] (0 or -inf), or None when every key is visible.

    A query at p sees a key at p' when 0 <= p' <= p and, on sliding layers, p - p' < window.
    Tokens of one image (same nonzero group id) also see each other both ways."""
    if len(qpos) == 1 and groups is None and kpos[-1] == qpos[0] and kpos[0] >= 0 \
            and (not window or qpos[0] - kpos[0] < window):
        return None                       # a decode step whose keys are exactly what it sees
    delta = qpos[:, None] - kpos[None, :]                         # [T, S]
    ok = (delta >= 0) & (kpos[None, :] >= 0)
    if groups is not None and kgroups is not None:
        ok |= (groups[:, None] == kgroups[None, :]) & (groups[:, None] > 0) & (kpos[None, :] >= 0)
    if window:
        ok &= delta < window
    return np.where(ok, F32(0), F32(-np.inf))


def attention(q: np.ndarray, K: np.ndarray, V: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """Softmax attention with grouped KV heads.

    q [T, n_head, hd] (already scaled); K, V [n_kv, S, hd]; mask [T, S] or None; returns
    [T, n_head * hd]. Query head h reads KV head h // (n_head / n_kv)."""
    T, n_head, hd = q.shape
    n_kv, S = K.shape[0], K.shape[1]
    g = n_head // n_kv
    few = T * g <= 16
    if few:
        # decode: OpenBLAS multiplies K @ q^T about twice as fast as q @ K^T for a few
        # query rows; the small score matrix is then transposed so softmax reduces along
        # contiguous memory
        qT = q.reshape(T, n_kv, g, hd).transpose(1, 3, 0, 2).reshape(n_kv, hd, T * g)
        s = np.matmul(K, qT).transpose(0, 2, 1).copy()              # [n_kv, T g, S]
    else:
        qg = q.reshape(T, n_kv, g, hd).transpose(1, 0, 2, 3).reshape(n_kv, T * g, hd)
        s = np.matmul(qg, K.transpose(0, 2, 1))                     # [n_kv, T g, S]
    if mask is not None:
        s = s.reshape(n_kv, T, g, S)
        s += mask[None, :, None, :]
        s = s.reshape(n_kv, T * g, S)
    s -= s.max(axis=-1, keepdims=True)
    np.exp(s, out=s)
    s /= s.sum(axis=-1, keepdims=True)
    if few:
        o = np.matmul(V.transpose(0, 2, 1), s.transpose(0, 2, 1))   # [n_kv, hd, T g]
        return o.reshape(n_kv, hd, T, g).transpose(2, 0, 3, 1).reshape(T, n_head * hd)
    o = np.matmul(s, V)                                             # [n_kv, T g, hd]
    return o.reshape(n_kv, T, g, hd).transpose(1, 0, 2, 3).reshape(T, n_head * hd)


def block(L: Layer, cfg: Config, caches: list, seqs: list[slice], x: np.ndarray, positions: np.ndarray,
          rope, window: int, groups: np.ndarray | None) -> np.ndarray:
    """One decoder layer on x [T, d]; returns the new residual stream. The rows are one
    or more sequences: rows seqs[i] belong to the sequence cached in caches[i] (one
    sequence's chunk, or one token each of several: weights are read once for all)."""
    T = x.shape[0]
    nq, nkv, hd = cfg.n_head, cfg.n_kv, cfg.head_dim
    h = rms_norm(x, L.attn_norm, cfg.eps)
    qkv = L.attn_qkv(h)                                           # [T, (nq + 2 nkv) hd]
    q = qkv[:, :nq * hd].reshape(T, nq, hd)
    k = qkv[:, nq * hd:(nq + nkv) * hd].reshape(T, nkv, hd)
    v = qkv[:, (nq + nkv) * hd:].reshape(T, nkv, hd)
    q = rms_norm(q, L.attn_q_norm, cfg.eps)                       # per head, over hd
    k = rms_norm(k, L.attn_k_norm, cfg.eps)
    q = apply_rope(q, *rope)
    q *= F32(cfg.query_scale)
    k = apply_rope(k, *rope)
    att = np.empty((T, nq * hd), dtype=F32)
    for cache, rows in zip(caches, seqs):
        pos = positions[rows]
        K, V, kpos = cache.update_and_fetch(k[rows].transpose(1, 0, 2), v[rows].transpose(1, 0, 2), pos)
        kgroups = None
        if groups is not None:                                    # image tokens are all in this chunk
            kgroups = np.zeros(len(kpos), dtype=groups.dtype)
            kgroups[-len(pos):] = groups[rows]
        mask = attention_mask(pos, kpos, window, groups if groups is None else groups[rows], kgroups)
        att[rows] = attention(q[rows], K, V, mask)
    o = L.attn_output(att)                                        # [T, d]
    x = x + rms_norm(o, L.post_attention_norm, cfg.eps)
    h = rms_norm(x, L.ffn_norm, cfg.eps)
    gu = L.ffn_gate_up(h)                                         # [T, 2 d_ff]
    f = gelu_tanh(gu[:, :cfg.d_ff])
    f *= gu[:, cfg.d_ff:]
    f = L.ffn_down(f)                                             # [T, d]
    return x + rms_norm(f, L.post_ffw_norm, cfg.eps)


def _layers(W: Weights, cfg: Config, caches: list[list], seqs: list[slice], x: np.ndarray,
            positions: np.ndarray, groups: np.ndarray | None) -> np.ndarray:
    """All layers; caches[i] is sequence i's per-layer cache list."""
    rope_g = rope_tables(cfg, positions, local=False)
    rope_l = rope_tables(cfg, positions, local=True) if any(cfg.sliding) else None
    with single_threaded_blas() if W.products_in_kernels else contextlib.nullcontext():
        for il, L in enumerate(W.layers):
            local = cfg.sliding[il]
            x = block(L, cfg, [c[il] for c in caches], seqs, x, positions, rope_l if local else rope_g,
                      cfg.sliding_window if local else 0, groups)
    return x


def forward(W: Weights, cfg: Config, caches: list, ids: np.ndarray, p0: int,
            embeds: list[tuple[int, np.ndarray]] | None = None, groups: np.ndarray | None = None,
            logits: str = "last") -> np.ndarray | None:
    """Run tokens `ids` at positions p0.. through the model, filling `caches`.

    embeds: (row, [n, d] array) pairs that replace the embeddings of rows row..row+n-1
    (image soft tokens; why: they are not multiplied by sqrt(d) like token embeddings).
    groups: [T] image id per row (0 = text) for bidirectional attention inside an image.
    logits: "last" -> [1, n_vocab], "all" -> [T, n_vocab], "none" -> None.
    """
    T = len(ids)
    positions = np.arange(p0, p0 + T)
    x = W.token_embd.rows(ids)                                    # [T, d]
    x *= F32(math.sqrt(cfg.d))
    for row, e in embeds or ():
        x[row:row + len(e)] = e
    x = _layers(W, cfg, [caches], [slice(0, T)], x, positions, groups)
    if logits == "none":
        return None
    h = rms_norm(x[-1:] if logits == "last" else x, W.output_norm, cfg.eps)
    return W.token_embd(h)                                        # [T or 1, n_vocab]


def forward_batch(W: Weights, cfg: Config, caches: list[list], ids: np.ndarray,
                  positions: np.ndarray, output: bool = True) -> np.ndarray:
    """One token for each of several sequences (caches[i], at positions[i]) in a single
    pass over the weights: logits [len(ids), n_vocab]. why: decoding reads every weight
    for each token, so B sequences decoded together cost far less than B steps.
    output=False stops before the output matrix: the final normed states [B, d], whose
    product with W.token_embd gives the logits."""
    x = W.token_embd.rows(ids)                                    # [B, d]
    x *= F32(math.sqrt(cfg.d))
    x = _layers(W, cfg, caches, [slice(b, b + 1) for b in range(len(ids))], x, positions, None)
    h = rms_norm(x, W.output_norm, cfg.eps)
    return W.token_embd(h) if output else h                       # [B, n_vocab] or [B, d]
