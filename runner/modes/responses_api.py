"""OpenAI's Responses API, stateless (as llama-server and Ollama offer it): POST /v1/responses.

The request becomes chat messages (`instructions` the system message, `input` a string
or message items with input_text and input_image parts, function_call and
function_call_output items as an assistant's tool calls and tool messages) and the
chat-completions fields request_job reads. The reply is one output message, or one
function_call item per call. Function `tools` and `tool_choice` take the Responses API's
flat shape and are constrained as in chat completions (structured/tools.py), as is
`text.format` json_schema. Nothing is stored, so `previous_response_id`, `store: true`,
`background` and `conversation` are refused with a 400.

A stream sends OpenAI's named events, each with its sequence_number:
    response.created, response.in_progress, response.output_item.added,
    response.content_part.added, response.output_text.delta (per piece of text),
    response.output_text.done, response.content_part.done, response.output_item.done,
    response.completed (or response.incomplete at the token limit);
for calls, per call: response.output_item.added, response.function_call_arguments.delta
..., response.function_call_arguments.done, response.output_item.done.
"""
from __future__ import annotations

import re
import time
import uuid
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..chat import ChatError
from ..generation import Result
from ..structured.tools import CallParser, ToolError, ToolSpec, parse_tools, parser_mode
from .api_common import (APIError, Fields, State, bad, collect, max_tokens, request_json, request_job,
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
        kind = item.get("type", "message")
        if kind in ("function_call", "function_call_output"):
            out.append(_tool_item(item, where, out))
            continue
        if kind != "message":
            raise bad(f"'{where}': item type {kind!r} is not supported (message, function_call and "
                      f"function_call_output items are)", "input")
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
    return [m for m in out if m is not None]


def _tool_item(item: dict, where: str, out: list) -> dict | None:
    """A function_call item as an assistant message's tool call (joining the previous
    message when that holds calls too: parallel calls), a function_call_output as a
    tool message; None when it joined."""
    call_id = item.get("call_id")
    if not isinstance(call_id, str) or not call_id:
        raise bad(f"'{where}.call_id' must be a string", "input")
    if item["type"] == "function_call_output":
        made = {c["id"] for m in out if m is not None for c in m.get("tool_calls") or ()}
        if call_id not in made:
            raise bad(f"'{where}': no function_call item before it has call_id {call_id!r}", "input")
        output = item.get("output")
        if isinstance(output, list):
            output = "".join(p.get("text", "") for p in output if isinstance(p, dict) and p.get("type") == "input_text")
        if not isinstance(output, str):
            raise bad(f"'{where}.output' must be a string", "input")
        return {"role": "tool", "tool_call_id": call_id, "content": output}
    name, args = item.get("name"), item.get("arguments", "{}")
    if not isinstance(name, str) or not isinstance(args, str):
        raise bad(f"'{where}' needs 'name' and 'arguments' (a JSON string)", "input")
    call = {"id": call_id, "type": "function", "function": {"name": name, "arguments": args}}
    if out and out[-1] is not None and out[-1].get("role") == "assistant" and out[-1].get("tool_calls"):
        out[-1]["tool_calls"].append(call)
        return None
    return {"role": "assistant", "content": None, "tool_calls": [call]}


def tool_spec(f: Fields) -> ToolSpec | None:
    """The Responses API's flat function tools ({"type": "function", "name", "parameters"})
    and tool_choice ({"type": "function", "name"} when named), checked by the chat
    completions' rules with the errors naming the Responses fields."""
    tools, choice = f.raw("tools"), f.raw("tool_choice")
    if tools is not None and not isinstance(tools, list):
        raise bad("'tools' must be an array of function tools", "tools")
    chat = []
    for i, t in enumerate(tools or []):
        if not isinstance(t, dict) or t.get("type") != "function":
            kind = t.get("type") if isinstance(t, dict) else None
            raise bad(f"'tools[{i}]': only function tools are supported, got type {kind!r}", "tools")
        chat.append({"type": "function", "function": {k: v for k, v in t.items() if k != "type"}})
    if isinstance(choice, dict):
        if choice.get("type") != "function":
            raise bad(f"'tool_choice' must be auto, none, required or {{\"type\": \"function\", \"name\": ...}}, "
                      f"got type {choice.get('type')!r}", "tool_choice")
        choice = {"type": "function", "function": {"name": choice.get("name")}}
    try:
        return parse_tools(chat or tools, choice, f.body.get("parallel_tool_calls"))
    except ToolError as e:
        raise bad(str(e).replace(".function.", "."), e.param.replace(".function.", ".")) from None


def text_format(f: Fields) -> tuple[dict, dict]:
    """`text.format` (text, json_object, or json_schema in the Responses API's flat shape
    {"type", "name", "schema", "strict"}): (the chat-completions response_format, the
    format the response echoes)."""
    fmt = (f.obj("text") or {}).get("format") or {"type": "text"}
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind in ("text", "json_object"):
        return {"type": kind}, {"type": kind}
    if kind != "json_schema":
        raise bad(f"text.format type must be 'text', 'json_object' or 'json_schema', got {kind!r}", "text.format")
    name = fmt.get("name", "response")
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", name):
        raise bad("'text.format.name' must be 1-64 letters, digits, '_' or '-'", "text.format")
    if not isinstance(fmt.get("strict", False), bool):
        raise bad("'text.format.strict' must be true or false", "text.format")
    if "schema" not in fmt:
        raise bad("'text.format.schema' is required with type 'json_schema'", "text.format")
    if not isinstance(fmt.get("description", ""), str):
        raise bad("'text.format.description' must be a string", "text.format")
    js = {"name": name, "schema": fmt["schema"], "strict": fmt.get("strict", False)}
    return {"type": "json_schema", "json_schema": js}, {"type": "json_schema", "description": None, **js,
                                                        **{k: v for k, v in fmt.items() if k == "description"}}


def check_refused(f: Fields) -> None:
    for name, why in REFUSED.items():
        if f.has(name):
            raise bad(f"'{name}' is not supported: {why}", name)
    if f.boolean("store", False):
        raise bad("'store': true is not supported: this server keeps no responses (send store: false)", "store")
    if f.boolean("background", False):
        raise bad("'background': true is not supported: responses are answered while the client waits", "background")


# -- the response -----------------------------------------------------------------------------

def usage(r: Result) -> dict:
    return {"input_tokens": r.prompt_tokens, "input_tokens_details": {"cached_tokens": r.cached_tokens},
            "output_tokens": r.generated_tokens, "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": r.prompt_tokens + r.generated_tokens}


def output_text(text: str) -> dict:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def function_call(call: dict, status: str = "completed") -> dict:
    """A call the reply made, as a Responses output item (call_id is what the
    function_call_output item answers)."""
    return {"id": "fc_" + call["id"].removeprefix("call_"), "type": "function_call", "status": status,
            "call_id": call["id"], "name": call["name"], "arguments": call["arguments"]}


async def create(state: State, request: Request) -> Response:
    f = Fields(await request_json(request))
    check_refused(f)
    if not f.has("input"):
        raise bad("'input' (a string or an array of message items) is required", "input")
    messages = messages_of(f)
    tools = tool_spec(f)
    response_format, fmt = text_format(f)
    metadata = f.obj("metadata") or {}
    limit = max_tokens(f, state.options.n_predict, "max_output_tokens")
    if limit is not None and limit < 1:
        raise bad(f"'max_output_tokens' must be >= 1, got {limit}", "max_output_tokens")
    try:
        prompt = await run_in_threadpool(state.chat_prompt, messages, tools)
    except (ChatError, ValueError, TypeError) as e:
        raise bad(f"input: {e}", "input") from None
    job = await request_job(state, sampling_fields(f, response_format=response_format), prompt, limit, "input",
                            tools, schema_param="text.format")
    p = job.params
    names = tuple(fn.name for fn in tools.functions) if tools else ()
    parser = CallParser(parser_mode(tools, response_format["type"] != "text"), names)
    resp_id, msg_id, created = _id("resp"), _id("msg"), int(time.time())
    echo_tools = [{"type": "function", "name": fn.name, "description": fn.description, "parameters": fn.parameters,
                   "strict": False} for fn in tools.functions] if tools else []
    echo_choice = f.raw("tool_choice") or "auto"

    def response(status: str, output: list[dict], r: Result | None = None) -> dict:
        return {"id": resp_id, "object": "response", "created_at": created, "status": status, "error": None,
                "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
                "instructions": f.string("instructions"), "max_output_tokens": limit,
                "model": f.string("model") or state.model_id, "output": output,
                "parallel_tool_calls": tools.parallel if tools else True, "previous_response_id": None,
                "reasoning": {"effort": None, "summary": None}, "store": False, "temperature": p.temperature,
                "text": {"format": fmt}, "tool_choice": echo_choice, "tools": echo_tools, "top_p": p.top_p,
                "truncation": "disabled", "usage": usage(r) if r else None, "user": None,
                "metadata": metadata}

    def message(status: str, content: list[dict]) -> dict:
        return {"id": msg_id, "type": "message", "status": status, "role": "assistant", "content": content}

    def status_of(r: Result) -> str:
        return "incomplete" if r.finish_reason == "length" else "completed"

    def output(r: Result, text: str) -> list[dict]:
        status = status_of(r)
        if parser.calls:
            return [function_call(c, status) for c in parser.calls]
        return [message(status, [output_text(text)])]

    if not f.boolean("stream", False):
        text, _, r, _ = await collect(state, job, request)
        if r is None:
            return Response(status_code=204)        # the client left
        parser.feed(text)
        parser.close()
        return JSONResponse(response(status_of(r), output(r, text), r))

    seq = iter(range(1 << 62))
    opened: list[str] = []                          # "message", or a call per output item

    def event(kind: str, **fields: Any) -> dict:
        return {"type": kind, "sequence_number": next(seq), **fields}

    where = {"item_id": msg_id, "output_index": 0, "content_index": 0}
    opening = [event("response.created", response=response("in_progress", [])),
               event("response.in_progress", response=response("in_progress", []))]

    def open_message() -> list[dict]:
        opened.append("message")
        return [event("response.output_item.added", output_index=0, item=message("in_progress", [])),
                event("response.content_part.added", **where, part=output_text(""))]

    def close_call(status: str) -> list[dict]:
        """The last call's closing events, once its arguments are complete."""
        i, item = len(opened) - 1, function_call(parser.calls[len(opened) - 1], status)
        return [event("response.function_call_arguments.done", item_id=item["id"], output_index=i,
                      arguments=item["arguments"]),
                event("response.output_item.done", output_index=i, item=item)]

    def pieces(events: list[tuple]) -> list[dict]:
        out = []
        for e in events:
            if e[0] == "content":
                out += ([] if opened else open_message()) + \
                    [event("response.output_text.delta", **where, delta=e[1], logprobs=[])]
            elif e[0] == "call":
                out += close_call("completed") if opened else []
                opened.append("call")
                item = function_call({"id": e[2], "name": e[3], "arguments": ""}, "in_progress")
                out.append(event("response.output_item.added", output_index=e[1], item=item))
            else:
                out.append(event("response.function_call_arguments.delta", output_index=e[1],
                                 item_id="fc_" + parser.calls[e[1]]["id"].removeprefix("call_"), delta=e[2]))
        return out

    def render(kind: str, v: Any) -> list[dict]:
        if kind == "token" and v.text:
            return pieces(parser.feed(v.text))
        if kind == "done":
            out, status = pieces(parser.close()), status_of(v)
            if parser.calls:
                return out + close_call(status) + [event(f"response.{status}",
                                                         response=response(status, output(v, v.text), v))]
            out += [] if opened else open_message()
            part = output_text(v.text)
            item = message(status, [part])
            return out + [event("response.output_text.done", **where, text=v.text, logprobs=[]),
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
