"""Benchmarks: figures printed, never asserted.

    python scripts/bench.py                 # everything below
    python scripts/bench.py --only gguf,quants,tokenizer,generate
    python scripts/bench.py --no-llamacpp   # skip the llama.cpp reference run
    python scripts/bench.py --binary        # start-up of dist/<model>.llamafile to its first token
    python scripts/bench.py --server        # aggregate tokens/s for 1, 4 and 8 concurrent streams
    python scripts/bench.py --vision        # one image through a full-size SigLIP
    python scripts/bench.py --geometry 1b,4b,27b   # random-weight files at the seed models' sizes,
                                            # load, peak RSS, prefill, decode beside llama.cpp
                                            # (scripts/bench_geometry.py, scripts/geometry.py)

generate follows ../shared/tools/llamacpp-ref's protocol: the shared paragraph repeated
to a 400-token prompt (best of 2 prefills), then from a 16-token context 64 greedy tokens
(best of 2), with --threads 2; llama.cpp runs in the same session and the ratios are
ours / theirs. Decode is measured as the engine runs (drafting greedy tokens, see
runner/draft.py) and with drafting off, and on three other prompts.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "tools"
DEFAULT_MODEL = ROOT / "models" / "gemma-3-270m-q4_k_m.gguf"
sys.path.insert(0, str(ROOT))

FALLBACK_PARAGRAPH = (
    "The river rose slowly through the night, and by morning the lower fields were under "
    "water. Farmers moved their animals to the hills, while the children watched from the "
    "bridge as boats drifted past the church. Nobody in the village remembered a flood like "
    "it, though the old records spoke of one in the year the mill burned down. "
)


# prompts for the decode figures beside the benchmark's own (see bench_generate)
OTHER_PROMPTS = {
    "history": "The history of the Roman Empire",
    "code": "def fibonacci(n):\n",
    "french": "La Révolution française commence en 1789 lorsque",
}


def paragraph() -> str:
    try:
        sys.path.insert(0, str(SHARED))
        from bench_text import PARAGRAPH
        return PARAGRAPH
    except ImportError:
        return FALLBACK_PARAGRAPH


def best_of(n: int, f) -> float:
    best = float("inf")
    for _ in range(n):
        t = time.perf_counter()
        f()
        best = min(best, time.perf_counter() - t)
    return best


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_gguf(model: Path) -> None:
    from runner.gguf import GGUFFile
    ours = best_of(3, lambda: GGUFFile(model))
    print(f"gguf open      {model.name}: {ours * 1000:.0f} ms (best of 3)")
    try:
        from gguf import GGUFReader
        ref = best_of(1, lambda: GGUFReader(str(model)))
        print(f"               gguf-py GGUFReader: {ref * 1000:.0f} ms ({ref / ours:.0f}x slower)")
    except ImportError:
        pass


def bench_quants() -> None:
    from runner.quants import QUANT_SIZES, GGMLType, dequantize
    try:
        from gguf import GGMLQuantizationType, quants as ggq
    except ImportError:
        ggq = None
    rng = np.random.default_rng(0)
    n_values = 1 << 23
    print(f"dequant        {n_values >> 20}M values per type, M values/s (best of 3; gguf-py best of 2)")
    for qtype in [GGMLType.Q8_0, GGMLType.Q4_0, GGMLType.Q4_K, GGMLType.Q6_K, GGMLType.Q4_1, GGMLType.Q5_0,
                  GGMLType.Q5_1, GGMLType.Q2_K, GGMLType.Q3_K, GGMLType.Q5_K, GGMLType.F16, GGMLType.BF16]:
        block, size = QUANT_SIZES[qtype]
        raw = rng.integers(0, 256, (n_values // block, size), dtype=np.uint8)
        if block > 1:   # a sane fp16 in every scale field keeps the arithmetic ordinary
            for at in {GGMLType.Q2_K: (80, 82), GGMLType.Q3_K: (108,), GGMLType.Q6_K: (208,)}.get(qtype, (0, 2)):
                raw[:, at:at + 2] = np.full(len(raw), 0.01, np.float16).view(np.uint8).reshape(-1, 2)
        ours1 = best_of(3, lambda: dequantize(raw, qtype, threads=1))
        ours2 = best_of(3, lambda: dequantize(raw, qtype, threads=2))
        line = f"  {qtype.name:5s} ours {n_values / ours1 / 1e6:6.0f} (1 thread) {n_values / ours2 / 1e6:6.0f} (2 threads)"
        if ggq is not None:
            with np.errstate(all="ignore"):
                ref = best_of(2, lambda: ggq.dequantize(raw, GGMLQuantizationType(int(qtype))))
            line += f"   gguf-py {n_values / ref / 1e6:6.0f}   ratio {ref / ours1:5.1f}x / {ref / ours2:5.1f}x"
        print(line)


def bench_tokenizer(model: Path) -> None:
    from runner.gguf import GGUFFile
    from runner.tokenizer import load_tokenizer
    g = GGUFFile(model)
    t = best_of(3, lambda: load_tokenizer(g))
    sys.path.insert(0, str(ROOT / "tests" / "data"))
    from tokenizer_corpus import mixed_text      # prose, code, CJK, emoji, random numbers
    tok = load_tokenizer(g)
    text = mixed_text(1 << 20)
    t_enc = best_of(1, lambda: tok.encode(text))
    n = len(tok.encode(text))
    print(f"tokenizer      build {t * 1000:.0f} ms; encode 1 MB of mixed text: {t_enc:.2f} s "
          f"({n} tokens, {len(text.encode()) / t_enc / 1e6:.2f} MB/s)")


def bench_generate(model: Path, threads: int, prompt_tokens: int, gen_tokens: int, llamacpp: bool) -> None:
    t0 = time.perf_counter()
    import runner
    from runner.engine import Prompt, SamplingParams
    llm = runner.load(model, threads=threads, n_ctx=4096)
    load_s = time.perf_counter() - t0
    text = paragraph()
    while len(llm.tokenize(text)) < prompt_tokens:
        text += paragraph()
    toks = llm.tokenize(text)[:prompt_tokens]
    eng = llm.engine
    greedy = SamplingParams(temperature=0)

    # time to first token of a cold start, as a user sees it: load + 16-token prompt + 1 token
    eng.reset()
    next(iter(eng.generate(Prompt(toks[:16]), greedy, max_tokens=1)))
    first_token_s = time.perf_counter() - t0

    def prefill():
        eng.reset()
        eng.prefill(Prompt(toks))
    prefill_s = best_of(2, prefill)

    engines = {eng.config.draft_max: eng, 0: eng.spawn(draft_max=0)}

    def decode(ids: list[int], draft_max: int) -> tuple[int, float, str]:
        """Best of 2 runs of gen_tokens greedy tokens after `ids`: (tokens, tok/s, right guesses)."""
        e = engines[draft_max]
        best, n, right = 0.0, 0, ""
        for _ in range(2):
            e.reset()
            n = sum(1 for _ in e.generate(Prompt(ids), greedy, max_tokens=gen_tokens, ignore_eos=True))
            st = e.last
            best = max(best, st.decode_tok_s)
            right = f"{st.draft_accepted}/{st.draft_n}"
        return n, best, right

    draft_max = eng.config.draft_max
    n, decode_tok_s, right = decode(toks[:16], draft_max)
    _, plain_tok_s, _ = decode(toks[:16], 0)
    ours = {"engine": "runner (numpy)", "load_s": round(load_s, 3), "first_token_s": round(first_token_s, 3),
            "prompt_tokens": len(toks), "prefill_tok_s": round(len(toks) / prefill_s, 1),
            "gen_tokens": n, "decode_tok_s": round(decode_tok_s, 1), "guesses_right": right,
            "decode_undrafted_tok_s": round(plain_tok_s, 1), "peak_rss_mb": round(peak_rss_mb())}
    print("generate       " + json.dumps(ours))
    # Greedy drafting (runner/draft.py) gains most where the text reuses the context, as
    # the paragraph above does; the same measure on prompts whose continuations do not:
    for name, text in OTHER_PROMPTS.items():
        ids = llm.tokenize(text)
        _, on, right = decode(ids, draft_max)
        _, off, _ = decode(ids, 0)
        print(f"  other text   {name:8s} decode {on:5.1f} tok/s drafted ({right} guesses right), "
              f"{off:5.1f} undrafted")
    ref_tool = SHARED / "llamacpp-ref"
    if not llamacpp or not ref_tool.exists():
        print("               (llama.cpp reference not run)")
        return
    r = subprocess.run([str(ref_tool), "bench", str(model), "--threads", str(threads),
                        "--prompt-tokens", str(prompt_tokens), "--gen-tokens", str(gen_tokens)],
                       capture_output=True, text=True)
    lines = [x for x in r.stdout.splitlines() if x.startswith("{")]
    if r.returncode or not lines:
        print(f"               llama.cpp reference failed: {r.stderr.strip().splitlines()[-1:]}")
        return
    ref = json.loads(lines[-1])
    print("llama.cpp      " + json.dumps(ref))
    print(f"ratio          prefill {ours['prefill_tok_s'] / ref['prefill_tok_s']:.2f}x   "
          f"decode {ours['decode_tok_s'] / ref['decode_tok_s']:.2f}x   "
          f"load {ours['load_s']:.2f} s vs {ref['load_s']:.2f} s   (ours / llama.cpp, same run)")


def _timed_first_token(cmd: list[str], env=None) -> tuple[float, float, int]:
    """(seconds to the first byte of the completion on stdout, total seconds, peak RSS MB)
    of a --cli run; the peak RSS is the process's own, from wait4 when it ends."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
    first = p.stdout.read(1)
    t_first = time.perf_counter() - t0
    p.stdout.read()
    _, status, usage = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    if not first or p.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed (status {p.returncode})")
    return t_first, time.perf_counter() - t0, round(usage.ru_maxrss / 1024)


def bench_binary(model: Path) -> None:
    from runner.bundle import executable_name
    exe = ROOT / "dist" / executable_name(str(model))
    if not exe.exists():
        print(f"binary         {exe} not found: run scripts/build.sh first")
        return
    args = ["--cli", "-p", "The", "-n", "1", "--temp", "0", "--no-display-prompt", "--log-disable"]
    runs = [_timed_first_token([str(exe)] + args) for _ in range(3)]
    t_first, total, rss = min(runs)
    print(f"binary         {exe.name}: first token after {t_first:.2f} s (best of 3; exit after "
          f"{total:.2f} s), peak RSS {rss} MB")
    runs = [_timed_first_token([sys.executable, "-m", "runner", "-m", str(model)] + args) for _ in range(3)]
    t_first, total, rss = min(runs)
    print(f"               python -m runner -m {model.name}: first token after {t_first:.2f} s, "
          f"peak RSS {rss} MB")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    ap.add_argument("--only", default="gguf,quants,tokenizer,generate",
                    help="comma-separated sections: gguf, quants, tokenizer, generate")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt-tokens", type=int, help="default 400 (--geometry: 128)")
    ap.add_argument("--gen-tokens", type=int, help="default 64 (--geometry: 32)")
    ap.add_argument("--no-llamacpp", action="store_true", help="do not run the llama.cpp reference")
    ap.add_argument("--binary", action="store_true", help="only: start-up of the packed executable")
    ap.add_argument("--server", action="store_true", help="only: server throughput with 1, 4, 8 streams")
    ap.add_argument("--vision", action="store_true", help="only: one image through a full-size SigLIP")
    ap.add_argument("--geometry", metavar="SIZES",
                    help="only: comma-separated sizes (1b, 4b, 12b, 27b, or e.g. 4b:q6_k) at real geometry")
    ap.add_argument("--ours", choices=["auto", "always", "never"], default="auto",
                    help="--geometry: run ours where it fits (auto), everywhere, or not at all")
    ap.add_argument("--repeats", type=int, default=2, help="--geometry: best of this many runs")
    ap.add_argument("--timeout", type=float, default=900, help="--geometry: seconds per engine and size")
    a = ap.parse_args()
    geometry = []
    if a.geometry is not None:
        sys.path.insert(0, str(ROOT / "scripts"))
        from geometry import parse_spec
        geometry = [s for s in a.geometry.split(",") if s.strip()]
        try:
            if not geometry:
                raise ValueError("expected comma-separated sizes, e.g. 1b,4b,27b")
            for spec in geometry:
                parse_spec(spec)
        except ValueError as e:
            print(f"bench: --geometry: {e}", file=sys.stderr)
            return 2
    for name in ("prompt_tokens", "gen_tokens", "repeats", "threads"):
        v = getattr(a, name)
        if v is not None and v < 1:
            print(f"bench: --{name.replace('_', '-')}: expected a positive number, found {v}", file=sys.stderr)
            return 2
    if not a.model.exists():
        print(f"bench: {a.model} not found (run scripts/setup.sh)", file=sys.stderr)
        return 1
    sections = a.only.split(",")
    if a.binary or a.server or a.vision or geometry:
        sections = []
    if geometry:
        from bench_geometry import bench_geometry
        bench_geometry(geometry, paragraph(), a.threads, a.prompt_tokens or 128, a.gen_tokens or 32,
                       a.repeats, a.ours, not a.no_llamacpp, a.timeout)
    if a.binary:
        bench_binary(a.model)
    if a.server:
        sys.path.insert(0, str(ROOT / "scripts"))
        from bench_server import bench_server
        bench_server(a.model, a.threads)
    if a.vision:
        sys.path.insert(0, str(ROOT / "scripts"))
        from bench_vision import bench_vision
        bench_vision()
    if "gguf" in sections:
        bench_gguf(a.model)
    if "quants" in sections:
        bench_quants()
    if "tokenizer" in sections:
        bench_tokenizer(a.model)
    if "generate" in sections:
        bench_generate(a.model, a.threads, a.prompt_tokens or 400, a.gen_tokens or 64, not a.no_llamacpp)
    return 0


if __name__ == "__main__":
    sys.exit(main())
