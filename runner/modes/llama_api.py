"""llama.cpp's native endpoints: POST /completion, /tokenize, /detokenize; GET /props,
/slots. Shapes follow llama.cpp's server so that its clients (and llamafile's) work."""
from __future__ import annotations

from contextlib import aclosing
from typing import AsyncIterator

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from .. import __version__
from .api_common import MAX_LOGPROBS, SSE_HEADERS, Fields, State, bad, max_tokens, parse_json, sse, token_piece
from .openai_api import (check_context, collect, common_job_fields, completion_prompt, finite, job_error,
                         json_mode, model_id, stream_error)
from .slots import Result


def probs_entry(tokenizer, tok: int, lp: float, top) -> dict:
    """llama.cpp's completion_probabilities entry for one generated token."""
    def one(i: int, v: float) -> dict:
        s, b = token_piece(tokenizer, i)
        return {"id": i, "token": s, "logprob": finite(v), "bytes": b}
    return {**one(tok, lp), "top_logprobs": [one(i, v) for i, v in top or ()]}


def settings(state: State) -> dict:
    p = state.options.sampling
    return {"n_ctx": state.llm.n_ctx, "n_predict": state.options.n_predict, "model": model_id(state.llm),
            "temperature": p.temperature, "top_k": p.top_k, "top_p": p.top_p, "min_p": p.min_p,
            "repeat_penalty": p.repeat_penalty, "repeat_last_n": p.repeat_last_n,
            "presence_penalty": p.presence_penalty, "frequency_penalty": p.frequency_penalty,
            "seed": -1 if p.seed is None else p.seed}


async def completion(state: State, request: Request) -> Response:
    f = Fields(parse_json(await request.body()))
    llm = state.llm
    prompt, _, _ = await run_in_threadpool(completion_prompt, state, f)
    check_context(state, prompt, "prompt")
    limit = max_tokens(f, state.options.n_predict, "n_predict", "max_tokens")
    job = common_job_fields(state, f, prompt, limit)
    n_probs = f.integer("n_probs", 0, 0, MAX_LOGPROBS)
    job.logprobs = n_probs if n_probs > 0 else None
    await json_mode(state, f, job)
    stream = f.boolean("stream", False)
    model = model_id(llm)

    def final(content: str, r: Result) -> dict:
        return {"content": content, "id_slot": r.slot, "stop": True, "model": model,
                "tokens_predicted": r.generated_tokens, "tokens_evaluated": r.prompt_tokens,
                "tokens_cached": r.cached_tokens, "generation_settings": settings(state),
                "stop_type": {"eos": "eos", "constraint": "eos", "word": "word"}.get(r.stop_type, "limit"),
                "stopping_word": r.stopping_word, "stopped_eos": r.stop_type in ("eos", "constraint"),
                "stopped_word": r.stop_type == "word", "stopped_limit": r.finish_reason == "length",
                "truncated": False, "timings": r.timings()}

    if not stream:
        text, tokens, r = await collect(state, job, request)
        if r is None:
            return Response(status_code=204)
        out = final(text, r)
        out["tokens"] = [t.id for t in tokens if t.id >= 0]
        if job.logprobs:
            out["completion_probabilities"] = [probs_entry(llm.tokenizer, t.id, t.logprob, t.top_logprobs)
                                               for t in tokens if t.id >= 0]
        return JSONResponse(out)

    async def events() -> AsyncIterator[bytes]:
        async with aclosing(state.pool.run(job)) as run:
            async for kind, v in run:
                if kind == "progress":
                    yield sse({"content": "", "stop": False, "prompt_progress": v})
                elif kind == "token":
                    out = {"content": v.text, "stop": False, "tokens": [v.id] if v.id >= 0 else []}
                    if job.logprobs and v.id >= 0:
                        out["completion_probabilities"] = [probs_entry(llm.tokenizer, v.id, v.logprob,
                                                                       v.top_logprobs)]
                    yield sse(out)
                elif kind == "done":
                    yield sse(final("", v))
                else:
                    yield sse(stream_error(state, job_error(v)))

    return StreamingResponse(events(), media_type="text/event-stream", headers=SSE_HEADERS)


async def tokenize(state: State, request: Request) -> Response:
    f = Fields(parse_json(await request.body()))
    content = f.string("content")
    if content is None:
        raise bad("'content' (the text to tokenize) is required", "content")
    llm = state.llm
    ids = await run_in_threadpool(llm.tokenize, content, f.boolean("add_special", False),
                                  f.boolean("parse_special", True))
    if not f.boolean("with_pieces", False):
        return JSONResponse({"tokens": ids})
    return JSONResponse({"tokens": [{"id": i, "piece": token_piece(llm.tokenizer, i)[0]} for i in ids]})


async def detokenize(state: State, request: Request) -> Response:
    f = Fields(parse_json(await request.body()))
    ids = f.token_ids("tokens", f.raw("tokens", []), state.llm.n_vocab)
    return JSONResponse({"content": state.llm.detokenize(ids)})


def props(state: State) -> dict:
    llm = state.llm
    return {"default_generation_settings": settings(state), "total_slots": len(state.pool.slots),
            "model": model_id(llm), "model_name": llm.name, "model_path": state.options.model_path,
            "n_ctx": llm.n_ctx, "n_vocab": llm.n_vocab,
            "chat_template": llm.chat_template or "gemma (built in)",
            "has_chat_template": bool(llm.has_chat_template),
            "modalities": {"vision": bool(getattr(llm, "has_vision", False))},
            "build_info": f"gemma-runner {__version__}", "api_key_required": bool(state.options.api_key)}


def slots(state: State) -> list[dict]:
    return [{"id": s.id, "is_processing": s.busy, "n_ctx": s.engine.n_ctx, "n_cached": len(s.engine.keys)}
            for s in state.pool.slots]
