"""Greedy drafting (runner/draft.py) on the real model: guessed tokens checked against
the full logits must leave the output exactly as undrafted decoding makes it.

The reference is the same engine with drafting off (draft_max=0), whose decoding is
itself checked against transformers in test_model_real.py. Both paths evaluate the
same tokens one at a time through the layers; only the product with the output matrix
runs as one product for several rows, which changes float32 rounding (~1e-6), not the
argmax of these prompts."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from runner.draft import DraftVocab
from runner.engine import Prompt
from runner.generation import Stop
from runner.sampling import SamplingParams, adjust

from conftest import generate_interrupted

GREEDY = SamplingParams(temperature=0)
PROMPTS = [
    "The river rose slowly through the night, and by morning the lower fields were",
    "def fibonacci(n):\n",
    "La Révolution française commence en 1789 lorsque",
    "Ingredients:\n- 2 cups flour\n-",
]


_undrafted = {}


def engine(llm, draft_max: int):
    """The model's engine (drafting: draft_max 8), or one beside it over the same weights
    with drafting off (draft_max 0)."""
    if draft_max == llm.engine.config.draft_max:
        return llm.engine
    if id(llm) not in _undrafted:
        _undrafted[id(llm)] = llm.engine.spawn(draft_max=draft_max)
    return _undrafted[id(llm)]


def run(llm, ids, draft_max, params=GREEDY, n=40, fresh=True, **kw):
    """(tokens with their text, result, the ids the cache holds afterwards)."""
    eng = engine(llm, draft_max)
    if fresh:
        eng.reset()
    toks = [(t.id, t.text) for t in eng.generate(Prompt(list(ids)), params, max_tokens=n, **kw)]
    return toks, eng.last, list(eng.ids)


@pytest.fixture
def long_rounds(llm, monkeypatch):
    """Rounds of 8 positions whatever the guesses' record (misses then cost the most)."""
    monkeypatch.setattr(llm.engine, "_draft_length", lambda: llm.engine.config.draft_max)


@pytest.mark.parametrize("text", PROMPTS)
def test_drafted_greedy_equals_undrafted(llm, text):
    ids = llm.tokenize(text)
    plain, st0, held0 = run(llm, ids, 0, n=48, ignore_eos=True)
    drafted, st, held = run(llm, ids, 8, n=48, ignore_eos=True)
    assert drafted == plain
    assert held == held0                        # the cache holds the same positions
    assert st.draft_n > 0 and st.draft_accepted > 0
    assert st0.draft_n == 0
    assert st.decode_steps == st0.decode_steps == 47


def test_many_wrong_guesses_still_give_the_same_text(llm, monkeypatch, long_rounds):
    """A draft vocabulary of 64 pieces guesses nearly everything wrong, in rounds of 8:
    every wrong guess discards the positions after it, and the text does not change."""
    ids = llm.tokenize(PROMPTS[2])
    plain, _, held0 = run(llm, ids, 0, n=32, ignore_eos=True)
    monkeypatch.setattr(llm.engine, "_draft", None)
    monkeypatch.setattr(llm.engine, "DRAFT_VOCAB", 64)
    drafted, st, held = run(llm, ids, 8, n=32, ignore_eos=True)
    assert drafted == plain and held == held0
    assert st.draft_accepted < st.draft_n   # wrong guesses happened


@pytest.mark.parametrize("params", [
    SamplingParams(temperature=0, repeat_penalty=1.5, repeat_last_n=32),
    SamplingParams(temperature=0, presence_penalty=1.0, frequency_penalty=0.7),
], ids=["repeat", "presence-frequency"])
def test_penalties_are_applied_to_guesses_and_checks(llm, params, long_rounds):
    ids = llm.tokenize(PROMPTS[0])
    plain, _, _ = run(llm, ids, 0, params, n=40, ignore_eos=True)
    drafted, st, _ = run(llm, ids, 8, params, n=40, ignore_eos=True)
    assert drafted == plain
    assert plain != run(llm, ids, 0, n=40, ignore_eos=True)[0]     # the penalties mattered


def test_logit_bias_bans_and_boosts(llm, long_rounds):
    ids = llm.tokenize(PROMPTS[0])
    base, _, _ = run(llm, ids, 0, n=20, ignore_eos=True)
    banned, boosted = base[3][0], llm.tokenize(" harbour", add_bos=False)[0]
    params = SamplingParams(temperature=0, logit_bias={banned: -100.0, boosted: 3.0})
    plain, _, _ = run(llm, ids, 0, params, n=20, ignore_eos=True)
    drafted, _, _ = run(llm, ids, 8, params, n=20, ignore_eos=True)
    assert drafted == plain
    assert banned not in [t for t, _ in plain]


@pytest.mark.parametrize("n", [1, 2, 7, 9, 13])
def test_max_tokens_is_exact(llm, n, long_rounds):
    ids = llm.tokenize(PROMPTS[1])
    plain, _, held0 = run(llm, ids, 0, n=n, ignore_eos=True)
    drafted, st, held = run(llm, ids, 8, n=n, ignore_eos=True)
    assert drafted == plain and len(drafted) == n and held == held0
    assert st.stop is Stop.LIMIT


def test_stop_strings_and_end_of_text(llm, long_rounds):
    ids = llm.tokenize(PROMPTS[3])
    full = "".join(t for _, t in run(llm, ids, 0, n=40, ignore_eos=True)[0])
    stop = full[len(full) // 2:len(full) // 2 + 4]
    plain, st0, held0 = run(llm, ids, 0, n=40, stop=[stop])
    drafted, st, held = run(llm, ids, 8, n=40, stop=[stop])
    assert drafted == plain and held == held0
    assert st.stop is st0.stop and st.finish_reason == "stop"
    # a chat turn that ends with <end_of_turn>: generation stops at it, like undrafted
    chat = llm.chat_prompt([{"role": "user", "content": "Say hello."}])
    plain, st0, held0 = run(llm, chat.tokens, 0, n=60)
    drafted, st, held = run(llm, chat.tokens, 8, n=60)
    assert drafted == plain and held == held0
    assert st.stop is st0.stop


def test_logprobs_match(llm, long_rounds):
    ids = llm.tokenize(PROMPTS[0])
    out = {}
    for dm in (0, 8):
        eng = engine(llm, dm)
        eng.reset()
        out[dm] = list(eng.generate(Prompt(ids), GREEDY, max_tokens=12, ignore_eos=True, logprobs=3))
    for a, b in zip(out[0], out[8], strict=True):
        assert a.id == b.id
        assert b.logprob == pytest.approx(a.logprob, abs=1e-4)
        assert [i for i, _ in b.top_logprobs] == [i for i, _ in a.top_logprobs]


def test_a_full_context_ends_where_undrafted_ends(model_path):
    import runner
    small = runner.load(model_path, n_ctx=48)
    ids = small.tokenize(PROMPTS[0])
    small.engine._draft_length = lambda: 8
    plain, st0, held0 = run(small, ids, 0, n=None, ignore_eos=True)
    drafted, st, held = run(small, ids, 8, n=None, ignore_eos=True)
    assert drafted == plain and held == held0
    assert st.stop is st0.stop is Stop.CONTEXT
    assert len(held) == 47


def test_closing_mid_round_keeps_only_what_was_emitted(llm, long_rounds):
    """A consumer that stops after k tokens (a client gone, Ctrl-C between tokens)
    leaves the cache holding what undrafted decoding would hold at that point, even
    though the round had evaluated guesses beyond it."""
    ids = llm.tokenize(PROMPTS[0])
    expect, _, _ = run(llm, ids, 0, n=24, ignore_eos=True)
    eng = llm.engine
    for k in (1, 3, 6):
        eng.reset()
        gen = eng.generate(Prompt(ids), GREEDY, max_tokens=24, ignore_eos=True)
        got = [next(gen).id for _ in range(k)]
        gen.close()
        assert eng.ids == ids + got[:-1]
        rest, _, _ = run(llm, ids + got, 8, n=24 - k, fresh=False, ignore_eos=True)
        assert got + [t for t, _ in rest] == [t for t, _ in expect]


def test_interrupt_while_drafting_keeps_the_cache_consistent(llm, monkeypatch, long_rounds):
    ids = llm.tokenize(PROMPTS[0])
    expect, _, _ = run(llm, ids, 0, n=20, ignore_eos=True)
    # 18 layers for the prompt, then 18 per evaluated token: stop in the 5th position
    # of the first round
    got = generate_interrupted(llm, monkeypatch, ids, 18 + 4 * 18 + 7, max_tokens=20)
    assert len(got) == 1                          # the round's tokens were not yet checked
    assert llm.engine.ids == ids                  # nor kept
    rest, _, _ = run(llm, ids + got, 8, n=19, fresh=False, ignore_eos=True)
    assert got + [t for t, _ in rest] == [t for t, _ in expect]


def test_sampling_never_drafts(llm):
    ids = llm.tokenize(PROMPTS[0])
    p = SamplingParams(temperature=0.8, seed=7)
    a, st, _ = run(llm, ids, 8, p, n=16, ignore_eos=True)
    b, _, _ = run(llm, ids, 0, p, n=16, ignore_eos=True)
    assert a == b and st.draft_n == 0


# -- the pieces ------------------------------------------------------------------------

def test_subset_adjust_equals_full_adjust_restricted(llm):
    """adjust() on the draft vocabulary's logits equals adjust() on the full logits,
    read at the same ids: penalties and bias land on the same tokens."""
    rng = np.random.default_rng(0)
    full = rng.standard_normal(llm.cfg.n_vocab).astype(np.float32) * 5
    subset = np.unique(rng.integers(0, llm.cfg.n_vocab, 3000))
    recent = list(rng.choice(subset, 40)) + list(rng.integers(0, llm.cfg.n_vocab, 40))
    pos = np.full(llm.cfg.n_vocab, -1, dtype=np.int64)
    pos[subset] = np.arange(len(subset))
    bias = {int(subset[5]): -100.0, int(subset[9]): 4.0, 17: 2.0}
    params = SamplingParams(temperature=0, repeat_penalty=1.3, presence_penalty=0.5,
                            frequency_penalty=0.25, repeat_last_n=-1, logit_bias=bias)
    want = adjust(full, params, recent)[subset]
    got = adjust(full[subset], params, recent, pos)
    np.testing.assert_array_equal(got, want)
    assert Counter(recent)                        # penalties had tokens to act on
    assert not np.array_equal(want, full[subset])


def test_draft_vocab_grows_and_restarts(llm):
    emb = llm.weights.token_embd
    w = emb.rows(np.arange(emb.n_out))           # the whole output matrix as float32
    dv = DraftVocab(emb, np.array([5, 9, 9, 700]))
    assert len(dv) == 3 and dv.n_base == 3
    dv.add([9, 11, 2000, 11, -4, len(w) + 3])    # repeats and out-of-range ids skipped
    assert sorted(dv.ids[:len(dv)].tolist()) == [5, 9, 11, 700, 2000]
    np.testing.assert_array_equal(dv.w[:len(dv)], w[dv.ids[:len(dv)]])
    dv.add(range(3000, 5000))                    # past the first capacity
    np.testing.assert_array_equal(dv.w[:len(dv)], w[dv.ids[:len(dv)]])
    h = np.random.default_rng(1).standard_normal(w.shape[1]).astype(np.float32)
    sub = dv.ids[:len(dv)]
    assert dv.guess(h, GREEDY, []) == int(sub[np.argmax(w[sub] @ h)])
    dv.restart()
    assert len(dv) == 3 and (dv.pos >= 0).sum() == 3


def test_frequent_pieces_cover_punctuation_digits_and_whitespace(llm):
    tok = llm.tokenizer
    ids = tok.frequent(8192)
    assert len(ids) == 8192 and len(set(ids.tolist())) == len(ids)
    pieces = {tok.token_text(i) for i in ids}
    assert {".", ",", "0", "1", ":", "(", "e", "\n", "\n\n", "▁the", "▁and"} <= pieces
    assert not any(tok.is_control(i) for i in ids)


@pytest.mark.parametrize("schema", [
    {"type": "object", "properties": {"name": {"type": "string", "maxLength": 30},
                                      "tags": {"type": "array", "items": {"enum": ["a", "b", "c"]}, "maxItems": 4},
                                      "born": {"type": "string", "format": "date"}},
     "required": ["name", "tags", "born"], "additionalProperties": False},
    {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 999}, "maxItems": 12},
])
def test_a_constrained_greedy_reply_drafts_and_equals_undrafted(llm, schema):
    """Guesses made without the constraint are kept only where it chose them: the text is
    exactly the undrafted constrained text, and most guesses are right."""
    make = llm.structured().constraint(schema)
    ids = llm.tokenize("Here is the record, written as JSON:\n")
    plain, r0, _ = run(llm, ids, 0, n=120, constraint=make())
    drafted, r1, _ = run(llm, ids, llm.engine.config.draft_max, n=120, constraint=make())
    assert drafted == plain and r1.stop == r0.stop
    assert r1.draft_n and r1.draft_accepted > 0.5 * r1.draft_n


@pytest.mark.parametrize("draft_max", [0, 8])
def test_context_shift_greedy_equals_a_fresh_run_over_the_kept_tokens(model_path, draft_max):
    """On the real model, greedy (drafted or not) through shifted contexts: what follows
    the first shift is exactly the greedy continuation of the kept tokens."""
    import runner
    from test_engine import shifted_run
    small = runner.load(model_path, n_ctx=64, draft_max=draft_max, context_shift=True)
    out, kept, at, _ = shifted_run(small, Prompt(small.tokenize(PROMPTS[0])), GREEDY, 100)
    fresh = small.engine.spawn()
    follow = [t.id for t in fresh.generate(Prompt(kept), GREEDY, max_tokens=24, ignore_eos=True) if t.id >= 0]
    assert out[at:at + 24] == follow
