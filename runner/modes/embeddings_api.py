"""Embeddings over HTTP: OpenAI's POST /v1/embeddings and llama-server's POST /embedding
(also /embeddings), computed by runner/embedding.py.

Embeddings are always on (llama-server needs --embedding because its context either
embeds or generates; here they run in scratch contexts of their own, so serving them
costs nothing until asked). The pooling is the server's (`--pooling`; default: the
file's declared pooling, else mean), as in llama-server, where it is fixed at start.

    /v1/embeddings   OpenAI's shape; vectors L2-normalized (or `embd_normalize`, llama.cpp's
                     extension); `encoding_format` float or base64; pooling none refused
                     (one vector per token does not fit OpenAI's shape), as llama-server does
    /embedding       llama-server's shape: [{"index", "embedding": [[...]]}], one vector per
                     input, or with --pooling none one raw (unnormalized) vector per token

The work goes to the compute thread (SlotPool.compute): one pass over the weights per
pack of inputs, between the decoding steps of the replies in progress.
"""
from __future__ import annotations

import base64
from typing import Iterator

import numpy as np
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..embedding import Pooling, default_pooling, embed_packs, input_items, token_lists
from .api_common import Fields, State, bad, request_json

ENCODINGS = ("float", "base64")


def pooling_of(state: State) -> Pooling:
    return Pooling(state.options.pooling) if state.options.pooling else default_pooling(state.llm.gguf)


def _inputs(state: State, f: Fields, name: str) -> list[list[int]]:
    """The request's inputs as token lists (400 naming the field for a bad one)."""
    llm = state.llm
    try:
        items, _ = input_items(f.raw(name))
        return token_lists(items, lambda t: llm.tokenize(t, add_bos=True), llm.n_vocab, llm.n_ctx)
    except ValueError as e:
        raise bad(f"'{name}': {e}", name) from None


def _collect(packs: Iterator[list[tuple[int, np.ndarray]]]) -> Iterator[None]:
    """A chore for the compute thread: one pack per step; returns the vectors in order."""
    out: list[np.ndarray] = []
    for pack in packs:
        out += [v for _, v in pack]
        yield
    return out


async def _embed(state: State, request: Request, f: Fields, name: str) -> tuple[list[np.ndarray], int] | None:
    """(vectors, tokens read) of the request's inputs; None if the client left."""
    norm = f.integer("embd_normalize", 2, -1)
    inputs = await run_in_threadpool(_inputs, state, f, name)
    llm = state.llm
    packs = embed_packs(llm.weights, llm.cfg, inputs, pooling_of(state), llm.engine.config.n_batch, norm)
    vectors = await state.pool.compute(_collect(packs), request.is_disconnected)
    return None if vectors is None else (vectors, sum(len(s) for s in inputs))


def llama_shape(vectors: list[np.ndarray]) -> list[dict]:
    """llama-server's /embedding answer: per input a list of vectors (one pooled, or one
    per token)."""
    return [{"index": i, "embedding": np.atleast_2d(v).tolist()} for i, v in enumerate(vectors)]


async def openai_embeddings(state: State, request: Request) -> Response:
    f = Fields(await request_json(request))
    if not f.has("input") and f.has("content"):
        return await llama_embeddings(state, request, f)      # as llama-server: "content" is its own field
    if not f.has("input"):
        raise bad("'input' (a string, an array of strings, or token ids) is required", "input")
    fmt = f.string("encoding_format", "float")
    if fmt not in ENCODINGS:
        raise bad(f"'encoding_format' must be 'float' or 'base64', got {fmt!r}", "encoding_format")
    d = state.llm.cfg.d
    dims = f.integer("dimensions", d, 1)
    if dims != d:
        raise bad(f"'dimensions' is not supported: this model's embeddings have {d} dimensions (shortening "
                  f"them needs a model trained for it)", "dimensions")
    model = f.string("model")
    f.string("user")
    if pooling_of(state) is Pooling.NONE:
        raise bad("pooling 'none' (one vector per token) does not fit OpenAI's embeddings: use POST /embedding, "
                  "or start the server with --pooling mean, last or cls")
    got = await _embed(state, request, f, "input")
    if got is None:
        return Response(status_code=204)                     # the client left
    vectors, n_tokens = got

    def encode(v: np.ndarray):
        # why: OpenAI's base64 is the little-endian float32 bytes (its client decodes them so)
        return base64.b64encode(v.astype("<f4").tobytes()).decode() if fmt == "base64" else v.tolist()

    return JSONResponse({"object": "list", "model": model or state.model_id,
                         "data": [{"object": "embedding", "index": i, "embedding": encode(v)}
                                  for i, v in enumerate(vectors)],
                         "usage": {"prompt_tokens": n_tokens, "total_tokens": n_tokens}})


async def llama_embeddings(state: State, request: Request, f: Fields | None = None) -> Response:
    f = f or Fields(await request_json(request))
    name = "content" if f.has("content") else "input"
    if not f.has(name):
        raise bad("'content' (a string, an array of strings, or token ids) is required", "content")
    got = await _embed(state, request, f, name)
    if got is None:
        return Response(status_code=204)
    return JSONResponse(llama_shape(got[0]))
