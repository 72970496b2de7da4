"""OpenAI's /v1/chat/completions and /v1/completions over the slots.

A request is validated completely (fields, messages, prompt length) before anything is
generated, so every client mistake is a 400 with OpenAI's error body; only then does a
stream start. Responses follow OpenAI's shapes, with llama.cpp's `timings` added, and
`prompt_progress` events in a stream when the request asks with `return_progress`.
"""
from __future__ import annotations

import math
import re
import time
import traceback
from contextlib import aclosing
from typing import Any, AsyncIterator

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from ..chat import ChatError
from ..engine import ContextError, Prompt, Token
from .api_common import (MAX_LOGPROBS, SSE_DONE, SSE_HEADERS, APIError, Fields, State, bad, error_body,
                         max_tokens, new_id, parse_json, sampling_params, sse, token_piece)
from .slots import Job, Result

FINGERPRINT = "gemma-runner"


def model_id(llm) -> str:
    """The model's name as an id: "Gemma 3 270m" -> "gemma-3-270m"."""
    return re.sub(r"[^a-z0-9.]+", "-", llm.name.lower()).strip("-") or "gemma"


def finite(x: float) -> float:
    return x if math.isfinite(x) else -9999.0     # JSON has no -inf; OpenAI's "impossible"


def usage(r: Result) -> dict:
    return {"prompt_tokens": r.prompt_tokens, "completion_tokens": r.generated_tokens,
            "total_tokens": r.prompt_tokens + r.generated_tokens,
            "prompt_tokens_details": {"cached_tokens": r.cached_tokens}}


def check_context(state: State, prompt: Prompt, param: str) -> None:
    n, n_ctx = len(prompt), state.llm.n_ctx
    if n == 0:
        raise bad(f"'{param}' is empty", param)
    if n >= n_ctx:
        raise APIError(400, f"the prompt has {n} tokens but the context holds {n_ctx} (and needs room "
                            f"to generate): shorten it, or start the server with a larger --ctx-size",
                       param=param, code="context_length_exceeded")


def job_error(e: Exception) -> Exception:
    """An error raised while generating: a client mistake becomes a 400."""
    if isinstance(e, (ContextError, ChatError)):
        return bad(str(e))
    return e


async def collect(state: State, job: Job, request: Request) -> tuple[str, list[Token], Result | None]:
    """Run a job to the end (or until the client leaves); its text, tokens and result."""
    text, tokens, result = [], [], None
    async with aclosing(state.pool.run(job, request.is_disconnected)) as events:
        async for kind, v in events:
            if kind == "token":
                text.append(v.text)
                tokens.append(v)
            elif kind == "done":
                result = v
            elif kind == "error":
                raise job_error(v)
    return "".join(text), tokens, result


def common_job_fields(state: State, f: Fields, prompt: Prompt, limit: int | None) -> Job:
    o, llm = state.options, state.llm
    if f.integer("n", 1, 1, 1) != 1 or f.integer("best_of", 1, 1, 1) != 1:
        raise bad("only one choice per request is supported (n = 1)")
    f.string("model")                               # any model name is accepted: there is one
    return Job(prompt=prompt, params=sampling_params(f, o.sampling, llm.n_vocab, o.sampling.seed),
               max_tokens=limit, stop=f.stop(), ignore_eos=f.boolean("ignore_eos", False),
               progress=f.boolean("return_progress", False))


async def json_mode(state: State, f: Fields, job: Job) -> None:
    rf = f.obj("response_format")
    kind = (rf or {}).get("type", "text")
    if kind == "json_object":
        job.json_vocab = await run_in_threadpool(state.json_vocab)
    elif kind == "json_schema":
        raise bad("response_format 'json_schema' is not supported; use {\"type\": \"json_object\"}",
                  "response_format")
    elif kind != "text":
        raise bad(f"response_format type must be 'text' or 'json_object', got {kind!r}", "response_format")


# -- /v1/chat/completions -------------------------------------------------------------------

def chat_logprob(tokenizer, t: Token) -> dict:
    text, b = token_piece(tokenizer, t.id)
    top = []
    for i, lp in t.top_logprobs or ():
        s, bb = token_piece(tokenizer, i)
        top.append({"token": s, "logprob": finite(lp), "bytes": bb})
    return {"token": text, "logprob": finite(t.logprob), "bytes": b, "top_logprobs": top}


async def chat_completions(state: State, request: Request) -> Response:
    f = Fields(parse_json(await request.body()))
    llm = state.llm
    messages = f.raw("messages")
    if not isinstance(messages, list) or not messages:
        raise bad("'messages' must be a non-empty array of messages", "messages")
    if f.raw("tools"):
        raise bad("tools (function calling) are not supported by this server", "tools")
    stream = f.boolean("stream", False)
    opts = f.obj("stream_options") or {}
    include_usage = stream and opts.get("include_usage") is True
    want_lp = f.boolean("logprobs", False)
    top_n = f.integer("top_logprobs", 0, 0, MAX_LOGPROBS)
    limit = max_tokens(f, state.options.n_predict, "max_completion_tokens", "max_tokens")
    try:
        prompt = await run_in_threadpool(state.chat_prompt, messages)
    except (ChatError, ValueError, TypeError) as e:
        raise bad(f"messages: {e}", "messages") from None
    check_context(state, prompt, "messages")
    job = common_job_fields(state, f, prompt, limit)
    job.logprobs = top_n if want_lp else None
    await json_mode(state, f, job)

    cid, created, model = new_id("chatcmpl"), int(time.time()), model_id(llm)
    head = {"id": cid, "object": "chat.completion", "created": created, "model": model,
            "system_fingerprint": FINGERPRINT}
    if not stream:
        text, tokens, r = await collect(state, job, request)
        if r is None:
            return Response(status_code=204)        # the client left
        lp = {"content": [chat_logprob(llm.tokenizer, t) for t in tokens if t.id >= 0]} if want_lp else None
        return JSONResponse({**head, "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                                  "logprobs": lp, "finish_reason": r.finish_reason}],
                             "usage": usage(r), "timings": r.timings()})

    head["object"] = "chat.completion.chunk"

    def chunk(delta: dict, finish: str | None = None, logprobs: Any = None) -> dict:
        c = {**head, "choices": [{"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}]}
        if include_usage:
            c["usage"] = None
        return c

    async def events() -> AsyncIterator[bytes]:
        yield sse(chunk({"role": "assistant", "content": ""}))
        async with aclosing(state.pool.run(job)) as run:
            async for kind, v in run:
                if kind == "progress":
                    yield sse({**head, "choices": [], "prompt_progress": v})
                elif kind == "token":
                    lp = {"content": [chat_logprob(llm.tokenizer, v)]} if want_lp and v.id >= 0 else None
                    if v.text or lp:
                        yield sse(chunk({"content": v.text}, logprobs=lp))
                elif kind == "done":
                    yield sse({**chunk({}, v.finish_reason), "timings": v.timings()})
                    if include_usage:
                        yield sse({**head, "choices": [], "usage": usage(v)})
                else:
                    yield sse(stream_error(state, job_error(v)))
        yield SSE_DONE

    return StreamingResponse(events(), media_type="text/event-stream", headers=SSE_HEADERS)


def stream_error(state: State, e: Exception) -> dict:
    """An error after the stream began: an error event (the status is already sent)."""
    if isinstance(e, APIError):
        return e.body()
    state.log("error during generation:\n" + "".join(traceback.format_exception(e)).rstrip())
    return error_body("the server failed while generating; see its log", "server_error")


# -- /v1/completions ------------------------------------------------------------------------

def completion_prompt(state: State, f: Fields, name: str = "prompt") -> tuple[Prompt, str | None, bool]:
    """(prompt, its text if given as text, whether BOS was added): a string gets BOS
    unless it starts with <bos>; token ids are taken as they are. OpenAI's one-element
    batch forms are accepted too."""
    llm = state.llm
    p = f.raw(name)
    if isinstance(p, list) and len(p) == 1 and isinstance(p[0], (str, list)):
        p = p[0]
    if isinstance(p, str):
        add_bos = not p.startswith(llm.tokenizer.tokens[llm.tokenizer.bos_id])
        return Prompt(llm.tokenize(p, add_bos=add_bos)), p, add_bos
    if isinstance(p, list) and p and all(isinstance(t, int) and not isinstance(t, bool) for t in p):
        return Prompt(f.token_ids(name, p, llm.n_vocab)), None, False
    if isinstance(p, list) and len(p) > 1:
        raise bad(f"'{name}': batches of prompts are not supported; send one prompt per request", name)
    raise bad(f"'{name}' must be a string or an array of token ids", name)


class LegacyLogprobs:
    """OpenAI's completions logprobs: tokens, token_logprobs, top_logprobs, text_offset."""

    def __init__(self, tokenizer, offset: int = 0):
        self.tok = tokenizer
        self.offset = offset
        self.data = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}

    def add(self, tok: int, lp: float | None, top: list[tuple[int, float]] | None) -> None:
        text, _ = token_piece(self.tok, tok)
        d = self.data
        d["tokens"].append(text)
        d["token_logprobs"].append(None if lp is None else finite(lp))
        d["top_logprobs"].append(None if top is None else
                                 {token_piece(self.tok, i)[0]: finite(v) for i, v in top})
        d["text_offset"].append(self.offset)
        self.offset += len(text)

    def take(self) -> dict:
        out = self.data
        self.data = {k: [] for k in out}
        return out


def add_prompt_logprobs(lps: LegacyLogprobs, prompt: Prompt, scores: list | None, skip: int) -> None:
    """The echoed prompt's tokens (after the `skip` we added) with their scores."""
    for tok, entry in list(zip(prompt.tokens, scores or ()))[skip:]:
        lp, top = entry if entry is not None else (None, None)
        lps.add(tok, lp, top)


async def completions(state: State, request: Request) -> Response:
    f = Fields(parse_json(await request.body()))
    llm = state.llm
    prompt, text, added_bos = await run_in_threadpool(completion_prompt, state, f)
    check_context(state, prompt, "prompt")
    if f.string("suffix"):
        raise bad("'suffix' (fill in the middle) is not supported", "suffix")
    stream = f.boolean("stream", False)
    include_usage = stream and (f.obj("stream_options") or {}).get("include_usage") is True
    echo = f.boolean("echo", False)
    n_lp = f.integer("logprobs", None, 0, MAX_LOGPROBS)
    job = common_job_fields(state, f, prompt, max_tokens(f, state.options.n_predict, "max_tokens"))
    job.logprobs = n_lp
    if echo and n_lp is not None:
        job.prompt_logprobs = n_lp
    await json_mode(state, f, job)
    prompt_text = "" if not echo else text if text is not None else llm.detokenize(prompt.tokens)
    head = {"id": new_id("cmpl"), "object": "text_completion", "created": int(time.time()),
            "model": model_id(llm), "system_fingerprint": FINGERPRINT}

    if not stream:
        text, tokens, r = await collect(state, job, request)
        if r is None:
            return Response(status_code=204)
        lp = None
        if n_lp is not None:
            lps = LegacyLogprobs(llm.tokenizer)
            if echo:
                add_prompt_logprobs(lps, prompt, r.prompt_logprobs, added_bos)
            for t in tokens:
                if t.id >= 0:
                    lps.add(t.id, t.logprob, t.top_logprobs)
            lp = lps.take()
        return JSONResponse({**head, "choices": [{"text": prompt_text + text, "index": 0, "logprobs": lp,
                                                  "finish_reason": r.finish_reason}],
                             "usage": usage(r), "timings": r.timings()})

    def chunk(text: str, logprobs=None, finish=None) -> dict:
        c = {**head, "choices": [{"text": text, "index": 0, "logprobs": logprobs, "finish_reason": finish}]}
        if include_usage:
            c["usage"] = None
        return c

    async def events() -> AsyncIterator[bytes]:
        lps = LegacyLogprobs(llm.tokenizer)
        if echo and job.prompt_logprobs is None:
            yield sse(chunk(prompt_text))
        async with aclosing(state.pool.run(job)) as run:
            async for kind, v in run:
                if kind == "progress":
                    yield sse({**head, "choices": [], "prompt_progress": v})
                elif kind == "prompt_logprobs":           # echo with logprobs: the prompt first
                    add_prompt_logprobs(lps, prompt, v, added_bos)
                    yield sse(chunk(prompt_text, lps.take()))
                elif kind == "token":
                    if n_lp is not None and v.id >= 0:
                        lps.add(v.id, v.logprob, v.top_logprobs)
                    if v.text or n_lp is not None:
                        yield sse(chunk(v.text, lps.take() if n_lp is not None else None))
                elif kind == "done":
                    yield sse({**chunk("", None, v.finish_reason), "timings": v.timings()})
                    if include_usage:
                        yield sse({**head, "choices": [], "usage": usage(v)})
                else:
                    yield sse(stream_error(state, job_error(v)))
        yield SSE_DONE

    return StreamingResponse(events(), media_type="text/event-stream", headers=SSE_HEADERS)
