"""The engine: a KV cache over the model's weights, and `step`, the one decoding loop every
mode runs (a batch of one for the library, the CLI and the REPL; the server's replies
together).

    engine = Engine(weights, cfg, tokenizer, EngineConfig(n_ctx=8192))
    for tok in engine.generate(Prompt(ids), params, max_tokens=64, stop=["\\n\\n"]):
        print(tok.text, end="")
    engine.last            # the Result: tokens, timings, why it stopped

The cache holds exactly the positions in `engine.ids`. A new prompt that starts with them
only computes the rest (a chat turn prefills only its new text); an interrupted reply
(Ctrl-C, a client gone) leaves the cache holding what was evaluated before it.
`engine.spawn()` gives another engine over the same weights (a server slot).

Greedy decoding drafts (draft.py): after each token's pass through the layers the engine
guesses the next token from a small draft vocabulary and feeds it in; every few
positions one product of the output matrix gives the full logits of all of them, and a
guess is kept only if those logits choose it. The text is exactly the undrafted text.
"""
from __future__ import annotations

import time
from contextlib import closing
from dataclasses import dataclass, replace
from typing import Callable, Iterator

import numpy as np

from . import model as M
from .cache import cache_bytes, make_caches
from .draft import DraftVocab
from .generation import Generation, Phase, Progress, Prompt, Result, Token, check_logits, token_logprobs
from .sampling import Constraint, SamplingParams


class ContextError(ValueError):
    """A prompt that does not fit the context, or a context that does not fit in memory."""


def size_text(n: float) -> str:
    """Bytes in binary units: 512 MiB, 3.2 GiB, 12.5 TiB."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit in ("B", "KiB", "MiB") else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def check_memory(cfg: M.Config, n_ctx: int) -> None:
    """ContextError, before anything is allocated, if the KV cache of n_ctx tokens needs
    more than the memory available now (numpy would fail, or the OS kill us, later)."""
    need, have = cache_bytes(cfg, n_ctx), M.available_memory()
    if need > have:
        raise ContextError(f"a context of {n_ctx:,} tokens needs {size_text(need)} for its KV cache, and "
                           f"{size_text(have)} of memory is available: choose a smaller context with "
                           f"-c/--ctx-size (this model was trained for {cfg.n_ctx_train:,} tokens)")


@dataclass(frozen=True)
class EngineConfig:
    n_ctx: int = 8192          # context size in tokens (0: the model's trained maximum)
    n_batch: int = 512         # prompt tokens evaluated in one pass
    draft_max: int = 8         # greedy drafting: positions checked per round (0 or 1: off)
    context_shift: bool = False  # a full context drops its older half and goes on (Generation)
    n_keep: int = 0            # tokens after BOS a shift keeps (-1: the whole prompt)
    n_seq: int = 1             # engines sharing n_ctx (the server's -np slots): each holds n_ctx // n_seq


class Engine:
    DRAFT_VOCAB = 8192          # base size of the draft vocabulary (draft.py)

    def __init__(self, weights: M.Weights, cfg: M.Config, tokenizer, config: EngineConfig = EngineConfig()):
        self.W, self.cfg, self.tok, self.config = weights, cfg, tokenizer, config
        total = config.n_ctx if config.n_ctx > 0 else cfg.n_ctx_train
        self.n_ctx = total // config.n_seq               # as llama-server divides -c among its slots
        if self.n_ctx < 2:
            raise ContextError(f"a context of {total} tokens shared by {config.n_seq} slots (-np) leaves "
                               f"{self.n_ctx} each: raise -c/--ctx-size")
        check_memory(cfg, self.n_ctx)
        self.caches = make_caches(cfg, self.n_ctx)
        self.ids: list[int] = []                  # what the cache holds, position by position
        self.last = Result()                      # of the last `generate`
        self.stop_ids = frozenset(i for i in (tokenizer.eos_id, tokenizer.token_id("<end_of_turn>"))
                                  if i is not None)
        self._draft: DraftVocab | None = None
        self._draft_hits = 0.9                    # running share of right guesses
        self._draft_owner: Generation | None = None   # the reply whose context _draft holds

    def spawn(self, **changes) -> Engine:
        """Another engine over the same weights, with its own cache and this configuration
        (with `changes`, e.g. draft_max=0)."""
        if "n_ctx" in changes:                    # a context of exactly that size (scratch, probe)
            changes.setdefault("n_seq", 1)
        return Engine(self.W, self.cfg, self.tok, replace(self.config, **changes))

    def probe(self) -> None:
        """Evaluate <bos> in a scratch context of its own: ModelError now, rather than at
        the first reply, when the weights or settings compute NaN or infinite logits (a
        NaN weight anywhere reaches every logit of this one pass)."""
        bos = self.tok.bos_id
        logits = self.spawn(n_ctx=2)._forward(Prompt([bos]), [bos], 0, 1, "last")    # [1, n_vocab]
        check_logits(logits[0], self.cfg.path, 0)

    # -- cache -----------------------------------------------------------------------------

    def rewind(self, n: int) -> int:
        """Forget the last n tokens of the cache; returns how many remain."""
        self.truncate(max(0, len(self.ids) - n))
        return len(self.ids)

    def reset(self) -> None:
        self.truncate(0)

    def truncate(self, n: int) -> None:
        """Keep the first n positions of the cache (all of it is recomputed when a sliding
        layer no longer holds the window position n needs)."""
        n = min(n, len(self.ids))
        if not all([c.truncate(n) for c in self.caches]):
            for c in self.caches:
                c.truncate(0)
            n = 0
        del self.ids[n:]

    def _forward(self, prompt: Prompt, ids: list[int], start: int, end: int, logits: str):
        tokens = np.asarray(prompt.tokens[start:end], dtype=np.int64)
        embeds, groups = [], None
        for i, im in enumerate(prompt.images, 1):
            lo, hi = max(start, im.start), min(end, im.start + len(im.embeds))
            if lo < hi:
                embeds.append((lo - start, im.embeds[lo - im.start:hi - im.start]))
                if groups is None:
                    groups = np.zeros(end - start, dtype=np.int32)
                groups[lo - start:hi - start] = i
        try:
            out = M.forward(self.W, self.cfg, self.caches, tokens, start, embeds, groups, logits)
        except BaseException:
            self.truncate(len(self.ids))        # undo a half-written step (Ctrl-C, errors)
            raise
        self.ids.extend(ids[start:end])
        return out

    # -- prompts ---------------------------------------------------------------------------

    def check_fits(self, prompt: Prompt) -> int:
        """The prompt's length; ContextError if it is empty or leaves no room to generate."""
        n = len(prompt)
        if n == 0:
            raise ContextError("the prompt is empty")
        if n >= self.n_ctx:
            raise ContextError(f"the prompt has {n} tokens but the context holds {self.n_ctx} "
                               f"(and needs room to generate): shorten it or raise --ctx-size")
        return n

    def prefill(self, prompt: Prompt, result: Result | None = None, logits: bool = True) -> np.ndarray | None:
        """Evaluate the prompt (only what the cache lacks); the last position's logits
        [n_vocab], or with logits=False nothing (then a fully cached prompt computes
        nothing)."""
        out = None
        for _, _, out in self.prefill_chunks(prompt, result, logits):
            pass
        return out

    def prefill_chunks(self, prompt: Prompt, result: Result | None = None, logits: bool = True,
                       chunk: int | None = None) -> Iterator[tuple[int, int, np.ndarray | None]]:
        """`prefill` a chunk (n_batch tokens, or fewer) at a time: yields (tokens done,
        total, None) once the cached prefix is known and after each chunk; the last yield
        carries the logits (with logits=True). Closing it early leaves the cache
        consistent. result.prefill_s counts compute time."""
        n = self.check_fits(prompt)
        chunk = min(chunk or self.config.n_batch, self.config.n_batch)
        ids = prompt.ids()
        common = common_prefix(self.ids, ids)
        if logits:
            common = min(common, n - 1)         # the last token is evaluated for its logits
        for im in prompt.images:                # never resume inside an image
            if im.start < common < im.start + len(im.embeds):
                common = im.start
        self.truncate(common)
        start = len(self.ids)                   # less than `common` if the cache had to reset
        result = result if result is not None else Result()
        result.prompt_tokens, result.cached_tokens = n, start
        yield start, n, None
        while start < n:
            stop = chunk_end(prompt, start, n, chunk)
            t0 = time.perf_counter()
            out = self._forward(prompt, ids, start, stop, "last" if logits and stop == n else "none")
            result.prefill_s += time.perf_counter() - t0
            start = stop
            yield start, n, (out[0] if logits and stop == n else None)

    def prompt_logits(self, prompt: Prompt, chunk: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
        """Teacher-forced logits of every position of `prompt` in a fresh context (this
        engine's cache is left alone), a chunk at a time: (first row, [rows, n_vocab])."""
        n = len(prompt)
        if n == 0:
            raise ContextError("the prompt is empty")
        scratch = self.spawn(n_ctx=n + 1)
        chunk = chunk or self.config.n_batch
        ids, start = prompt.ids(), 0
        while start < n:
            stop = chunk_end(prompt, start, n, chunk)
            yield start, scratch._forward(prompt, ids, start, stop, "all")
            start = stop

    def prompt_logprobs(self, prompt: Prompt, top_n: int = 0,
                        on_chunk: Callable[[int, int], None] | None = None) -> list:
        """log p of each prompt token given those before it (None for the first) and the
        top_n alternatives, as (logprob, [(id, logprob)]). Computed 64 rows at a time, so
        only a [64, n_vocab] block of logits is held. `on_chunk(done, total)` may raise
        to cancel."""
        tokens, n = prompt.tokens, len(prompt)
        out: list = [None]
        for start, logits in self.prompt_logits(prompt, chunk=64):
            for i, row in enumerate(logits):
                if start + i + 1 < n:
                    out.append(token_logprobs(row, tokens[start + i + 1], top_n))
            if on_chunk is not None:
                on_chunk(start + len(logits), n)
        return out

    # -- generation ------------------------------------------------------------------------

    def generate(self, prompt: Prompt, params: SamplingParams | None = None, max_tokens: int | None = None,
                 stop: list[str] | tuple[str, ...] = (), ignore_eos: bool = False,
                 logprobs: int | None = None, constraint: Constraint | None = None) -> Iterator[Token]:
        """Yield generated tokens with the text each releases: `step` over a batch of one
        (see Generation for the arguments). Text held back at the end (a stop string's
        unfinished start, an incomplete UTF-8 tail) comes as a last Token with id -1.
        The Result is in self.last."""
        g = Generation(self, prompt, params, max_tokens, stop, ignore_eos, logprobs, constraint)
        self.last = g.result
        while not g.done:
            with closing(step([g])) as events:
                for _, event in events:
                    if isinstance(event, Token):
                        yield event
        if g.error is not None:
            raise g.error

    def can_draft(self, g: Generation) -> bool:
        """Does `g` decode greedily, in a way drafting reproduces exactly? (A constrained
        reply drafts too: each position still chooses under the constraint from its full
        logits, and the guesses, made without it, are only kept where it chose them.)"""
        return self.config.draft_max > 1 and g.params.greedy

    def _draft_vocab(self, g: Generation) -> DraftVocab:
        if self._draft is None:
            self._draft = DraftVocab(self.W.token_embd, self.tok.frequent(self.DRAFT_VOCAB))
            self._draft.add(list(self.stop_ids))
        if self._draft_owner is not g:            # a new reply: its context joins the base set
            self._draft.restart()
            self._draft.add(g.ids)
            self._draft_owner = g
        return self._draft

    def _draft_length(self) -> int:
        """Positions per round, from the recent rate p of right guesses. A round of n
        costs n layer passes plus one product of the output matrix for n rows, and
        yields (1 - p^n) / (1 - p) tokens on average; with the costs measured here
        (22 ms a layer pass; the product 27 ms for 1 row, 55 for 4, 59 for 8) the best
        n is 1 (plain decoding, guesses still scored) below p = 0.8, then 4, 6, and from
        0.93 draft_max (8 and more cost about the same)."""
        p, most = self._draft_hits, self.config.draft_max
        return min(most, most if p >= 0.93 else 6 if p >= 0.88 else 4 if p >= 0.8 else 1)


def chunk_end(prompt: Prompt, start: int, end: int, chunk: int) -> int:
    """End of the chunk from `start`: `chunk` tokens, moved so that no image is split
    (its tokens attend to each other both ways, so they are computed together)."""
    stop = min(end, start + chunk)
    for im in prompt.images:
        a, b = im.start, im.start + len(im.embeds)
        if a < stop < b:
            stop = a if a > start else b
    return stop


def common_prefix(a: list[int], b: list[int]) -> int:
    """How many leading items two id lists share."""
    n = min(len(a), len(b))
    if n == 0:
        return 0
    diff = np.flatnonzero(np.asarray(a[:n]) != np.asarray(b[:n]))
    return int(diff[0]) if len(diff) else n


# -- the decoding loop ------------------------------------------------------------------------

def step(gens: list[Generation], chunk: int | None = None, draft: bool = True,
         stopped: Callable[[], bool] | None = None) -> Iterator[tuple[Generation, Token | Progress]]:
    """One turn of a batch of generations, each on its own engine over the same weights:

    1. the first generation still reading its prompt reads one chunk (`chunk` tokens);
    2. every generation holding fresh logits chooses its next token;
    3. the chosen tokens are evaluated together, one pass over the weights for all; or,
       when `draft`, no prompt is still being read and every one of them decodes
       greedily, a drafted round guesses several tokens ahead and checks them with one
       product of the output matrix.

    Events are yielded as they happen. Closing the iterator between them leaves every
    cache consistent with what its generation emitted; so does `stopped()` turning true
    during a drafted round (checked between its positions: the round is dropped). An
    exception from one generation ends it (`error`); one from a batched evaluation ends
    the batch."""
    reader = next((g for g in gens if g.phase is Phase.READ), None)
    if reader is not None:
        try:
            for event in reader.read(chunk):
                yield reader, event
        except Exception as e:
            reader.fail(e)
    ready = []
    for g in gens:
        if g.phase is Phase.CHOOSE:
            try:
                tok = g.choose()
            except Exception as e:
                g.fail(e)
                continue
            if tok is not None:
                yield g, tok
        if g.phase is Phase.EVAL:
            ready.append(g)
    if not ready:
        return
    reading = any(g.phase is Phase.READ for g in gens)      # a prompt waits: no long rounds
    if draft and not reading and all(g.engine.can_draft(g) for g in ready):
        try:
            yield from _draft_round(ready, stopped)
        except Exception as e:                  # each cache was cut back; all fail alike
            for g in ready:
                if not g.done:
                    g.fail(e)
        return
    t = time.perf_counter()
    try:
        rows = decode_batch([g.engine for g in ready], [g.next_input for g in ready])
    except Exception as e:                      # each engine was rolled back; all fail alike
        for g in ready:
            g.fail(e)
        return
    dt = time.perf_counter() - t
    for g, row in zip(ready, rows):
        g.evaluated(row, dt)


def _draft_round(gens: list[Generation], stopped: Callable[[], bool] | None = None
                 ) -> Iterator[tuple[Generation, Token]]:
    """Greedy decoding of `gens` (in EVAL) for a few positions, exact (draft.py). Each
    position runs the layers for every generation's input, then guesses its next token
    from the draft vocabulary and feeds that in; one product of the output matrix then
    gives the full logits of every position, and each generation chooses from them in
    turn. While its choices equal its guesses its positions are kept; at its first
    difference (or when the consumer stops) its cache is cut back to what undrafted
    decoding would hold, and its last choice is its next input."""
    engines = [g.engine for g in gens]
    vocabs = [e._draft_vocab(g) for e, g in zip(engines, gens)]
    bases = [len(e.ids) for e in engines]
    keep = list(bases)                            # what each cache may hold if we stop here
    n = min(e._draft_length() for e in engines)
    for g, base in zip(gens, bases):
        if g.max_tokens is not None and g.max_tokens >= 0:
            n = min(n, g.max_tokens - g.result.generated_tokens)
        n = min(n, g.engine.n_ctx - 1 - base)
    n = max(1, n)
    try:
        t0 = time.perf_counter()
        xs, guesses, states = [g.next_input for g in gens], [[] for _ in gens], []
        for _ in range(n):
            if stopped is not None and stopped():
                return                                                    # nothing chosen yet: drop it
            h = decode_batch(engines, xs, output=False)                   # [B, d]
            states.append(h)
            xs = [dv.guess(h[i], g.params, g.ids + guesses[i]) for i, (dv, g) in enumerate(zip(vocabs, gens))]
            for i, x in enumerate(xs):
                guesses[i].append(x)
        full = gens[0].engine.W.token_embd(np.concatenate(states))       # [n B, n_vocab], position-major
        dt = time.perf_counter() - t0
        B = len(gens)
        for i, (g, e, dv) in enumerate(zip(gens, engines, vocabs)):
            g.result.decode_s += dt
            for j in range(n):
                try:
                    tok = g.choose(full[j * B + i], evaluated=bases[i] + j + 1)
                except Exception as e:            # this reply ends (bad logits); the others go on
                    g.fail(e)
                    break
                keep[i] = bases[i] + j + 1
                g.result.decode_steps += 1
                if tok is not None:
                    if tok.id >= 0:
                        dv.add([tok.id])
                    yield g, tok
                if g.phase is not Phase.EVAL:     # it ended, or shifted its context
                    break
                hit = g.next_input == guesses[i][j]
                g.result.draft_n += 1
                g.result.draft_accepted += hit
                e._draft_hits += (hit - e._draft_hits) / 16
                if not hit:
                    break
    finally:
        for e, k in zip(engines, keep):
            e.truncate(k)                           # drop guesses after the first wrong one


def decode_batch(engines: list[Engine], tokens: list[int], output: bool = True) -> np.ndarray:
    """Evaluate one token at the end of each engine's cache (engines sharing one set of
    weights), all in one pass over the weights: logits [len(engines), n_vocab] (with
    output=False the final normed states [len(engines), d] the logits are made from)."""
    e0 = engines[0]
    positions = np.array([len(e.ids) for e in engines])
    try:
        out = M.forward_batch(e0.W, e0.cfg, [e.caches for e in engines], np.asarray(tokens), positions, output)
    except BaseException:
        for e, n in zip(engines, positions.tolist()):
            e.truncate(n)                      # undo a half-written step
        raise
    for e, t in zip(engines, tokens):
        e.ids.append(int(t))
    return out
