"""Sampling: parameters and small pure filters, applied in llama.cpp's order:

    penalties -> logit bias -> top-k -> top-p -> min-p -> temperature -> draw

Filters work on a candidate set (ids and their logits) so that the 262k-entry
vocabulary is touched once per step (an argpartition), not sorted.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np


@dataclass
class SamplingParams:
    temperature: float = 0.8          # <= 0: greedy
    top_k: int = 40                   # <= 0: no limit
    top_p: float = 0.95               # >= 1: off
    min_p: float = 0.05               # <= 0: off
    repeat_penalty: float = 1.0       # 1: off
    repeat_last_n: int = 64           # window of recent tokens the penalties look at; -1: all
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[int, float] = field(default_factory=dict)
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0


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
    v = out[ids]
    if repeat != 1.0:
        v = np.where(v > 0, v / repeat, v * repeat)
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


def candidates(logits: np.ndarray, params: SamplingParams) -> tuple[np.ndarray, np.ndarray]:
    """top-k, then top-p, then min-p; sorted by decreasing logit. With no top-k limit the
    top-p set is found by growing a partial sort until it holds mass p (the set is a
    prefix of the sorted order, so this is exact)."""
    ids = np.arange(len(logits))
    k, total = (params.top_k if params.top_k > 0 else 0), None
    if k == 0 and params.top_p < 1.0:
        # top-p over the whole vocabulary: measure mass against all of it
        shifted = logits - logits.max()
        total = np.exp(shifted, dtype=np.float64).sum()
        k = 64
        while k < len(logits) and \
                np.exp(-np.partition(-shifted, k - 1)[:k], dtype=np.float64).sum() < params.top_p * total:
            k *= 4
    cid, cl = top_k(ids, logits, k)
    cid, cl = top_p(cid, cl, params.top_p, total)
    return min_p(cid, cl, params.min_p)


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


def sample(logits: np.ndarray, params: SamplingParams, rng: np.random.Generator,
           recent: list[int] = ()) -> int:
    """One token id from `logits` [n_vocab] under `params`."""
    logits = adjust(logits, params, recent)
    if params.greedy:
        return int(np.argmax(logits))
    ids, cl = candidates(logits, params)
    probs = softmax(cl / params.temperature)
    return int(ids[rng.choice(len(ids), p=probs)])


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """log p over the whole vocabulary, in float64 for stable small probabilities."""
    x = logits.astype(np.float64)
    x -= x.max()
    return x - np.log(np.exp(x).sum())
