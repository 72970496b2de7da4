"""Server benchmark: aggregate generated tokens/s for 1, 4 and 8 concurrent streaming
clients, figures printed, never asserted.

    python scripts/bench_server.py [--model FILE] [--threads 2]

Each client streams /v1/completions for its own ~20-token prompt, 32 greedy tokens with
ignore_eos (best of 2 runs). Two servers per concurrency: with one slot (-np 1: requests queue) and with
one slot per client (-np N: the replies in progress decode together, one pass over the weights
per step). Aggregate = all
generated tokens / wall time from the first request to the last token.
"""
from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TOPICS = ["the sea", "a mountain village", "an old clock", "the first snow", "a lost letter", "a lighthouse",
          "a quiet library", "the night train"]
GEN_TOKENS = 32


def _stream(base: str, prompt: str, out: dict) -> None:
    import httpx
    t0 = time.perf_counter()
    first = None
    n = 0
    body = {"prompt": prompt, "max_tokens": GEN_TOKENS, "temperature": 0, "ignore_eos": True, "stream": True}
    with httpx.Client(timeout=600) as c, c.stream("POST", f"{base}/v1/completions", json=body) as r:
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            ev = json.loads(line[6:])
            if ev["choices"] and ev["choices"][0]["finish_reason"] is None:
                first = first or time.perf_counter() - t0
            if ev.get("timings"):
                n = ev["timings"]["predicted_n"]
    out.update(first=first or 0.0, tokens=n, end=time.perf_counter())


def _run(base: str, clients: int) -> tuple[float, float]:
    """(aggregate tokens/s, mean time to first token) for `clients` concurrent streams."""
    results = [dict() for _ in range(clients)]
    threads = [threading.Thread(target=_stream, args=(base, f"Write a short story about {TOPICS[i % 8]}.", results[i]))
               for i in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = max(r["end"] for r in results) - t0
    return sum(r["tokens"] for r in results) / wall, sum(r["first"] for r in results) / clients


def bench_server(model_path, threads: int) -> None:
    """Print aggregate tokens/s for 1, 4 and 8 concurrent streams (-np 1 and -np N)."""
    import runner
    from runner.modes.api_common import Options
    from runner.modes.server import create_app, serve_in_thread
    llm = runner.load(model_path, threads=threads, n_ctx=2048)
    print(f"server         {GEN_TOKENS} greedy tokens per stream, {threads} threads; aggregate tok/s "
          f"(mean time to first token)")
    for clients in (1, 4, 8):
        line = f"  {clients} stream{'s' if clients > 1 else ' '}"
        for parallel in sorted({1, clients}):
            with serve_in_thread(create_app(llm, Options(parallel=parallel, log=False))) as base:
                _run(base, 1)                             # warm up: page in weights, build caches
                tok_s, ttft = max(_run(base, clients) for _ in range(2))     # best of 2: the machine is shared
            line += f"   -np {parallel}: {tok_s:6.1f} tok/s ({ttft:5.2f} s)"
        print(line, flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=ROOT / "models" / "gemma-3-270m-q4_k_m.gguf")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    if not a.model.exists():
        print(f"bench_server: {a.model} not found (run scripts/setup.sh)", file=sys.stderr)
        return 1
    bench_server(a.model, a.threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
