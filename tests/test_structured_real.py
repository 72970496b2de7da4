"""Structured output on the real 270M model, where the weights matter: for every schema of
the corpus (tests/schema_corpus.py), a greedy and a sampled reply; every reply that ends
by itself (finish_reason "stop") must validate with the `jsonschema` package, formats
included, and the replies cut by the token limit are counted and reported (run with -s
to see the table).

The replies run BATCH at a time through `engine.step` (the server's continuous batching),
each on an engine of its own over the shared weights."""
from __future__ import annotations

import json
import time
from contextlib import closing

import jsonschema
import pytest

from runner.engine import step
from runner.generation import Generation
from runner.sampling import SamplingParams
from schema_corpus import CORPUS

MAX_TOKENS = 512            # generous: the corpus's documents take 20-250 tokens
BATCH = 8
MODES = {"greedy": SamplingParams(temperature=0), "sampled": SamplingParams(temperature=0.8, seed=1234)}


def prompt_text(what: str) -> str:
    """A base model has no chat format: a line that introduces the JSON."""
    return f"Here is {what}, written as JSON:\n"


@pytest.fixture(scope="module")
def corpus_replies(llm):
    """(schema name, mode) -> (text, finish_reason), generated BATCH at a time."""
    s = llm.structured()
    todo = [(name, mode, llm.prompt_of(prompt_text(what)), params, s.constraint(schema))
            for name, what, schema in CORPUS for mode, params in MODES.items()]
    engines = [llm.engine.spawn(n_ctx=1024, draft_max=0) for _ in range(BATCH)]
    free, running, out = list(engines), {}, {}
    t0 = time.perf_counter()
    while todo or running:
        while todo and free:
            name, mode, prompt, params, make = todo.pop(0)
            g = Generation(free.pop(), prompt, params, MAX_TOKENS, constraint=make())
            running[g] = (name, mode)
        with closing(step(list(running), chunk=256)) as events:
            for _ in events:
                pass
        for g in [g for g in running if g.done]:
            if g.error is not None:
                raise g.error
            out[running.pop(g)] = (g.result.text, g.result.finish_reason)
            free.append(g.engine)
            if len(out) % 20 == 0:                  # a long run says where it is (with -s)
                print(f"  corpus: {len(out)}/{2 * len(CORPUS)} replies, {time.perf_counter() - t0:.0f} s", flush=True)
    out["_seconds"] = time.perf_counter() - t0
    return out


@pytest.mark.parametrize("name,what,schema", CORPUS, ids=[c[0] for c in CORPUS])
def test_replies_that_stop_validate(corpus_replies, name, what, schema):
    cls = jsonschema.validators.validator_for(schema)
    v = cls(schema, format_checker=cls.FORMAT_CHECKER)
    for mode in MODES:
        text, finish = corpus_replies[(name, mode)]
        assert finish in ("stop", "length")
        if finish == "stop":
            errors = [e.message for e in v.iter_errors(json.loads(text))]
            assert not errors, f"{mode}: {text!r}: {errors}"


def test_report_how_many_ended_by_length(corpus_replies):
    rows, by_length = [], {m: 0 for m in MODES}
    for name, _, _ in CORPUS:
        cells = []
        for mode in MODES:
            text, finish = corpus_replies[(name, mode)]
            by_length[mode] += finish == "length"
            cells.append(f"{'validated' if finish == 'stop' else 'LENGTH':9s}")
        rows.append(f"  {name:28s} " + "  ".join(cells))
    n = len(CORPUS)
    print(f"\nstructured corpus: {n} schemas, max_tokens {MAX_TOKENS}, "
          f"{corpus_replies['_seconds']:.0f} s\n  {'schema':28s} {'greedy':9s}  {'sampled':9s}\n" + "\n".join(rows))
    print("  " + ", ".join(f"{m}: {n - k}/{n} validated, {k} ended by length" for m, k in by_length.items()))
    # a generous limit: nearly every reply finishes (the rest are counted above, not failures
    # of validity; a model may write the longest array or string a schema allows)
    assert sum(by_length.values()) <= 0.1 * 2 * n
