"""JSON mode (`response_format: {"type": "json_object"}`): generation constrained so that
the output is one JSON object (RFC 8259), ending as soon as the object closes.

The grammar is a character-level pushdown automaton: `step(state, ch)` returns the next
state, or None when no JSON object starts with the text read so far. A token is allowed
when its whole text steps through the automaton from the current state.

Checking 262k tokens a step in Python would cost a second, so a step does little work:

1. Once per tokenizer: every token's text, and per automaton mode a [n_vocab] mask of
   the tokens that may be valid in it, judged by their first character and their first
   character after leading whitespace (after a key only tokens like ':', ': "' or ' :'
   survive; inside a string almost all do).
2. The surviving candidates are visited in decreasing logit order (a partial sort that
   widens 64 -> 1024 -> 16384 -> all only when too few are valid), each checked with the
   automaton (plain string content without the automaton), until top-k valid ones are
   found (one when greedy; sampling.UNLIMITED_TOP_K when top-k is off).
3. the rest of `runner.sampling`'s chain (typical, top-p, min-p, temperature) then acts
   on those.

Markup and image tokens (`<b>`, `<start_of_image>`) and control tokens are never
generated in JSON mode. Whitespace between tokens is one newline and an indent at most
(as llama.cpp's JSON grammar), so that the model cannot pad forever.
"""
from __future__ import annotations

import re

import numpy as np

from ..tokenizer import SPACE, TokenType

MAX_WS = 20                 # spaces or tabs allowed in a run of whitespace (an indent)
NEWLINE = 32                # flag in a state's whitespace count: the run holds its newline
WS = " \t\n\r"              # JSON whitespace (\r is refused: a newline is "\n")
DIGITS = "0123456789"
HEX = "0123456789abcdefABCDEF"

# automaton modes; a state is (mode, aux, stack, ws): stack is a str of '{' and '[',
# ws the whitespace characters just read, aux a mode's detail (see each mode)
(VALUE,        # a value must start here (aux 1: after '[', so ']' may close instead)
 OBJ_OPEN,     # after '{': a key or '}'
 KEY,          # after ',' in an object: a key
 COLON,        # after a key
 AFTER,        # after a value inside a container: ',' or the closing bracket
 STRING,       # inside a string (aux 1: a key)
 ESCAPE,       # after a backslash in a string (aux: key flag)
 UHEX,         # inside \\uXXXX (aux: 2 * hex digits left + key flag)
 LITERAL,      # inside true/false/null (aux: the letters still to come)
 NUM_MINUS, NUM_ZERO, NUM_INT, NUM_DOT, NUM_FRAC, NUM_E, NUM_ESIGN, NUM_EXP,
 DONE) = range(18)
N_MODES = DONE + 1
NUM_END_OK = (NUM_ZERO, NUM_INT, NUM_FRAC, NUM_EXP)  # a number may end in these modes

START = (VALUE, 0, "", 0)

# first-character classes of tokens: 0..127 ASCII; then:
OTHER_CHAR, HIGH_BYTE, WS_ONLY, NEVER, N_CLASSES = 128, 129, 130, 131, 132
CLOSE = {"{": "}", "[": "]"}


def _whitespace(state: tuple, ch: str) -> tuple | None:
    # a run is at most one newline, first, then up to MAX_WS spaces or tabs (ws counts
    # them, plus NEWLINE once the newline is read)
    mode, aux, stack, ws = state
    if ch == "\n":
        return (mode, aux, stack, NEWLINE) if ws == 0 else None
    if ch == "\r" or ws & ~NEWLINE >= MAX_WS:
        return None
    return (mode, aux, stack, ws + 1)


def _value_done(stack: str) -> tuple:
    return (DONE, 0, "", 0) if not stack else (AFTER, 0, stack, 0)


def _start_value(ch: str, stack: str) -> tuple | None:
    if ch == "{":
        return (OBJ_OPEN, 0, stack + "{", 0)
    if not stack:
        return None                               # json_object: the top level is an object
    if ch == "[":
        return (VALUE, 1, stack + "[", 0)
    if ch == '"':
        return (STRING, 0, stack, 0)
    if ch == "-":
        return (NUM_MINUS, 0, stack, 0)
    if ch == "0":
        return (NUM_ZERO, 0, stack, 0)
    if "1" <= ch <= "9":
        return (NUM_INT, 0, stack, 0)
    lit = {"t": "rue", "f": "alse", "n": "ull"}.get(ch)
    return (LITERAL, lit, stack, 0) if lit else None


def step(state: tuple, ch: str) -> tuple | None:
    """The automaton's state after reading `ch`, or None if the text can no longer
    become a JSON object."""
    mode, aux, stack, ws = state
    if mode == STRING:
        if ch == '"':
            return (COLON, 0, stack, 0) if aux else _value_done(stack)
        if ch == "\\":
            return (ESCAPE, aux, stack, 0)
        return None if ch < " " else state
    if ch in WS and mode in (VALUE, OBJ_OPEN, KEY, COLON, AFTER):
        return _whitespace(state, ch)
    if mode == VALUE:
        if aux and ch == "]":
            return _value_done(stack[:-1])
        return _start_value(ch, stack)
    if mode == OBJ_OPEN:
        if ch == "}":
            return _value_done(stack[:-1])
        return (STRING, 1, stack, 0) if ch == '"' else None
    if mode == KEY:
        return (STRING, 1, stack, 0) if ch == '"' else None
    if mode == COLON:
        return (VALUE, 0, stack, 0) if ch == ":" else None
    if mode == AFTER:
        if ch == ",":
            return (KEY, 0, stack, 0) if stack[-1] == "{" else (VALUE, 0, stack, 0)
        return _value_done(stack[:-1]) if ch == CLOSE[stack[-1]] else None
    if mode == ESCAPE:
        if ch in '"\\/bfnrt':
            return (STRING, aux, stack, 0)
        return (UHEX, 8 + aux, stack, 0) if ch == "u" else None
    if mode == UHEX:
        if ch not in HEX:
            return None
        left = aux // 2 - 1
        return (STRING, aux & 1, stack, 0) if left == 0 else (UHEX, 2 * left + (aux & 1), stack, 0)
    if mode == LITERAL:
        if ch != aux[0]:
            return None
        return _value_done(stack) if len(aux) == 1 else (LITERAL, aux[1:], stack, 0)
    if mode == DONE:
        return None
    return _step_number(mode, stack, ch)


def _step_number(mode: int, stack: str, ch: str) -> tuple | None:
    # '-'? ('0' | [1-9][0-9]*) ('.' [0-9]+)? ([eE] [+-]? [0-9]+)?
    digit = ch in DIGITS
    if mode == NUM_MINUS:
        return (NUM_ZERO if ch == "0" else NUM_INT, 0, stack, 0) if digit else None
    if mode in (NUM_INT, NUM_FRAC, NUM_EXP) and digit:
        return (mode, 0, stack, 0)
    if mode in (NUM_ZERO, NUM_INT) and ch == ".":
        return (NUM_DOT, 0, stack, 0)
    if mode in (NUM_ZERO, NUM_INT, NUM_FRAC) and ch in "eE":
        return (NUM_E, 0, stack, 0)
    if mode == NUM_DOT:
        return (NUM_FRAC, 0, stack, 0) if digit else None
    if mode == NUM_E:
        if ch in "+-":
            return (NUM_ESIGN, 0, stack, 0)
        return (NUM_EXP, 0, stack, 0) if digit else None
    if mode == NUM_ESIGN:
        return (NUM_EXP, 0, stack, 0) if digit else None
    if mode in NUM_END_OK:                        # the number ends; ch belongs to what follows
        return step(_value_done(stack), ch)
    return None


def feed(state: tuple | None, text: str) -> tuple | None:
    """The state after reading `text`, or None."""
    for ch in text:
        if state is None:
            return None
        state = step(state, ch)
    return state


def is_complete(state: tuple | None) -> bool:
    return state is not None and state[0] == DONE


def _class_tables() -> tuple[np.ndarray, np.ndarray]:
    """Two [N_MODES, N_CLASSES] bool tables: may a token be valid in a mode, judging by
    the class of its first character / of its first character after leading whitespace
    (WS_ONLY: there is none)? A superset: the automaton decides."""
    first = np.zeros((N_MODES, N_CLASSES), dtype=bool)
    ws = [ord(c) for c in WS]
    structural = {VALUE: '{["-0123456789tfn]', OBJ_OPEN: '"}', KEY: '"', COLON: ":", AFTER: ",}]"}
    for mode, chars in structural.items():
        first[mode, [ord(c) for c in chars] + ws] = True
    first[STRING, 32:128] = True
    first[STRING, [OTHER_CHAR, HIGH_BYTE]] = True
    first[ESCAPE, [ord(c) for c in '"\\/bfnrtu']] = True
    first[UHEX, [ord(c) for c in HEX]] = True
    first[LITERAL, [ord(c) for c in "truefalsn"]] = True
    for mode in range(NUM_MINUS, NUM_EXP + 1):
        first[mode, [ord(c) for c in DIGITS + ".eE+-"]] = True
    for mode in NUM_END_OK:                       # what may follow a number
        first[mode, [ord(c) for c in ",}]"] + ws] = True
    # after whitespace the structural modes (and a finished number) expect the same again
    after = np.ones((N_MODES, N_CLASSES), dtype=bool)
    for mode in list(structural) + list(range(NUM_MINUS, NUM_EXP + 1)):
        after[mode] = first[mode]
        after[mode, WS_ONLY] = True
    for mode in NUM_END_OK:
        after[mode] = first[AFTER]
        after[mode, WS_ONLY] = True
        after[mode, [ord(c) for c in DIGITS + ".eE"]] = True      # no whitespace: the number goes on
    return first, after


def _char_class(text: str | None, high_byte: bool) -> int:
    if not text:
        return WS_ONLY if text == "" else NEVER
    c = ord(text[0])
    return c if c < 128 else HIGH_BYTE if high_byte else OTHER_CHAR


class JSONVocab:
    """The tokenizer's vocabulary as the automaton reads it, built once per tokenizer:
    each token's text (None: never generated) and, per automaton mode, a [n_vocab] mask of
    the tokens that may be valid in it."""

    def __init__(self, tokenizer):
        types = np.asarray(tokenizer.types)
        texts: list[str] = [t.replace(SPACE, " ") for t in tokenizer.tokens]
        keep = types == TokenType.NORMAL
        for i in np.flatnonzero(types == TokenType.USER_DEFINED).tolist():
            keep[i] = bool(texts[i]) and not texts[i].strip(WS)    # runs of newlines, spaces, tabs
        high = np.zeros(len(texts), dtype=bool)
        for i in np.flatnonzero(types == TokenType.BYTE).tolist():
            b = tokenizer.byte_of(i)
            if b is None:
                continue
            # a byte >= 0x80 is part of a UTF-8 character: string content only
            texts[i], high[i], keep[i] = (chr(b) if b < 0x80 else "\x80"), b >= 0x80, True
        keep &= np.fromiter(map(bool, texts), dtype=bool, count=len(texts))
        self.texts: list[str | None] = [t if k else None for t, k in zip(texts, keep.tolist())]
        first = np.array([_char_class(t, h) for t, h in zip(self.texts, high.tolist())], dtype=np.uint8)
        after = np.array([_char_class(t if t is None else t.lstrip(WS), h)
                          for t, h in zip(self.texts, high.tolist())], dtype=np.uint8)
        t_first, t_after = _class_tables()
        self.masks = t_first[:, first] & t_after[:, after]                # [N_MODES, n_vocab]
        # tokens that are plain string content (no quote, backslash or control character)
        special = re.compile(r'["\\\x00-\x1f]').search
        self.plain = keep & np.fromiter((not special(t) for t in texts), dtype=bool, count=len(texts))

    def next_state(self, state: tuple, tok: int) -> tuple | None:
        if state[0] == STRING and self.plain[tok]:
            return state
        text = self.texts[tok]
        return None if text is None else feed(state, text)


def _best_valid(vocab: JSONVocab, state: tuple, logits: np.ndarray, want: int) -> list[tuple[int, tuple]]:
    """Up to `want` (token, next state) pairs, valid in `state`, by decreasing logit:
    the prefiltered candidates are sorted a widening slice at a time."""
    ids = np.flatnonzero(vocab.masks[state[0]] & (logits > -np.inf))
    cl = logits[ids]
    n = len(ids)
    found: list[tuple[int, tuple]] = []
    seen, k = 0, 64
    while seen < n:
        k = min(k, n)
        top = np.argpartition(-cl, k - 1)[:k] if k < n else np.arange(n)
        top = top[np.argsort(-cl[top], kind="stable")]
        for tok in ids[top[seen:]].tolist():
            nxt = vocab.next_state(state, tok)
            if nxt is not None:
                found.append((tok, nxt))
                if len(found) == want:
                    return found
        seen, k = k, k * 16
    return found


class JSONConstraint:
    """One JSON object as a sampling constraint (sampling.Constraint): the candidates are
    the tokens valid in the automaton's state, best first; done when the object closes."""

    def __init__(self, vocab: JSONVocab):
        self.vocab = vocab
        self.state = START
        self._next: dict[int, tuple] = {}          # the candidates' next states

    def candidates(self, logits: np.ndarray, want: int) -> tuple[np.ndarray, np.ndarray]:
        found = _best_valid(self.vocab, self.state, logits, want)
        self._next = dict(found)
        ids = np.array([t for t, _ in found], dtype=np.int64)
        return ids, logits[ids]

    def advance(self, tok: int) -> None:
        nxt = self._next.get(tok)
        self.state = nxt if nxt is not None else self.vocab.next_state(self.state, tok)

    @property
    def done(self) -> bool:
        return is_complete(self.state)
