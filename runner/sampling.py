"""Sampling: the parameters, declared once, and a chain of small pure filters applied in
llama.cpp's order:

    penalties -> logit bias -> top-k -> typical -> top-p -> min-p -> temperature -> draw

Each parameter is a field of `SamplingParams` whose metadata (`option`) gives its range,
its command-line flag and its help: the flags (args.py), the request fields of both APIs
(modes/api_common.py), the server's reported settings and `llm` keyword arguments are all
derived from it, so a new option is one field here and one filter in `candidates`.

Filters work on a candidate set (ids and their logits, sorted by decreasing logit) so
that the 262k-entry vocabulary is touched once per step (an argpartition), not sorted.
A constraint (JSON output) supplies that candidate set itself and the rest of the chain
acts on it unchanged.
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field, fields
from typing import Any, Protocol

import numpy as np


def option(default: Any, help: str, flag: str | None = None, lo: float | None = None,
           hi: float | None = None, above: bool = False) -> Any:
    """A sampling parameter: its default, help text, command-line flag ("-s/--seed") and
    the range every front end enforces (`above`: lo itself is excluded)."""
    meta = {"help": help, "flag": flag, "lo": lo, "hi": hi, "above": above}
    if isinstance(default, dict):
        return field(default_factory=dict, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class SamplingParams:
    temperature: float = option(0.8, "temperature; 0 = greedy (default 0.8, or 0 in the chat)", "--temp", 0.0, 2.0)
    top_k: int = option(40, "top-k sampling (default 40; 0 = off)", "--top-k", 0)
    typical_p: float = option(1.0, "locally typical sampling (default 1.0 = off)", "--typical", 0.0, 1.0)
    top_p: float = option(0.95, "top-p sampling (default 0.95; 1 = off)", "--top-p", 0.0, 1.0)
    min_p: float = option(0.05, "min-p sampling (default 0.05; 0 = off)", "--min-p", 0.0, 1.0)
    # why > 0: the penalty divides positive logits by it (llama.cpp refuses <= 0 too)
    repeat_penalty: float = option(1.0, "penalize repeated tokens (default 1.0 = off; > 0)", "--repeat-penalty",
                                   0.0, 10.0, above=True)
    repeat_last_n: int = option(64, "tokens the penalties look back over (default 64; -1 = all)",
                                "--repeat-last-n", -1)
    presence_penalty: float = option(0.0, "subtract X from tokens already seen (default 0 = off)",
                                     "--presence-penalty", -2.0, 2.0)
    frequency_penalty: float = option(0.0, "subtract X per time a token was seen (default 0 = off)",
                                      "--frequency-penalty", -2.0, 2.0)
    logit_bias: dict[int, float] = option({}, "token id -> bias added to its logit (-inf bans it)")
    seed: int | None = option(None, "random seed (default -1: random)", "-s/--seed")

    def __post_init__(self):
        """Refuse what would make the sampler compute NaN, whatever the front end (the
        declared ranges are the flags' and the APIs'); seed -1 means random, as in
        llama.cpp, and other negative seeds wrap to 64 bits, as the server reads them."""
        for name, opt in OPTIONS.items():
            if opt.type == "float":
                v = getattr(self, name)
                if not math.isfinite(v):
                    raise ValueError(f"{name} must be a finite number, got {v}")
        if self.repeat_penalty <= 0:
            raise ValueError(f"repeat_penalty must be > 0, got {self.repeat_penalty}")
        if any(math.isnan(b) or b == math.inf for b in self.logit_bias.values()):
            raise ValueError("logit_bias values must be finite numbers or -inf (a ban)")
        if self.seed is not None and self.seed < 0:
            self.seed = None if self.seed == -1 else self.seed & SEED_MASK

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0


OPTIONS = {f.name: f for f in fields(SamplingParams)}     # name -> dataclass field (with metadata)
SEED_MASK = (1 << 64) - 1                                 # numpy's generators take seeds >= 0
PENALTY_CLIP = 1e30       # penalized logits stay far from float32's overflow (3.4e38)


def in_range(opt, v: float) -> bool:
    """Is `v` within the declared range of option `opt` (a dataclass field)? NaN is not."""
    lo, hi, above = opt.metadata["lo"], opt.metadata["hi"], opt.metadata["above"]
    return (lo is None or (v > lo if above else v >= lo)) and (hi is None or v <= hi) and v == v


def range_text(opt) -> str:
    """The declared range in words: "from 0 to 2", "> 0 and <= 10", ">= 0"."""
    lo, hi, above = opt.metadata["lo"], opt.metadata["hi"], opt.metadata["above"]
    if lo is not None and hi is not None:
        return f"> {lo} and <= {hi}" if above else f"from {lo} to {hi}"
    if lo is not None:
        return f"> {lo}" if above else f">= {lo}"
    return f"<= {hi}" if hi is not None else "a finite number"


class Constraint(Protocol):
    """Restricts what may be sampled (JSON output). `candidates` lists up to `want` allowed
    tokens with their logits, best first (none: nothing is allowed); `advance` records the
    token chosen; `done` says the output is complete."""

    def candidates(self, logits: np.ndarray, want: int) -> tuple[np.ndarray, np.ndarray]: ...

    def advance(self, tok: int) -> None: ...

    @property
    def done(self) -> bool: ...


UNLIMITED_TOP_K = 256       # allowed candidates a constraint gathers when top_k is off


# -- penalties and bias ------------------------------------------------------------------------

def _entries(ids: np.ndarray, pos: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Where token ids sit in a logits vector: (entries, which of `ids` are present).
    pos None: the vector covers the vocabulary (entry = id); else pos[id] is the entry
    of id in a vector over a subset of it, -1 when absent."""
    if pos is None:
        return ids, np.ones(len(ids), dtype=bool)
    at = pos[ids]
    return at, at >= 0


def apply_penalties(logits: np.ndarray, recent: list[int], repeat: float, presence: float,
                    frequency: float, pos: np.ndarray | None = None) -> np.ndarray:
    """Repeat penalty (divide positive logits, multiply negative ones, as llama.cpp and the
    CTRL paper), then OpenAI presence/frequency penalties, for tokens in `recent`.
    `pos`: logits cover a subset of the vocabulary, see `_entries`."""
    if not recent or (repeat == 1.0 and presence == 0.0 and frequency == 0.0):
        return logits
    counts = Counter(recent)
    ids = np.fromiter(counts.keys(), dtype=np.int64, count=len(counts))
    n = np.fromiter(counts.values(), dtype=np.float32, count=len(counts))
    ids, present = _entries(ids, pos)
    ids, n = ids[present], n[present]
    out = logits.copy()
    v = out[ids].astype(np.float64)
    if repeat != 1.0:
        # why the clip: a tiny penalty would push a logit past float32's range (inf -> NaN)
        with np.errstate(over="ignore"):
            v = np.clip(np.where(v > 0, v / repeat, v * repeat), -PENALTY_CLIP, PENALTY_CLIP)
    out[ids] = v - n * frequency - presence
    return out


def apply_logit_bias(logits: np.ndarray, bias: dict[int, float], pos: np.ndarray | None = None) -> np.ndarray:
    if not bias:
        return logits
    out = logits.copy()
    for tok, b in bias.items():
        at = tok if pos is None else pos[tok]
        if at >= 0:
            out[at] += b
    return out


def adjust(logits: np.ndarray, params: SamplingParams, recent: list[int] = (),
           pos: np.ndarray | None = None) -> np.ndarray:
    """The logits after the penalties (over the last repeat_last_n of `recent`) and the
    logit bias: what every sampler draws from. `pos`: logits cover a subset of the
    vocabulary (the draft vocabulary), see `_entries`."""
    n = params.repeat_last_n
    penalized = (params.repeat_penalty, params.presence_penalty, params.frequency_penalty) != (1.0, 0.0, 0.0)
    window = [] if not penalized or n == 0 else list(recent) if n < 0 else list(recent)[-n:]
    logits = apply_penalties(logits, window, params.repeat_penalty, params.presence_penalty,
                             params.frequency_penalty, pos)
    return apply_logit_bias(logits, params.logit_bias, pos)


# -- filters on a candidate set (ids, logits), sorted by decreasing logit ----------------------

def top_k(ids: np.ndarray, logits: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k largest logits, sorted in decreasing order."""
    if 0 < k < len(logits):
        part = np.argpartition(-logits, k - 1)[:k]
        ids, logits = ids[part], logits[part]
    order = np.argsort(-logits, kind="stable")
    return ids[order], logits[order]


def softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(), dtype=np.float64)
    return e / e.sum()


def typical(ids: np.ndarray, logits: np.ndarray, p: float) -> tuple[np.ndarray, np.ndarray]:
    """Locally typical sampling (Meister et al. 2022, llama.cpp's typical_p): keep the
    tokens whose surprise -log p is closest to the entropy H of the distribution, in that
    order, until their probability reaches p (at least one)."""
    if p >= 1.0 or len(ids) <= 1:
        return ids, logits
    probs = softmax(logits)
    logp = np.log(probs, where=probs > 0, out=np.full(len(probs), -np.inf))
    entropy = -np.sum(probs * np.where(probs > 0, logp, 0.0))
    order = np.argsort(np.abs(-logp - entropy), kind="stable")
    cum = np.cumsum(probs[order])
    keep = np.sort(order[:int(np.searchsorted(cum, p)) + 1])   # back to decreasing-logit order
    return ids[keep], logits[keep]


def top_p(ids: np.ndarray, logits: np.ndarray, p: float, total: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Smallest prefix (of logits sorted decreasingly) whose probability reaches p.
    Probabilities are relative to the candidates, or, with `total` (the sum of
    exp(logit - logits[0]) over a larger set they were cut from), to that set."""
    if p >= 1.0 or len(ids) <= 1:
        return ids, logits
    e = np.exp(logits - logits[0], dtype=np.float64)
    cum = np.cumsum(e) / (e.sum() if total is None else total)
    keep = int(np.searchsorted(cum, p)) + 1
    return ids[:keep], logits[:keep]


def min_p(ids: np.ndarray, logits: np.ndarray, p: float) -> tuple[np.ndarray, np.ndarray]:
    """Tokens whose probability is at least p times the most likely one's (sorted input)."""
    if p <= 0.0 or len(ids) <= 1:
        return ids, logits
    keep = logits >= logits[0] + np.log(p)
    return ids[keep], logits[keep]


def after_top_k(ids: np.ndarray, logits: np.ndarray, params: SamplingParams,
                total: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The chain after top-k: typical, top-p, min-p."""
    ids, logits = typical(ids, logits, params.typical_p)
    ids, logits = top_p(ids, logits, params.top_p, total)
    return min_p(ids, logits, params.min_p)


def candidates(logits: np.ndarray, params: SamplingParams) -> tuple[np.ndarray, np.ndarray]:
    """The whole chain of filters over `logits` [n_vocab]; sorted by decreasing logit.
    With top-k off and top-p on, the top-p set is found by growing a partial sort until it
    holds mass p (the set is a prefix of the sorted order, so this is exact)."""
    k, total = (params.top_k if params.top_k > 0 else 0), None
    if k == 0 and params.top_p < 1.0 and params.typical_p >= 1.0:
        # top-p over the whole vocabulary: measure mass against all of it
        shifted = logits - logits.max()
        total = np.exp(shifted, dtype=np.float64).sum()
        k = 64
        while k < len(logits) and \
                np.exp(-np.partition(-shifted, k - 1)[:k], dtype=np.float64).sum() < params.top_p * total:
            k *= 4
    ids, cl = top_k(np.arange(len(logits)), logits, k)
    return after_top_k(ids, cl, params, total)


def sample(logits: np.ndarray, params: SamplingParams, rng: np.random.Generator,
           recent: list[int] = (), constraint: Constraint | None = None) -> int | None:
    """One token id from `logits` [n_vocab] under `params` (and `constraint`, whose
    candidates replace top-k); None when nothing may be chosen: the constraint allows
    nothing, or the bias bans every token (-inf everywhere)."""
    logits = adjust(logits, params, recent)
    if constraint is None:
        best = int(np.argmax(logits))
        if logits[best] == -np.inf:
            return None
        if params.greedy:
            return best
        ids, cl = candidates(logits, params)
    else:
        want = 1 if params.greedy else params.top_k if params.top_k > 0 else UNLIMITED_TOP_K
        ids, cl = constraint.candidates(logits, want)
        allowed = cl > -np.inf                  # a banned token stays banned under a constraint
        ids, cl = ids[allowed], cl[allowed]
        if not len(ids):
            return None
        if params.greedy:
            return int(ids[0])
        ids, cl = after_top_k(ids, cl, params)
    # why shift first, in float64: a tiny temperature must not make inf - inf or 0 / 0 (NaN)
    with np.errstate(over="ignore"):
        scaled = (cl - cl[0]).astype(np.float64) / params.temperature
    return int(ids[rng.choice(len(ids), p=softmax(scaled))])


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """log p over the whole vocabulary, in float64 for stable small probabilities."""
    x = logits.astype(np.float64)
    x -= x.max()
    return x - np.log(np.exp(x).sum())
