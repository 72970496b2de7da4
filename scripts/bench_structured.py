"""bench.py --structured: what structured output costs.

- the vocabulary tables (TokenVocab), built once per model;
- schema compile time over the test corpus (tests/schema_corpus.py): compile_schema, and
  compile plus the first token's valid set (what a request pays before its first token);
- decode speed with and without a constraint, greedy and sampled, as wall-clock tokens
  per second after the prompt (the constraint's work happens between evaluations, so the
  engine's own decode_s would not show it). Both sides run undrafted so that the figures
  compare the same loop; greedy drafted figures (unconstrained and constrained, once
  each, over different texts) are printed beside them. "cold" is a schema's first reply
  (its valid sets computed as they are met), "warm" a later reply with the same schema.
  Warm and unconstrained replies alternate ROUNDS times and each keeps its best, so that
  other work on the machine slows both sides alike rather than one of them; the overhead
  is the extra time per token, unconstrained tok/s over constrained minus one.
"""
from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

PEOPLE = {"type": "array", "minItems": 12, "maxItems": 12, "items": {
    "type": "object", "properties": {
        "name": {"type": "string", "maxLength": 30}, "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "email": {"type": "string", "maxLength": 40}, "city": {"type": "string", "maxLength": 30},
        "member": {"type": "boolean"}, "joined": {"type": "string", "format": "date"}},
    "required": ["name", "age", "email", "city", "member", "joined"], "additionalProperties": False}}
PROMPT = "Here is a list of twelve club members, written as JSON:\n"
ROUNDS = 3


def _decode(engine, prompt, params, n: int, constraint=None) -> tuple[int, float]:
    """(tokens, wall-clock tokens/s after the prompt) of one reply from a fresh cache."""
    engine.reset()
    t0 = time.perf_counter()
    got = sum(1 for t in engine.generate(prompt, params, max_tokens=n, ignore_eos=constraint is None,
                                         constraint=constraint) if t.id >= 0)
    wall = time.perf_counter() - t0 - engine.last.prefill_s
    return got, got / wall


def bench_structured(model: Path, threads: int, gen_tokens: int) -> None:
    import runner
    from runner.sampling import SamplingParams
    from runner.structured import Structured, compile_schema
    from runner.structured.constraint import Bound, SchemaConstraint
    from schema_corpus import CORPUS

    llm = runner.load(model, threads=threads, n_ctx=2048)
    t = time.perf_counter()
    s = Structured(llm.tokenizer)
    print(f"structured     vocabulary tables: {time.perf_counter() - t:.2f} s (once per model)")

    compile_ms, first_ms = [], []
    for _, _, schema in CORPUS:
        t = time.perf_counter()
        g = compile_schema(schema)
        compile_ms.append((time.perf_counter() - t) * 1e3)
        b = Bound(g, s.vocab)
        b.exact(b.start())
        first_ms.append((time.perf_counter() - t) * 1e3)
    print(f"               compile over {len(CORPUS)} corpus schemas: max {max(compile_ms):.1f} ms, mean "
          f"{statistics.mean(compile_ms):.2f} ms, median {statistics.median(compile_ms):.2f} ms; with the first "
          f"token's valid set: max {max(first_ms):.1f} ms, mean {statistics.mean(first_ms):.1f} ms, "
          f"median {statistics.median(first_ms):.1f} ms")

    prompt = llm.prompt_of(PROMPT)
    plain = llm.engine.spawn(draft_max=0)
    for label, params in (("greedy", SamplingParams(temperature=0)),
                          ("sampled", SamplingParams(temperature=0.8, seed=7))):
        bound = Bound(compile_schema(PEOPLE), s.vocab)
        n_cold, cold = _decode(plain, prompt, params, gen_tokens, SchemaConstraint(bound))
        warm = free = 0.0
        for _ in range(ROUNDS):
            n_warm, w = _decode(plain, prompt, params, gen_tokens, SchemaConstraint(bound))
            free = max(free, _decode(plain, prompt, params, n_warm)[1])
            warm = max(warm, w)
        line = (f"               {label:7s} decode: unconstrained {free:5.1f} tok/s, constrained {warm:5.1f} warm "
                f"({(free / warm - 1) * 100:+.0f}% time per token), {cold:5.1f} cold, over {n_warm} tokens "
                f"(best of {ROUNDS} each)")
        if params.greedy:                           # what a greedy request gets: drafting on
            _, drafted = _decode(llm.engine, prompt, params, n_warm)
            _, drafted_c = _decode(llm.engine, prompt, params, gen_tokens, SchemaConstraint(bound))
            line += f"; drafted: unconstrained {drafted:5.1f}, constrained {drafted_c:5.1f}"
        print(line)
