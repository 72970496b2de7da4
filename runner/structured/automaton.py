"""The pushdown automaton of a Grammar, over the bytes of the output.

Text is read one byte at a time, a byte being a latin-1 character (`"é"` is read as
`"\\xc3\\xa9"`), so that a multi-byte character may come whole in one token or split across
byte tokens, and a string is checked to be valid UTF-8 as it grows.

A configuration is a tuple `(ws, frame, frame, ...)`: the whitespace just read (a count of
spaces and tabs, plus NEWLINE once its one newline is read) and a stack of frames, the
innermost last. A state is a frozenset of configurations: alternatives (`anyOf`, an enum
value that is a prefix of another) are followed side by side until the text tells them
apart. `None` is the dead state. Frames are tuples:

    (VAL, node)                          a value of `node` starts here (after whitespace)
    (OBJ, node, i, phase)                inside an object; i: the property reached
    (ARR, node, n, phase)                inside an array; n: items so far (capped)
    (STR, node, count, utf8, esc, text)  inside a string: characters so far (when bounded),
                                         UTF-8 bytes still owed, escape state, and the text
                                         (only for free object keys, which must not collide)
    (FMT, node, regex state)             inside a string with a format
    (NUM, node, mode, info)              inside a number: digits in the part (or the text
                                         so far, when bounded)
    (LIT, ((rest, tag), ...))            inside fixed texts: enum values, keys, true/false

Whitespace between JSON tokens is one space, or one newline and an indent of at most
MAX_WS spaces or tabs (as llama.cpp's JSON grammars allow), so that a model cannot pad
forever; json.dumps writes nothing else.
"""
from __future__ import annotations

from fractions import Fraction

from .formats import EXP_DIGITS, FRAC_DIGITS, INT_DIGITS, format_regex
from .grammar import Format, Grammar, Literal, Number, Object, String, Union

MAX_WS = 20
NEWLINE = 32
VAL, OBJ, ARR, STR, FMT, NUM, LIT = range(7)
O_OPEN, O_KEY, O_KEYING, O_COLON, O_VALUE, O_AFTER = range(6)      # object phases
A_OPEN, A_VALUE, A_AFTER = range(3)                                 # array phases
# number modes: after '-', '0', [1-9] digits, '.', fraction digits, 'e', exponent sign, exponent digits
N_MINUS, N_ZERO, N_INT, N_DOT, N_FRAC, N_E, N_ESIGN, N_EXP = range(8)
N_END_OK = (N_ZERO, N_INT, N_FRAC, N_EXP)
EXTRA = -1                      # tag of a free key (additionalProperties) when it ends
DIGITS = "0123456789"
HEXDIGITS = "0123456789abcdefABCDEF"
WS = " \t\n\r"

# UTF-8: lead byte -> (state after it); state -> (lowest, highest next byte, state after)
_LEAD = {**{b: 1 for b in range(0xC2, 0xE0)}, 0xE0: 4, **{b: 2 for b in range(0xE1, 0xF0)}, 0xED: 5,
         0xF0: 6, 0xF1: 3, 0xF2: 3, 0xF3: 3, 0xF4: 7}
_CONT = {1: (0x80, 0xBF, 0), 2: (0x80, 0xBF, 1), 3: (0x80, 0xBF, 2), 4: (0xA0, 0xBF, 1),
         5: (0x80, 0x9F, 1), 6: (0x90, 0xBF, 2), 7: (0x80, 0x8F, 2)}
_CONT_CHARS = {s: "".join(map(chr, range(lo, hi + 1))) for s, (lo, hi, _) in _CONT.items()}
_ESCAPES = '"\\/bfnrt'


def _hex(chars: str, nxt: int) -> dict:
    return {c: nxt for c in chars}


# escapes: state -> {character: next state}. 1: after '\'; 10: after '\u'; 11-14: its hex
# digits; a high surrogate (\ud800-\udbff, 15-16) must be followed by a low one (18-23),
# and a lone low one is refused (neither is a character)
_ESC = {1: {**_hex(_ESCAPES, 0), "u": 10}, 10: {c: 12 if c in "dD" else 11 for c in HEXDIGITS},
        11: _hex(HEXDIGITS, 13), 12: {**_hex("01234567", 13), **_hex("89abAB", 15)}, 13: _hex(HEXDIGITS, 14),
        14: _hex(HEXDIGITS, 0), 15: _hex(HEXDIGITS, 16), 16: _hex(HEXDIGITS, 18), 18: {"\\": 19},
        19: {"u": 20}, 20: _hex("dD", 21), 21: _hex("cdefCDEF", 22), 22: _hex(HEXDIGITS, 23),
        23: _hex(HEXDIGITS, 0)}
_ESC_CHARS = {k: "".join(sorted(v)) for k, v in _ESC.items()}

State = frozenset


def _ws_chars(ws: int) -> str:
    if ws == 0:
        return " \n"
    return " \t" if ws & NEWLINE and ws & ~NEWLINE < MAX_WS else ""


def _ws_step(ws: int, ch: str) -> int | None:
    """The whitespace count after `ch` (see _ws_chars), or None."""
    if ws == 0:
        return 1 if ch == " " else NEWLINE if ch == "\n" else None
    return ws + 1 if ws & NEWLINE and ch in " \t" and ws & ~NEWLINE < MAX_WS else None


class Machine:
    """The automaton of one grammar: start, step, feed, and what may come next."""

    def __init__(self, grammar: Grammar):
        self.g = grammar
        self.nodes = grammar.nodes
        self.regex = {i: format_regex(n.name) for i, n in enumerate(self.nodes) if isinstance(n, Format)}

    def start(self, node: int | None = None) -> State:
        return frozenset({(0, (VAL, self.g.root if node is None else node))})

    # -- states ------------------------------------------------------------------------------

    def step(self, state: State, ch: str) -> State | None:
        out = []
        for cfg in state:
            out += self._step(cfg, ch)
        return frozenset(out) if out else None

    def feed(self, state: State | None, text: str) -> State | None:
        for ch in text:
            if state is None:
                return None
            state = self.step(state, ch)
        return state

    @staticmethod
    def done(state: State) -> bool:
        """Nothing more can be read: every alternative has finished."""
        return all(len(cfg) == 1 for cfg in state)

    def can_end(self, state: State) -> bool:
        """The text read so far is a whole value (a number at the top may go on)."""
        return any(len(cfg) == 1 or (len(cfg) == 2 and cfg[1][0] == NUM and self._num_complete(cfg[1]))
                   for cfg in state)

    def allowed(self, state: State) -> str | None:
        """The characters that may come next (None: too many to list, inside a string)."""
        chars = set()
        for cfg in state:
            c = self._allowed(cfg)
            if c is None:
                return None
            chars.update(c)
        return "".join(sorted(chars))

    def in_string(self, state: State) -> tuple | None:
        """The STR frame when the state is one configuration between characters of a
        string, where any plain text may follow (the fast path of vocab.py)."""
        if len(state) != 1:
            return None
        (cfg,) = state
        top = cfg[-1] if len(cfg) > 1 else None
        if top is None or top[0] != STR or top[3] or top[4]:
            return None
        return top

    # -- one configuration -------------------------------------------------------------------

    def _step(self, cfg: tuple, ch: str) -> list:
        if len(cfg) == 1:
            return []
        top = cfg[-1]
        kind = top[0]
        if kind == STR:
            return self._str(cfg, top, ch)
        if kind == LIT:
            alts = tuple((s[1:], t) for s, t in top[1] if s[0] == ch)
            return self._lit(cfg[:-1], alts) if alts else []
        if kind == NUM:
            return self._num(cfg, top, ch)
        if kind == FMT:
            return self._fmt(cfg, top, ch)
        if ch in WS:
            ws = _ws_step(cfg[0], ch)
            return [] if ws is None else [(ws,) + cfg[1:]]
        base = (0,) + cfg[1:-1]
        if kind == VAL:
            return self._begin(base, top[1], ch)
        if kind == OBJ:
            return self._obj(base, top, ch)
        return self._arr(base, top, ch)

    def _begin(self, base: tuple, node: int, ch: str) -> list:
        """A value of `node` starts with `ch`, `base` below it."""
        n = self.nodes[node]
        if isinstance(n, Union):
            out = []
            for a in n.alts:
                out += self._begin(base, a, ch)
            return out
        if ch not in self.g.firsts[node]:
            return []
        if isinstance(n, Literal):
            return self._lit(base, tuple((t[1:], None) for t in n.texts if t[0] == ch))
        if isinstance(n, String):
            return [base + ((STR, node, 0, 0, 0, ""),)]
        if isinstance(n, Format):
            return [base + ((FMT, node, self.regex[node].start),)]
        if isinstance(n, Number):
            mode = N_MINUS if ch == "-" else N_ZERO if ch == "0" else N_INT
            info = ch if n.bounds is not None else (1 if mode == N_INT else 0)
            return [base + ((NUM, node, mode, info),)]
        if isinstance(n, Object):
            return [base + ((OBJ, node, 0, O_OPEN),)]
        return [base + ((ARR, node, 0, A_OPEN),)]

    def _finish(self, base: tuple, tag: int | None = None) -> tuple:
        """The value on top of `base` has ended: its parent moves on (tag: a key's property)."""
        if len(base) == 1:
            return (0,)
        parent = base[-1]
        if parent[0] == OBJ:
            _, node, i, phase = parent
            props = len(self.nodes[node].props)
            if phase == O_KEYING:
                return base[:-1] + ((OBJ, node, props if tag == EXTRA else tag, O_COLON),)
            return base[:-1] + ((OBJ, node, min(i + 1, props), O_AFTER),)
        _, node, n, _ = parent
        return base[:-1] + ((ARR, node, min(n + 1, self.nodes[node].cap()), A_AFTER),)

    def _lit(self, base: tuple, alts: tuple) -> list:
        out = [self._finish(base, t) for s, t in alts if not s]
        rest = tuple(a for a in alts if a[0])
        if rest:
            out.append(base + ((LIT, rest),))
        return out

    def _obj(self, base: tuple, top: tuple, ch: str) -> list:
        _, node, i, phase = top
        g = self.g
        if phase in (O_OPEN, O_KEY):
            if ch == '"':
                alts, free = g.keys[node][i]
                keying = base + ((OBJ, node, i, O_KEYING),)
                out = [keying + ((LIT, alts),)] if alts else []
                if free:
                    out.append(keying + ((STR, g.key_node[node], 0, 0, 0, ""),))
                return out
            return [self._finish(base)] if ch == "}" and phase == O_OPEN and g.open_from[node][i] else []
        if phase == O_COLON:
            if ch != ":":
                return []
            n = self.nodes[node]
            value = n.props[i][1] if i < len(n.props) else n.extra
            return [base + ((OBJ, node, i, O_VALUE), (VAL, value))]
        if ch == "," and g.more_from[node][i]:                       # O_AFTER
            return [base + ((OBJ, node, i, O_KEY),)]
        return [self._finish(base)] if ch == "}" and g.open_from[node][i] else []

    def _arr(self, base: tuple, top: tuple, ch: str) -> list:
        _, node, n, phase = top
        a = self.nodes[node]
        if phase == A_OPEN:
            if ch == "]":
                return [self._finish(base)] if a.min_items == 0 else []
            item = a.item(0)
            return [] if item is None else self._begin(base + ((ARR, node, 0, A_VALUE),), item, ch)
        if ch == ",":                                                 # A_AFTER
            item = a.item(n)
            return [] if item is None else [base + ((ARR, node, n, A_VALUE), (VAL, item))]
        return [self._finish(base)] if ch == "]" and n >= a.min_items else []

    def _str(self, cfg: tuple, top: tuple, ch: str) -> list:
        _, node, count, utf8, esc, text = top
        n = self.nodes[node]
        o = ord(ch)
        if utf8:
            lo, hi, after = _CONT[utf8]
            return [cfg[:-1] + ((STR, node, count, after, 0, text + ch if n.exclude is not None else ""),)] \
                if lo <= o <= hi else []
        if esc:
            return self._escape(cfg, top, ch)
        if ch == '"':
            if count < n.min_len or (n.exclude is not None and text in n.exclude):
                return []
            return [self._finish((0,) + cfg[1:-1], EXTRA if n.key else None)]
        if o < 0x20 or (o >= 0x80 and o not in _LEAD):
            return []
        if n.max_len is not None and count >= n.max_len:
            return []
        bounded = n.min_len or n.max_len is not None
        count = (count + 1 if n.max_len is not None else min(count + 1, n.min_len)) if bounded else 0
        if ch == "\\":
            if n.exclude is not None:
                return []                   # free keys are written plainly, to compare them
            return [cfg[:-1] + ((STR, node, count, 0, 1, ""),)]
        text = text + ch if n.exclude is not None else ""
        return [cfg[:-1] + ((STR, node, count, _LEAD.get(o, 0), 0, text),)]

    def _escape(self, cfg: tuple, top: tuple, ch: str) -> list:
        _, node, count, _, esc, _ = top
        nxt = _ESC[esc].get(ch)
        return [] if nxt is None else [cfg[:-1] + ((STR, node, count, 0, nxt, ""),)]

    def _fmt(self, cfg: tuple, top: tuple, ch: str) -> list:
        _, node, rs = top
        rx = self.regex[node]
        if ch == '"':
            return [self._finish((0,) + cfg[1:-1])] if rx.accepts(rs) else []
        nxt = rx.step(rs, ch)
        return [] if nxt is None else [cfg[:-1] + ((FMT, node, nxt),)]

    def _num(self, cfg: tuple, top: tuple, ch: str) -> list:
        nxt = self._num_next(top, ch)
        if nxt is not None:
            return [cfg[:-1] + (nxt,)]
        if self._num_complete(top):                  # the number ends; ch belongs to its parent
            return self._step(self._finish((0,) + cfg[1:-1]), ch)
        return []

    def _num_next(self, top: tuple, ch: str) -> tuple | None:
        _, node, mode, info = top
        n = self.nodes[node]
        bounded = n.bounds is not None
        digit = ch in DIGITS
        if mode == N_MINUS and digit:
            nxt = (N_ZERO if ch == "0" else N_INT, 1)
        elif mode in (N_INT, N_FRAC, N_EXP) and digit:
            cap = {N_INT: INT_DIGITS, N_FRAC: FRAC_DIGITS, N_EXP: EXP_DIGITS}[mode]
            nxt = (mode, info + 1 if not bounded else 0) if bounded or info < cap else None
        elif mode in (N_ZERO, N_INT) and ch == "." and not n.integer:
            nxt = (N_DOT, 0)
        elif mode in (N_ZERO, N_INT, N_FRAC) and ch in "eE" and not n.integer and not bounded:
            nxt = (N_E, 0)
        elif mode == N_DOT and digit:
            nxt = (N_FRAC, 1)
        elif mode == N_E and (digit or ch in "+-"):
            nxt = (N_EXP, 1) if digit else (N_ESIGN, 0)
        elif mode == N_ESIGN and digit:
            nxt = (N_EXP, 1)
        else:
            return None
        if nxt is None:
            return None
        if bounded:
            text = info + ch
            digits = text.lstrip("-").split(".")
            if len(digits[0]) > INT_DIGITS or (len(digits) > 1 and len(digits[1]) > FRAC_DIGITS):
                return None
            return (NUM, node, nxt[0], text) if n.bounds.viable(text) else None
        return (NUM, node, nxt[0], nxt[1])

    def _num_complete(self, top: tuple) -> bool:
        _, node, mode, info = top
        if mode not in N_END_OK:
            return False
        b = self.nodes[node].bounds
        if b is None:
            return True
        return b.contains(Fraction(info))

    def _allowed(self, cfg: tuple) -> str | None:
        if len(cfg) == 1:
            return ""
        top = cfg[-1]
        kind = top[0]
        g = self.g
        if kind == STR:
            _, node, count, utf8, esc, _ = top
            if utf8:
                return _CONT_CHARS[utf8]
            if esc:
                return _ESC_CHARS[esc]
            n = self.nodes[node]
            if n.max_len is not None and count >= n.max_len:
                return '"' if count >= n.min_len else ""
            return None
        if kind == LIT:
            return "".join({s[0] for s, _ in top[1]})
        if kind == FMT:
            rx = self.regex[top[1]]
            return rx.allowed(top[2]) + ('"' if rx.accepts(top[2]) else "")
        if kind == NUM:
            chars = "".join(c for c in DIGITS + ".eE+-" if self._num_next(top, c) is not None)
            if self._num_complete(top):
                after = self._allowed(self._finish((0,) + cfg[1:-1]))
                chars += after or ""
            return chars
        ws = _ws_chars(cfg[0])
        if kind == VAL:
            return ws + g.firsts[top[1]]
        if kind == OBJ:
            _, node, i, phase = top
            if phase in (O_OPEN, O_KEY):
                alts, free = g.keys[node][i]
                return ws + ('"' if alts or free else "") + ("}" if phase == O_OPEN and g.open_from[node][i] else "")
            if phase == O_COLON:
                return ws + ":"
            return ws + ("," if g.more_from[node][i] else "") + ("}" if g.open_from[node][i] else "")
        _, node, n, phase = top
        a = self.nodes[node]
        if phase == A_OPEN:
            item = a.item(0)
            return ws + ("]" if a.min_items == 0 else "") + (g.firsts[item] if item is not None else "")
        return ws + ("," if a.item(n) is not None else "") + ("]" if n >= a.min_items else "")
