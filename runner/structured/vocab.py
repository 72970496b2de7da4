"""The vocabulary as the automaton reads it, and the two ways of finding the tokens valid in
a state without looking at all 262k of them in Python.

Built once per tokenizer (`TokenVocab`, about a second for Gemma's): each token's text as
UTF-8 bytes spelled in latin-1 (None: never generated under a constraint: control, image
and unused tokens, and markup pieces), the texts in sorted order, and per-token arrays for
string content (may the token stand anywhere inside a string, and how many characters it
adds).

1. `exact(machine, state)`: every valid token, with its next state, by a depth-first walk
   of the sorted texts: a prefix is followed only while the automaton accepts it, and the
   tokens that start with a prefix are one contiguous range found by bisection. Between
   JSON tokens only a few characters are possible, so the walk touches a few hundred
   prefixes. Results are cached per state by the caller (constraint.py).
2. `best_in_string(...)`: inside a string nearly every token is valid, so the walk would be
   the whole vocabulary; instead the best tokens are taken from the logits (a threshold
   below the highest, widened until it holds enough), plain tokens accepted by their
   precomputed flags and length, and only tokens holding a quote, a backslash or raw
   bytes, and only those good enough to make the cut, run through the automaton.
"""
from __future__ import annotations

from bisect import bisect_left

import numpy as np

from ..tokenizer import SPACE, TokenType
from .automaton import Machine, State

SMALL_RANGE = 8          # a range this small is checked token by token, not by characters
_AFTER = "\u0100"        # above every latin-1 character: P + _AFTER bounds the texts starting with P


class TokenVocab:
    def __init__(self, tokenizer):
        types = np.asarray(tokenizer.types)
        n = len(types)
        texts: list[str | None] = [None] * n
        for i in np.flatnonzero(types == TokenType.NORMAL).tolist():
            texts[i] = tokenizer.tokens[i].replace(SPACE, " ").encode("utf-8").decode("latin-1")
        for i in np.flatnonzero(types == TokenType.USER_DEFINED).tolist():
            t = tokenizer.tokens[i].replace(SPACE, " ")
            if t and not t.strip(" \t\n"):                       # runs of newlines, spaces, tabs
                texts[i] = t
        for i in np.flatnonzero(types == TokenType.BYTE).tolist():
            b = tokenizer.byte_of(i)
            if b is not None:
                texts[i] = chr(b)
        self.texts = [t if t else None for t in texts]
        self.n_vocab = n
        ids = [i for i, t in enumerate(self.texts) if t is not None]
        ids.sort(key=self.texts.__getitem__)
        self.sorted_texts: list[str] = [self.texts[i] for i in ids]
        self.sorted_ids = np.array(ids, dtype=np.int64)
        self.stop_ids = np.array(sorted({i for i in (tokenizer.eos_id, tokenizer.token_id("<end_of_turn>"))
                                         if i is not None}), dtype=np.int64)
        # string content: plain tokens (printable, no quote or backslash, whole UTF-8
        # characters) and their length in characters; the rest that may still be valid there
        plain = np.zeros(n, dtype=bool)
        chars = np.zeros(n, dtype=np.int32)
        special = np.zeros(n, dtype=bool)
        for i in ids:
            t = self.texts[i]
            raw = t.encode("latin-1")
            try:
                s = raw.decode("utf-8")
            except UnicodeDecodeError:
                s = None
            if s is not None and '"' not in t and "\\" not in t and min(map(ord, t)) >= 0x20:
                plain[i], chars[i] = True, len(s)
            elif ord(t[0]) >= 0x20:
                special[i] = True
        self.plain, self.chars, self.special = plain, chars, special
        # where a reply may begin with a tool call (tools.py): the first non-blank byte
        lead = np.zeros(n, dtype=np.uint8)
        blank = np.zeros(n, dtype=bool)
        for i in ids:
            s = self.texts[i].lstrip(" \t\n\r")
            lead[i] = ord(s[0]) if s else 0
            blank[i] = not s
        self.lead, self.blank = lead, blank

    # -- 1. the exact set, by a walk of the sorted texts -------------------------------------

    def exact(self, m: Machine, state: State) -> tuple[np.ndarray, list[State]]:
        """Every token valid in `state` (ids, in sorted-text order) and the state after each."""
        texts, sids = self.sorted_texts, self.sorted_ids
        found: list[int] = []
        nexts: list[State] = []
        todo = [("", 0, len(texts), state)]
        while todo:
            prefix, lo, hi, s = todo.pop()
            p = len(prefix)
            while lo < hi and len(texts[lo]) == p:     # the tokens that are exactly the prefix
                if p:
                    found.append(lo)
                    nexts.append(s)
                lo += 1
            if lo >= hi:
                continue
            if hi - lo <= SMALL_RANGE:
                for j in range(lo, hi):
                    s2 = m.feed(s, texts[j][p:])
                    if s2 is not None:
                        found.append(j)
                        nexts.append(s2)
                continue
            chars = m.allowed(s)
            for c, l2, h2 in self._branches(prefix, lo, hi, chars):
                s2 = m.step(s, c)
                if s2 is not None:
                    todo.append((prefix + c, l2, h2, s2))
        return sids[np.array(found, dtype=np.int64)] if found else np.zeros(0, np.int64), nexts

    def _branches(self, prefix: str, lo: int, hi: int, chars: str | None):
        """(next character, its sub-range) for the texts in [lo, hi), all longer than prefix:
        for each of `chars`, or (None) for each character that occurs there."""
        texts = self.sorted_texts
        if chars is not None:
            for c in chars:
                pc = prefix + c
                l2 = bisect_left(texts, pc, lo, hi)
                if l2 < hi and texts[l2].startswith(pc):
                    yield c, l2, bisect_left(texts, pc + _AFTER, l2, hi)
            return
        p = len(prefix)
        j = lo
        while j < hi:
            c = texts[j][p]
            j2 = bisect_left(texts, prefix + c + _AFTER, j, hi)
            yield c, j, j2
            j = j2

    # -- 2. inside a string: best first ------------------------------------------------------

    def best_in_string(self, m: Machine, state: State, room: int | None, logits: np.ndarray,
                       want: int) -> tuple[np.ndarray, dict[int, State]]:
        """Up to `want` tokens valid in `state` (one configuration inside a string with
        `room` characters left, None: unbounded), best first; and the next states of those
        the automaton checked (plain ones are fed when chosen)."""
        if want == 1:                                   # greedy: the best token is usually plain
            t = int(np.argmax(logits))
            if self.plain[t] and (room is None or self.chars[t] <= room) and logits[t] > -np.inf:
                return np.array([t], dtype=np.int64), {}
        top = float(np.max(logits))
        if top == -np.inf:
            return np.zeros(0, np.int64), {}
        gap = 8.0
        while True:                     # widen a threshold until it holds `want` plain tokens
            cand = np.flatnonzero(logits >= top - gap) if gap < np.inf else np.flatnonzero(logits > -np.inf)
            ok = self.plain[cand] if room is None else self.plain[cand] & (self.chars[cand] <= room)
            if gap == np.inf or np.count_nonzero(ok) >= want:
                break
            gap = gap * 4 if gap < 128 else np.inf
        good = cand[ok]
        if len(good) > want:
            good = good[np.argpartition(-logits[good], want - 1)[:want]]
        # tokens with quotes, escapes or raw bytes: checked, best first, only above the
        # want-th plain one (below it they cannot make the cut)
        floor = float(logits[good].min()) if len(good) >= want else -np.inf
        special = cand[self.special[cand] & (logits[cand] >= floor)]
        special = special[np.argsort(-logits[special], kind="stable")]
        nexts: dict[int, State] = {}
        for t in special.tolist():
            s2 = m.feed(state, self.texts[t])
            if s2 is not None:
                nexts[t] = s2
                if len(nexts) == want:
                    break
        ids = np.concatenate([good, np.fromiter(nexts, dtype=np.int64, count=len(nexts))])
        return ids[np.argsort(-logits[ids], kind="stable")][:want], nexts
