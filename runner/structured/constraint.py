"""Grammars as sampling constraints (runner.sampling.Constraint), and their caches.

    s = Structured(tokenizer)                 # once per tokenizer (TokenVocab: ~1 s)
    make = s.constraint(schema)               # compiled once per schema (cached), or SchemaError
    engine.generate(prompt, params, constraint=make())     # a fresh constraint per reply

A `Bound` grammar (one schema over one vocabulary) keeps what each state allows: the
exact valid set of a state between JSON tokens is computed once (vocab.exact) and reused
by every later reply with the same schema; inside strings the candidates come from the
logits each step (vocab.best_in_string). So the per-token cost is a dictionary lookup and
a small sort, or a threshold over the logits and a few checks.
"""
from __future__ import annotations

import json
import threading
from collections import OrderedDict
from typing import Any, Callable

import numpy as np

from .automaton import Machine, State
from .schema import Grammar, compile_schema
from .vocab import TokenVocab

EXACT_CACHE = 50000          # states whose valid sets a bound grammar keeps
GRAMMARS = 64                # compiled schemas kept per tokenizer


def schema_key(schema: Any) -> str:
    """The cache key of a schema: its canonical JSON, keys in their given order (property
    order is meaning here: the output follows it)."""
    return json.dumps(schema, ensure_ascii=False, separators=(",", ":"))


class Bound:
    """A grammar over a vocabulary: the automaton and the cache of exact valid sets."""

    def __init__(self, grammar: Grammar, vocab: TokenVocab):
        self.grammar, self.vocab = grammar, vocab
        self.machine = Machine(grammar)
        self._exact: dict[State, tuple[np.ndarray, dict[int, State]]] = {}

    def start(self) -> State:
        return self.machine.start()

    def exact(self, state: State) -> tuple[np.ndarray, dict[int, State]]:
        got = self._exact.get(state)
        if got is None:
            ids, nexts = self.vocab.exact(self.machine, state)
            got = (ids, dict(zip(ids.tolist(), nexts)))
            if len(self._exact) >= EXACT_CACHE:
                self._exact.clear()
            self._exact[state] = got
        return got

    def best(self, state: State, logits: np.ndarray, want: int) -> tuple[np.ndarray, dict[int, State]]:
        """Up to `want` valid tokens, best first, and the next states known for them; the
        end-of-text tokens join them when the output may end here."""
        m, v = self.machine, self.vocab
        ids, nexts = self._valid(state, logits, want)
        if m.can_end(state) and not m.done(state):
            stops = v.stop_ids[logits[v.stop_ids] > -np.inf]
            if len(stops):
                ids = top_ids(np.concatenate([ids, stops]), logits, want)
        return ids, nexts

    def _valid(self, state: State, logits: np.ndarray, want: int) -> tuple[np.ndarray, dict[int, State]]:
        m = self.machine
        if state in self._exact:
            ids, nexts = self._exact[state]
            return top_ids(ids, logits, want), nexts
        top = m.in_string(state)
        chars = None if top is not None and _room(m, top) != 0 else m.allowed(state)
        if chars is not None:
            ids, nexts = self.exact(state)
            return top_ids(ids, logits, want), nexts
        if top is not None:
            return self.vocab.best_in_string(m, state, _room(m, top), logits, want)
        # alternatives, one of them inside a string: the best of each, then the best of all
        # (a token valid in several takes its next state from the whole state when chosen)
        parts = [self._valid(frozenset({cfg}), logits, want)[0] for cfg in state]
        return top_ids(np.unique(np.concatenate(parts)), logits, want), {}

    def next_state(self, state: State, tok: int, known: dict[int, State]) -> State | None:
        nxt = known.get(tok)
        if nxt is None:
            text = self.vocab.texts[tok]
            nxt = None if text is None else self.machine.feed(state, text)
        return nxt


def _room(m: Machine, top: tuple) -> int | None:
    """Characters a string may still take (None: no limit)."""
    n = m.nodes[top[1]]
    return None if n.max_len is None else n.max_len - top[2]


def top_ids(ids: np.ndarray, logits: np.ndarray, want: int) -> np.ndarray:
    """The `want` ids of highest logit (never -inf), best first."""
    if not len(ids):
        return ids
    cl = logits[ids]
    keep = cl > -np.inf
    ids, cl = ids[keep], cl[keep]
    if want == 1 and len(ids):
        return ids[[int(np.argmax(cl))]]
    if want < len(ids):
        part = np.argpartition(-cl, want - 1)[:want]
        ids, cl = ids[part], cl[part]
    return ids[np.argsort(-cl, kind="stable")]


class SchemaConstraint:
    """One reply constrained by a bound grammar (runner.sampling.Constraint): candidates
    are the valid tokens, best first; done when the value is complete."""

    def __init__(self, bound: Bound, state: State | None = None):
        self.bound = bound
        self.state = bound.start() if state is None else state
        self._known: dict[int, State] = {}

    def candidates(self, logits: np.ndarray, want: int) -> tuple[np.ndarray, np.ndarray]:
        ids, self._known = self.bound.best(self.state, logits, want)
        return ids, logits[ids]

    def advance(self, tok: int) -> None:
        nxt = self.bound.next_state(self.state, tok, self._known)
        if nxt is None:
            raise ValueError(f"token {tok} is not valid under the constraint")
        self.state = nxt
        self._known = {}

    @property
    def done(self) -> bool:
        return self.bound.machine.done(self.state)


class Structured:
    """Structured output for one tokenizer: its TokenVocab and the schemas bound to it (an
    LRU of GRAMMARS, keyed by canonical JSON)."""

    def __init__(self, tokenizer):
        self.vocab = TokenVocab(tokenizer)
        self._bound: OrderedDict[str, Bound] = OrderedDict()
        self._lock = threading.Lock()

    def bind(self, schema: Any, grammar: Callable[[], Grammar] | None = None, key: str | None = None) -> Bound:
        """The bound grammar of a JSON Schema (compiled on first use; SchemaError), or of
        the grammar `grammar()` makes, cached under `key`."""
        key = key if key is not None else schema_key(schema)
        with self._lock:
            got = self._bound.get(key)
            if got is not None:
                self._bound.move_to_end(key)
                return got
        b = Bound(grammar() if grammar is not None else compile_schema(schema), self.vocab)
        with self._lock:
            self._bound[key] = b
            while len(self._bound) > GRAMMARS:
                self._bound.popitem(last=False)
        return b

    def constraint(self, schema: Any) -> Callable[[], SchemaConstraint]:
        """A maker of fresh constraints for `schema` (SchemaError now if it is not supported)."""
        b = self.bind(schema)
        return lambda: SchemaConstraint(b)

    def json_object(self) -> Callable[[], SchemaConstraint]:
        """JSON mode: any JSON object."""
        return self.constraint({"type": "object"})
