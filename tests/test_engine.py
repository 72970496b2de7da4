"""The generation engine: cache reuse, rewind, stops, limits, errors.

The reference for every cached path is a fresh run (reset cache) of the same request:
the cache must never change what is generated. This is plumbing, not numerics, so it
runs on the tiny random model (tests/tiny.py: 4 layers, sliding window 16)."""
from __future__ import annotations

import numpy as np
import pytest

import runner
from runner.cache import FullCache, SlidingCache
from runner.engine import ContextError, Prompt, step
from runner.generation import Stop
from runner.sampling import SamplingParams

from conftest import generate_interrupted

pytestmark = pytest.mark.fast

GREEDY = SamplingParams(temperature=0)
STORY = "Once upon a time, in a small village by the sea, there lived an old fisherman who"


@pytest.fixture
def llm(tiny):
    return tiny


def gen(llm, ids, n=16, params=GREEDY, **kw):
    toks = [t.id for t in llm.engine.generate(Prompt(list(ids)), params, max_tokens=n, ignore_eos=True, **kw)]
    return [t for t in toks if t >= 0]


def fresh(llm, ids, n=16, params=GREEDY, **kw):
    llm.engine.reset()
    return gen(llm, ids, n, params, **kw)


def test_prefix_reuse_computes_only_new_tokens(llm):
    a = llm.tokenize(STORY)
    out_a = fresh(llm, a)
    follow = a + out_a + llm.tokenize(" Every morning he", add_bos=False)
    expect = fresh(llm, follow)
    llm.engine.reset()
    gen(llm, a)                                     # the cache now holds a + out_a[:-1]
    got = gen(llm, follow)
    assert got == expect
    st = llm.engine.last
    assert st.cached_tokens == len(a) + len(out_a) - 1
    assert st.prompt_tokens == len(follow)


def test_chat_turn_prefills_only_its_new_text(llm):
    msgs = [{"role": "user", "content": "Name a fruit."}]
    reply = llm.chat(msgs, max_tokens=12, temperature=0)
    n1 = len(llm.chat_prompt(msgs))
    msgs += [{"role": "assistant", "content": reply}, {"role": "user", "content": "Another one?"}]
    llm.chat(msgs, max_tokens=4, temperature=0)
    st = llm.engine.last
    assert st.cached_tokens >= n1                   # the first turn was not computed again
    assert st.prompt_tokens - st.cached_tokens <= len(llm.chat_prompt(msgs)) - n1


@pytest.mark.parametrize("back", [5, 12])          # within the sliding layers' slack (16)
def test_rewind_then_generate_equals_fresh(llm, back):
    ids = llm.tokenize(STORY)
    llm.engine.reset()
    out = gen(llm, ids, n=48)
    held = len(llm.engine.ids)
    assert llm.engine.rewind(back) == held - back
    cut = (ids + out)[:held - back]
    assert llm.engine.ids == cut
    assert gen(llm, cut) == fresh(llm, cut)


def test_rewind_beyond_the_sliding_window_slack(llm):
    """A rewind of more than the ring buffer keeps (window + slack = 32 here) cannot
    reuse the sliding layers' cache: the engine recomputes, and the result is the same."""
    text = " ".join(f"Line {i}: the river rose and the village slept." for i in range(120))
    ids = llm.tokenize(text)[:1300]
    llm.engine.reset()
    gen(llm, ids, n=2)
    short = ids[:200]
    got = gen(llm, short)
    assert llm.engine.last.cached_tokens == 0            # recomputed, not reused
    assert got == fresh(llm, short)


def test_seeded_sampling_repeats(llm):
    ids = llm.tokenize(STORY)
    p = SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=1234)
    a = fresh(llm, ids, n=24, params=p)
    b = fresh(llm, ids, n=24, params=p)
    c = fresh(llm, ids, n=24, params=SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=99))
    assert a == b
    assert a != c                                   # 24 draws at temperature 1 from 320 tokens


def test_stop_string_is_cut_and_never_streamed(llm):
    ids = llm.tokenize(STORY)
    seeded = SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=3)   # varied text
    llm.engine.reset()
    full = "".join(t.text for t in llm.engine.generate(Prompt(ids), seeded, max_tokens=40, ignore_eos=True))
    mid = len(full) // 2
    stop = full[mid:mid + 3]                         # a stop string from the middle of the reply
    llm.engine.reset()
    pieces = [t.text for t in llm.engine.generate(Prompt(ids), seeded, max_tokens=40, stop=[stop],
                                                  ignore_eos=True)]
    text = "".join(pieces)
    assert text == full[:full.index(stop)]
    assert llm.engine.last.stop is Stop.WORD
    assert all(stop not in p for p in pieces)


def test_max_tokens_and_finish_reasons(llm):
    ids = llm.tokenize(STORY)
    assert len(fresh(llm, ids, n=5)) == 5
    assert llm.engine.last.stop is Stop.LIMIT
    assert llm.engine.last.generated_tokens == 5


def test_a_step_closed_at_the_prompts_last_event_keeps_its_logits(llm):
    """The scheduler closes a step when any client leaves; closed right after a reply's
    prompt is read, the reply must go on as if uninterrupted (it once lost the logits and
    failed with "generator raised StopIteration")."""
    from runner.generation import Generation, Progress
    ids = llm.tokenize(STORY)
    want = fresh(llm, ids, n=4)
    llm.engine.reset()
    g = Generation(llm.engine, Prompt(list(ids)), GREEDY, max_tokens=4, ignore_eos=True)
    events = step([g], chunk=8)
    while not any(isinstance(e, Progress) and e.done == e.total for _, e in events):
        events = step([g], chunk=8)
    events.close()
    got = []
    while not g.done:
        got += [e.id for _, e in step([g]) if not isinstance(e, Progress) and e.id >= 0]
    assert g.error is None and got == want


def test_context_full_stops_generation(tiny_path):
    small = runner.load(tiny_path, n_ctx=40)
    ids = small.tokenize(STORY)[:24]
    out = [t for t in small.engine.generate(Prompt(ids), GREEDY, max_tokens=None, ignore_eos=True)]
    assert small.engine.last.stop is Stop.CONTEXT
    assert len(ids) + len(out) <= 40


def test_prompt_too_long_is_a_clear_error(tiny_path):
    small = runner.load(tiny_path, n_ctx=16)
    with pytest.raises(ContextError, match=r"prompt has 20 tokens but the context holds 16"):
        next(small.engine.generate(Prompt([2] + [100] * 19)))
    with pytest.raises(ContextError, match="empty"):
        next(small.engine.generate(Prompt([])))


def test_ctx_size_zero_is_the_trained_maximum(tiny_path):
    llm0 = runner.load(tiny_path, n_ctx=0)
    assert llm0.n_ctx == llm0.cfg.n_ctx_train == 4096


def test_interrupt_mid_layer_keeps_the_cache_consistent(llm, monkeypatch):
    """Ctrl-C arrives while a decode step is half way through its layers: the cache
    afterwards holds exactly the evaluated tokens, and generation continues correctly."""
    ids = llm.tokenize(STORY)
    expect = fresh(llm, ids, n=12)
    monkeypatch.setattr(llm, "engine", llm.engine.spawn(draft_max=0))   # undrafted (test_draft.py: drafted)
    # n layer calls for the prompt (one chunk), then n per decode step: interrupt the
    # 3rd layer of the 4th decode step
    n = llm.cfg.n_layer
    got = generate_interrupted(llm, monkeypatch, ids, n + 3 * n + 3, max_tokens=12)
    assert len(got) == 4
    assert llm.engine.ids == ids + got[:-1]       # the 4th token was being evaluated
    rest = gen(llm, ids + got, n=12 - len(got))
    assert got + rest == expect


def test_logits_leave_the_engine_cache_alone(llm):
    ids = llm.tokenize(STORY)
    llm.engine.reset()
    gen(llm, ids, n=4)
    held = list(llm.engine.ids)
    llm.logits(ids[:10])
    assert llm.engine.ids == held
    assert gen(llm, held, n=4) == fresh(llm, held, n=4)


def test_sliding_cache_truncate_knows_what_it_still_holds():
    c = SlidingCache(n_kv=1, window=8, head_dim=2, slack=4)      # 12 slots
    for p in range(30):
        kv = np.full((1, 1, 2), p, dtype=np.float32)
        c.update_and_fetch(kv, kv, np.array([p]))
    # positions 18..29 are held; a rewind to n needs n-7..n-1
    assert c.truncate(28) and c.offset == 28
    K, _, kpos = c.update_and_fetch(np.full((1, 1, 2), 99, np.float32), np.zeros((1, 1, 2), np.float32),
                                    np.array([28]))
    assert kpos.tolist() == list(range(21, 29)) and K[0, :-1, 0].tolist() == list(range(21, 28))
    assert not c.truncate(20)                                     # 13..19 were overwritten
    f = FullCache(1, 64, 2)
    f.update_and_fetch(np.zeros((1, 10, 2), np.float32), np.zeros((1, 10, 2), np.float32), np.arange(10))
    assert f.truncate(3) and f.offset == 3


def test_prefill_chunks_never_split_an_image():
    """An image's tokens attend to each other both ways, so a chunk ends before an image
    or after it, never inside."""
    from runner.engine import chunk_end
    from runner.generation import ImageSlot
    p = Prompt(list(range(1000)), [ImageSlot(100, np.zeros((256, 4), np.float32), 1)])
    assert chunk_end(p, 0, 1000, 256) == 100       # stops before the image
    assert chunk_end(p, 100, 1000, 256) == 356     # the image whole (it ends at 356)
    assert chunk_end(p, 100, 1000, 200) == 356     # a chunk starting at the image takes all of it
    assert chunk_end(p, 356, 1000, 200) == 556


def shifted_run(llm, prompt, params, n):
    """Generate n tokens through full contexts; (tokens, the first shift's kept tokens,
    the index in tokens where what follows the shift starts, the rng as it was then)."""
    import copy
    from runner.generation import Generation
    g = Generation(llm.engine, prompt, params, max_tokens=n, ignore_eos=True)
    out, kept, at, rng = [], None, None, None
    while not g.done:
        for _, event in step([g]):
            if hasattr(event, "id") and event.id >= 0:
                out.append(event.id)
            if kept is None and g.result.shifts == 1:
                kept, at, rng = list(g.prompt.tokens), len(out), copy.deepcopy(g.rng)
    assert g.result.stop is Stop.LIMIT and len(out) == n and g.result.shifts >= 2
    return out, kept, at, rng


def test_context_shift_continues_as_a_fresh_run_over_the_kept_tokens(tiny_path):
    """With context_shift a full context keeps BOS (+ n_keep), drops the older half of the
    rest and goes on; what follows equals a fresh run over the kept tokens (sampled, the
    fresh run given the same random state: the tiny model's greedy text repeats itself)."""
    from runner.generation import Generation
    llm = runner.load(tiny_path, n_ctx=64, context_shift=True)
    params = SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=11)
    out, kept, at, rng = shifted_run(llm, Prompt(llm.tokenize(STORY)[:20]), params, 200)
    assert kept[0] == llm.tokenizer.bos_id and len(kept) < 64
    assert kept[-1] == out[at - 1]                         # the token that met the full context
    fresh = Generation(llm.engine.spawn(), Prompt(kept), params, max_tokens=20, ignore_eos=True)
    fresh.rng = rng
    follow = []
    while not fresh.done:
        follow += [e.id for _, e in step([fresh]) if hasattr(e, "id") and e.id >= 0]
    assert out[at:at + 20] == follow
    assert len(set(follow)) > 5                             # varied text, not one token repeated


def test_without_context_shift_a_full_context_ends_the_reply(tiny_path):
    llm = runner.load(tiny_path, n_ctx=64)
    out = list(llm.engine.generate(Prompt(llm.tokenize(STORY)[:20]), GREEDY, max_tokens=400, ignore_eos=True))
    assert llm.engine.last.stop is Stop.CONTEXT and llm.engine.last.shifts == 0 and len(out) < 64


def test_drafted_greedy_equals_undrafted_on_varied_text(tiny_path):
    """Drafting (several guessed positions checked at once) gives exactly the undrafted
    greedy text. Repeat and presence penalties keep the tiny model from repeating itself, so
    wrong guesses happen and must be cut back (test_draft.py: the real model)."""
    varied = SamplingParams(temperature=0, presence_penalty=2.0, repeat_penalty=3.0, repeat_last_n=-1)
    texts = []
    for draft_max in (0, 8):
        llm = runner.load(tiny_path, n_ctx=512, draft_max=draft_max)
        ids = llm.tokenize(STORY)
        texts.append([t.id for t in llm.engine.generate(Prompt(ids), varied, max_tokens=60, ignore_eos=True)])
        drafted = llm.engine.last
    assert texts[0] == texts[1] and len(set(texts[0])) > 20
    assert drafted.draft_n > 0 and drafted.draft_accepted < drafted.draft_n      # some guesses were wrong
