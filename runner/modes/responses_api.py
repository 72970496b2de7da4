"""OpenAI's Responses API, stateless (as llama-server and Ollama offer it): POST /v1/responses.

The request becomes chat messages (`instructions` the system message, `input` a string
or message items with input_text and input_image parts) and the chat-completions fields
request_job reads; the reply is one output message. Nothing is stored, so
`previous_response_id`, `store: true`, `background` and `conversation` are refused
with a 400, as are `tools` and `text.format` json_schema until tool calls and
structured output exist.

A stream sends OpenAI's named events, each with its sequence_number:
    response.created, response.in_progress, response.output_item.added,
    response.content_part.added, response.output_text.delta (per piece of text),
    response.output_text.done, response.content_part.done, response.output_item.done,
    response.completed (or response.incomplete at the token limit).
"""
from __future__ import annotations

import time
import uuid
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..chat import ChatError
from ..generation import Result
from .api_common import (APIError, Fields, State, bad, collect, max_tokens, parse_json, request_job,
                         sampling_fields, sse_event, stream)

ROLES = {"user": "user", "system": "system", "developer": "system", "assistant": "assistant"}
REFUSED = {"previous_response_id": "this server keeps no responses: send the whole conversation as 'input'",
           "conversation": "this server keeps no conversations: send the whole conversation as 'input'",
           "prompt": "stored prompt templates are not supported: send 'input' and 'instructions'"}


def _id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


# -- the request ------------------------------------------------------------------------------

def _part(part: Any, where: str, role: str) -> dict:
    """One content part of an input message, as a chat-completions part."""
    if not isinstance(part, dict):
        raise bad(f"'{where}' must be an object with a 'type'", "input")
    kind = part.get("type")
    if kind in ("input_text", "output_text"):
        if not isinstance(part.get("text"), str):
            raise bad(f"'{where}.text' must be a string", "input")
        return {"type": "text", "text": part["text"]}
    if kind == "input_image" and role != "assistant":
        url = part.get("image_url")
        if not isinstance(url, str):
            raise bad(f"'{where}': an input_image needs 'image_url', a data: URI (file_id is not supported)", "input")
        return {"type": "image_url", "image_url": {"url": url}}
    if kind == "refusal":
        return {"type": "text", "text": str(part.get("refusal", ""))}
    allowed = "output_text or refusal" if role == "assistant" else "input_text or input_image"
    raise bad(f"'{where}.type' must be {allowed} in a {role} message, got {kind!r}", "input")


def messages_of(f: Fields) -> list[dict]:
    """`instructions` and `input` as chat messages."""
    out = []
    instructions = f.string("instructions")
    if instructions:
        out.append({"role": "system", "content": instructions})
    items = f.raw("input")
    if isinstance(items, str):
        return out + [{"role": "user", "content": items}]
    if not isinstance(items, list) or not items:
        raise bad("'input' must be a string or a non-empty array of message items", "input")
    for i, item in enumerate(items):
        where = f"input[{i}]"
        if not isinstance(item, dict):
            raise bad(f"'{where}' must be a message object", "input")
        if item.get("type", "message") != "message":
            kind = item.get("type")
            why = "tool calls are not supported by this server" if "call" in str(kind) else "only message items are"
            raise bad(f"'{where}': item type {kind!r} is not supported ({why})", "input")
        role = ROLES.get(item.get("role"))
        if role is None:
            raise bad(f"'{where}.role' must be user, system, developer or assistant, got {item.get('role')!r}",
                      "input")
        content = item.get("content")
        if isinstance(content, str):
            out.append({"role": role, "content": content})
        elif isinstance(content, list):
            out.append({"role": role, "content": [_part(p, f"{where}.content[{j}]", role)
                                                  for j, p in enumerate(content)]})
        else:
            raise bad(f"'{where}.content' must be a string or an array of parts", "input")
    return out


def text_format(f: Fields) -> dict:
    """`text.format` (text or json_object) as a chat-completions response_format."""
    fmt = (f.obj("text") or {}).get("format") or {"type": "text"}
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "json_schema":
        raise bad("text.format 'json_schema' is not supported yet; use {\"type\": \"json_object\"}", "text.format")
    if kind not in ("text", "json_object"):
        raise bad(f"text.format type must be 'text' or 'json_object', got {kind!r}", "text.format")
    return {"type": kind}


def check_refused(f: Fields) -> None:
    for name, why in REFUSED.items():
        if f.has(name):
            raise bad(f"'{name}' is not supported: {why}", name)
    if f.boolean("store", False):
        raise bad("'store': true is not supported: this server keeps no responses (send store: false)", "store")
    if f.boolean("background", False):
        raise bad("'background': true is not supported: responses are answered while the client waits", "background")
    if f.raw("tools"):
        raise bad("tools (function calling) are not supported by this server yet", "tools")


# -- the response -----------------------------------------------------------------------------

def usage(r: Result) -> dict:
    return {"input_tokens": r.prompt_tokens, "input_tokens_details": {"cached_tokens": r.cached_tokens},
            "output_tokens": r.generated_tokens, "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": r.prompt_tokens + r.generated_tokens}


def output_text(text: str) -> dict:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


async def create(state: State, request: Request) -> Response:
    f = Fields(parse_json(await request.body()))
    check_refused(f)
    if not f.has("input"):
        raise bad("'input' (a string or an array of message items) is required", "input")
    messages = messages_of(f)
    fmt = text_format(f)
    metadata = f.obj("metadata") or {}
    limit = max_tokens(f, state.options.n_predict, "max_output_tokens")
    if limit is not None and limit < 1:
        raise bad(f"'max_output_tokens' must be >= 1, got {limit}", "max_output_tokens")
    try:
        prompt = await run_in_threadpool(state.chat_prompt, messages)
    except (ChatError, ValueError, TypeError) as e:
        raise bad(f"input: {e}", "input") from None
    job = await request_job(state, sampling_fields(f, response_format=fmt), prompt, limit, "input")
    p = job.params
    resp_id, msg_id, created = _id("resp"), _id("msg"), int(time.time())

    def response(status: str, output: list[dict], r: Result | None = None) -> dict:
        return {"id": resp_id, "object": "response", "created_at": created, "status": status, "error": None,
                "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
                "instructions": f.string("instructions"), "max_output_tokens": limit,
                "model": f.string("model") or state.model_id, "output": output,
                "parallel_tool_calls": True, "previous_response_id": None,
                "reasoning": {"effort": None, "summary": None}, "store": False, "temperature": p.temperature,
                "text": {"format": fmt}, "tool_choice": "auto", "tools": [], "top_p": p.top_p,
                "truncation": "disabled", "usage": usage(r) if r else None, "user": None,
                "metadata": metadata}

    def message(status: str, content: list[dict]) -> dict:
        return {"id": msg_id, "type": "message", "status": status, "role": "assistant", "content": content}

    def status_of(r: Result) -> str:
        return "incomplete" if r.finish_reason == "length" else "completed"

    if not f.boolean("stream", False):
        text, _, r, _ = await collect(state, job, request)
        if r is None:
            return Response(status_code=204)        # the client left
        return JSONResponse(response(status_of(r), [message(status_of(r), [output_text(text)])], r))

    seq = iter(range(1 << 62))

    def event(kind: str, **fields: Any) -> dict:
        return {"type": kind, "sequence_number": next(seq), **fields}

    where = {"item_id": msg_id, "output_index": 0, "content_index": 0}
    opening = [event("response.created", response=response("in_progress", [])),
               event("response.in_progress", response=response("in_progress", [])),
               event("response.output_item.added", output_index=0, item=message("in_progress", [])),
               event("response.content_part.added", **where, part=output_text(""))]

    def render(kind: str, v: Any) -> list[dict]:
        if kind == "token" and v.text:
            return [event("response.output_text.delta", **where, delta=v.text, logprobs=[])]
        if kind == "done":
            status, part = status_of(v), output_text(v.text)
            item = message(status, [part])
            return [event("response.output_text.done", **where, text=v.text, logprobs=[]),
                    event("response.content_part.done", **where, part=part),
                    event("response.output_item.done", output_index=0, item=item),
                    event(f"response.{status}", response=response(status, [item], v))]
        return []

    def error(e: Exception) -> list[dict]:
        text = e.message if isinstance(e, APIError) else "the server failed while generating; see its log"
        code = (e.code if isinstance(e, APIError) else None) or "server_error"
        failed = {**response("failed", []), "error": {"code": code, "message": text}}
        return [event("error", code=code, message=text, param=None),
                event("response.failed", response=failed)]

    return stream(state, job, render, opening, done=False, frame=sse_event, error=error)
