"""Vision benchmark: one image through a real-size SigLIP tower and Gemma 3 projector.

    python scripts/bench_vision.py            # float32 weights, as SPEC 6's llama.cpp run
    python scripts/bench_vision.py --type F16 # as mmproj-model-f16.gguf files come

Writes an mmproj GGUF with random weights and Gemma 3's sizes (27 layers, width 1152,
896 px images in 64x64 patches of 14 px, projection to 640, the 270M's width) into a
temp dir, then loads it and encodes one image in a fresh Python process, so that the
peak memory printed is that of the encode alone (not of writing the file). Figures are
printed, never asserted. SPEC 6: llama.cpp (mtmd, 2 threads) takes 53 s and 1.9 GB.
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SIGLIP = dict(image_size=896, patch_size=14, d=1152, d_ff=4304, n_layer=27, n_head=16, proj=640)
LLAMA_CPP = "llama.cpp (SPEC 6, mtmd, 2 threads, f32 weights): 53 s, 1.9 GB peak"


def write_mmproj(path: Path, qtype: str = "F32", seed: int = 0, **sizes) -> Path:
    """A Gemma 3 mmproj GGUF with random weights, written a tensor at a time (the writer
    never holds more than one tensor). Matrices in `qtype` (F32, F16 or Q8_0)."""
    import gguf
    s = {**SIGLIP, **sizes}
    d, ff, p, n = s["d"], s["d_ff"], s["patch_size"], (s["image_size"] // s["patch_size"]) ** 2
    rng = np.random.default_rng(seed)
    qt = gguf.GGMLQuantizationType[qtype]

    def matrix(shape):                            # unit-variance outputs for unit inputs
        fan_in = int(np.prod(shape[1:]))
        return rng.standard_normal(shape, dtype=np.float32) * np.float32(fan_in ** -0.5)

    def vec(mean=0.0, std=0.1):
        return lambda shape: (mean + std * rng.standard_normal(shape)).astype(np.float32)

    # (name, numpy shape, how to draw it, stored in qtype?)
    tensors = [("v.patch_embd.weight", (d, 3, p, p), matrix, False), ("v.patch_embd.bias", (d,), vec(), False),
               ("v.position_embd.weight", (n, d), vec(std=0.5), False)]
    for il in range(s["n_layer"]):
        b = f"v.blk.{il}."
        tensors += [(b + "ln1.weight", (d,), vec(1.0), False), (b + "ln1.bias", (d,), vec(), False)]
        for name in ("attn_q", "attn_k", "attn_v", "attn_out"):
            tensors += [(b + name + ".weight", (d, d), matrix, True), (b + name + ".bias", (d,), vec(), False)]
        tensors += [(b + "ln2.weight", (d,), vec(1.0), False), (b + "ln2.bias", (d,), vec(), False),
                    (b + "ffn_up.weight", (ff, d), matrix, True), (b + "ffn_up.bias", (ff,), vec(), False),
                    (b + "ffn_down.weight", (d, ff), matrix, True), (b + "ffn_down.bias", (d,), vec(), False)]
    tensors += [("v.post_ln.weight", (d,), vec(1.0), False), ("v.post_ln.bias", (d,), vec(), False),
                ("mm.soft_emb_norm.weight", (d,), vec(1.0), False),
                ("mm.input_projection.weight", (d, s["proj"]), lambda sh: matrix(sh[::-1]).T.copy(), False)]

    def stored(arr, quantize):
        if not quantize or qt == gguf.GGMLQuantizationType.F32:
            return arr
        if qt == gguf.GGMLQuantizationType.F16:
            return arr.astype(np.float16)
        return gguf.quants.quantize(arr, qt)

    w = gguf.GGUFWriter(str(path), "clip")
    w.add_string("clip.projector_type", "gemma3")
    w.add_bool("clip.has_vision_encoder", True)
    w.add_bool("clip.use_gelu", True)
    for key, val in (("image_size", s["image_size"]), ("patch_size", p), ("embedding_length", d),
                     ("feed_forward_length", ff), ("block_count", s["n_layer"]),
                     ("attention.head_count", s["n_head"]), ("projection_dim", s["proj"])):
        w.add_uint32(f"clip.vision.{key}", val)
    w.add_float32("clip.vision.attention.layer_norm_epsilon", 1e-6)
    w.add_array("clip.vision.image_mean", [0.5, 0.5, 0.5])
    w.add_array("clip.vision.image_std", [0.5, 0.5, 0.5])
    # tensor infos first (shapes and sizes), then the data in the same order
    for name, shape, make, quantize in tensors:
        elems = int(np.prod(shape))
        if quantize and qt not in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
            block, size = gguf.GGML_QUANT_SIZES[qt]
            byte_shape = (*shape[:-1], shape[-1] // block * size)
            w.add_tensor_info(name, byte_shape, np.dtype(np.uint8), elems // block * size, raw_dtype=qt)
        else:
            dt = np.dtype(np.float16 if quantize and qt == gguf.GGMLQuantizationType.F16 else np.float32)
            w.add_tensor_info(name, shape, dt, elems * dt.itemsize)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    for name, shape, make, quantize in tensors:
        w.write_tensor_data(stored(make(shape), quantize))
    w.close()
    return path


def _encode_child(path: str) -> None:
    """In a fresh process: load, encode one image, print the figures as JSON."""
    import resource
    from PIL import Image
    from runner.vision import load_vision
    t0 = time.perf_counter()
    tower = load_vision(path)
    t1 = time.perf_counter()
    rng = np.random.default_rng(1)
    img = Image.fromarray(rng.integers(0, 256, (768, 1024, 3), dtype=np.uint8), "RGB")
    emb = tower.encode(tower.normalize(tower.resize(img)))
    t2 = time.perf_counter()
    print(json.dumps({"load_s": t1 - t0, "encode_s": t2 - t1, "shape": list(emb.shape),
                      "finite": bool(np.isfinite(emb).all()),
                      "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def bench_vision(qtype: str = "F32") -> None:
    """Print the seconds and peak memory of encoding one image with a real-size tower."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"mmproj-siglip-{qtype.lower()}.gguf"
        t = time.perf_counter()
        write_mmproj(path, qtype)
        print(f"vision         wrote a real-size {qtype} mmproj ({path.stat().st_size / 2**20:.0f} MB, "
              f"random weights) in {time.perf_counter() - t:.1f} s")
        out = subprocess.run([sys.executable, __file__, "--child", str(path)], capture_output=True, text=True)
        if out.returncode != 0:
            print(f"vision         the encode failed:\n{out.stderr}")
            return
        r = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"               one 896x896 image -> {r['shape'][0]}x{r['shape'][1]} soft tokens: "
          f"{r['encode_s']:.1f} s, peak memory {r['peak_mb'] / 1024:.2f} GB (load {r['load_s']:.2f} s"
          f"{'' if r['finite'] else ', NOT FINITE'})")
    print(f"               {LLAMA_CPP}")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        _encode_child(sys.argv[2])
    else:
        import argparse
        ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
        ap.add_argument("--type", default="F32", choices=["F32", "F16", "Q8_0"], help="matrix storage type")
        bench_vision(ap.parse_args().type)
