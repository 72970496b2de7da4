"""OpenAI's /v1/chat/completions and /v1/completions: requests to jobs, events to OpenAI's
shapes.

Tools (structured/tools.py): a reply that is calls comes back as `message.tool_calls` (ids,
names, arguments as JSON text) with finish_reason "tool_calls", and in a stream as
`delta.tool_calls` chunks, a call's name first and its arguments as they are generated.

A request is validated completely (fields, messages, tools, schemas, prompt length)
before anything is generated, so every client mistake is a 400 with OpenAI's error body; only then does a
stream start. Responses follow OpenAI's shapes, with llama.cpp's `timings` added, and
`prompt_progress` events in a stream when the request asks with `return_progress`.
"""
from __future__ import annotations

import time
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..chat import ChatError
from ..engine import Prompt
from ..generation import Result, Token
from ..structured.tools import CallParser, ToolError, ToolSpec, parse_tools, parser_mode
from .api_common import (MAX_LOGPROBS, Fields, State, bad, collect_all, completion_prompt, finite, max_tokens,
                         n_jobs, new_id, request_json, request_job, response_schema, stream, token_piece)

FINGERPRINT = "gemma-runner"


def usage(r: Result, *more: Result) -> dict:
    """The usage of a reply (with `more`: of n replies to one prompt, counted once)."""
    generated = r.generated_tokens + sum(m.generated_tokens for m in more)
    return {"prompt_tokens": r.prompt_tokens, "completion_tokens": generated,
            "total_tokens": r.prompt_tokens + generated,
            "prompt_tokens_details": {"cached_tokens": r.cached_tokens}}


def head(state: State, kind: str, prefix: str) -> dict:
    return {"id": new_id(prefix), "object": kind, "created": int(time.time()), "model": state.model_id,
            "system_fingerprint": FINGERPRINT}


def include_usage(f: Fields) -> bool:
    return f.boolean("stream", False) and (f.obj("stream_options") or {}).get("include_usage") is True


class Ending:
    """A stream's end, after each of its n replies finished: the chunk with a reply's
    finish reason, and after the last one the usage chunk if asked for; llama.cpp's
    `timings` (of the last reply) on the very last chunk, as llama-server sends it."""

    def __init__(self, h: dict, n: int, with_usage: bool):
        self.h, self.n, self.with_usage = h, n, with_usage
        self.results: list[Result] = []

    def chunks(self, finish: dict, r: Result) -> list[dict]:
        self.results.append(r)
        if len(self.results) < self.n:
            return [finish]
        chunks = [finish] + ([{**self.h, "choices": [], "usage": usage(*self.results)}] if self.with_usage else [])
        chunks[-1] = {**chunks[-1], "timings": r.timings()}
        return chunks


# -- /v1/chat/completions -------------------------------------------------------------------

def chat_logprob(tokenizer, t: Token) -> dict:
    text, b = token_piece(tokenizer, t.id)
    top = []
    for i, lp in t.top_logprobs or ():
        s, bb = token_piece(tokenizer, i)
        top.append({"token": s, "logprob": finite(lp), "bytes": bb})
    return {"token": text, "logprob": finite(t.logprob), "bytes": b, "top_logprobs": top}


def tool_spec(f: Fields) -> ToolSpec | None:
    """The request's tools, tool_choice and parallel_tool_calls (a 400 naming the field)."""
    try:
        return parse_tools(f.raw("tools"), f.raw("tool_choice"), f.body.get("parallel_tool_calls"))
    except ToolError as e:
        raise bad(str(e), e.param) from None


def tool_call(call: dict, index: int | None = None) -> dict:
    out = {"id": call["id"], "type": "function", "function": {"name": call["name"], "arguments": call["arguments"]}}
    return out if index is None else {"index": index, **out}


async def chat_completions(state: State, request: Request) -> Response:
    f = Fields(await request_json(request))
    llm = state.llm
    messages = f.raw("messages")
    if not isinstance(messages, list) or not messages:
        raise bad("'messages' must be a non-empty array of messages", "messages")
    tools = tool_spec(f)
    want_lp = f.boolean("logprobs", False)
    top_n = f.integer("top_logprobs", 0, 0, MAX_LOGPROBS)
    limit = max_tokens(f, state.options.n_predict, "max_completion_tokens", "max_tokens")
    try:
        prompt = await run_in_threadpool(state.chat_prompt, messages, tools)
    except (ChatError, ValueError, TypeError) as e:
        raise bad(f"messages: {e}", "messages") from None
    job = await request_job(state, f, prompt, limit, "messages", tools, choices=True)
    job.logprobs = top_n if want_lp else None
    jobs = n_jobs(f, job)
    names = tuple(fn.name for fn in tools.functions) if tools else ()
    mode = parser_mode(tools, response_schema(f) is not None)
    parsers = [CallParser(mode, names) for _ in jobs]             # one per choice

    def logprobs(tokens: list[Token]) -> dict | None:
        return {"content": [chat_logprob(llm.tokenizer, t) for t in tokens if t.id >= 0]} if want_lp else None

    def finish_reason(parser: CallParser, r: Result) -> str:
        # calls that ended the reply (the constraint completed them) are a tool_calls finish
        return "tool_calls" if parser.calls and r.finish_reason == "stop" else r.finish_reason

    if not f.boolean("stream", False):
        done = await collect_all(state, jobs, request)
        if done is None:
            return Response(status_code=204)        # the client left
        choices = []
        for i, (text, tokens, r, _) in enumerate(done):
            parsers[i].feed(text)
            parsers[i].close()
            message: dict = {"role": "assistant", "content": text}
            if parsers[i].calls:
                message = {"role": "assistant", "content": None,
                           "tool_calls": [tool_call(c) for c in parsers[i].calls]}
            choices.append({"index": i, "message": message, "logprobs": logprobs(tokens),
                            "finish_reason": finish_reason(parsers[i], r)})
        results = [r for _, _, r, _ in done]
        return JSONResponse({**head(state, "chat.completion", "chatcmpl"), "choices": choices,
                             "usage": usage(*results), "timings": results[-1].timings()})

    h, with_usage = head(state, "chat.completion.chunk", "chatcmpl"), include_usage(f)
    ending = Ending(h, len(jobs), with_usage)

    def chunk(delta: dict, finish: str | None = None, lp: Any = None, index: int = 0) -> dict:
        c = {**h, "choices": [{"index": index, "delta": delta, "logprobs": lp, "finish_reason": finish}]}
        return {**c, "usage": None} if with_usage else c

    def renderer(index: int):
        parser = parsers[index]

        def deltas(events: list[tuple], lp: Any = None) -> list[dict]:
            out = []
            for e in events:
                if e[0] == "content":
                    out.append(chunk({"content": e[1]}, lp=lp, index=index))
                    lp = None
                elif e[0] == "call":
                    _, i, call_id, name = e
                    out.append(chunk({"tool_calls": [{"index": i, "id": call_id, "type": "function",
                                                      "function": {"name": name, "arguments": ""}}]}, index=index))
                else:
                    out.append(chunk({"tool_calls": [{"index": e[1], "function": {"arguments": e[2]}}]}, index=index))
            return out + ([chunk({"content": ""}, lp=lp, index=index)] if lp else [])

        def render(kind: str, v: Any) -> list[dict]:
            if kind == "progress":
                return [{**h, "choices": [], "prompt_progress": v}]
            if kind == "token":
                lp = logprobs([v]) if v.id >= 0 else None
                return deltas(parser.feed(v.text), lp) if v.text or lp else []
            if kind == "done":
                return deltas(parser.close()) + ending.chunks(chunk({}, finish_reason(parser, v), index=index), v)
            return []
        return render

    content = None if tools is not None and tools.calls else ""
    return stream(state, jobs, [renderer(i) for i in range(len(jobs))],
                  opening=[chunk({"role": "assistant", "content": content}, index=i) for i in range(len(jobs))])


# -- /v1/completions ------------------------------------------------------------------------

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

    def add_prompt(self, prompt: Prompt, scores: list | None, skip: int) -> None:
        """The echoed prompt's tokens (after the `skip` we added) with their scores."""
        for tok, entry in list(zip(prompt.tokens, scores or ()))[skip:]:
            lp, top = entry if entry is not None else (None, None)
            self.add(tok, lp, top)

    def take(self) -> dict:
        out = self.data
        self.data = {k: [] for k in out}
        return out


async def completions(state: State, request: Request) -> Response:
    f = Fields(await request_json(request))
    llm = state.llm
    prompt, text, added_bos = await run_in_threadpool(completion_prompt, state, f)
    if f.string("suffix"):
        raise bad("'suffix' (fill in the middle) is not supported", "suffix")
    echo = f.boolean("echo", False)
    n_lp = f.integer("logprobs", None, 0, MAX_LOGPROBS)
    job = await request_job(state, f, prompt, max_tokens(f, state.options.n_predict, "max_tokens"), "prompt",
                            choices=True)
    job.logprobs = n_lp
    if echo and n_lp is not None:
        job.prompt_logprobs = n_lp
    jobs = n_jobs(f, job)
    prompt_text = "" if not echo else text if text is not None else llm.detokenize(prompt.tokens)
    lps = [LegacyLogprobs(llm.tokenizer) for _ in jobs]          # one per reply

    if not f.boolean("stream", False):
        done = await collect_all(state, jobs, request)
        if done is None:
            return Response(status_code=204)
        choices = []
        for i, (text, tokens, r, scored) in enumerate(done):
            lp = None
            if n_lp is not None:
                if echo:
                    lps[i].add_prompt(prompt, scored, added_bos)
                for t in tokens:
                    if t.id >= 0:
                        lps[i].add(t.id, t.logprob, t.top_logprobs)
                lp = lps[i].take()
            choices.append({"text": prompt_text + text, "index": i, "logprobs": lp, "finish_reason": r.finish_reason})
        results = [r for _, _, r, _ in done]
        return JSONResponse({**head(state, "text_completion", "cmpl"), "choices": choices,
                             "usage": usage(*results), "timings": results[-1].timings()})

    h, with_usage = head(state, "text_completion", "cmpl"), include_usage(f)
    ending = Ending(h, len(jobs), with_usage)

    def chunk(text: str, logprobs=None, finish=None, index: int = 0) -> dict:
        c = {**h, "choices": [{"text": text, "index": index, "logprobs": logprobs, "finish_reason": finish}]}
        return {**c, "usage": None} if with_usage else c

    def renderer(i: int):
        def render(kind: str, v: Any) -> list[dict]:
            if kind == "progress":
                return [{**h, "choices": [], "prompt_progress": v}]
            if kind == "prompt_logprobs":               # echo with logprobs: the prompt first
                lps[i].add_prompt(prompt, v, added_bos)
                return [chunk(prompt_text, lps[i].take(), index=i)]
            if kind == "token":
                if n_lp is not None and v.id >= 0:
                    lps[i].add(v.id, v.logprob, v.top_logprobs)
                lp = lps[i].take() if n_lp is not None else None
                return [chunk(v.text, lp, index=i)] if v.text or n_lp is not None else []
            if kind == "done":
                return ending.chunks(chunk("", None, v.finish_reason, index=i), v)
            return []
        return render

    opening = [chunk(prompt_text, index=i) for i in range(len(jobs))] if echo and job.prompt_logprobs is None else []
    return stream(state, jobs, [renderer(i) for i in range(len(jobs))], opening)
