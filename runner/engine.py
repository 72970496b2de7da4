"""The generation loop every mode consumes: prefill (reusing the cached prefix), decode,
stop, stream text, count and time.

    engine = Engine(weights, cfg, tokenizer, n_ctx=8192)
    for tok in engine.generate(Prompt(ids), params, max_tokens=64, stop=["\\n\\n"]):
        print(tok.text, end="")
    engine.last_stats   # tokens, timings, finish reason

The cache holds exactly the tokens in `engine.keys`. A new prompt that starts with them
only computes the rest (a chat turn prefills only its new text); an interrupted reply
(Ctrl-C, a client gone) leaves the cache holding what was evaluated before it.
"""
from __future__ import annotations

import ctypes
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, Protocol

import numpy as np

from . import model as M
from .cache import make_caches
from .draft import DraftVocab
from .sampling import SamplingParams, log_softmax, sample


class ContextError(ValueError):
    """A prompt that does not fit the context."""


@dataclass
class ImageSlot:
    start: int                 # index of the first soft token in the prompt
    embeds: np.ndarray         # [n, d] float32, exactly as they enter the text model
    key: int                   # content hash: equal images reuse the cache


@dataclass
class Prompt:
    tokens: list[int]          # image slots hold a placeholder id (ignored)
    images: list[ImageSlot] = field(default_factory=list)

    def keys(self) -> list[int]:
        """What identifies each position for prefix reuse: the token id, or for image
        soft tokens a negative number from the image's hash and the row."""
        keys = list(self.tokens)
        for im in self.images:
            base = -(1 + (im.key % (1 << 40)) * 4096)
            keys[im.start:im.start + len(im.embeds)] = range(base, base - len(im.embeds), -1)
        return keys

    def __len__(self) -> int:
        return len(self.tokens)


@dataclass
class Token:
    id: int
    text: str                                   # text this token releases (may be "")
    logprob: float | None = None
    top_logprobs: list[tuple[int, float]] | None = None


@dataclass
class Stats:
    prompt_tokens: int = 0      # tokens in the prompt
    cached_tokens: int = 0      # of which reused from the cache
    prefill_s: float = 0.0
    generated_tokens: int = 0
    decode_s: float = 0.0       # time spent evaluating generated tokens
    decode_steps: int = 0       # tokens evaluated after the prompt (and kept)
    draft_tokens: int = 0       # greedy guesses checked against the full logits
    draft_accepted: int = 0     # of which the full logits confirmed
    finish_reason: str = ""     # "stop", "length", "context" (the context is full)
    stop_type: str = ""         # why it stopped: "eos", "word", "constraint", "limit", "context"
    stopping_word: str = ""     # the stop string that ended it (stop_type "word")
    text: str = ""

    @property
    def prefill_tok_s(self) -> float:
        n = self.prompt_tokens - self.cached_tokens
        return n / self.prefill_s if self.prefill_s > 0 else 0.0

    @property
    def decode_tok_s(self) -> float:
        return self.decode_steps / self.decode_s if self.decode_s > 0 else 0.0


_blas_setter = None


def set_blas_threads(n: int | None) -> None:
    """Set the number of threads numpy's OpenBLAS uses (None: leave it as it is)."""
    global _blas_setter
    if not n:
        return
    if _blas_setter is None:
        _blas_setter = lambda n: None                 # noqa: E731 - no OpenBLAS found: nothing to set
        for line in open("/proc/self/maps"):
            if "openblas" in line.lower():
                lib = ctypes.CDLL(line.split()[-1])
                for name in ("scipy_openblas_set_num_threads64_", "openblas_set_num_threads64_",
                             "openblas_set_num_threads"):
                    if hasattr(lib, name):
                        fn = getattr(lib, name)
                        _blas_setter = lambda n, fn=fn: fn(ctypes.c_int(n))   # noqa: E731
                        break
                break
    _blas_setter(n)


class Constraint(Protocol):
    """Restricts what `Engine.generate` may sample (e.g. JSON output). `choose` picks the
    next token under `params` from the allowed ones and advances the constraint's state
    (None: nothing is allowed, generation stops); `done` says the output is complete."""

    def choose(self, logits: np.ndarray, params: SamplingParams, rng: np.random.Generator,
               history: list[int]) -> int | None: ...

    @property
    def done(self) -> bool: ...


class Engine:
    DRAFT_VOCAB = 8192          # base size of the draft vocabulary (draft.py)

    def __init__(self, weights: M.Weights, cfg: M.Config, tokenizer, n_ctx: int = 8192, n_batch: int = 512,
                 draft_max: int = 8):
        self.W, self.cfg, self.tok = weights, cfg, tokenizer
        self.n_ctx = n_ctx if n_ctx > 0 else cfg.n_ctx_train
        self.n_batch = n_batch
        # greedy decoding guesses tokens and checks them together (draft.py); draft_max
        # 0 or 1 turns that off
        self.draft_max = draft_max
        self._draft: DraftVocab | None = None
        self._draft_hits = 0.9                    # running share of right guesses
        self._draft_owner: Generation | None = None   # the reply whose context _draft holds
        self.caches = make_caches(cfg, self.n_ctx)
        self.keys: list[int] = []                 # what the cache holds, position by position
        self.last_stats = Stats()
        self.stop_ids = {tokenizer.eos_id}
        eot = tokenizer.token_id("<end_of_turn>")
        if eot is not None:
            self.stop_ids.add(eot)

    # -- cache -----------------------------------------------------------------------------

    def rewind(self, n: int) -> int:
        """Forget the last n tokens of the cache; returns how many remain."""
        self._truncate(max(0, len(self.keys) - n))
        return len(self.keys)

    def reset(self) -> None:
        self._truncate(0)

    def _truncate(self, n: int) -> None:
        n = min(n, len(self.keys))
        ok = all([c.truncate(n) for c in self.caches])
        if not ok:
            # a sliding layer no longer holds the window that position n needs
            for c in self.caches:
                c.truncate(0)
            n = 0
        del self.keys[n:]

    def _forward(self, prompt: Prompt, keys: list[int], start: int, end: int, logits: str):
        ids = np.asarray(prompt.tokens[start:end], dtype=np.int64)
        embeds, groups = [], None
        for i, im in enumerate(prompt.images, 1):
            lo, hi = max(start, im.start), min(end, im.start + len(im.embeds))
            if lo < hi:
                embeds.append((lo - start, im.embeds[lo - im.start:hi - im.start]))
                if groups is None:
                    groups = np.zeros(end - start, dtype=np.int32)
                groups[lo - start:hi - start] = i
        try:
            out = M.forward(self.W, self.cfg, self.caches, ids, start, embeds, groups, logits)
        except BaseException:
            self._truncate(len(self.keys))      # undo a half-written step (Ctrl-C, errors)
            raise
        self.keys.extend(keys[start:end])
        return out

    def _chunk_end(self, prompt: Prompt, start: int, end: int) -> int:
        """End of the chunk from `start`: n_batch tokens, moved so that no image is split
        (its tokens attend to each other both ways, so they are computed together)."""
        stop = min(end, start + self.n_batch)
        for im in prompt.images:
            a, b = im.start, im.start + len(im.embeds)
            if a < stop < b:
                stop = a if a > start else b
        return stop

    def prefill(self, prompt: Prompt, stats: Stats | None = None,
                on_chunk: Callable[[int, int], None] | None = None, logits: bool = True) -> np.ndarray | None:
        """Evaluate the prompt (only what the cache lacks); the last position's logits
        [n_vocab], or with logits=False nothing (then a fully cached prompt computes
        nothing). `on_chunk(done, total)` is called once the cached prefix is known and
        after every chunk; it may raise to cancel, leaving the cache consistent."""
        out = None
        for done, total, out in self.prefill_chunks(prompt, stats, logits):
            if on_chunk is not None:
                on_chunk(done, total)
        return out

    def prefill_chunks(self, prompt: Prompt, stats: Stats | None = None,
                       logits: bool = True) -> Iterator[tuple[int, int, np.ndarray | None]]:
        """`prefill` a chunk at a time, for a caller that interleaves other work (the
        server's scheduler): yields (tokens done, total, None) once the cached prefix is
        known and after each chunk; the last yield carries the logits (with logits=True).
        Closing it early leaves the cache consistent. stats.prefill_s counts compute time."""
        n = len(prompt)
        if n == 0:
            raise ContextError("the prompt is empty")
        if n >= self.n_ctx:
            raise ContextError(f"the prompt has {n} tokens but the context holds {self.n_ctx} "
                               f"(and needs room to generate): shorten it or raise --ctx-size")
        keys = prompt.keys()
        common = common_prefix(self.keys, keys)
        if logits:
            common = min(common, n - 1)         # the last token is evaluated for its logits
        for im in prompt.images:                # never resume inside an image
            if im.start < common < im.start + len(im.embeds):
                common = im.start
        self._truncate(common)
        start = reused = len(self.keys)          # less than `common` if the cache had to reset
        stats = stats if stats is not None else Stats()
        stats.prompt_tokens, stats.cached_tokens = n, reused
        if start == n:                           # logits=False and all of it is cached
            yield n, n, None
            return
        yield start, n, None
        while start < n:
            stop = self._chunk_end(prompt, start, n)
            t0 = time.perf_counter()
            out = self._forward(prompt, keys, start, stop, "last" if logits and stop == n else "none")
            stats.prefill_s += time.perf_counter() - t0
            start = stop
            yield start, n, (out[0] if logits and stop == n else None)

    # -- a fresh context ---------------------------------------------------------------------

    def prompt_logits(self, prompt: Prompt, chunk: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
        """Teacher-forced logits of every position of `prompt` in a fresh context (this
        engine's cache is left alone), a chunk at a time: (first row, [rows, n_vocab])."""
        n = len(prompt)
        if n == 0:
            raise ContextError("the prompt is empty")
        scratch = Engine(self.W, self.cfg, self.tok, n_ctx=n + 1, n_batch=chunk or self.n_batch)
        keys = prompt.keys()
        start = 0
        while start < n:
            stop = scratch._chunk_end(prompt, start, n)
            yield start, scratch._forward(prompt, keys, start, stop, "all")
            start = stop

    def prompt_logprobs(self, prompt: Prompt, top_n: int = 0,
                        on_chunk: Callable[[int, int], None] | None = None) -> list:
        """log p of each prompt token given those before it (None for the first) and the
        top_n alternatives, as (logprob, [(id, logprob)]). Computed 64 rows at a time, so
        only a [64, n_vocab] block of logits is held. `on_chunk(done, total)` may raise
        to cancel."""
        ids, n = prompt.tokens, len(prompt)
        out: list = [None]
        for start, logits in self.prompt_logits(prompt, chunk=64):
            for i, row in enumerate(logits):
                if start + i + 1 < n:
                    out.append(token_logprobs(row, ids[start + i + 1], top_n))
            if on_chunk is not None:
                on_chunk(start + len(logits), n)
        return out

    # -- generation ------------------------------------------------------------------------

    def generate(self, prompt: Prompt, params: SamplingParams | None = None, max_tokens: int | None = None,
                 stop: list[str] | tuple[str, ...] = (), ignore_eos: bool = False,
                 logprobs: int | None = None, constraint: Constraint | None = None,
                 on_prefill: Callable[[int, int], None] | None = None) -> Iterator[Token]:
        """Yield generated tokens with the text each releases. Ends on eos/<end_of_turn>
        (unless ignore_eos), a stop string (never included in the text), a complete
        `constraint`, max_tokens (None or < 0: no limit; 0: none, only the prefill), or a
        full context. `logprobs`: also report the chosen token's log-probability and the
        top-n alternatives. Text held back at the end (a stop string's unfinished start,
        an incomplete UTF-8 tail) comes as a last Token with id -1. `on_prefill` is
        prefill's `on_chunk`. Stats are in self.last_stats afterwards."""
        stats = self.last_stats = Stats()
        logits = self.prefill(prompt, stats, on_prefill)
        g = Generation(self, prompt, params, max_tokens, stop, ignore_eos, logprobs, constraint, stats)
        if self.can_draft(g):
            yield from self._generate_drafted(g, logits)
            return
        while not g.done:
            tok = g.step(logits)
            if tok is not None:
                yield tok
            if not g.done:
                t = time.perf_counter()
                logits = self._decode(g.next_input)
                stats.decode_s += time.perf_counter() - t
                stats.decode_steps += 1
        tail = g.tail()
        if tail is not None:
            yield tail

    def can_draft(self, g: Generation) -> bool:
        """Does `g` decode greedily in a way drafting reproduces exactly (draft.py)?"""
        return self.draft_max > 1 and g.params.greedy and g.constraint is None and self.W.token_embd.w is not None

    def _generate_drafted(self, g: Generation, logits: np.ndarray) -> Iterator[Token]:
        tok = g.step(logits)
        if tok is not None:
            yield tok
        while not g.done:
            yield from self.draft_round(g)
        tail = g.tail()
        if tail is not None:
            yield tail

    def draft_round(self, g: Generation) -> Iterator[Token]:
        """Greedy decoding of `g` from its next input, exact, with guessed tokens checked
        in a batch (draft.py); yields the tokens g emits. The round evaluates the next
        input and the guesses that follow it, one token at a time through the layers,
        then computes the full logits of all those positions in one product and lets `g`
        choose from each in turn. While the choices equal the guesses the positions are
        kept; at the first difference (or when the consumer stops) the cache is cut back
        to what undrafted decoding would hold, and g's last choice is the next input."""
        if self._draft is None:
            self._draft = DraftVocab(self.W.token_embd.w, self.tok.frequent(self.DRAFT_VOCAB))
            self._draft.add(list(self.stop_ids))
        dv, st = self._draft, g.stats
        if self._draft_owner is not g:           # a new reply: its context joins the base set
            dv.restart()
            dv.add(g.history)
            self._draft_owner = g
        base = len(self.keys)
        keep = base                               # what the cache may hold if we stop here
        n = self._draft_length()
        if g.max_tokens is not None and g.max_tokens >= 0:
            n = min(n, g.max_tokens - st.generated_tokens)
        n = max(1, min(n, self.n_ctx - 1 - base))
        try:
            t0 = time.perf_counter()
            x, guesses, states = g.next_input, [], []
            for _ in range(n):
                h = decode_batch([self], [x], output=False)[0]
                states.append(h)
                x = dv.guess(h, g.params, g.history + guesses)
                guesses.append(x)
            full = self.W.token_embd(np.stack(states))        # [n, n_vocab]
            st.decode_s += time.perf_counter() - t0
            for j in range(n):
                tok = g.step(full[j], evaluated=base + j + 1)
                keep = base + j + 1
                st.decode_steps += 1
                if tok is not None:
                    dv.add([tok.id])
                    yield tok
                if g.done:
                    break
                hit = g.next_input == guesses[j]
                st.draft_tokens += 1
                st.draft_accepted += hit
                self._draft_hits += (hit - self._draft_hits) / 16
                if not hit:
                    break
        finally:
            self._truncate(keep)                  # drop guesses after the first wrong one

    def _draft_length(self) -> int:
        """Positions per round, from the recent rate p of right guesses. A round of n
        costs n layer passes plus one product of the output matrix for n rows, and
        yields (1 - p^n) / (1 - p) tokens on average; with the costs measured here
        (22 ms a layer pass; the product 27 ms for 1 row, 55 for 4, 59 for 8) the best
        n is 1 (plain decoding, guesses still scored) below p = 0.8, then 4, 6, and from
        0.93 draft_max (8 and more cost about the same)."""
        p = self._draft_hits
        return min(self.draft_max, self.draft_max if p >= 0.93 else 6 if p >= 0.88 else 4 if p >= 0.8 else 1)

    def _decode(self, tok: int) -> np.ndarray:
        """Evaluate one token at the end of the cache; its logits [n_vocab]."""
        return decode_batch([self], [tok])[0]


class Generation:
    """The sampling side of one reply, fed the logits after each evaluated token: it
    picks the next token, applies the stop rules and releases text. `Engine.generate`
    drives one; the server's scheduler drives several, evaluating their next tokens in
    one batch (decode_batch). After `step`, `done` says the reply is over, else
    `next_input` is the token to evaluate for the next logits."""

    def __init__(self, engine: Engine, prompt: Prompt, params: SamplingParams | None = None,
                 max_tokens: int | None = None, stop=(), ignore_eos: bool = False,
                 logprobs: int | None = None, constraint: Constraint | None = None,
                 stats: Stats | None = None):
        self.engine = engine
        self.params = params or SamplingParams()
        self.max_tokens, self.ignore_eos, self.logprobs, self.constraint = max_tokens, ignore_eos, logprobs, constraint
        self.stop = [s for s in stop if s]
        self.stats = stats if stats is not None else Stats()
        self.rng = np.random.default_rng(self.params.seed)
        self.history = list(prompt.tokens)
        self.decoder = engine.tok.stream_decoder()
        self.pending = ""                      # text that may start a stop string
        self.next_input: int | None = None
        self.done = max_tokens == 0
        if self.done:
            self.stats.finish_reason, self.stats.stop_type = "length", "limit"

    def step(self, logits: np.ndarray, evaluated: int | None = None) -> Token | None:
        """Sample from `logits` [n_vocab]; the Token to emit, or None (the reply ended on
        eos or on a constraint that allows nothing). `evaluated`: how many positions the
        cache holds up to these logits, when it holds more (drafted tokens after them)."""
        st, eng = self.stats, self.engine
        if self.constraint is None:
            tok = sample(logits, self.params, self.rng, self.history)
        else:
            tok = self.constraint.choose(logits, self.params, self.rng, self.history)
        if tok is None or (tok in eng.stop_ids and not self.ignore_eos):
            st.finish_reason, st.stop_type = "stop", ("eos" if tok is not None else "constraint")
            self.done = True
            return None
        self.history.append(tok)
        st.generated_tokens += 1
        lp, top = token_logprobs(logits, tok, self.logprobs) if self.logprobs is not None else (None, None)
        text, self.pending, word = _release(self.pending + self.decoder.feed(tok), self.stop)
        if word is not None:
            st.finish_reason, st.stop_type, st.stopping_word = "stop", "word", word
        elif self.constraint is not None and self.constraint.done:
            st.finish_reason, st.stop_type = "stop", "constraint"
        elif self.max_tokens is not None and 0 <= self.max_tokens <= st.generated_tokens:
            st.finish_reason, st.stop_type = "length", "limit"
        elif (len(eng.keys) if evaluated is None else evaluated) + 1 >= eng.n_ctx:
            st.finish_reason, st.stop_type = "context", "context"
        if st.finish_reason:
            self.done = True
            if word is None:
                text, self.pending = text + self.pending + self.decoder.flush(), ""
        st.text += text
        self.next_input = None if self.done else tok
        return Token(tok, text, lp, top)

    def tail(self) -> Token | None:
        """Text still held back when the reply ends on eos (id -1), or None."""
        text = self.pending + self.decoder.flush()
        self.pending = ""
        if not text or self.stats.stop_type == "word":
            return None
        self.stats.text += text
        return Token(-1, text)


def common_prefix(a: list[int], b: list[int]) -> int:
    """How many leading items two token (or key) lists share."""
    n = min(len(a), len(b))
    if n == 0:
        return 0
    diff = np.flatnonzero(np.asarray(a[:n]) != np.asarray(b[:n]))
    return int(diff[0]) if len(diff) else n


def decode_batch(engines: list[Engine], tokens: list[int], output: bool = True) -> np.ndarray:
    """Evaluate one token at the end of each engine's cache (engines sharing one set of
    weights), all in one pass over the weights: logits [len(engines), n_vocab] (with
    output=False the final normed states [len(engines), d] the logits are made from)."""
    e0 = engines[0]
    positions = np.array([len(e.keys) for e in engines])
    try:
        out = M.forward_batch(e0.W, e0.cfg, [e.caches for e in engines], np.asarray(tokens), positions, output)
    except BaseException:
        for e, n in zip(engines, positions.tolist()):
            e._truncate(n)                     # undo a half-written step
        raise
    for e, t in zip(engines, tokens):
        e.keys.append(int(t))
    return out


def token_logprobs(logits: np.ndarray, tok: int, n: int) -> tuple[float, list[tuple[int, float]] | None]:
    """log p of `tok` and the n most likely tokens, under the model's own distribution
    (before sampling filters)."""
    ls = log_softmax(logits)
    top = None
    if n > 0:
        best = np.argpartition(-ls, n - 1)[:n]
        best = best[np.argsort(-ls[best], kind="stable")]
        top = [(int(i), float(ls[i])) for i in best]
    return float(ls[tok]), top


def _release(pending: str, stop: list[str]) -> tuple[str, str, str | None]:
    """Split pending text into (text safe to emit, text to hold back, the stop string
    found or None). Text is held back while its end could still grow into a stop string."""
    if not stop:
        return pending, "", None
    hits = [(i, s) for s in stop if (i := pending.find(s)) >= 0]
    if hits:
        cut, word = min(hits)
        return pending[:cut], "", word
    hold = 0
    for s in stop:
        for k in range(min(len(s) - 1, len(pending)), 0, -1):
            if pending.endswith(s[:k]):
                hold = max(hold, k)
                break
    return pending[:len(pending) - hold], pending[len(pending) - hold:], None
