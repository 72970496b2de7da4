"""The draft vocabulary of exact self-speculative greedy decoding (`Engine.generate`).

why: the tied output matrix (262k rows) is the largest product of a decode step: in the
270M model 178 MB of its 253 MB of Q8_0 weights (671 MB of 1.07 GB as float32); memory
bandwidth, not arithmetic, sets its speed. Greedy decoding only needs the
argmax of the logits, and that argmax is nearly always one of a few thousand tokens:
the pieces BPE merged first (the most frequent) and the tokens already in the context.
So the engine runs the layers for every token as before, guesses the next token from
the logits of this small vocabulary (8k rows gathered as float32, 21 MB, that stay in
the L3 cache: 0.3 ms a step), and checks several guesses at once with one product of
the whole output matrix (it reads the weights once for all the rows).
A guess is kept only when the full logits pick it, so the text is the greedy text; a
wrong guess costs the layer steps computed after it.
"""
from __future__ import annotations

import numpy as np

from . import kernels
from .quants import GGMLType
from .sampling import SamplingParams, adjust


class DraftVocab:
    """A subset S of the vocabulary with its rows of the output matrix, contiguous.

        dv = DraftVocab(W.token_embd, tokenizer.frequent(8192))
        dv.add(prompt_tokens)
        tok = dv.guess(h, params, history)   # argmax over S of the adjusted logits W_S h

    The output matrix is a model.Linear, whose rows(ids) gathers rows as float32 from
    the quantized blocks (a float32 [n_vocab, d] array works too).
    """

    def __init__(self, emb, base: np.ndarray):
        if isinstance(emb, np.ndarray):
            self.rows, (n_vocab, d) = emb.__getitem__, emb.shape
        else:
            self.rows, n_vocab, d = emb.rows, emb.n_out, emb.n_in
        self.pos = np.full(n_vocab, -1, dtype=np.int64)  # id -> row in self.w, -1: not in S
        self.ids = np.empty(0, dtype=np.int64)           # row -> id
        self.w = np.empty((0, d), dtype=np.float32)      # [rows of S, d]
        self.n = 0
        self.add(base)
        self.n_base = self.n

    def __len__(self) -> int:
        return self.n

    def add(self, ids) -> None:
        """Put these token ids in S (ids already there, or out of range, are skipped)."""
        ids = np.asarray(ids, dtype=np.int64).ravel()
        ids = ids[(ids >= 0) & (ids < len(self.pos))]
        new = np.unique(ids[self.pos[ids] < 0])
        if not len(new):
            return
        end = self.n + len(new)
        if end > len(self.ids):
            cap = max(end, 2 * len(self.ids), 1024)
            ids_, w_ = np.empty(cap, dtype=np.int64), np.empty((cap, self.w.shape[1]), dtype=self.w.dtype)
            ids_[:self.n], w_[:self.n] = self.ids[:self.n], self.w[:self.n]
            self.ids, self.w = ids_, w_
        self.ids[self.n:end] = new
        self.w[self.n:end] = self.rows(new)
        self.pos[new] = np.arange(self.n, end)
        self.n = end

    def restart(self) -> None:
        """Back to the base set (a new prompt brings its own tokens)."""
        self.pos[self.ids[self.n_base:self.n]] = -1
        self.n = self.n_base

    def guess(self, h: np.ndarray, params: SamplingParams, recent: list[int]) -> int:
        """The greedy choice within S for the final normed state h [d], with the same
        penalties and bias the sampler applies."""
        s = adjust(_product(self.w[:self.n], h), params, recent, self.pos)
        return int(self.ids[np.argmax(s)])


def _product(w: np.ndarray, h: np.ndarray) -> np.ndarray:
    """w @ h for the draft rows (float32 [n, d], C-contiguous) and a state [d].

    why the kernels (their float32 product) where they run: numpy's BLAS starts its own
    threads for this matrix-vector product, and the kernels' OpenMP threads, spinning a
    moment after the layers' products (kernels.available), took the cores from them:
    drafted greedy decoding of the 270M ran at 28 tok/s against 51 undrafted."""
    if kernels.supported(GGMLType.F32, w.shape[1]):
        return kernels.matmul(w.view(np.uint8), GGMLType.F32, h[None, :])[0]
    return w @ h
