"""The public object: a loaded model with its tokenizer and engine.

    llm = runner.load("models/gemma-3-270m-q4_k_m.gguf")
    llm.complete("The capital of France is", max_tokens=16, temperature=0)
    for piece in llm.complete("Once upon a time", stream=True): print(piece, end="")
    llm.chat([{"role": "user", "content": "Hi!"}])
"""
from __future__ import annotations

import os
import time
from typing import Any, Iterator

import numpy as np

from . import model as M
from .cache import make_caches
from .chat import ImageRef, render
from .engine import Engine, Prompt, SamplingParams, Stats, set_blas_threads
from .gguf import GGUFFile
from .tokenizer import Tokenizer, load_tokenizer

SAMPLING_KEYS = ("temperature", "top_k", "top_p", "min_p", "repeat_penalty", "repeat_last_n",
                 "presence_penalty", "frequency_penalty", "logit_bias", "seed")


class LLM:
    def __init__(self, gguf: GGUFFile, n_ctx: int = 8192, threads: int | None = None,
                 resident: bool | None = None, mmproj: str | os.PathLike | None = None):
        t0 = time.perf_counter()
        set_blas_threads(threads)
        self.gguf = gguf
        self.cfg = M.Config.from_gguf(gguf)
        self.tokenizer: Tokenizer = load_tokenizer(gguf)
        self.weights = M.load_weights(gguf, self.cfg, resident=resident, threads=threads)
        self.engine = Engine(self.weights, self.cfg, self.tokenizer, n_ctx=n_ctx)
        if mmproj is not None:
            raise ValueError("--mmproj: this build has no vision tower yet; images are not supported")
        self.has_chat_template = bool(gguf.get("tokenizer.chat_template"))
        # None: the built-in Gemma format; a mode may set a template string (--chat-template)
        self.chat_template: str | None = None
        self.load_s = time.perf_counter() - t0

    # -- facts -----------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self.cfg.name or os.path.basename(self.gguf.path)

    @property
    def n_ctx(self) -> int:
        return self.engine.n_ctx

    @property
    def n_vocab(self) -> int:
        return self.cfg.n_vocab

    @property
    def stats(self) -> Stats:
        return self.engine.last_stats

    # -- tokens ----------------------------------------------------------------------------

    def tokenize(self, text: str, add_bos: bool = True, special: bool = True) -> list[int]:
        return self.tokenizer.encode(text, add_bos=add_bos, special=special)

    def detokenize(self, ids) -> str:
        return self.tokenizer.decode([int(i) for i in ids])

    def logits(self, ids) -> np.ndarray:
        """[len(ids), n_vocab] float32: the next-token logits after each prefix, in a
        fresh context (the engine's cache is left as it was)."""
        ids = np.asarray(ids, dtype=np.int64)
        if ids.ndim != 1 or len(ids) == 0:
            raise ValueError("logits: expected a non-empty list of token ids")
        caches = make_caches(self.cfg, len(ids))
        out = np.empty((len(ids), self.cfg.n_vocab), dtype=np.float32)
        step = self.engine.n_batch
        for s in range(0, len(ids), step):
            out[s:s + step] = M.forward(self.weights, self.cfg, caches, ids[s:s + step], s, logits="all")
        return out

    # -- generation ------------------------------------------------------------------------

    def _params(self, kw: dict[str, Any]) -> SamplingParams:
        unknown = set(kw) - set(SAMPLING_KEYS)
        if unknown:
            raise TypeError(f"unknown sampling option(s): {', '.join(sorted(unknown))}")
        return SamplingParams(**kw)

    def _run(self, prompt: Prompt, stream: bool, max_tokens, stop, ignore_eos, kw):
        gen = self.engine.generate(prompt, self._params(kw), max_tokens=max_tokens,
                                   stop=list(stop or ()), ignore_eos=ignore_eos)
        if stream:
            return (t.text for t in gen if t.text)
        return "".join(t.text for t in gen)

    def prompt_of(self, prompt: str | list[int]) -> Prompt:
        if isinstance(prompt, str):
            return Prompt(self.tokenize(prompt, add_bos=True))
        return Prompt([int(t) for t in prompt])

    def complete(self, prompt: str | list[int], max_tokens: int | None = 128, stop=(), ignore_eos: bool = False,
                 stream: bool = False, **sampling) -> str | Iterator[str]:
        """Continue `prompt` (text, to which BOS is added, or token ids as they are)."""
        return self._run(self.prompt_of(prompt), stream, max_tokens, stop, ignore_eos, sampling)

    def chat_prompt(self, messages: list[dict]) -> Prompt:
        ids: list[int] = []
        for p in render(messages, self.chat_template):
            if isinstance(p, ImageRef):
                raise ValueError("this model has no vision tower: images are not supported")
            ids += self.tokenizer.encode(p, add_bos=False, special=True)
        return Prompt(ids)

    def chat(self, messages: list[dict], max_tokens: int | None = 512, stop=(), stream: bool = False,
             **sampling) -> str | Iterator[str]:
        """Reply to OpenAI-style messages with Gemma's chat template."""
        return self._run(self.chat_prompt(messages), stream, max_tokens, stop, False, sampling)


def load(model_path: str | os.PathLike, mmproj: str | os.PathLike | None = None, n_ctx: int = 8192,
         threads: int | None = None, resident: bool | None = None, offset: int = 0,
         length: int | None = None) -> LLM:
    """Load a Gemma 3 GGUF (from a file, or a region of one) ready to generate."""
    return LLM(GGUFFile(model_path, offset, length), n_ctx=n_ctx, threads=threads, resident=resident,
               mmproj=mmproj)
