"""One reply as a state machine, and the record of how it went.

A `Generation` is driven by `engine.step` (alone, by `Engine.generate`, or in a batch by
the server's scheduler). It moves through four phases:

    READ   -> its prompt is evaluated a chunk at a time (reusing the engine's cached prefix)
    CHOOSE -> it holds fresh logits: it samples the next token, applies the stop rules and
              releases text (`choose`)
    EVAL   -> its chosen token awaits evaluation, which brings fresh logits (`evaluated`)
    DONE   -> it ended; `result.stop` says why

It owns what is particular to its sequence: the ids so far, the sampling state (rng,
constraint), the stop strings and the text held back for them, and its `Result`. The
engine it runs on owns the KV cache and the weights.
"""
from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterator

import numpy as np

from .sampling import Constraint, SamplingParams, log_softmax, sample

if TYPE_CHECKING:
    from .engine import Engine


@dataclass
class ImageSlot:
    start: int                 # index of the first soft token in the prompt
    embeds: np.ndarray         # [n, d] float32, exactly as they enter the text model
    key: int                   # content hash: equal images reuse the cache


@dataclass
class Prompt:
    tokens: list[int]          # image slots hold a placeholder id (ignored)
    images: list[ImageSlot] = field(default_factory=list)

    def ids(self) -> list[int]:
        """What the cache records for each position: the token id, or for an image's soft
        tokens a negative number from the image's hash and the row (so prefix reuse sees
        equal images as equal and different ones as different)."""
        ids = list(self.tokens)
        for im in self.images:
            base = -(1 + (im.key % (1 << 40)) * 4096)
            ids[im.start:im.start + len(im.embeds)] = range(base, base - len(im.embeds), -1)
        return ids

    def __len__(self) -> int:
        return len(self.tokens)


class Stop(enum.Enum):
    """Why a reply ended, as each front end says it: (OpenAI's finish_reason, llama.cpp's
    stop_type, in words)."""
    EOS = ("stop", "eos", "the end of the reply (end of turn or text)")
    WORD = ("stop", "word", "a stop string")
    CONSTRAINT = ("stop", "eos", "the end of the constrained output")
    BANNED = ("stop", "eos", "no token left to choose (the logit bias bans every one)")
    LIMIT = ("length", "limit", "the length limit")
    CONTEXT = ("length", "limit", "the full context")
    CANCELLED = ("stop", "none", "an interruption (Ctrl-C, or the client left)")

    def __init__(self, finish_reason: str, stop_type: str, words: str):
        self.finish_reason, self.stop_type, self.words = finish_reason, stop_type, words


class ModelError(ValueError):
    """The model computed NaN or infinite logits: its file (weights or settings) is broken.
    The message names the file."""


def check_logits(logits: np.ndarray, path: str, position: int) -> None:
    """ModelError unless every logit is finite. why: NaN would otherwise reach the
    sampler as garbage text or numpy's "probabilities contain NaN"; min and max are two
    passes without a temporary array (NaN propagates through both)."""
    lo, hi = float(logits.min()), float(logits.max())
    if not (math.isfinite(lo) and math.isfinite(hi)):
        what = "NaN" if math.isnan(lo) or math.isnan(hi) else "infinite"
        raise ModelError(f"{path or 'the model'}: the model computed {what} logits (at position {position}): "
                         f"its weights or settings are broken; the file may be damaged")


def rate(n: int, seconds: float) -> float:
    """Tokens per second (0 when nothing was timed)."""
    return n / seconds if seconds > 0 else 0.0


@dataclass
class Result:
    """How one reply went: token counts, times, drafting, and why it ended."""
    prompt_tokens: int = 0      # tokens in the prompt
    cached_tokens: int = 0      # of which reused from the cache
    prefill_s: float = 0.0      # compute time of the prompt
    generated_tokens: int = 0
    decode_s: float = 0.0       # time spent evaluating generated tokens
    decode_steps: int = 0       # tokens evaluated after the prompt (and kept)
    draft_n: int = 0            # greedy guesses checked against the full logits (engine.py)
    draft_accepted: int = 0     # of which the full logits confirmed
    stop: Stop | None = None    # None while it runs
    stopping_word: str = ""     # the stop string that ended it (Stop.WORD)
    text: str = ""
    slot: int = 0               # the server slot (engine) that ran it
    shifts: int = 0             # times the full context was shifted (EngineConfig.context_shift)

    @property
    def finish_reason(self) -> str:
        return self.stop.finish_reason if self.stop else ""

    @property
    def truncated(self) -> bool:
        """Did the context run out (llama-server's `truncated`): shifted, or full at the end?"""
        return self.shifts > 0 or self.stop is Stop.CONTEXT

    @property
    def prefill_tok_s(self) -> float:
        return rate(self.prompt_tokens - self.cached_tokens, self.prefill_s)

    @property
    def decode_tok_s(self) -> float:
        return rate(self.decode_steps, self.decode_s)

    def timings(self) -> dict:
        """llama.cpp's timings object (with its speculative decoding's draft_n and
        draft_n_accepted when the reply drafted)."""
        n_prompt = self.prompt_tokens - self.cached_tokens
        t = {"prompt_n": n_prompt, "prompt_ms": self.prefill_s * 1e3, "prompt_per_second": self.prefill_tok_s,
             "predicted_n": self.generated_tokens, "predicted_ms": self.decode_s * 1e3,
             "predicted_per_second": rate(self.generated_tokens, self.decode_s), "cache_n": self.cached_tokens}
        if self.draft_n:
            t.update(draft_n=self.draft_n, draft_n_accepted=self.draft_accepted)
        return t


@dataclass
class Token:
    id: int                                     # -1: text held back until the end
    text: str                                   # text this token releases (may be "")
    logprob: float | None = None
    top_logprobs: list[tuple[int, float]] | None = None


@dataclass
class Progress:
    done: int                                   # prompt tokens in the cache
    total: int
    cached: int                                 # of which were already there


class Phase(enum.Enum):
    READ = "read"
    CHOOSE = "choose"
    EVAL = "eval"
    DONE = "done"


class Generation:
    def __init__(self, engine: Engine, prompt: Prompt, params: SamplingParams | None = None,
                 max_tokens: int | None = None, stop=(), ignore_eos: bool = False,
                 logprobs: int | None = None, constraint: Constraint | None = None):
        """max_tokens None or < 0: no limit; 0: only the prompt is read. logprobs: report
        each token's log-probability and the top n alternatives."""
        self.engine, self.prompt = engine, prompt
        self.params = params or SamplingParams()
        self.max_tokens, self.ignore_eos, self.logprobs, self.constraint = max_tokens, ignore_eos, logprobs, constraint
        self.stop_strings = [s for s in stop if s]
        self.result = Result(prompt_tokens=len(prompt))
        self.rng = np.random.default_rng(self.params.seed)
        self.ids = list(prompt.tokens)          # the sequence: prompt, then what was chosen
        self.decoder = engine.tok.stream_decoder()
        self.pending = ""                       # text that may start a stop string
        self.phase = Phase.READ
        self.logits: np.ndarray | None = None   # [n_vocab], fresh in CHOOSE
        self.next_input: int | None = None      # the token to evaluate, in EVAL
        self.error: Exception | None = None
        self._reading: Iterator | None = None   # the engine's prefill_chunks, in READ
        self._reread: Result | None = None      # after a context shift: that prefill's numbers

    @property
    def done(self) -> bool:
        return self.phase is Phase.DONE

    # -- the phases -----------------------------------------------------------------------

    def read(self, chunk: int | None = None) -> Iterator[Progress]:
        """Evaluate one chunk of the prompt (at most `chunk` tokens); the first call also
        finds the cached prefix. Progress after each; the prompt read, the phase is CHOOSE."""
        first = self._reading is None
        into = self._reread or self.result
        if first:
            self._reading = self.engine.prefill_chunks(self.prompt, into, chunk=chunk)
        for _ in range(2 if first else 1):
            done, total, logits = next(self._reading)
            progress = Progress(done, total, into.cached_tokens)
            if done < total:
                yield progress
                continue
            # why: the state moves on before the last event is yielded, so that a consumer
            # stopping at it (the scheduler does when any client leaves) keeps the logits
            self._reading.close()
            self._reading = None
            self.logits, self.phase = logits, Phase.CHOOSE
            if self._reread is not None:                # a shift's recomputation is decoding time
                self.result.decode_s += self._reread.prefill_s
                self._reread = None
            if self.max_tokens == 0:
                self._finish(Stop.LIMIT)
            yield progress
            return

    def choose(self, logits: np.ndarray | None = None, evaluated: int | None = None) -> Token | None:
        """Sample from `logits` (default: the fresh ones) and apply the stop rules; the
        Token to emit, or None. `evaluated`: positions the cache holds up to these logits
        (default: all it holds; fewer when drafted positions follow them)."""
        logits = self.logits if logits is None else logits
        self.logits = None
        st = self.result
        check_logits(logits, self.engine.cfg.path, len(self.ids))
        tok = sample(logits, self.params, self.rng, self.ids, self.constraint)
        if tok is None or (tok in self.engine.stop_ids and not self.ignore_eos):
            self._finish(Stop.EOS if tok is not None else Stop.CONSTRAINT if self.constraint else Stop.BANNED)
            text = self.pending + self.decoder.flush()          # what the stop strings held back
            st.text += text
            return Token(-1, text) if text else None
        if self.constraint is not None:
            self.constraint.advance(tok)
        self.ids.append(tok)
        st.generated_tokens += 1
        lp, top = token_logprobs(logits, tok, self.logprobs) if self.logprobs is not None else (None, None)
        text, self.pending, word = _release(self.pending + self.decoder.feed(tok), self.stop_strings)
        evaluated = len(self.engine.ids) if evaluated is None else evaluated
        if word is not None:
            st.stopping_word = word
            self._finish(Stop.WORD)
        elif self.constraint is not None and self.constraint.done:
            self._finish(Stop.CONSTRAINT)
        elif self.max_tokens is not None and 0 <= self.max_tokens <= st.generated_tokens:
            self._finish(Stop.LIMIT)
        elif evaluated + 1 >= self.engine.n_ctx:
            if self.engine.config.context_shift and not self.prompt.images:
                self._shift()
            else:
                self._finish(Stop.CONTEXT)
        if self.done and word is None:
            text, self.pending = text + self.pending + self.decoder.flush(), ""
        st.text += text
        if self.phase is not Phase.READ and not self.done:   # READ: a context shift rereads first
            self.next_input, self.phase = tok, Phase.EVAL
        return Token(tok, text, lp, top)

    def _shift(self) -> None:
        """The context is full: keep the first n_keep tokens (--keep; -1: the prompt; BOS
        always), drop the older half of the rest, and read what is kept again (READ), as
        llama-server's --context-shift does. why recompute: the kept tokens move to new
        positions, and RoPE makes their cached keys position-dependent; recomputing gives
        exactly a fresh run over the kept text (the first n_keep stay cached)."""
        n = len(self.ids) - 1                   # positions held; the last token awaits them
        keep = self.engine.config.n_keep
        keep = len(self.prompt.tokens) if keep < 0 else keep + 1
        keep = min(keep, self.engine.n_ctx - 4)
        drop = max(0, min((n - keep) // 2, n - keep - 1))
        self.ids = self.ids[:keep] + self.ids[keep + drop:]
        self.prompt = Prompt(list(self.ids))
        self.phase, self._reread = Phase.READ, Result()
        self.result.shifts += 1

    def evaluated(self, logits: np.ndarray, seconds: float) -> None:
        """The next input was evaluated (in `seconds`, shared with its batch)."""
        self.logits, self.next_input, self.phase = logits, None, Phase.CHOOSE
        self.result.decode_s += seconds
        self.result.decode_steps += 1

    def cancel(self) -> None:
        """End it now (Ctrl-C, the client left); the engine's cache stays consistent."""
        if not self.done:
            self._finish(Stop.CANCELLED)

    def fail(self, error: Exception) -> None:
        self.error = error
        self.cancel()

    def _finish(self, stop: Stop) -> None:
        self.result.stop, self.phase, self.next_input = stop, Phase.DONE, None
        if self._reading is not None:
            self._reading.close()               # between chunks: the cache is consistent
            self._reading = None


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
