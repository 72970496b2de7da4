"""Speed and memory at the seed models' real geometry, beside llama.cpp (issue 12).

    python scripts/bench.py --geometry 1b,4b,27b               # ours and llama.cpp for each
    python scripts/bench.py --geometry 4b:q6_k --repeats 1     # another file type, one run each
    python scripts/bench.py --geometry 27b --ours always       # run ours even where it looks too big

For each size scripts/geometry.py provides a random-weight GGUF (written once, then
reused). Ours and llama.cpp then each run in a fresh child process, one after the other
(never two big models at once), so that each peak RSS is that engine's alone: the child's
ru_maxrss from wait4, file pages it mapped included. Both children measure the same
things, 2 threads, best of --repeats (2) runs each: load time (the file read once just
before, so that both start from the page cache, as a second launch does); prefill of a
128-token prompt (the shared paragraph, BOS included); greedy decode of 32 tokens after a
16-token context. Ours is `runner.load(path, n_ctx, threads, draft_max=0)` from whatever
`runner` comes first on PYTHONPATH (this repository's otherwise); llama.cpp is
../shared/tools/llamacpp_ref.py `bench` in the llamacpp-ref venv (n_ctx 4096, as ours).

Ours is skipped (saying why) where it would not fit: until a size in this run shows
otherwise the runner is taken to hold float32 weights, and their size must stay under 70%
of the available memory (above that the runner on main streams them, dequantizing every
weight for every token: hours, not a benchmark). Once ours has run a size with a peak RSS
under half that size's float32 bytes, it keeps weights quantized and runs every size.
A child that runs past --timeout, or whose anonymous memory nears the memory available
when it started, is killed and reported. Figures are printed, never asserted: a table,
then one JSON line per engine and size.
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

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "tools"
sys.path.insert(0, str(Path(__file__).resolve().parent))
import geometry as G                                          # noqa: E402

N_CTX = 4096                  # llamacpp_ref.py's context; ours gets the same
DENSE = 0.5                   # peak RSS / float32 bytes above this: the runner holds dense weights


def meminfo(field: str) -> int:
    """A /proc/meminfo figure in bytes (MemAvailable, MemTotal)."""
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(field)


def _rss_anon(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def warm(path: Path) -> float:
    """Read the file once so that each engine's load starts from the same page cache (as
    a second launch does); seconds taken."""
    t = time.perf_counter()
    buf = bytearray(16 << 20)
    with open(path, "rb", buffering=0) as f:
        while f.readinto(buf):
            pass
    return time.perf_counter() - t


def run_child(cmd: list[str], timeout: float, anon_limit: int) -> dict:
    """Run `cmd` to its end, or kill it (that one process) at `timeout` seconds or when
    its anonymous memory passes `anon_limit`. Returns its last JSON line of stdout, plus
    peak_rss_mb (ru_maxrss from wait4), wall_s, and `error` when it did not finish well."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, stdout=out, stderr=err, text=True)
        killed = ""
        while True:
            pid, status, usage = os.wait4(p.pid, os.WNOHANG)
            if pid:
                break
            wall = time.perf_counter() - t0
            if not killed and wall > timeout:
                killed = f"killed after the {timeout:.0f} s timeout"
            elif not killed and _rss_anon(p.pid) > anon_limit:
                killed = f"killed: its memory passed {anon_limit / 1e9:.1f} GB (available memory)"
            if killed:
                p.kill()
                _, status, usage = os.wait4(p.pid, 0)
                break
            time.sleep(0.2)
        p.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        lines = [x for x in out.read().splitlines() if x.startswith("{")]
        result = json.loads(lines[-1]) if lines and not killed else {}
        result["peak_rss_mb"] = round(usage.ru_maxrss / 1024)
        result["wall_s"] = round(time.perf_counter() - t0, 1)
        if killed or p.returncode or not lines:
            tail = (err.read().strip().splitlines() or [f"exit status {p.returncode}"])[-1]
            result["error"] = killed or tail[-300:]
        return result


# --- the child that runs ours ----------------------------------------------------------

def measure_ours(path: str, text: str, threads: int, prompt_tokens: int, gen_tokens: int, repeats: int) -> dict:
    """Ours in this process: load, prefill and decode figures (see the module doc)."""
    import runner
    from runner.engine import Prompt, SamplingParams
    t = time.perf_counter()
    llm = runner.load(path, n_ctx=N_CTX, threads=threads, draft_max=0)
    load_s = time.perf_counter() - t
    while len(llm.tokenize(text)) < prompt_tokens:
        text += text
    toks = llm.tokenize(text)[:prompt_tokens]
    eng, greedy = llm.engine, SamplingParams(temperature=0)
    prefill_s = float("inf")
    for _ in range(repeats):
        eng.reset()
        t = time.perf_counter()
        eng.prefill(Prompt(toks))
        prefill_s = min(prefill_s, time.perf_counter() - t)
    decode, n = 0.0, 0
    for _ in range(repeats):
        eng.reset()
        n = sum(1 for _ in eng.generate(Prompt(toks[:16]), greedy, max_tokens=gen_tokens, ignore_eos=True))
        decode = max(decode, eng.last.decode_tok_s)
    return {"engine": "ours", "runner": os.path.dirname(runner.__file__), "threads": threads,
            "load_s": round(load_s, 3), "prompt_tokens": len(toks), "prefill_tok_s": round(len(toks) / prefill_s, 1),
            "gen_tokens": n, "decode_tok_s": round(decode, 2)}


# --- the parent ------------------------------------------------------------------------

def skip_reason(geo: G.Geometry, last: dict | None, avail: int) -> str:
    """Why ours should not run this size ("" if it should); `last` is ours' last result in
    this run, with the float32 bytes of its size."""
    if last is not None and last["peak_rss_mb"] * 2**20 < DENSE * last["f32_bytes"]:
        return ""        # weights kept quantized: run, guarded by the timeout and the watchdog
    need = geo.f32_bytes()
    if need <= 0.7 * avail:
        return ""
    return (f"float32 weights {need / 1e9:.1f} GB > 70% of the {avail / 1e9:.1f} GB available, where "
            f"a float32 runner streams them (--ours always runs it anyway)")


def _fmt(engine: dict | None, key: str, unit: str) -> str:
    if not engine or engine.get(key) is None:
        return "–"
    v = engine[key]
    return f"{v:,.0f} {unit}" if key == "peak_rss_mb" else f"{v:.2f} {unit}" if v < 10 else f"{v:.1f} {unit}"


def print_table(rows: list[tuple[str, dict, dict]]) -> None:
    """rows: (label, ours, llama.cpp). Ratios are ours / llama.cpp for every line: above 1
    is slower to load and bigger, but faster at prefill and decode."""
    print(f"\n{'model (file)':34s} {'':9s} {'ours':>12s} {'llama.cpp':>12s} {'ours/llama.cpp':>15s}")
    for label, ours, ref in rows:
        for i, (key, name, unit) in enumerate([("load_s", "load", "s"), ("peak_rss_mb", "peak RSS", "MB"),
                                               ("prefill_tok_s", "prefill", "tok/s"),
                                               ("decode_tok_s", "decode", "tok/s")]):
            a, b = ours.get(key) if "error" not in ours else None, ref.get(key) if "error" not in ref else None
            ratio = f"{a / b:.2f}x" if a and b else "–"
            first = label if i == 0 else ""
            print(f"{first:34s} {name:9s} {_fmt(ours if a else None, key, unit):>12s} "
                  f"{_fmt(ref if b else None, key, unit):>12s} {ratio:>15s}")
        for who, r in (("ours", ours), ("llama.cpp", ref)):
            if r.get("error"):
                print(f"{'':34s} {who}: {r['error']}")


def bench_geometry(specs: list[str], text: str, threads: int = 2, prompt_tokens: int = 128, gen_tokens: int = 32,
                   repeats: int = 2, ours: str = "auto", llamacpp: bool = True, timeout: float = 900) -> None:
    """The benchmark for each spec ('1b', '4b:q6_k', ...); see the module doc."""
    rows, lines, last = [], [], None
    for spec in specs:
        geo, ftype = G.parse_spec(spec)
        path = G.ensure(geo, ftype)
        file_bytes = path.stat().st_size
        label = f"{geo.name.upper()} {ftype.upper()} ({file_bytes / 2**20:,.0f} MiB)"
        common = {"geometry": geo.name, "ftype": ftype, "file": path.name, "file_bytes": file_bytes,
                  "f32_bytes": geo.f32_bytes()}
        print(f"geometry       {label}: {path}", flush=True)
        avail = meminfo("MemAvailable")
        why = "--ours never" if ours == "never" else "" if ours == "always" else \
            skip_reason(geo, last, avail)
        if why:
            res_ours = {"engine": "ours", "error": f"skipped: {why}"}
        else:
            warm(path)
            res_ours = run_child([sys.executable, __file__, "--child", str(path), "--text", text,
                                  "--threads", str(threads), "--prompt-tokens", str(prompt_tokens),
                                  "--gen-tokens", str(gen_tokens), "--repeats", str(repeats)],
                                 timeout, int(0.95 * avail))
            if "error" not in res_ours:
                last = {**common, **res_ours}
        print(f"  ours         {json.dumps(res_ours)}", flush=True)
        if not llamacpp:
            res_ref = {"engine": "llama.cpp", "error": "not run (--no-llamacpp)"}
        elif not G.LLAMACPP_PYTHON.exists():
            res_ref = {"engine": "llama.cpp", "error": f"{G.LLAMACPP_PYTHON} not found (llamacpp-ref setup)"}
        else:
            warm(path)
            res_ref = run_child([str(G.LLAMACPP_PYTHON), str(SHARED / "llamacpp_ref.py"), "bench", str(path),
                                 "--threads", str(threads), "--prompt-tokens", str(prompt_tokens),
                                 "--gen-tokens", str(gen_tokens), "--repeats", str(repeats)],
                                timeout, int(0.95 * meminfo("MemAvailable")))
            res_ref["engine"] = "llama.cpp"
        print(f"  llama.cpp    {json.dumps(res_ref)}", flush=True)
        rows.append((label, res_ours, res_ref))
        lines += [{**common, **r} for r in (res_ours, res_ref)]
    print_table(rows)
    print()
    for line in lines:
        print(json.dumps(line))


def _child(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="bench_geometry.py --child")
    ap.add_argument("path")
    ap.add_argument("--text", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--gen-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=2)
    a = ap.parse_args(argv)
    print(json.dumps(measure_ours(a.path, a.text, a.threads, a.prompt_tokens, a.gen_tokens, a.repeats)))
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] != ["--child"]:
        print("run it through scripts/bench.py --geometry SIZES", file=sys.stderr)
        sys.exit(2)
    sys.exit(_child(sys.argv[2:]))
