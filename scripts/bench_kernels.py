"""Benchmarks of the quantized-weight kernels (runner/kernels): figures printed, never
asserted. The machine is shared and noisy: every figure is the best of several runs.

    python scripts/bench_kernels.py                       # kernels, compile, model
    python scripts/bench_kernels.py --only kernels --types Q8_0,Q4_K --T 1,8
    python scripts/bench_kernels.py --only model          # the 270M: decode and prefill
    python scripts/bench_kernels.py --only model --no-numpy --model 1b-q6_k.gguf   # any Gemma 3 file

kernels  G multiply-adds/s and GB/s of quantized weights read, per type and number of
         rows T, at real shapes with random blocks (enough copies that every call reads
         its weights from memory, not from the 32 MB L3), beside numpy's float32 product
         with the dequantized matrix (today's path).
core     one thread timed by its CPU time (what a core does on a busy machine), T = 1..16.
layers   numba threading layers: cost of starting a parallel region, and the 270M's
         decode with each (numba picks its layer once per process: subprocesses).
compile  every kernel compiled cold (an empty cache) and loaded from the cache.
model    a model (the 270M by default) with drafting off: decode tok/s (64 tokens after
         16) and prefill tok/s (a 400-token prompt), compiled kernels against the numpy
         float32 path and llama.cpp (../shared/tools/llamacpp-ref) in the same run.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DEFAULT_MODEL = ROOT / "models" / "gemma-3-270m-q4_k_m.gguf"

from runner.quants import QUANT_SIZES, GGMLType  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import best_of  # noqa: E402

# (n_out, n_in): 1B ffn_gate/up and ffn_down, 4B ffn_gate/up and ffn_down, 270M output
SHAPES = [(6912, 1152), (1152, 6912), (10240, 2560), (2560, 10240), (262144, 640)]
MIN_BYTES = 96 << 20          # rotate copies of a matrix until this much: 3x the L3
# byte offsets of the fp16 scale fields in each block (random bytes there can be NaN)
SCALES = {GGMLType.Q4_0: (0,), GGMLType.Q4_1: (0, 2), GGMLType.Q5_0: (0,), GGMLType.Q5_1: (0, 2),
          GGMLType.Q8_0: (0,), GGMLType.Q2_K: (80, 82), GGMLType.Q3_K: (108,), GGMLType.Q4_K: (0, 2),
          GGMLType.Q5_K: (0, 2), GGMLType.Q6_K: (208,)}


def random_rows(qtype: GGMLType, n_out: int, n_in: int, rng: np.random.Generator) -> np.ndarray:
    """Random raw rows of a type: uint8 [n_out, row bytes], scales small and finite."""
    values, nbytes = QUANT_SIZES[qtype]
    if qtype in (GGMLType.F32, GGMLType.F16, GGMLType.BF16):
        w = rng.standard_normal((n_out, n_in), dtype=np.float32)
        if qtype == GGMLType.F16:
            w = w.astype(np.float16)
        elif qtype == GGMLType.BF16:
            w = (w.view(np.uint32) >> 16).astype(np.uint16)
        return w.view(np.uint8).reshape(n_out, -1)
    raw = rng.integers(0, 256, (n_out, n_in // values, nbytes), dtype=np.uint8)
    for at in SCALES[qtype]:
        d = (rng.random((n_out, n_in // values)) * 0.02 + 1e-3).astype(np.float16)
        raw[:, :, at:at + 2] = d.view(np.uint8).reshape(n_out, -1, 2)
    return raw.reshape(n_out, -1)


def bench_kernels(types: list[GGMLType], Ts: list[int], shapes: list[tuple[int, int]], reps: int) -> None:
    from runner import kernels
    from runner.quants import dequantize
    rng = np.random.default_rng(0)
    print(f"kernels: {kernels.threads()} threads; G multiply-adds/s (GB/s of weights read); best of {reps}")
    print(f"{'type':6s} {'shape':>12s} " + " ".join(f"{'T=' + str(T):>14s}" for T in Ts))
    for n_out, n_in in shapes:
        xs = {T: rng.standard_normal((T, n_in), dtype=np.float32) for T in Ts}
        for qtype in types:
            values, nbytes = QUANT_SIZES[qtype]
            if n_in % max(values, 32):
                continue
            one = random_rows(qtype, n_out, n_in, rng)
            copies = [one] + [one.copy() for _ in range(max(0, -(-MIN_BYTES // one.nbytes) - 1))]
            cells = []
            for T in Ts:
                out = np.empty((T, n_out), dtype=np.float32)
                it = iter(range(10 ** 9))
                s = best_of(reps * len(copies), lambda: kernels.matmul(copies[next(it) % len(copies)], qtype,
                                                                     xs[T], out))
                cells.append(f"{n_out * n_in * T / s / 1e9:6.1f} ({one.nbytes / s / 1e9:4.1f})")
            print(f"{qtype.name:6s} {n_out:>6d}x{n_in:<5d} " + " ".join(f"{c:>14s}" for c in cells), flush=True)
            copies = []
        # today's path: the float32 matrix through numpy's BLAS (T = 1 and T = 8 rows)
        w = dequantize(random_rows(GGMLType.Q8_0, n_out, n_in, rng), GGMLType.Q8_0)
        copies = [w] + [w.copy() for _ in range(max(0, -(-MIN_BYTES // w.nbytes) - 1))]
        cells = []
        for T in Ts:
            it = iter(range(10 ** 9))
            s = best_of(reps * len(copies), lambda: xs[T] @ copies[next(it) % len(copies)].T)
            cells.append(f"{n_out * n_in * T / s / 1e9:6.1f} ({w.nbytes / s / 1e9:4.1f})")
        print(f"{'np f32':6s} {n_out:>6d}x{n_in:<5d} " + " ".join(f"{c:>14s}" for c in cells), flush=True)
        copies = w = None          # free before the next shape allocates


PARAGRAPH = ("The river rose slowly through the night, and by morning the lower fields were under "
             "water. Farmers moved their animals to the hills, while the children watched from the "
             "bridge as boats drifted past the church. Nobody in the village remembered a flood like "
             "it, though the old records spoke of one in the year the mill burned down. ")


def child_model(model: Path, threads: int, reps: int) -> dict:
    """The model in this process, drafting off: load s, decode tok/s (64 tokens after a
    16-token context, and the best of many 16-token bursts: short bursts are likelier
    to fall in a quiet moment of a shared machine), prefill tok/s of 400 tokens."""
    t0 = time.perf_counter()
    import runner
    from runner.engine import Prompt, SamplingParams
    llm = runner.load(model, threads=threads, n_ctx=4096, draft_max=0)
    load_s = time.perf_counter() - t0
    toks = llm.tokenize(PARAGRAPH * 8)[:400]
    eng, greedy = llm.engine, SamplingParams(temperature=0)

    def decode(n: int, times: int) -> float:
        best = 0.0
        for _ in range(times):
            eng.reset()
            for _ in eng.generate(Prompt(toks[:16]), greedy, max_tokens=n, ignore_eos=True):
                pass
            best = max(best, eng.last.decode_tok_s)
        return round(best, 1)

    def prefill():
        eng.reset()
        eng.prefill(Prompt(toks))
    return {"load_s": round(load_s, 2), "decode_tok_s": decode(64, reps), "decode16_tok_s": decode(17, 4 * reps),
            "prefill_tok_s": round(len(toks) / best_of(reps, prefill), 1),
            "weights": "float32" if llm.weights.token_embd.w is not None else "quantized"}


def child_launch() -> dict:
    """Cost of starting a parallel region on 2 threads, with a little numpy work between
    regions as in a decode step (median of 2000)."""
    import numba
    from numba import njit, prange

    @njit(parallel=True, nogil=True)
    def region(y, n):
        for i in prange(n):
            y[i] += 1.0
    y, a = np.zeros(2), np.ones(640, dtype=np.float32)
    region(y, 2)
    ts = []
    for _ in range(2000):
        a = np.sqrt(a * a)
        t = time.perf_counter()
        region(y, 2)
        ts.append(time.perf_counter() - t)
    return {"layer": numba.threading_layer(), "launch_us": round(float(np.median(ts)) * 1e6, 1)}


def child_compile(types: list[str]) -> dict:
    """First product and dequantization of every type (compiled, or loaded from the cache)."""
    t0 = time.perf_counter()
    from runner import kernels
    kernels.available()
    import_s = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    each = {}
    for name in types:
        qtype = GGMLType[name]
        raw = random_rows(qtype, 16, 256, rng)
        t = time.perf_counter()
        kernels.matmul(raw, qtype, np.ones((1, 256), dtype=np.float32))
        kernels.dequantize(raw, qtype, [0])
        each[name] = round(time.perf_counter() - t, 2)
    return {"import_s": round(import_s, 2), "total_s": round(sum(each.values()), 2), "per_type_s": each}


def child(what: str, env: dict | None = None, *args) -> dict:
    """Run a child_* measurement in a fresh process (numba picks its threading layer, and
    runner its numpy or kernel path, once per process)."""
    r = subprocess.run([sys.executable, __file__, "--child", what, *map(str, args)], capture_output=True,
                       text=True, env={**os.environ, **(env or {})}, cwd=ROOT)
    lines = [x for x in r.stdout.splitlines() if x.startswith("{")]
    if r.returncode or not lines:
        return {"error": (r.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(lines[-1])


def bench_layers(model: Path, threads: int, reps: int) -> None:
    print("threading layers (OpenMP sleeping or spinning between regions, numba's workqueue):")
    for name, env in (("omp passive", {"OMP_WAIT_POLICY": "passive"}), ("omp active", {"OMP_WAIT_POLICY": "active"}),
                      ("workqueue", {"NUMBA_THREADING_LAYER": "workqueue"})):
        print(f"  {name:12s} {json.dumps(child('launch', env))} {json.dumps(child('model', env, model, threads, reps))}",
              flush=True)


def bench_compile(types: list[str]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        env = {"GEMMA_RUNNER_CACHE": tmp}
        print(f"compile, every type (a product and a dequantization each), cold: "
              f"{json.dumps(child('compile', env, ','.join(types)))}", flush=True)
        print(f"compile, loaded from the cache:  {json.dumps(child('compile', env, ','.join(types)))}", flush=True)


def bench_model(model: Path, threads: int, reps: int, llamacpp: bool, numpy_path: bool) -> None:
    print(f"model: {model.name}, {threads} threads, drafting off, best of {reps}")
    from runner import kernels
    for name, env in (("kernels", {}), ("numpy f32", {kernels.ENV: "numpy"}))[:2 if numpy_path else 1]:
        print(f"  {name:10s} {json.dumps(child('model', env, model, threads, reps))}", flush=True)
    ref = ROOT.parent / "shared" / "tools" / "llamacpp-ref"
    if llamacpp and ref.exists():
        r = subprocess.run([str(ref), "bench", str(model), "--threads", str(threads), "--prompt-tokens", "400",
                            "--gen-tokens", "64"], capture_output=True, text=True)
        lines = [x for x in r.stdout.splitlines() if x.startswith("{")]
        print(f"  llama.cpp  {lines[-1] if lines else 'failed'}")


def bench_one_core(types: list[GGMLType], Ts: list[int], shape: tuple[int, int], reps: int) -> None:
    """One thread, timed by the thread's CPU time: what a core does, whatever else the
    machine runs (steal and a busy sibling core still show)."""
    from runner import kernels
    rng = np.random.default_rng(0)
    n_out, n_in = shape
    kernels.set_threads(1)
    print(f"one core, CPU time, {n_out}x{n_in} (weights in L2/L3): G multiply-adds/s, best of {10 * reps}")
    print(f"{'type':6s} " + " ".join(f"{'T=' + str(T):>7s}" for T in Ts))
    for qtype in types:
        if n_in % max(QUANT_SIZES[qtype][0], 32):
            continue
        raw = random_rows(qtype, n_out, n_in, rng)
        cells = []
        for T in Ts:
            x, out = rng.standard_normal((T, n_in), dtype=np.float32), np.empty((T, n_out), dtype=np.float32)
            kernels.matmul(raw, qtype, x, out)
            best = float("inf")
            for _ in range(10 * reps):
                t = time.thread_time_ns()
                kernels.matmul(raw, qtype, x, out)
                best = min(best, time.thread_time_ns() - t)
            cells.append(f"{n_out * n_in * T / best:7.1f}")
        print(f"{qtype.name:6s} " + " ".join(cells), flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="kernels,core,layers,compile,model")
    ap.add_argument("--types", default=",".join(t.name for t in QUANT_SIZES))
    ap.add_argument("--T", default="1,2,4,8,16")
    ap.add_argument("--shapes", default=",".join(f"{a}x{b}" for a, b in SHAPES))
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    ap.add_argument("--no-llamacpp", action="store_true", help="do not run the llama.cpp reference")
    ap.add_argument("--no-numpy", action="store_true", help="model: skip the numpy float32 path (a 4B needs 17 GB)")
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        what, *rest = a.child
        if what == "model":
            out = child_model(Path(rest[0]), int(rest[1]), int(rest[2]))
        elif what == "launch":
            out = child_launch()
        else:
            out = child_compile(rest[0].split(","))
        print(json.dumps(out))
        return 0
    only = set(a.only.split(","))
    from runner import kernels
    if not kernels.available():
        print("kernels unavailable (numba missing or GEMMA_RUNNER_KERNELS=numpy)")
        return 1
    kernels.set_threads(a.threads)
    from runner.threads import set_blas_threads
    set_blas_threads(a.threads)
    if "kernels" in only:
        bench_kernels([GGMLType[t] for t in a.types.split(",")], [int(t) for t in a.T.split(",")],
                      [tuple(int(v) for v in s.split("x")) for s in a.shapes.split(",")], a.reps)
    if "core" in only:
        bench_one_core([GGMLType[t] for t in a.types.split(",")], [int(t) for t in a.T.split(",")], (512, 2048),
                       a.reps)
        kernels.set_threads(a.threads)
    if "compile" in only:
        bench_compile(a.types.split(","))
    if "layers" in only:
        bench_layers(a.model, a.threads, a.reps)
    if "model" in only:
        bench_model(a.model, a.threads, a.reps, not a.no_llamacpp, not a.no_numpy)
    return 0


if __name__ == "__main__":
    sys.exit(main())
