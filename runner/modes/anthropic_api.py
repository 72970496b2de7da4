"""Anthropic's Messages API: POST /v1/messages and /v1/messages/count_tokens, so that the
`anthropic` SDK (and tools that take ANTHROPIC_BASE_URL) can use the local model.

The request becomes chat messages (`system` as a string or text blocks; text and base64
image blocks) and the chat-completions fields request_job reads (`stop_sequences`,
`max_tokens`, temperature, top_p, top_k). Every error on these routes is Anthropic's
shape, `{"type": "error", "error": {"type", "message"}}`: the server's layers answer in
OpenAI's, and `ErrorShape`, a middleware outside them all, rewrites those answers here
(the key check's 401, validation's 400, unknown routes, 503 while loading). The key may
come as `x-api-key`.

Custom `tools` ({"name", "description", "input_schema"}) and `tool_choice` (auto, any,
tool, none; disable_parallel_tool_use) are constrained as in chat completions
(structured/tools.py): calls come back as tool_use blocks with stop_reason "tool_use";
an assistant's tool_use blocks and a user's tool_result blocks render as chat tool calls
and tool messages.

A stream sends Anthropic's named events: message_start, content_block_start, ping,
content_block_delta (per piece of text, or input_json_delta per piece of a call's input),
content_block_stop (per block), message_delta (stop_reason, usage), message_stop; an
error once it began is an `error` event.
"""
from __future__ import annotations

import json
import uuid
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..chat import ChatError
from ..engine import Prompt
from ..generation import Result, Stop
from ..structured.tools import CallParser, ToolError, ToolSpec, parse_tools, parser_mode
from .api_common import (APIError, Fields, State, bad, collect, request_json, request_job, sampling_fields,
                         sse_event, stream)

PREFIX = "/v1/messages"
# Anthropic's error type for each status (docs: "Errors"); other 4xx: invalid_request_error,
# 5xx: api_error
ERROR_TYPES = {401: "authentication_error", 403: "permission_error", 404: "not_found_error",
               413: "request_too_large", 429: "rate_limit_error", 503: "overloaded_error", 529: "overloaded_error"}


def owns(path: str) -> bool:
    return path == PREFIX or path.startswith(PREFIX + "/")


def error_body(status: int, message: str, server_failed: bool = False) -> dict:
    """`server_failed`: an unexpected failure (OpenAI's server_error), not a busy server."""
    kind = "api_error" if server_failed else \
        ERROR_TYPES.get(status, "invalid_request_error" if status < 500 else "api_error")
    return {"type": "error", "error": {"type": kind, "message": message}}


def translate(status: int, raw: bytes) -> bytes:
    """An error answer's body (OpenAI's shape, or anything else) in Anthropic's shape."""
    try:
        body = json.loads(raw)
    except ValueError:
        body = None
    err = body.get("error") if isinstance(body, dict) else None
    if isinstance(body, dict) and body.get("type") == "error":
        return raw                                # already Anthropic's
    if isinstance(err, dict) and isinstance(err.get("message"), str):
        out = error_body(status, err["message"], err.get("type") == "server_error")
    else:
        out = error_body(status, raw.decode("utf-8", "replace").strip() or f"HTTP {status}")
    return json.dumps(out).encode()


class ErrorShape:
    """ASGI middleware: under /v1/messages, an error answer (status >= 400) from any layer
    gets Anthropic's body; everything else, streams included, passes untouched."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or not owns(scope["path"]):
            return await self.app(scope, receive, send)
        held: dict | None = None                  # an error's response start, sent with its new body
        body = bytearray()

        async def rewrite(message) -> None:
            nonlocal held
            if message["type"] == "http.response.start" and message["status"] >= 400:
                held = message
                return
            if held is None or message["type"] != "http.response.body":
                return await send(message)
            body.extend(message.get("body", b""))
            if message.get("more_body", False):
                return
            new = translate(held["status"], bytes(body))
            headers = [(k, v) for k, v in held.get("headers", []) if k.lower() not in (b"content-length",
                                                                                         b"content-type")]
            headers += [(b"content-type", b"application/json"), (b"content-length", str(len(new)).encode())]
            await send({**held, "headers": headers})
            await send({"type": "http.response.body", "body": new})

        await self.app(scope, receive, rewrite)


# -- the request ------------------------------------------------------------------------------

def _block(block: Any, where: str) -> dict | None:
    """One content block as a chat-completions part (None: a block to leave out)."""
    if not isinstance(block, dict):
        raise bad(f"{where}: each content block must be an object with a 'type'")
    kind = block.get("type")
    if kind == "text":
        if not isinstance(block.get("text"), str):
            raise bad(f"{where}.text: expected a string")
        return {"type": "text", "text": block["text"]}
    if kind == "image":
        source = block.get("source")
        if not isinstance(source, dict) or source.get("type") != "base64":
            raise bad(f"{where}.source: only base64 images are supported (nothing is fetched from a URL)")
        media, data = source.get("media_type"), source.get("data")
        if not isinstance(media, str) or not isinstance(data, str):
            raise bad(f"{where}.source: a base64 image needs 'media_type' and 'data' strings")
        return {"type": "image_url", "image_url": {"url": f"data:{media};base64,{data}"}}
    if kind in ("thinking", "redacted_thinking"):
        return None                               # the model's own earlier reasoning: not read back
    if kind in ("tool_use", "tool_result"):
        raise bad(f"{where}: a {kind} block belongs in an {'assistant' if kind == 'tool_use' else 'user'} message")
    raise bad(f"{where}.type must be text or image, got {kind!r}")


def messages_of(f: Fields) -> list[dict]:
    """`system` and `messages` as chat messages."""
    out = []
    system = f.raw("system")
    if isinstance(system, list):
        parts = [_block(b, f"system[{i}]") for i, b in enumerate(system)]
        if any(p is None or p["type"] != "text" for p in parts):
            raise bad("system: only text blocks are allowed")
        system = "".join(p["text"] for p in parts)
    elif system is not None and not isinstance(system, str):
        raise bad("system: expected a string or an array of text blocks")
    if system:
        out.append({"role": "system", "content": system})
    messages = f.raw("messages")
    if not isinstance(messages, list) or not messages:
        raise bad("messages: expected a non-empty array of messages")
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict) or m.get("role") not in ("user", "assistant"):
            raise bad(f"{where}.role: expected 'user' or 'assistant' (the system prompt goes in 'system')")
        content = m.get("content")
        if isinstance(content, list):
            tool_messages = _tool_blocks(m["role"], content, where, out)
            content = [p for j, b in enumerate(content) if not _is_tool_block(b)
                       and (p := _block(b, f"{where}.content[{j}]")) is not None]
            if m["role"] == "assistant" and tool_messages:     # its text and its calls: one message
                text = "".join(p["text"] for p in content if p["type"] == "text")
                out.append({**tool_messages[0], "content": text or None})
                continue
            out += tool_messages                    # tool results answer the calls before the text
            if tool_messages and not content:
                continue
        elif not isinstance(content, str):
            raise bad(f"{where}.content: expected a string or an array of content blocks")
        out.append({"role": m["role"], "content": content})
    return out


def _is_tool_block(b: Any) -> bool:
    return isinstance(b, dict) and b.get("type") in ("tool_use", "tool_result")


def _tool_blocks(role: str, content: list, where: str, out: list) -> list[dict]:
    """An assistant's tool_use blocks as one message with tool_calls, a user's tool_result
    blocks as tool messages (an error result says so in its text)."""
    made = []
    for j, b in enumerate(content):
        if not _is_tool_block(b):
            continue
        at = f"{where}.content[{j}]"
        want = "tool_use" if role == "assistant" else "tool_result"
        if b["type"] != want:
            raise bad(f"{at}: a {b['type']} block belongs in an {'assistant' if role == 'user' else 'user'} message")
        if want == "tool_use":
            if not isinstance(b.get("id"), str) or not isinstance(b.get("name"), str) or \
                    not isinstance(b.get("input", {}), dict):
                raise bad(f"{at}: a tool_use block needs 'id', 'name' and an 'input' object")
            made.append({"id": b["id"], "type": "function",
                         "function": {"name": b["name"], "arguments": json.dumps(b.get("input", {}))}})
            continue
        use_id = b.get("tool_use_id")
        known = {c["id"] for m in out for c in m.get("tool_calls") or ()}
        if use_id not in known:
            raise bad(f"{at}.tool_use_id: no tool_use block before it has the id {use_id!r}")
        result = b.get("content", "")
        if isinstance(result, list):
            if not all(isinstance(x, dict) and x.get("type") == "text" for x in result):
                raise bad(f"{at}.content: only text blocks are supported in a tool result")
            result = "".join(str(x.get("text", "")) for x in result)
        if not isinstance(result, str):
            raise bad(f"{at}.content: expected a string or text blocks")
        made.append({"role": "tool", "tool_call_id": use_id, "content": ("Error: " if b.get("is_error") else "")
                     + result})
    if role == "assistant" and made:
        return [{"role": "assistant", "content": None, "tool_calls": made}]
    return made


def tool_spec(f: Fields) -> ToolSpec | None:
    """Anthropic's custom tools ({"name", "description", "input_schema"}) and tool_choice
    (auto, any, tool with a name, none; disable_parallel_tool_use), checked by the chat
    completions' rules with the errors naming Anthropic's fields."""
    tools, choice = f.raw("tools"), f.obj("tool_choice") or {"type": "auto"}
    if tools is None:
        if choice.get("type", "auto") not in ("auto", "none"):
            raise bad("tool_choice: needs 'tools'")
        return None
    if not isinstance(tools, list):
        raise bad("tools: expected an array of tools")
    chat = []
    for i, t in enumerate(tools):
        if not isinstance(t, dict) or t.get("type", "custom") != "custom":
            kind = t.get("type") if isinstance(t, dict) else None
            raise bad(f"tools[{i}].type: only custom tools (name, description, input_schema) are supported, "
                      f"got {kind!r}")
        if "input_schema" not in t:
            raise bad(f"tools[{i}].input_schema: this field is required")
        chat.append({"type": "function", "function": {"name": t.get("name"), "description": t.get("description", ""),
                                                      "parameters": t["input_schema"]}})
    kind = choice.get("type")
    named = {"type": "function", "function": {"name": choice.get("name")}}
    mapped = {"auto": "auto", "none": "none", "any": "required", "tool": named}.get(kind)
    if mapped is None:
        raise bad(f"tool_choice.type: expected auto, any, tool or none, got {kind!r}")
    parallel = choice.get("disable_parallel_tool_use", False)
    if not isinstance(parallel, bool):
        raise bad("tool_choice.disable_parallel_tool_use: expected true or false")
    try:
        return parse_tools(chat, mapped, not parallel)
    except ToolError as e:
        text = str(e).replace(".function.parameters", ".input_schema").replace(".function.", ".")
        raise bad(text.replace("'tool_choice': no tool", "'tool_choice.name': no tool")) from None


def check_unsupported(f: Fields) -> None:
    if (f.obj("output_config") or {}).get("format"):
        raise bad("output_config.format: structured outputs are not supported by this server yet")


async def prompt_of(state: State, f: Fields) -> tuple[Prompt, ToolSpec | None]:
    check_unsupported(f)
    messages = messages_of(f)
    tools = tool_spec(f)
    try:
        return await run_in_threadpool(state.chat_prompt, messages, tools), tools
    except (ChatError, ValueError, TypeError) as e:
        raise bad(f"messages: {e}") from None


# -- the routes -------------------------------------------------------------------------------

def stop_reason(r: Result) -> str:
    """Anthropic's stop_reason: a stop sequence, the token limit (or a full context), else
    the end of the turn."""
    return "stop_sequence" if r.stop is Stop.WORD else "max_tokens" if r.finish_reason == "length" else "end_turn"


def usage(r: Result) -> dict:
    """Anthropic counts cache reads apart from input tokens."""
    return {"input_tokens": r.prompt_tokens - r.cached_tokens, "cache_read_input_tokens": r.cached_tokens,
            "cache_creation_input_tokens": 0, "output_tokens": r.generated_tokens}


async def count_tokens(state: State, request: Request) -> Response:
    f = Fields(await request_json(request))
    prompt, _ = await prompt_of(state, f)
    return JSONResponse({"input_tokens": len(prompt)})


def tool_use(call: dict) -> dict:
    return {"type": "tool_use", "id": "toolu_" + call["id"].removeprefix("call_"), "name": call["name"],
            "input": json.loads(call["arguments"] or "{}")}


async def messages(state: State, request: Request) -> Response:
    f = Fields(await request_json(request))
    if not f.has("max_tokens"):
        raise bad("max_tokens: this field is required")
    limit = f.integer("max_tokens", None, 1)
    stops = f.stop("stop_sequences")
    prompt, tools = await prompt_of(state, f)
    job = await request_job(state, sampling_fields(f, stop=stops), prompt, limit, "messages", tools)
    parser = CallParser(parser_mode(tools, False), tuple(fn.name for fn in tools.functions) if tools else ())
    head = {"id": f"msg_{uuid.uuid4().hex}", "type": "message", "role": "assistant",
            "model": f.string("model") or state.model_id}

    def ending(r: Result) -> dict:
        reason = "tool_use" if parser.calls and r.finish_reason == "stop" else stop_reason(r)
        return {"stop_reason": reason, "stop_sequence": r.stopping_word or None}

    if not f.boolean("stream", False):
        text, _, r, _ = await collect(state, job, request)
        if r is None:
            return Response(status_code=204)        # the client left
        parser.feed(text)
        parser.close()
        if parser.calls and r.finish_reason == "stop":
            content = [tool_use(c) for c in parser.calls]
        else:
            content = [{"type": "text", "text": text}]
        return JSONResponse({**head, "content": content, **ending(r), "usage": usage(r)})

    text_block = {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}
    lazy = tools is not None and tools.calls       # a text block, or calls: known from the reply
    opening = [{"type": "message_start",
                "message": {**head, "content": [], "stop_reason": None, "stop_sequence": None,
                            "usage": {"input_tokens": len(prompt), "output_tokens": 0}}},
               *([] if lazy else [text_block]), {"type": "ping"}]
    blocks = 0 if lazy else 1                       # content blocks opened

    def pieces(events: list[tuple]) -> list[dict]:
        nonlocal blocks
        out = []
        for e in events:
            if e[0] == "content":
                if not blocks:
                    blocks = 1
                    out.append(text_block)
                out.append({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": e[1]}})
            elif e[0] == "call":
                out += [{"type": "content_block_stop", "index": blocks - 1}] if blocks else []
                blocks += 1
                block = {"type": "tool_use", "id": "toolu_" + e[2].removeprefix("call_"), "name": e[3], "input": {}}
                out.append({"type": "content_block_start", "index": e[1], "content_block": block})
            else:
                out.append({"type": "content_block_delta", "index": e[1],
                            "delta": {"type": "input_json_delta", "partial_json": e[2]}})
        return out

    def render(kind: str, v: Any) -> list[dict]:
        if kind == "token" and v.text:
            return pieces(parser.feed(v.text) if lazy else [("content", v.text)])
        if kind == "done":
            out = pieces(parser.close()) if lazy else []
            if not blocks:
                out += pieces([("content", "")])
            return out + [{"type": "content_block_stop", "index": blocks - 1},
                          {"type": "message_delta", "delta": ending(v), "usage": usage(v)},
                          {"type": "message_stop"}]
        return []

    def error(e: Exception) -> list[dict]:
        if isinstance(e, APIError):
            return [error_body(e.status, e.message)]
        return [error_body(500, "the server failed while generating; see its log")]

    return stream(state, job, render, opening, done=False, frame=sse_event, error=error)
