"""llama.cpp's native endpoints: POST /completion, /tokenize, /detokenize; GET /props,
/slots. Shapes follow llama.cpp's server so that its clients (and llamafile's) work."""
from __future__ import annotations

import math
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .. import __version__
from ..chat import ChatError, render_prefilled
from ..generation import Result
from ..sampling import OPTIONS, SamplingParams
from .api_common import (MAX_LOGPROBS, Fields, State, bad, collect, completion_prompt, finite, max_tokens,
                         request_json, request_job, stream, token_piece)


def probs_entry(tokenizer, tok: int, lp: float, top) -> dict:
    """llama.cpp's completion_probabilities entry for one generated token."""
    def one(i: int, v: float) -> dict:
        s, b = token_piece(tokenizer, i)
        return {"id": i, "token": s, "logprob": finite(v), "bytes": b}
    return {**one(tok, lp), "top_logprobs": [one(i, v) for i, v in top or ()]}


SAMPLERS = ["penalties", "top_k", "typ_p", "top_p", "min_p", "temperature"]   # our chain, in llama.cpp's names


def generation_settings(state: State, p: SamplingParams, n_predict: int | None, stop: list[str] = (),
                        ignore_eos: bool = False, stream: bool = False, n_probs: int = 0,
                        full: bool = True) -> dict:
    """llama-server's task_params JSON: the sampling options by their names, the token
    limit (-1: none), and with `full` (a reply's generation_settings, not /props') the
    stop strings and the logit bias as [{"bias", "token"}] (a ban: null, as its -inf)."""
    out: dict[str, Any] = {"seed": -1 if p.seed is None else p.seed}
    out.update({name: getattr(p, name) for name, opt in OPTIONS.items() if opt.type in ("int", "float")})
    n = -1 if n_predict is None else n_predict
    out.update(max_tokens=n, n_predict=n, n_keep=state.llm.engine.config.n_keep, ignore_eos=ignore_eos,
               stream=stream, n_probs=n_probs, samplers=SAMPLERS)
    if full:
        out.update(stop=list(stop), logit_bias=[{"bias": b if math.isfinite(b) else None, "token": t}
                                                for t, b in p.logit_bias.items()])
    return out


async def completion(state: State, request: Request) -> Response:
    f = Fields(await request_json(request))
    llm = state.llm
    prompt, prompt_text, _ = await run_in_threadpool(completion_prompt, state, f)
    job = await request_job(state, f, prompt, max_tokens(f, state.options.n_predict, "n_predict", "max_tokens"),
                            "prompt")
    n_probs = f.integer("n_probs", 0, 0, MAX_LOGPROBS)
    job.logprobs = n_probs if n_probs > 0 else None
    model, streamed, return_tokens = state.model_id, f.boolean("stream", False), f.boolean("return_tokens", False)
    used = generation_settings(state, job.params, job.max_tokens, job.stop, job.ignore_eos, streamed, n_probs)
    if prompt_text is None:
        prompt_text = await run_in_threadpool(llm.detokenize, prompt.tokens)
    new_line = False                                    # has the reply begun a new line

    def final(content: str, tokens: list[int], r: Result) -> dict:
        return {"index": 0, "content": content, "tokens": tokens, "id_slot": r.slot, "stop": True, "model": model,
                "tokens_predicted": r.generated_tokens, "tokens_evaluated": r.prompt_tokens,
                "generation_settings": used, "prompt": prompt_text, "has_new_line": new_line,
                "truncated": r.truncated, "stop_type": r.stop.stop_type, "stopping_word": r.stopping_word,
                "tokens_cached": r.cached_tokens, "stopped_eos": r.stop.stop_type == "eos",
                "stopped_word": r.stop.stop_type == "word", "stopped_limit": r.stop.stop_type == "limit",
                "timings": r.timings()}

    if not streamed:
        text, tokens, r, _ = await collect(state, job, request)
        if r is None:
            return Response(status_code=204)
        new_line = "\n" in text
        out = final(text, [t.id for t in tokens if t.id >= 0] if return_tokens else [], r)
        if job.logprobs:
            out["completion_probabilities"] = [probs_entry(llm.tokenizer, t.id, t.logprob, t.top_logprobs)
                                               for t in tokens if t.id >= 0]
        return JSONResponse(out)

    def render(kind: str, v: Any) -> list[dict]:
        nonlocal new_line
        if kind == "progress":
            return [{"content": "", "stop": False, "prompt_progress": v}]
        if kind == "token":
            new_line = new_line or "\n" in v.text
            out = {"content": v.text, "stop": False, "tokens": [v.id] if v.id >= 0 else []}
            if job.logprobs and v.id >= 0:
                out["completion_probabilities"] = [probs_entry(llm.tokenizer, v.id, v.logprob, v.top_logprobs)]
            return [out]
        return [final("", [], v)] if kind == "done" else []

    return stream(state, job, render, done=False)


async def tokenize(state: State, request: Request) -> Response:
    f = Fields(await request_json(request))
    content = f.string("content")
    if content is None:
        raise bad("'content' (the text to tokenize) is required", "content")
    llm = state.llm
    ids = await run_in_threadpool(llm.tokenize, content, f.boolean("add_special", False),
                                  f.boolean("parse_special", True))
    if not f.boolean("with_pieces", False):
        return JSONResponse({"tokens": ids})
    return JSONResponse({"tokens": [{"id": i, "piece": token_piece(llm.tokenizer, i)[0]} for i in ids]})


async def apply_template(state: State, request: Request) -> Response:
    """llama-server's POST /apply-template: the chat prompt `messages` make, as text
    (an image as <start_of_image>), without generating."""
    f = Fields(await request_json(request))
    messages = f.raw("messages")
    if not isinstance(messages, list) or not messages:
        raise bad("'messages' must be a non-empty array of messages", "messages")
    try:
        pieces = await run_in_threadpool(render_prefilled, messages, state.llm.chat_template)
    except (ChatError, ValueError, TypeError) as e:
        raise bad(f"messages: {e}", "messages") from None
    return JSONResponse({"prompt": "".join(p if isinstance(p, str) else "<start_of_image>" for p in pieces)})


async def detokenize(state: State, request: Request) -> Response:
    f = Fields(await request_json(request))
    ids = f.token_ids("tokens", f.raw("tokens", []), state.llm.n_vocab)
    return JSONResponse({"content": state.llm.detokenize(ids)})


def props(state: State) -> dict:
    llm = state.llm
    o = state.options
    settings = {"params": generation_settings(state, o.sampling, o.n_predict, full=False),
                "n_ctx": state.pool.slots[0].engine.n_ctx}          # a slot's context (llama-server's n_ctx_slot)
    return {"default_generation_settings": settings, "total_slots": len(state.pool.slots),
            "model": state.model_id, "model_alias": state.model_id, "model_name": llm.name,
            "model_path": state.options.model_path,
            "n_ctx": llm.n_ctx, "n_vocab": llm.n_vocab,
            "chat_template": llm.chat_format.template or "gemma (built in)",
            "has_chat_template": bool(llm.has_chat_template),
            "modalities": {"vision": bool(getattr(llm, "has_vision", False))},
            "build_info": f"gemma-runner {__version__}", "api_key_required": bool(state.options.api_key)}


def slots(state: State) -> list[dict]:
    return [{"id": s.id, "is_processing": s.busy, "n_ctx": s.engine.n_ctx, "n_cached": len(s.engine.ids)}
            for s in state.pool.slots]
