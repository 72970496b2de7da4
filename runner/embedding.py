"""Embeddings: the final normed hidden states of a prompt (the vectors the output matrix
turns into logits) pooled into one vector per input, as llama.cpp computes them with
`--embedding --pooling P`.

    for done in embed_packs(W, cfg, [ids_a, ids_b], Pooling.MEAN, n_batch=512):
        ...                      # (input index, vector) for each input of one pass

Pooling (llama.cpp's `--pooling`):
    mean  the average of every position's state (BOS included)
    last  the last position's state (a causal model has read the whole input into it)
    cls   the first position's state. A Gemma GGUF has no CLS token: the first position
          is BOS, and with causal attention its state is the same whatever follows, so
          every input gets the same vector (llama.cpp gives it too; useless for search)
    none  every position's state, not pooled: [n_tokens, d]

Every input is computed in a fresh context (scratch caches of its own): no slot's cache
is touched and the weights are only read. Short inputs are packed: up to n_batch tokens
of several inputs go through the layers as one matrix of rows, each input attending only
to itself (as forward_batch does for single decode tokens), so that one pass over the
weights serves them all. An input longer than n_batch is computed a chunk at a time.
"""
from __future__ import annotations

import enum
import math
from typing import Any, Callable, Iterator

import numpy as np

from . import model as M
from .cache import make_caches

F32 = np.float32


class Pooling(str, enum.Enum):
    NONE = "none"
    MEAN = "mean"
    CLS = "cls"
    LAST = "last"


# llama.cpp's enum llama_pooling_type, as a GGUF's `{arch}.pooling_type` stores it
GGUF_POOLING = {0: Pooling.NONE, 1: Pooling.MEAN, 2: Pooling.CLS, 3: Pooling.LAST}


def default_pooling(gguf) -> Pooling:
    """The file's declared pooling (`gemma3.pooling_type`), else mean. why: llama.cpp
    falls back to none, which its OpenAI route then refuses; mean makes /v1/embeddings
    work out of the box and ranks paraphrases well on Gemma 3 (tests/test_embeddings_real)."""
    return GGUF_POOLING.get(gguf.get("gemma3.pooling_type", -1), Pooling.MEAN)


def pool(states: np.ndarray, pooling: Pooling) -> np.ndarray:
    """[n, d] final states -> [d] (or [n, d] unpooled)."""
    if pooling is Pooling.MEAN:
        return states.mean(axis=0, dtype=np.float64).astype(F32)
    if pooling is Pooling.LAST:
        return states[-1].copy()
    if pooling is Pooling.CLS:
        return states[0].copy()
    return states


def normalize(v: np.ndarray, p: int = 2) -> np.ndarray:
    """llama.cpp's common_embd_normalize over the last axis: p = -1 none, 0 scaled so the
    largest magnitude is 32760 (int16 range), 1 taxicab, 2 euclidean, > 2 the p-norm. A
    zero vector stays zero."""
    v64 = v.astype(np.float64)
    if p < 0:
        return v.astype(F32)
    if p == 0:
        size = np.abs(v64).max(axis=-1, keepdims=True) / 32760.0
    elif p == 2:
        size = np.sqrt(np.einsum("...i,...i->...", v64, v64))[..., None]
    else:
        # the p-norm of v / max|v| times max|v|: the same value, with no overflow for large p
        top = np.abs(v64).max(axis=-1, keepdims=True)
        with np.errstate(divide="ignore", invalid="ignore"):
            scaled = np.where(top > 0, np.abs(v64) / top, 0.0)
        size = (scaled ** p).sum(axis=-1, keepdims=True) ** (1.0 / p) * top
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(size > 0, v64 / size, 0.0).astype(F32)


def input_items(x: Any) -> tuple[list[str | list[int]], bool]:
    """OpenAI's embedding input forms as (items, whether it is a single input): a string,
    an array of token ids, or an array of strings and token-id arrays. ValueError says
    what is wrong."""
    def is_ids(v: Any) -> bool:
        return isinstance(v, list) and bool(v) and all(isinstance(t, int) and not isinstance(t, bool) for t in v)

    if isinstance(x, str) or is_ids(x):
        return [x], True
    if not isinstance(x, list) or not x:
        raise ValueError("expected a string, an array of token ids, or a non-empty array of strings or "
                         "token-id arrays")
    for i, item in enumerate(x):
        if not isinstance(item, str) and not is_ids(item):
            raise ValueError(f"item {i} must be a string or a non-empty array of token ids")
    return list(x), False


def token_lists(items: list[str | list[int]], tokenize: Callable[[str], list[int]], n_vocab: int,
                n_ctx: int) -> list[list[int]]:
    """Each item's tokens: text tokenized (BOS added, as llama-server does), token ids as
    they are. ValueError for an id outside the vocabulary or an input longer than n_ctx."""
    out = []
    for i, item in enumerate(items):
        ids = tokenize(item) if isinstance(item, str) else [int(t) for t in item]
        bad = next((t for t in ids if not 0 <= t < n_vocab), None)
        if bad is not None:
            raise ValueError(f"item {i}: token id {bad} is out of range (the vocabulary has {n_vocab} tokens)")
        if len(ids) > n_ctx:
            raise ValueError(f"item {i} has {len(ids)} tokens but the context holds {n_ctx}: shorten it or "
                             f"raise --ctx-size")
        out.append(ids)
    return out


def packs(lengths: list[int], n_batch: int) -> list[list[int]]:
    """Consecutive input indexes grouped so that each group holds at most n_batch tokens
    (an input longer than that is a group of its own)."""
    out: list[list[int]] = []
    total = 0
    for i, n in enumerate(lengths):
        if not out or total + n > n_batch:
            out.append([])
            total = 0
        out[-1].append(i)
        total += n
    return out


def final_states(W: M.Weights, cfg: M.Config, seqs: list[list[int]], n_batch: int) -> list[np.ndarray]:
    """The final normed states [n_i, d] of every position of each token list, each in a
    fresh context. A single long sequence runs n_batch tokens at a time; several run
    together in one pass (their rows in one matrix, each with its own caches)."""
    caches = [make_caches(cfg, len(s)) for s in seqs]
    if len(seqs) == 1:
        (s,), (c,) = seqs, caches
        return [np.concatenate([_layers_out(W, cfg, [c], [s[a:a + n_batch]], [a])
                                for a in range(0, len(s), n_batch)])]
    out = _layers_out(W, cfg, caches, seqs, [0] * len(seqs))
    bounds = np.cumsum([0] + [len(s) for s in seqs])
    return [out[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


def _layers_out(W: M.Weights, cfg: M.Config, caches: list[list], seqs: list[list[int]], starts: list[int]
                ) -> np.ndarray:
    """One pass: sequence i's tokens at positions starts[i].. against caches[i]; the final
    normed states of all rows [sum n_i, d]."""
    ids = np.concatenate([np.asarray(s, dtype=np.int64) for s in seqs])
    bounds = np.cumsum([0] + [len(s) for s in seqs])
    rows = [slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]
    positions = np.concatenate([np.arange(p, p + len(s)) for p, s in zip(starts, seqs)])
    x = W.token_embd.rows(ids)                                    # [T, d]
    x *= F32(math.sqrt(cfg.d))                                    # why: Gemma scales token embeddings by sqrt(d)
    x = M._layers(W, cfg, caches, rows, x, positions, None)       # the layers forward_batch runs, on chunks
    return M.rms_norm(x, W.output_norm, cfg.eps)                  # [T, d]


def embed_packs(W: M.Weights, cfg: M.Config, inputs: list[list[int]], pooling: Pooling, n_batch: int,
                norm: int = 2) -> Iterator[list[tuple[int, np.ndarray]]]:
    """The embeddings of `inputs` (token lists, each non-empty), one pass at a time:
    yields [(input index, vector)] per pack, in order. Pooled vectors are normalized with
    `norm` (llama.cpp's embd_normalize); unpooled states are returned as they are, as
    llama-server does."""
    for group in packs([len(s) for s in inputs], n_batch):
        states = final_states(W, cfg, [inputs[i] for i in group], n_batch)
        if pooling is Pooling.NONE:
            yield list(zip(group, states))
        else:
            yield [(i, normalize(pool(s, pooling), norm)) for i, s in zip(group, states)]
