"""JSON mode (any JSON object) through the structured-output automaton, against Python's
json module (the independent reference); and the token layer (vocab.py, constraint.py)
on small vocabularies, against brute force over every token."""
from __future__ import annotations

import json
import random
import re

import numpy as np
import pytest

from runner.sampling import SamplingParams, sample
from runner.structured import Structured
from runner.structured.automaton import MAX_WS, Machine
from runner.structured.constraint import Bound, SchemaConstraint
from runner.structured.formats import EXP_DIGITS, FRAC_DIGITS, INT_DIGITS
from runner.structured.schema import compile_schema, object_grammar
from runner.structured.vocab import TokenVocab
from runner.tokenizer import SPACE, Tokenizer, TokenType

pytestmark = pytest.mark.fast

M = Machine(object_grammar())
START = M.start()


def feed(text: str, state=START):
    """The state after `text` (Python text, read as its UTF-8 bytes)."""
    return M.feed(state, text.encode("utf-8", "surrogatepass").decode("latin-1"))


def complete(state) -> bool:
    return state is not None and M.done(state)


def random_value(rng: random.Random, depth: int = 0):
    kinds = ["int", "float", "str", "bool", "null"] + (["list", "dict"] if depth < 3 else [])
    k = rng.choice(kinds)
    if k == "int":
        return rng.randint(-10**6, 10**6)
    if k == "float":
        return rng.uniform(-1e3, 1e3) * 10 ** rng.randint(-8, 8)
    if k == "str":
        return "".join(rng.choice('ab "\\\n\té€😀/\x01') for _ in range(rng.randint(0, 8)))
    if k == "bool":
        return rng.random() < 0.5
    if k == "null":
        return None
    if k == "list":
        return [random_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    return random_object(rng, depth + 1)


def random_object(rng: random.Random, depth: int = 0) -> dict:
    return {"".join(rng.choice("kéy\"\\ ") for _ in range(rng.randint(0, 5))): random_value(rng, depth)
            for _ in range(rng.randint(0, 4))}


@pytest.mark.parametrize("seed", range(40))
def test_serialized_objects_and_all_their_prefixes_are_accepted(seed):
    rng = random.Random(seed)
    obj = random_object(rng)
    text = json.dumps(obj, ensure_ascii=rng.random() < 0.5, indent=rng.choice([None, 2, "\t"]))
    raw = text.encode("utf-8").decode("latin-1")
    state = START
    for i, ch in enumerate(raw):
        state = M.step(state, ch)
        assert state is not None, f"refused at {i}: {raw[:i + 1]!r}"
        assert M.done(state) == (i == len(raw) - 1)
    assert json.loads(text) == obj


def mutate(rng: random.Random, text: str) -> str:
    i = rng.randrange(len(text) + 1)
    op = rng.choice(["insert", "delete", "replace"])
    ch = rng.choice('{}[]":,0123456789.eE+-truefalsn \\x\n')
    if op == "insert":
        return text[:i] + ch + text[i:]
    if op == "delete" and i < len(text):
        return text[:i] + text[i + 1:]
    return text[:i] + ch + text[i + 1:]


def in_generated_subset(text: str) -> bool:
    """Valid JSON the automaton deliberately never writes: lone surrogate escapes (not
    characters), numbers past the digit caps, whitespace other than ' ' or a newline and
    an indent."""
    if re.search(r"\d{%d,}|[eE][+-]?\d{%d,}" % (min(INT_DIGITS, FRAC_DIGITS) + 1, EXP_DIGITS + 1), text):
        return False
    if "  " in text or "\n" in text:
        return False
    escapes, i = {}, 0                          # position -> code of each \\uXXXX escape
    while i < len(text):
        if text[i] == "\\":
            if text[i + 1:i + 2] == "u":
                escapes[i] = int(text[i + 2:i + 6], 16) if re.fullmatch(r"[0-9a-fA-F]{4}", text[i + 2:i + 6]) else -1
                i += 6
                continue
            i += 1
        i += 1
    for at, code in escapes.items():
        if 0xD800 <= code < 0xDC00 and not 0xDC00 <= escapes.get(at + 6, 0) < 0xE000:
            return False
        if 0xDC00 <= code < 0xE000 and not 0xD800 <= escapes.get(at - 6, 0) < 0xDC00:
            return False
    return True


def test_automaton_agrees_with_json_loads_on_mutated_texts():
    """A complete accepted text parses to an object; an object json.loads accepts is
    accepted, unless it is outside the subset the automaton writes (see above)."""
    rng = random.Random(7)
    checked = 0
    for _ in range(3000):
        text = json.dumps(random_object(rng))
        for _ in range(rng.randint(1, 3)):
            text = mutate(rng, text)
        state = feed(text.rstrip(" "))                 # generation ends at the closing brace
        try:
            ok = isinstance(json.loads(text), dict)
        except (ValueError, RecursionError):
            ok = False
        if complete(state):
            assert ok, text
        elif ok and in_generated_subset(text.rstrip(" ")):
            pytest.fail(f"refused valid JSON {text!r}")
        checked += ok
    assert checked > 300                      # the mutations left plenty of valid texts


@pytest.mark.parametrize("text", ['[1]', '"s"', '1', '{"a" 1}', '{"a": 01}', '{"a": .5}', '{"a": 1.}',
                                  '{"a": tru}', '{"a": 1,}', '{,}', '{"a": "\x01"}', '{"a": "\\q"}',
                                  '{"a": "\\u12g4"}', '{"a": 1}}', '{"a": -}', '{"a": 1e}',
                                  '{"a": "\\ud83d"}', '{"a": "\\ude00"}'])
def test_invalid_texts_are_refused(text):
    assert not complete(feed(text))


def test_whitespace_is_a_space_or_a_newline_and_an_indent():
    assert complete(feed("{\n" + " " * MAX_WS + '"a": 1}'))
    assert complete(feed('{ "a" : 1 }'))
    assert feed("{\n" + " " * (MAX_WS + 1)) is None
    assert feed("{\n\n") is None
    assert feed("{\r\n") is None
    assert feed("{  ") is None
    assert feed("{ \n") is None


def test_strings_are_valid_utf8_byte_by_byte():
    assert complete(M.feed(START, '{"a": "\xc3\xa9\xf0\x9f\x98\x80"}'))     # é and 😀, byte by byte
    for bad in ('{"a": "\x80"', '{"a": "\xc3"}', '{"a": "\xc0\x80', '{"a": "\xed\xa0\x80', '{"a": "\xf5'):
        assert not complete(M.feed(START, bad)), bad


# -- the token layer ----------------------------------------------------------------------------

def toy_tokenizer(pieces: list[str], types: list[int] | None = None, eos: str = "<eos>") -> Tokenizer:
    """A tokenizer over just these pieces."""
    return Tokenizer([p.replace(" ", SPACE) for p in pieces], types or [TokenType.NORMAL] * len(pieces),
                     eos_id=pieces.index(eos) if eos in pieces else 1)


def sample_once(bound: Bound, state, logits, params, seed=0):
    """(token, next state) drawn under the constraint in `state`; None if nothing is valid."""
    c = SchemaConstraint(bound, state)
    tok = sample(logits, params, np.random.default_rng(seed), [], c)
    if tok is None:
        return None
    c.advance(tok)
    return tok, c.state


def test_sampler_picks_the_best_valid_token_and_never_an_invalid_one():
    pieces = ["hello", "{", '{"', "}", "a", '"', ":", " 1", "1", "<eos>", "<0x22>", "  ", "\n  "]
    types = [TokenType.NORMAL] * 9 + [TokenType.CONTROL, TokenType.BYTE] + [TokenType.USER_DEFINED] * 2
    bound = Bound(object_grammar(), TokenVocab(toy_tokenizer(pieces, types)))
    ids = {p: i for i, p in enumerate(pieces)}
    greedy = SamplingParams(temperature=0)
    logits = np.zeros(len(pieces), dtype=np.float32)
    logits[ids["hello"]] = 10                 # the model's favourite is invalid at the start
    logits[ids["<eos>"]] = 9                  # the end of text is no object
    logits[ids['{"']] = 2
    logits[ids["{"]] = 1
    tok, state = sample_once(bound, START, logits, greedy)
    assert tok == ids['{"']
    # inside a key: the byte token for '"' closes it
    logits[:] = 0
    logits[ids["<0x22>"]] = 5
    tok2, state2 = sample_once(bound, state, logits, greedy)
    assert tok2 == ids["<0x22>"] and set(M.allowed(state2)) == set(" \n:")
    # after the key only ':' is valid, whatever the logits prefer
    logits[:] = 0
    logits[ids["}"]] = 8
    logits[ids[" 1"]] = 7
    assert sample_once(bound, state2, logits, greedy)[0] == ids[":"]
    # sampling at a high temperature only ever draws valid tokens
    params = SamplingParams(temperature=5.0, top_k=0, top_p=1.0, min_p=0.0)
    state3 = M.step(state2, ":")
    for seed in range(50):
        tok, nxt = sample_once(bound, state3, np.zeros(len(pieces), np.float32), params, seed)
        assert nxt is not None and pieces[tok] in ("{", '{"', '"', " 1", "1", "<0x22>", "\n  ")


def test_banned_tokens_leave_no_choice_returns_none():
    bound = Bound(object_grammar(), TokenVocab(toy_tokenizer(["{", "x", "<eos>"])))
    params = SamplingParams(temperature=0, logit_bias={0: -np.inf})
    assert sample_once(bound, START, np.zeros(3, np.float32), params) is None


JSONISH = ['{', '}', '[', ']', '"', ':', ',', ' ', '\n', '\n  ', '{"', '"}', '",', '":', ' "', '": "', '"]', '[{',
           '}]', '},', '"},', 'a', 'b', 'ab', 'abc', 'name', 'na', 'me', 'age', '0', '1', '2', '9', '-', '.', 'e',
           'true', 'tr', 'ue', 'false', 'null', 'nu', 'll', 'red', 're', 'd', 'green', ' a', ' b', 'é', 'a"', '\\',
           '\\n', '\\"', 'u', '00', 'e9', 'T', 'Z', 'Z"', '<eos>', '<end_of_turn>', '<0xC3>', '<0xA9>', '<0xE2>',
           '<0x82>', '<0xAC>', '<0x22>', '<0x7B>']


def jsonish_vocab() -> TokenVocab:
    types = [TokenType.BYTE if p.startswith("<0x") else TokenType.CONTROL if p.startswith("<") else
             TokenType.USER_DEFINED if not p.strip() else TokenType.NORMAL for p in JSONISH]
    return TokenVocab(toy_tokenizer(JSONISH, types))


SCHEMAS = [
    {"type": "object"},
    {"type": "object", "properties": {"name": {"type": "string", "maxLength": 4}, "age": {"type": "integer",
                                                                                          "minimum": 0}},
     "required": ["name"], "additionalProperties": False},
    {"type": "array", "items": {"enum": ["red", "green", 1, 10, None]}, "maxItems": 3},
    {"type": "string", "format": "date-time"},
    {"anyOf": [{"type": "string", "minLength": 2}, {"type": "array", "items": {"type": "number"}}]},
    {"anyOf": [{"type": "string", "maxLength": 3}, {"enum": ["abcdef", "ab", "na"]}]},
]


@pytest.mark.parametrize("schema", SCHEMAS, ids=range(len(SCHEMAS)))
def test_the_token_layer_equals_brute_force_over_every_token(schema):
    """Along random valid paths: the exact sets (vocab.exact) are exactly the tokens whose
    text the automaton accepts, and every constrained draw (string fast path included)
    is the best valid token or among the best `want` valid ones."""
    v = jsonish_vocab()
    bound = Bound(compile_schema(schema), v)
    m = bound.machine
    rng = np.random.default_rng(0)
    for walk in range(6):
        state = m.start()
        for _ in range(40):
            brute = {t for t, text in enumerate(v.texts) if text is not None and m.feed(state, text) is not None}
            ids, nexts = v.exact(m, state)
            assert set(ids.tolist()) == brute
            for t, s2 in zip(ids.tolist(), nexts):
                assert s2 == m.feed(state, v.texts[t])
            logits = rng.standard_normal(v.n_vocab).astype(np.float32) * 3
            valid = sorted(brute | (set(v.stop_ids.tolist()) if m.can_end(state) and not m.done(state) else set()),
                           key=lambda t: -logits[t])
            if not valid:
                break
            for want in (1, 3):
                got, _ = bound.best(state, logits, want)
                assert sorted(got.tolist(), key=lambda t: -logits[t]) == valid[:want]
            tok = int(rng.choice(valid))
            if tok in v.stop_ids:
                break
            state = bound.next_state(state, tok, {})
            if m.done(state):
                break


def test_structured_caches_by_canonical_json_keeping_property_order():
    s = Structured(toy_tokenizer(JSONISH))
    a = {"type": "object", "properties": {"x": {"type": "integer"}, "y": {"type": "integer"}}, "required": ["x", "y"]}
    b = {"type": "object", "properties": {"y": {"type": "integer"}, "x": {"type": "integer"}}, "required": ["x", "y"]}
    assert s.bind(a) is s.bind(json.loads(json.dumps(a)))
    assert s.bind(a) is not s.bind(b)
    ma, mb = s.bind(a).machine, s.bind(b).machine
    assert ma.done(ma.feed(ma.start(), '{"x":1,"y":2}')) and mb.feed(mb.start(), '{"x"') is None
