"""The small languages inside a JSON value: string formats as regular expressions, and the
numbers a bounded number may still become.

Formats (`date`, `time`, `date-time`, `uuid`) are written as regular expressions over
ASCII, compiled once into a Thompson NFA; the automaton carries a set of NFA positions
(a `FormatState`) while it reads the string. The expressions generate a subset of what
RFC 3339 and RFC 4122 allow (upper-case `T` and `Z`, at most six fraction digits), every
member of which Python's `date.fromisoformat` and the RFC 3339 grammar accept: years
0001-9999, the days each month has, 29 February only in leap years.

A bounded number (`minimum`, `maximum`, `exclusive*`) is read as text; `NumberBounds.viable`
says whether a prefix can still end inside the bounds, by intersecting the values its
completions can take (a union of intervals, on the lattice of representable values) with
them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

INT_DIGITS = 20          # digits of an integer part (a model cannot write digits forever)
FRAC_DIGITS = 20         # digits after the point
EXP_DIGITS = 2           # exponent digits (1e99 at most: a larger one parses as infinity)

DIGIT = frozenset("0123456789")
HEX = frozenset("0123456789abcdefABCDEF")

_YEAR = r"(000[1-9]|00[1-9]\d|0[1-9]\d\d|[1-9]\d\d\d)"           # 0001-9999 (Python has no year 0)
_LEAP = r"(\d\d(0[48]|[2468][048]|[13579][26])|(0[48]|[2468][048]|[13579][26])00)"
_MONTH_DAY = r"((0[13578]|1[02])-(0[1-9]|[12]\d|3[01])|(0[469]|11)-(0[1-9]|[12]\d|30)|02-(0[1-9]|1\d|2[0-8]))"
_DATE = rf"({_YEAR}-{_MONTH_DAY}|{_LEAP}-02-29)"
_TIME = r"([01]\d|2[0-3]):[0-5]\d:[0-5]\d(\.\d{1,6})?(Z|[+-]([01]\d|2[0-3]):[0-5]\d)"
_HEX4 = "[0-9a-fA-F]{4}"
PATTERNS = {
    "date": _DATE,
    "time": _TIME,
    "date-time": f"{_DATE}T{_TIME}",
    "uuid": f"[0-9a-fA-F]{{8}}-{_HEX4}-{_HEX4}-{_HEX4}-[0-9a-fA-F]{{12}}",
}


# -- regular expressions: a parser for the subset above and a Thompson NFA ----------------------

def _parse(rx: str) -> tuple:
    """An AST: ('set', chars) | ('cat', [..]) | ('alt', [..]) | ('rep', node, lo, hi)."""
    pos = 0

    def alt() -> tuple:
        nonlocal pos
        parts = [cat()]
        while pos < len(rx) and rx[pos] == "|":
            pos += 1
            parts.append(cat())
        return parts[0] if len(parts) == 1 else ("alt", parts)

    def cat() -> tuple:
        items = []
        while pos < len(rx) and rx[pos] not in "|)":
            items.append(repeat())
        return ("cat", items)

    def repeat() -> tuple:
        nonlocal pos
        node = atom()
        if pos < len(rx) and rx[pos] in "?*+{":
            q = rx[pos]
            pos += 1
            if q == "{":
                end = rx.index("}", pos)
                lo, _, hi = rx[pos:end].partition(",")
                pos = end + 1
                return ("rep", node, int(lo), int(hi) if hi else int(lo))
            return ("rep", node, 1 if q == "+" else 0, 1 if q == "?" else None)
        return node

    def atom() -> tuple:
        nonlocal pos
        c = rx[pos]
        pos += 1
        if c == "(":
            node = alt()
            pos += 1                                    # ')'
            return node
        if c == "[":
            end = rx.index("]", pos)
            body, chars, i = rx[pos:end], set(), 0
            pos = end + 1
            while i < len(body):
                if i + 2 < len(body) and body[i + 1] == "-":
                    chars.update(chr(o) for o in range(ord(body[i]), ord(body[i + 2]) + 1))
                    i += 3
                else:
                    chars.add(body[i])
                    i += 1
            return ("set", frozenset(chars))
        if c == "\\":
            c = rx[pos]
            pos += 1
            return ("set", DIGIT if c == "d" else frozenset(c))
        return ("set", frozenset(c))

    tree = alt()
    if pos != len(rx):
        raise ValueError(f"regular expression {rx!r}: unexpected {rx[pos]!r} at {pos}")
    return tree


class Regex:
    """A compiled expression. States are frozensets of NFA positions (closed under empty
    moves); `step` and `allowed` are memoized per state."""

    def __init__(self, rx: str):
        self.sets: list[frozenset | None] = []      # position -> chars it reads (None: empty move)
        self.outs: list[list[int]] = []             # position -> next positions
        start, ends = self._build(_parse(rx))
        self.match = self._new(None)                # the accepting position
        for e in ends:
            self.outs[e].append(self.match)
        self.start = self._closure({start})
        self._steps: dict[tuple[frozenset, str], frozenset | None] = {}
        self._allowed: dict[frozenset, str] = {}

    def _new(self, chars: frozenset | None) -> int:
        self.sets.append(chars)
        self.outs.append([])
        return len(self.sets) - 1

    def _build(self, node: tuple) -> tuple[int, list[int]]:
        """(entry position, positions whose exits are still to connect)."""
        kind = node[0]
        if kind == "set":
            p = self._new(node[1])
            return p, [p]
        if kind == "alt":
            entry = self._new(None)
            ends = []
            for part in node[1]:
                s, e = self._build(part)
                self.outs[entry].append(s)
                ends += e
            return entry, ends
        if kind == "cat":
            entry = self._new(None)
            ends = [entry]
            for part in node[1]:
                s, e = self._build(part)
                for x in ends:
                    self.outs[x].append(s)
                ends = e
            return entry, ends
        _, sub, lo, hi = node                         # repetition: lo copies, then optional ones
        entry = self._new(None)
        ends = [entry]
        for _ in range(lo):
            s, e = self._build(sub)
            for x in ends:
                self.outs[x].append(s)
            ends = e
        if hi is None:                                # star: one more copy that loops back
            s, e = self._build(sub)
            for x in ends + e:
                self.outs[x].append(s)
            return entry, ends + e
        for _ in range(hi - lo):
            s, e = self._build(sub)
            for x in ends:
                self.outs[x].append(s)
            ends = ends + e
        return entry, ends

    def _closure(self, positions) -> frozenset:
        seen, todo = set(positions), list(positions)
        while todo:
            p = todo.pop()
            if self.sets[p] is None:
                for q in self.outs[p]:
                    if q not in seen:
                        seen.add(q)
                        todo.append(q)
        return frozenset(seen)

    def step(self, state: frozenset, ch: str) -> frozenset | None:
        key = (state, ch)
        if key not in self._steps:
            nxt = {q for p in state if self.sets[p] is not None and ch in self.sets[p] for q in self.outs[p]}
            self._steps[key] = self._closure(nxt) if nxt else None
        return self._steps[key]

    def accepts(self, state: frozenset) -> bool:
        return self.match in state

    def allowed(self, state: frozenset) -> str:
        """The characters that may come next, sorted."""
        if state not in self._allowed:
            chars: set[str] = set()
            for p in state:
                if self.sets[p] is not None:
                    chars |= self.sets[p]
            self._allowed[state] = "".join(sorted(chars))
        return self._allowed[state]

    def fullmatch(self, text: str) -> bool:
        state: frozenset | None = self.start
        for ch in text:
            state = self.step(state, ch)
            if state is None:
                return False
        return self.accepts(state)


_COMPILED: dict[str, Regex] = {}


def format_regex(name: str) -> Regex:
    """The compiled expression of a supported format (KeyError for another)."""
    if name not in _COMPILED:
        _COMPILED[name] = Regex(PATTERNS[name])
    return _COMPILED[name]


# -- bounded numbers ----------------------------------------------------------------------------

@dataclass(frozen=True)
class NumberBounds:
    """minimum / maximum (either may be None), each inclusive unless `*_open`; integers
    only, or decimals without an exponent."""
    lo: Fraction | None = None
    lo_open: bool = False
    hi: Fraction | None = None
    hi_open: bool = False
    integer: bool = False

    @property
    def step(self) -> Fraction:
        """The spacing of the values a text can write (a longer fraction is not allowed)."""
        return Fraction(1) if self.integer else Fraction(1, 10 ** FRAC_DIGITS)

    def contains(self, v: Fraction) -> bool:
        if self.lo is not None and (v < self.lo or (self.lo_open and v == self.lo)):
            return False
        return self.hi is None or not (v > self.hi or (self.hi_open and v == self.hi))

    def empty(self) -> bool:
        """No value on the lattice lies inside the bounds."""
        return not self._hit(None, False, None, False)

    def _hit(self, a: Fraction | None, a_open: bool, b: Fraction | None, b_open: bool) -> bool:
        """Does [a, b] (ends open as told; None: unbounded) meet the bounds on the lattice?"""
        lo, lo_open = _tighter(a, a_open, self.lo, self.lo_open, max)
        hi, hi_open = _tighter(b, b_open, self.hi, self.hi_open, min)
        if lo is None or hi is None:
            return lo is None or hi is None or lo <= hi
        k = math.ceil(lo / self.step)
        if lo_open and k * self.step == lo:
            k += 1
        x = k * self.step
        return x < hi or (x == hi and not hi_open)

    def viable(self, text: str) -> bool:
        """Can the number prefix `text` (JSON's grammar, no exponent) still end inside?"""
        neg = text.startswith("-")
        mag = text[1:] if neg else text
        spans: list[tuple[Fraction, Fraction, bool]] = []      # magnitudes [a, b) or [a, a] if closed
        if not mag:
            spans.append((Fraction(0), Fraction(10) ** INT_DIGITS, False))
        elif "." not in mag:
            if self.integer:
                d = int(mag)
                spans.append((Fraction(d), Fraction(d), True))
                if mag != "0":
                    for k in range(1, INT_DIGITS - len(mag) + 1):
                        spans.append((Fraction(d * 10 ** k), Fraction((d + 1) * 10 ** k - 1), True))
            elif mag == "0":
                spans.append((Fraction(0), Fraction(1), False))
            else:
                d = int(mag)
                for k in range(0, INT_DIGITS - len(mag) + 1):
                    spans.append((Fraction(d * 10 ** k), Fraction((d + 1) * 10 ** k), False))
        else:
            whole, frac = mag.split(".")
            v = Fraction(int(whole)) + (Fraction(int(frac), 10 ** len(frac)) if frac else 0)
            spans.append((v, v + Fraction(1, 10 ** len(frac)), False))
        for a, b, closed in spans:
            if neg and self._hit(-b, not closed, -a, False):
                return True
            if not neg and self._hit(a, False, b, not closed):
                return True
        return False


def _tighter(x: Fraction | None, x_open: bool, y: Fraction | None, y_open: bool, pick) -> tuple:
    """The tighter of two interval ends (pick = max for lower ends, min for upper)."""
    if x is None:
        return y, y_open
    if y is None or x != y:
        z = x if y is None else pick(x, y)
        return z, (x_open if z == x else y_open)
    return x, x_open or y_open
