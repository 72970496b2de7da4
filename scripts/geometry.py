"""Random-weight Gemma 3 GGUFs at the real geometry of the seed models (SPEC 3).

    python scripts/geometry.py 1b 4b 27b        # write each file once (reused after), print its path
    python scripts/geometry.py 4b:q6_k --check  # another file type; load each file in runner and llama.cpp
    python scripts/geometry.py --list           # the sizes, and the type every tensor gets

A model's speed and memory do not depend on its weights' values, so these files stand in
for the seed models in benchmarks (`scripts/bench.py --geometry`). Every tensor gets the
type llama.cpp's quantizer gives it for the file's ftype (`tensor_type`, with the lines of
src/llama-quant.cpp it follows). Quant blocks are random bytes whose fp16 scales are set so
that each product keeps unit-scale activations (no inf/NaN); norm weights are F32 near 1.0;
the vocabulary is copied whole from the 270M file (every Gemma 3 size shares it). A file
is written as a cycle through a few MB of random blocks, so the 15.6 GB 27B takes about as
long as the disk needs. Files go to $GEMMA_GEOMETRY_DIR, default
$XDG_CACHE_HOME/gemma-runner/geometry (outside git, shared by every worktree), and are
reused while the fingerprint stored in them matches.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))       # appended: a runner on PYTHONPATH wins

VOCAB_SOURCE = ROOT / "models" / "gemma-3-270m-q4_k_m.gguf"
LLAMACPP_PYTHON = Path(os.environ.get("LLAMACPP_REF_VENV", Path.home() / ".cache" / "llamacpp-ref")) / "bin" / "python"
WRITER_VERSION = 1                   # bump when the bytes written change
POOL_BYTES = 16 << 20                # random blocks per (type, row length), cycled through


@dataclass(frozen=True)
class Geometry:
    name: str
    d: int
    n_layer: int
    n_head: int
    n_kv: int
    head_dim: int
    d_ff: int
    window: int
    n_ctx_train: int
    rope_scale: float       # linear factor of the global layers; 1.0: no scaling
    ftype: str              # the seed file's llama.cpp file type (a key of FTYPES)

    def matrix_params(self) -> int:
        """Weights in the matrices (the norms are a rounding error)."""
        per_layer = self.d * (self.n_head + 2 * self.n_kv) * self.head_dim \
            + self.n_head * self.head_dim * self.d + 3 * self.d * self.d_ff
        return N_VOCAB * self.d + self.n_layer * per_layer

    def f32_bytes(self) -> int:
        return 4 * self.matrix_params()


N_VOCAB = 262144
# SPEC 3's table; the ftype is that of the seed file each size is measured for (issue 12)
GEOMETRIES: dict[str, Geometry] = {g.name: g for g in [
    Geometry("1b", 1152, 26, 4, 1, 256, 6912, 512, 32768, 1.0, "q6_k"),
    Geometry("4b", 2560, 34, 8, 4, 256, 10240, 1024, 131072, 8.0, "q4_0"),
    Geometry("12b", 3840, 48, 16, 8, 256, 15360, 1024, 131072, 8.0, "q4_0"),
    Geometry("27b", 5376, 62, 32, 16, 128, 21504, 1024, 131072, 8.0, "q4_0"),
]}


def _gguf():
    import gguf            # gguf-py: the writer and the ggml type table
    return gguf


def ftypes() -> dict:
    """file type name -> (llama_ftype, the type of its quantized tensors)."""
    g = _gguf()
    Q, F = g.GGMLQuantizationType, g.LlamaFileType
    return {"q4_0": (F.MOSTLY_Q4_0, Q.Q4_0), "q6_k": (F.MOSTLY_Q6_K, Q.Q6_K), "q8_0": (F.MOSTLY_Q8_0, Q.Q8_0)}


def parse_spec(spec: str) -> tuple[Geometry, str]:
    """'1b' or '4b:q6_k' -> (geometry, ftype); ValueError with a one-line reason."""
    name, _, ftype = spec.strip().lower().partition(":")
    if name not in GEOMETRIES:
        raise ValueError(f"unknown size {name!r} (expected one of {', '.join(GEOMETRIES)})")
    ftype = ftype or GEOMETRIES[name].ftype
    if ftype not in ftypes():
        raise ValueError(f"unknown file type {ftype!r} in {spec!r} (expected one of {', '.join(ftypes())})")
    return GEOMETRIES[name], ftype


# --- which type each tensor gets (src/llama-quant.cpp) ---------------------------------

def _fallback(qtype, ne0: int):
    """tensor_type_fallback: a row (ne[0]) that is not whole blocks of the type takes a
    32-block type instead (Q6_K -> Q8_0, Q4_K -> Q5_0, Q5_K -> Q5_1, Q2_K/Q3_K -> Q4_0),
    and F16 if even that does not fit."""
    g = _gguf()
    Q = g.GGMLQuantizationType
    if ne0 % g.GGML_QUANT_SIZES[qtype][0] == 0:
        return qtype
    qtype = {Q.Q6_K: Q.Q8_0, Q.Q4_K: Q.Q5_0, Q.Q5_K: Q.Q5_1, Q.Q2_K: Q.Q4_0, Q.Q3_K: Q.Q4_0}.get(qtype, qtype)
    return qtype if ne0 % g.GGML_QUANT_SIZES[qtype][0] == 0 else Q.F16


def tensor_type(name: str, ne0: int, n_dims: int, ftype: str):
    """The type llama.cpp's quantizer (llama_tensor_get_type) gives a Gemma 3 tensor of a
    file of this ftype, without an imatrix or overrides:
    - 1-D tensors and `*_norm.weight` are not quantized (tensor_allows_quantization):
      they stay as the converter wrote them, F32;
    - token_embd with tied embeddings (no output.weight) is quantized as the output
      matrix: Q8_0 when ne[0] is not whole blocks of the ftype's type, else Q6_K unless
      the type is Q8_0 (llama_tensor_get_type_impl, `category == OUTPUT ||
      (has_tied_embeddings && category == TOKEN_EMBD)`);
    - no other rule of llama_tensor_get_type_impl names Q4_0, Q6_K or Q8_0 files (Q4_0's
      ffn_down -> Q4_1 needs an imatrix), so the rest take the ftype's type;
    - then tensor_type_fallback (see _fallback)."""
    g = _gguf()
    Q = g.GGMLQuantizationType
    if n_dims < 2 or name.endswith("_norm.weight"):
        return Q.F32
    qtype = ftypes()[ftype][1]
    if name == "token_embd.weight":
        if ne0 % g.GGML_QUANT_SIZES[qtype][0]:
            qtype = Q.Q8_0
        elif qtype != Q.Q8_0:
            qtype = Q.Q6_K
    return _fallback(qtype, ne0)


def tensor_plan(geo: Geometry, ftype: str) -> list[tuple[str, tuple[int, ...], object]]:
    """(name, numpy shape, ggml type) of every tensor, as a converted Gemma 3 file has them
    (SPEC 3: tied embeddings, no output.weight)."""
    d, hd = geo.d, geo.head_dim
    shapes = [("token_embd.weight", (N_VOCAB, d))]
    for il in range(geo.n_layer):
        p = f"blk.{il}."
        shapes += [(p + "attn_norm.weight", (d,)), (p + "attn_q.weight", (geo.n_head * hd, d)),
                   (p + "attn_k.weight", (geo.n_kv * hd, d)), (p + "attn_v.weight", (geo.n_kv * hd, d)),
                   (p + "attn_q_norm.weight", (hd,)), (p + "attn_k_norm.weight", (hd,)),
                   (p + "attn_output.weight", (d, geo.n_head * hd)), (p + "post_attention_norm.weight", (d,)),
                   (p + "ffn_norm.weight", (d,)), (p + "ffn_gate.weight", (geo.d_ff, d)),
                   (p + "ffn_up.weight", (geo.d_ff, d)), (p + "ffn_down.weight", (d, geo.d_ff)),
                   (p + "post_ffw_norm.weight", (d,))]
    shapes.append(("output_norm.weight", (d,)))
    return [(n, s, tensor_type(n, s[-1], len(s), ftype)) for n, s in shapes]


def _nbytes(shape: tuple[int, ...], qtype) -> int:
    block, size = _gguf().GGML_QUANT_SIZES[qtype]
    return int(np.prod(shape)) // block * size


# --- random blocks ---------------------------------------------------------------------

def _d_field(qtype) -> int:
    """Byte offset of the one fp16 scale `d` in a block of the types the rules produce:
    Q4_0 `d, qs[16]`; Q8_0 `d, qs[32]`; Q6_K `ql[128], qh[64], scales[16], d`."""
    Q = _gguf().GGMLQuantizationType
    at = {Q.Q4_0: 0, Q.Q5_0: 0, Q.Q8_0: 0, Q.Q6_K: 208}.get(qtype)
    if at is None:
        raise ValueError(f"geometry: no random-block layout for {qtype.name}")
    return at


def random_pool(qtype, n_in: int, rng: np.random.Generator, nbytes: int = POOL_BYTES) -> np.ndarray:
    """uint8, whole blocks of `qtype` whose values have rms ~ 1/sqrt(n_in) (so that x @ W.T
    keeps a unit-scale x at unit scale): random bytes, then each block's fp16 `d` set to
    that target over the rms of the block's codes at d = 1 (measured, not assumed), times
    a random factor in [0.75, 1.25)."""
    g = _gguf()
    block, size = g.GGML_QUANT_SIZES[qtype]
    target = n_in ** -0.5
    if qtype in (g.GGMLQuantizationType.F32, g.GGMLQuantizationType.F16):
        dt = np.float32 if qtype == g.GGMLQuantizationType.F32 else np.float16
        return (rng.standard_normal(nbytes // size, np.float32) * target).astype(dt).view(np.uint8)
    n = max(1, nbytes // size)
    words = rng.integers(0, np.iinfo(np.uint64).max, -(-n * size // 8), dtype=np.uint64, endpoint=True)
    blocks = words.view(np.uint8)[:n * size].reshape(n, size).copy()
    at = _d_field(qtype)
    sample = blocks[:1024].copy()
    sample[:, at:at + 2] = np.full((len(sample), 1), 1.0, np.float16).view(np.uint8)
    rms = float(np.sqrt(np.mean(np.square(g.quants.dequantize(sample, qtype), dtype=np.float64))))
    d = (target / rms * rng.uniform(0.75, 1.25, n)).astype(np.float16)
    blocks[:, at:at + 2] = d.view(np.uint8).reshape(n, 2)
    return blocks.reshape(-1)


# --- writing and finding files ---------------------------------------------------------

def cache_dir() -> Path:
    if os.environ.get("GEMMA_GEOMETRY_DIR"):
        return Path(os.environ["GEMMA_GEOMETRY_DIR"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "gemma-runner" / "geometry"


def file_path(geo: Geometry, ftype: str, directory: Path | None = None) -> Path:
    return (directory or cache_dir()) / f"gemma3-{geo.name}-{ftype}-random.gguf"


def fingerprint(geo: Geometry, ftype: str, seed: int) -> str:
    return json.dumps({"geometry": asdict(geo), "ftype": ftype, "seed": seed, "writer": WRITER_VERSION,
                       "vocab": [VOCAB_SOURCE.name, VOCAB_SOURCE.stat().st_size]}, sort_keys=True)


def stored_fingerprint(path: Path) -> str | None:
    """The fingerprint in an existing file, None if it is absent, truncated or no GGUF."""
    from runner.gguf import GGUFError, GGUFFile
    try:
        return GGUFFile(path).get("geometry.fingerprint")
    except (GGUFError, OSError):
        return None


def _copy_vocabulary(w, source: Path) -> None:
    """Every tokenizer.ggml.* key of `source`, with its stored value type."""
    from runner.gguf import GGUFFile, ValueType
    gg = _gguf()
    src = GGUFFile(source)
    elem = {np.dtype("<f4"): gg.GGUFValueType.FLOAT32, np.dtype("<i4"): gg.GGUFValueType.INT32,
            np.dtype("<u4"): gg.GGUFValueType.UINT32}
    for key, value in src.metadata.items():
        if not key.startswith("tokenizer.ggml."):
            continue
        vtype = src.metadata_types[key]
        if vtype != ValueType.ARRAY:
            w.add_key_value(key, value, gg.GGUFValueType(int(vtype)))
        elif isinstance(value, np.ndarray):
            w.add_key_value(key, value.tolist(), gg.GGUFValueType.ARRAY, sub_type=elem[value.dtype])
        else:
            w.add_key_value(key, list(value), gg.GGUFValueType.ARRAY, sub_type=gg.GGUFValueType.STRING)


def write(geo: Geometry, ftype: str, path: Path, seed: int = 0) -> Path:
    """Write the file (to a temporary name, renamed when complete)."""
    gg = _gguf()
    rng = np.random.default_rng(seed)
    plan = tensor_plan(geo, ftype)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    w = gg.GGUFWriter(tmp, "gemma3")
    w.add_type("model")
    w.add_name(f"Gemma 3 {geo.name.upper()} geometry, random weights")
    w.add_description("Random weights at the real geometry of Gemma 3 for speed and memory benchmarks; "
                      "it produces no meaningful text (scripts/geometry.py).")
    w.add_size_label(geo.name.upper())
    w.add_file_type(int(ftypes()[ftype][0]))
    w.add_quantization_version(gg.GGML_QUANT_VERSION)
    a = "gemma3."
    for key, v in [("context_length", geo.n_ctx_train), ("embedding_length", geo.d), ("block_count", geo.n_layer),
                   ("feed_forward_length", geo.d_ff), ("attention.head_count", geo.n_head),
                   ("attention.head_count_kv", geo.n_kv), ("attention.key_length", geo.head_dim),
                   ("attention.value_length", geo.head_dim), ("attention.sliding_window", geo.window)]:
        w.add_uint32(a + key, v)
    w.add_float32(a + "attention.layer_norm_rms_epsilon", 1e-6)
    w.add_float32(a + "rope.freq_base", 1e6)
    if geo.rope_scale != 1.0:
        w.add_string(a + "rope.scaling.type", "linear")
        w.add_float32(a + "rope.scaling.factor", geo.rope_scale)
    _copy_vocabulary(w, VOCAB_SOURCE)
    w.add_string("geometry.fingerprint", fingerprint(geo, ftype, seed))
    for name, shape, qtype in plan:
        w.add_tensor_info(name, shape, np.dtype(np.float32), _nbytes(shape, qtype), raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    f = w.fout[0]
    align = w.data_alignment
    f.write(bytes(-f.tell() % align))
    pools: dict[tuple, np.ndarray] = {}
    for i, (name, shape, qtype) in enumerate(plan):
        n = _nbytes(shape, qtype)
        if len(shape) == 1:                  # norm weights: Gemma's 1 + w, w small
            f.write((1.0 + 0.02 * rng.standard_normal(shape[0])).astype(np.float32).tobytes())
        else:
            key = (qtype, shape[-1])
            if key not in pools:
                pools[key] = random_pool(qtype, shape[-1], rng)
            pool = memoryview(pools[key])
            block = gg.GGML_QUANT_SIZES[qtype][1]
            at = (i * 7919 * block) % len(pool)          # each tensor starts elsewhere in the pool
            while n:
                k = min(n, len(pool) - at)
                f.write(pool[at:at + k])
                n -= k
                at = 0
        f.write(bytes(-f.tell() % align))
    w.close()
    os.replace(tmp, path)
    return path


def ensure(geo: Geometry, ftype: str, directory: Path | None = None, seed: int = 0,
           log=print) -> Path:
    """The file for (geo, ftype): reused when its fingerprint matches, else written."""
    path = file_path(geo, ftype, directory)
    if path.exists() and stored_fingerprint(path) == fingerprint(geo, ftype, seed):
        return path
    if not VOCAB_SOURCE.exists():
        raise FileNotFoundError(f"{VOCAB_SOURCE} not found: the vocabulary is copied from it "
                                f"(python scripts/fetch_default_model.py)")
    t = time.perf_counter()
    write(geo, ftype, path, seed)
    log(f"geometry: wrote {path} ({path.stat().st_size / 2**20:,.0f} MiB) in {time.perf_counter() - t:.1f} s")
    return path


# --- checks ----------------------------------------------------------------------------

LLAMACPP_CHECK = """
import json, sys, time, numpy as np
from llama_cpp import Llama
t = time.perf_counter()
llm = Llama(model_path=sys.argv[1], n_ctx=512, n_threads=2, n_threads_batch=2, verbose=False)
load_s = time.perf_counter() - t
ids = llm.tokenize(b"The river rose slowly through the night", add_bos=True)
llm.eval(ids)
z = np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(llm.n_vocab(),))  # the last token's logits
print(json.dumps({"n_vocab": llm.n_vocab(), "load_s": round(load_s, 2), "tokens": len(ids),
                  "finite": bool(np.isfinite(z).all()), "logit_std": round(float(z.std()), 3)}))
"""


def check_ours(path: Path, geo: Geometry, ftype: str) -> list[str]:
    """Problems found opening the file with runner (metadata, config, a few dequantized
    rows of every type); an empty list when it is sound."""
    from runner.gguf import GGUFFile
    from runner.model import Config
    from runner.quants import dequantize
    g = GGUFFile(path)
    cfg = Config.from_gguf(g)
    want = dict(d=geo.d, n_layer=geo.n_layer, n_head=geo.n_head, n_kv=geo.n_kv, head_dim=geo.head_dim,
                d_ff=geo.d_ff, sliding_window=geo.window, n_ctx_train=geo.n_ctx_train, rope_scale=geo.rope_scale,
                n_vocab=N_VOCAB)
    problems = [f"config {k}: expected {v}, found {getattr(cfg, k)}" for k, v in want.items() if getattr(cfg, k) != v]
    for name, shape, qtype in tensor_plan(geo, ftype):
        t = g.tensors.get(name)
        if t is None or t.shape != shape or int(t.type) != int(qtype):
            problems.append(f"tensor {name}: expected {shape} {qtype.name}, found "
                            f"{None if t is None else (t.shape, t.type.name)}")
    seen = set()
    for name, t in g.tensors.items():
        if (t.type, len(t.shape)) in seen:
            continue
        seen.add((t.type, len(t.shape)))
        raw = g.raw(name)
        x = dequantize(raw[:4] if len(t.shape) > 1 else raw, t.type)
        rms = float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))
        scale = t.shape[-1] ** -0.5 if len(t.shape) > 1 else 1.0
        if not np.isfinite(x).all() or not 0.5 * scale < rms < 2 * scale:
            problems.append(f"tensor {name} ({t.type.name}): rms {rms:.3g}, expected about {scale:.3g}")
    return problems


def check_llamacpp(path: Path) -> dict:
    """Load the file in llama.cpp (the llamacpp-ref venv) and evaluate a few tokens."""
    if not LLAMACPP_PYTHON.exists():
        return {"error": f"{LLAMACPP_PYTHON} not found (run /work/shared/tools/llamacpp-ref setup)"}
    r = subprocess.run([str(LLAMACPP_PYTHON), "-c", LLAMACPP_CHECK, str(path)], capture_output=True, text=True)
    lines = [x for x in r.stdout.splitlines() if x.startswith("{")]
    if r.returncode or not lines:
        return {"error": (r.stderr.strip().splitlines() or [f"exit status {r.returncode}"])[-1]}
    return json.loads(lines[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("sizes", nargs="*", help="1b, 4b, 12b, 27b, optionally with a file type: 4b:q6_k")
    ap.add_argument("--dir", type=Path, help=f"where the files go (default {cache_dir()})")
    ap.add_argument("--check", action="store_true", help="load each file in runner and in llama.cpp")
    ap.add_argument("--list", action="store_true", help="print the sizes and each tensor's type, write nothing")
    a = ap.parse_args(argv)
    try:
        specs = [parse_spec(s) for s in a.sizes]
    except ValueError as e:
        print(f"geometry: {e}", file=sys.stderr)
        return 2
    if a.list or not specs:
        for geo, ftype in specs or [(g, g.ftype) for g in GEOMETRIES.values()]:
            plan = tensor_plan(geo, ftype)
            kinds = {}
            for name, shape, qtype in plan:
                kind = name.split(".")[2 if name.startswith("blk.") else 0]
                kinds.setdefault(kind, f"{qtype.name} {list(reversed(shape))}")
            size = sum(_nbytes(s, q) for _, s, q in plan)
            print(f"{geo.name} {ftype}: {size / 2**20:,.0f} MiB of tensors, float32 {geo.f32_bytes() / 1e9:.1f} GB; "
                  + ", ".join(f"{k} {v}" for k, v in kinds.items()))
        return 0
    status = 0
    for geo, ftype in specs:
        path = ensure(geo, ftype, a.dir)
        print(path)
        if a.check:
            problems = check_ours(path, geo, ftype)
            print(f"  runner:    {'ok' if not problems else '; '.join(problems)}")
            ref = check_llamacpp(path)
            ok = "error" not in ref and ref.get("finite") and ref.get("n_vocab") == N_VOCAB
            print(f"  llama.cpp: {'ok ' if ok else 'FAILED '}{json.dumps(ref)}")
            status |= bool(problems) or not ok
    return int(status)


if __name__ == "__main__":
    sys.exit(main())
