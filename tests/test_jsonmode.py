"""JSON mode's automaton against Python's json module (the independent reference), and
the constrained sampler on a toy vocabulary."""
from __future__ import annotations

import json
import random

import numpy as np
import pytest

from runner.modes import jsonmode as J
from runner.sampling import SamplingParams, sample
from runner.tokenizer import SPACE, Tokenizer, TokenType

pytestmark = pytest.mark.fast


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
    state = J.START
    for i, ch in enumerate(text):
        state = J.step(state, ch)
        assert state is not None, f"refused at {i}: {text[:i + 1]!r}"
        assert J.is_complete(state) == (i == len(text) - 1)
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


def test_automaton_agrees_with_json_loads_on_mutated_texts():
    """A complete accepted text parses to an object; an object json.loads accepts (with
    whitespace the automaton allows) is accepted."""
    rng = random.Random(7)
    checked = 0
    for _ in range(3000):
        text = json.dumps(random_object(rng))
        for _ in range(rng.randint(1, 3)):
            text = mutate(rng, text)
        state = J.feed(J.START, text.rstrip(" "))      # generation ends at the closing brace
        try:
            ok = isinstance(json.loads(text), dict)
        except (ValueError, RecursionError):
            ok = False
        accepted = J.is_complete(state)
        if accepted:
            assert ok, text
        elif ok and "\n" not in text and "  " not in text:
            pytest.fail(f"refused valid JSON {text!r}")
        checked += ok
    assert checked > 300                      # the mutations left plenty of valid texts


@pytest.mark.parametrize("text", ['[1]', '"s"', '1', '{"a" 1}', '{"a": 01}', '{"a": .5}', '{"a": 1.}',
                                  '{"a": tru}', '{"a": 1,}', '{,}', '{"a": "\x01"}', '{"a": "\\q"}',
                                  '{"a": "\\u12g4"}', '{"a": 1}}', '{"a": -}', '{"a": 1e}'])
def test_invalid_texts_are_refused(text):
    assert not J.is_complete(J.feed(J.START, text))


def test_whitespace_is_one_newline_and_an_indent():
    assert J.feed(J.START, "{\n" + " " * J.MAX_WS + '"a": 1}') is not None
    assert J.feed(J.START, "{\n" + " " * (J.MAX_WS + 1)) is None
    assert J.feed(J.START, "{\n\n") is None
    assert J.feed(J.START, "{\r\n") is None


def ToyTokenizer(pieces: list[str], types: list[int] | None = None) -> Tokenizer:
    """A tokenizer over just these pieces (JSONVocab reads pieces, types and byte tokens)."""
    return Tokenizer([p.replace(" ", SPACE) for p in pieces], types or [TokenType.NORMAL] * len(pieces))


def sample_json(vocab, state, logits, params, rng, recent):
    """(token, next state) drawn under the JSON constraint in `state`; None if nothing is valid."""
    c = J.JSONConstraint(vocab)
    c.state = state
    tok = sample(logits, params, rng, recent, c)
    if tok is None:
        return None
    c.advance(tok)
    return tok, c.state


def test_sampler_picks_the_best_valid_token_and_never_an_invalid_one():
    pieces = ["hello", "{", '{"', "}", "a", '"', ":", " 1", "1", "<eos>", "<0x22>", "  "]
    types = [TokenType.NORMAL] * 9 + [TokenType.CONTROL, TokenType.BYTE, TokenType.USER_DEFINED]
    vocab = J.JSONVocab(ToyTokenizer(pieces, types))
    ids = {p: i for i, p in enumerate(pieces)}
    greedy = SamplingParams(temperature=0)
    rng = np.random.default_rng(0)
    logits = np.zeros(len(pieces), dtype=np.float32)
    logits[ids["hello"]] = 10                 # the model's favourite is invalid at the start
    logits[ids["<eos>"]] = 9                  # control tokens are never generated
    logits[ids['{"']] = 2
    logits[ids["{"]] = 1
    tok, state = sample_json(vocab, J.START, logits, greedy, rng, [])
    assert tok == ids['{"']
    # inside a key: the byte token for '"' closes it, 'a' continues it
    logits[:] = 0
    logits[ids["<0x22>"]] = 5
    tok2, state2 = sample_json(vocab, state, logits, greedy, rng, [])
    assert tok2 == ids["<0x22>"] and state2[0] == J.COLON
    # after the key only ':' is valid, whatever the logits prefer
    logits[:] = 0
    logits[ids["}"]] = 8
    logits[ids[" 1"]] = 7
    assert sample_json(vocab, state2, logits, greedy, rng, [])[0] == ids[":"]
    # sampling at a high temperature only ever draws valid tokens
    params = SamplingParams(temperature=5.0, top_k=0, top_p=1.0, min_p=0.0, seed=1)
    state3 = J.feed(state2, ":")
    for seed in range(50):
        tok, nxt = sample_json(vocab, state3, np.zeros(len(pieces), np.float32), params,
                                 np.random.default_rng(seed), [])
        assert nxt is not None and pieces[tok] in ("{", '{"', '"', " 1", "1", "<0x22>", "  ")


def test_banned_tokens_leave_no_choice_returns_none():
    vocab = J.JSONVocab(ToyTokenizer(["{", "x"]))
    params = SamplingParams(temperature=0, logit_bias={0: -np.inf})
    assert sample_json(vocab, J.START, np.zeros(2, np.float32), params, np.random.default_rng(0), []) is None
