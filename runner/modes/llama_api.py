"""llama.cpp's native endpoints: POST /completion, /tokenize, /detokenize; GET /props,
/slots. Shapes follow llama.cpp's server so that its clients (and llamafile's) work."""
from __future__ import annotations

from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .. import __version__
from ..generation import Result
from ..sampling import OPTIONS
from .api_common import (MAX_LOGPROBS, Fields, State, bad, collect, completion_prompt, finite, max_tokens,
                         model_id, parse_json, request_job, stream, token_piece)


def probs_entry(tokenizer, tok: int, lp: float, top) -> dict:
    """llama.cpp's completion_probabilities entry for one generated token."""
    def one(i: int, v: float) -> dict:
        s, b = token_piece(tokenizer, i)
        return {"id": i, "token": s, "logprob": finite(v), "bytes": b}
    return {**one(tok, lp), "top_logprobs": [one(i, v) for i, v in top or ()]}


def settings(state: State) -> dict:
    """The server's default generation settings: every declared sampling option."""
    p = state.options.sampling
    out = {"n_ctx": state.llm.n_ctx, "n_predict": state.options.n_predict, "model": model_id(state.llm)}
    out.update({name: getattr(p, name) for name, opt in OPTIONS.items() if opt.type in ("int", "float")})
    return {**out, "seed": -1 if p.seed is None else p.seed}


async def completion(state: State, request: Request) -> Response:
    f = Fields(parse_json(await request.body()))
    llm = state.llm
    prompt, _, _ = await run_in_threadpool(completion_prompt, state, f)
    job = await request_job(state, f, prompt, max_tokens(f, state.options.n_predict, "n_predict", "max_tokens"),
                            "prompt")
    n_probs = f.integer("n_probs", 0, 0, MAX_LOGPROBS)
    job.logprobs = n_probs if n_probs > 0 else None
    model = model_id(llm)

    def final(content: str, r: Result) -> dict:
        return {"content": content, "id_slot": r.slot, "stop": True, "model": model,
                "tokens_predicted": r.generated_tokens, "tokens_evaluated": r.prompt_tokens,
                "tokens_cached": r.cached_tokens, "generation_settings": settings(state),
                "stop_type": r.stop.stop_type, "stopping_word": r.stopping_word,
                "stopped_eos": r.stop.stop_type == "eos", "stopped_word": r.stop.stop_type == "word",
                "stopped_limit": r.stop.stop_type == "limit", "truncated": r.truncated, "timings": r.timings()}

    if not f.boolean("stream", False):
        text, tokens, r, _ = await collect(state, job, request)
        if r is None:
            return Response(status_code=204)
        out = final(text, r)
        out["tokens"] = [t.id for t in tokens if t.id >= 0]
        if job.logprobs:
            out["completion_probabilities"] = [probs_entry(llm.tokenizer, t.id, t.logprob, t.top_logprobs)
                                               for t in tokens if t.id >= 0]
        return JSONResponse(out)

    def render(kind: str, v: Any) -> list[dict]:
        if kind == "progress":
            return [{"content": "", "stop": False, "prompt_progress": v}]
        if kind == "token":
            out = {"content": v.text, "stop": False, "tokens": [v.id] if v.id >= 0 else []}
            if job.logprobs and v.id >= 0:
                out["completion_probabilities"] = [probs_entry(llm.tokenizer, v.id, v.logprob, v.top_logprobs)]
            return [out]
        return [final("", v)] if kind == "done" else []

    return stream(state, job, render, done=False)


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
            "chat_template": llm.chat_format.template or "gemma (built in)",
            "has_chat_template": bool(llm.has_chat_template),
            "modalities": {"vision": bool(getattr(llm, "has_vision", False))},
            "build_info": f"gemma-runner {__version__}", "api_key_required": bool(state.options.api_key)}


def slots(state: State) -> list[dict]:
    return [{"id": s.id, "is_processing": s.busy, "n_ctx": s.engine.n_ctx, "n_cached": len(s.engine.ids)}
            for s in state.pool.slots]
