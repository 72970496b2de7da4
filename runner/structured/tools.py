"""OpenAI tools (function calling) on a model without tool tokens: the prompt, the calls'
grammar, a constraint for `tool_choice: auto`, and the calls read back out of the text.

Gemma 3 has no tool tokens; Google documents prompt-based function calling instead
(https://ai.google.dev/gemma/docs/capabilities/function-calling): the functions are listed
as JSON in the prompt, after an instruction to answer with
`{"name": function name, "parameters": dictionary of argument name and its value}` and
nothing else, and the framework recognises a call by that structure. Results go back
wrapped in a ```tool_output``` block (Google's Gemma function-calling guide, "Beyond the
Chatbot", https://ai.google.dev/gemma/docs/meme-generator). That is the built-in format
here; a model whose Jinja template understands `tools` gets its template instead (chat.py),
and its calls are still constrained to the same JSON.

The decoder makes the structure certain: a call is `{"name": ..., "parameters": ...}` whose
parameters validate against that function's schema (several in a JSON list when
`parallel_tool_calls`); with `auto` the reply is either such calls, recognised by its first
character (`{` or `[`), or text, which may not start with one.
"""
from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np

from .automaton import State
from .constraint import Bound, SchemaConstraint, top_ids
from .schema import SchemaError, compile_schema
from .vocab import TokenVocab

NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")     # OpenAI's rule for function names
CALL_LEADS = (ord("{"), ord("["))               # the first characters of calls
INSTRUCTION = (
    "You have access to functions. If you decide to invoke any of the function(s),\n"
    "you MUST put it in the format of\n"
    '{"name": function name, "parameters": dictionary of argument name and its value}\n'
)
PARALLEL = "To call several functions at once, put the calls in a JSON list: [{...}, {...}]\n"
NO_TEXT = "You SHOULD NOT include any other text in the response if you call a function\n"


class ToolError(ValueError):
    """A malformed `tools`, `tool_choice` or tool message; `param` names the field."""

    def __init__(self, message: str, param: str):
        super().__init__(f"'{param}': {message}")
        self.param = param


@dataclass(frozen=True)
class Function:
    name: str
    description: str
    parameters: dict


@dataclass(frozen=True)
class ToolSpec:
    """A request's tools: the functions, `choice` ("auto", "none", "required" or a
    function's name) and whether several calls may come at once."""
    functions: tuple[Function, ...]
    choice: str = "auto"
    parallel: bool = True

    @property
    def calls(self) -> bool:
        return self.choice != "none"

    @property
    def forced(self) -> bool:
        """The reply must be calls (required, or a named function)."""
        return self.choice not in ("auto", "none")

    def openai(self) -> list[dict]:
        """The tools as OpenAI sends them (for templates that render `tools`)."""
        return [{"type": "function", "function": {"name": f.name, "description": f.description,
                                                  "parameters": f.parameters}} for f in self.functions]

    def prompt(self) -> str:
        """The built-in instruction and function list (Google's JSON variant), or "" when
        no call may be made."""
        if not self.calls:
            return ""
        funcs = [f for f in self.functions if self.choice in ("auto", "required", f.name)]
        text = INSTRUCTION + (PARALLEL if self.parallel and self.choice in ("auto", "required") else "") + NO_TEXT
        if self.choice == "required":
            text += "You MUST call one of the functions.\n"
        elif self.forced:
            text += f"You MUST call the function {self.choice}.\n"
        # the list as JSON, one function a line (Google's example indents it; this is the
        # same JSON in fewer tokens, which matters with many tools)
        defs = [json.dumps({"name": f.name, "description": f.description, "parameters": f.parameters},
                           ensure_ascii=False) for f in funcs]
        return text + "[\n" + ",\n".join(defs) + "\n]"

    def schema(self) -> dict:
        """The JSON Schema of the calls the reply may make. Each function's parameters sit
        under $defs, their own $refs rewritten to point there."""
        funcs = [(i, f) for i, f in enumerate(self.functions) if self.choice in ("auto", "required", f.name)]
        defs = {f"f{i}": _rebase(f.parameters, f"#/$defs/f{i}") for i, f in funcs}
        one = [{"type": "object", "properties": {"name": {"const": f.name}, "parameters": {"$ref": f"#/$defs/f{i}"}},
                "required": ["name", "parameters"], "additionalProperties": False} for i, f in funcs]
        call = one[0] if len(one) == 1 else {"anyOf": one}
        if self.parallel and self.choice in ("auto", "required"):
            call = {"anyOf": [call, {"type": "array", "items": call, "minItems": 1}]}
        return {**call, "$defs": defs}


def calls_or_schema(calls: dict, other: Any) -> dict:
    """One schema for "calls, or a value of `other`" (tool_choice auto beside a
    response_format): both under $defs, their references rebased."""
    return {"anyOf": [{"$ref": "#/$defs/calls"}, {"$ref": "#/$defs/reply"}],
            "$defs": {"calls": _rebase(calls, "#/$defs/calls"), "reply": _rebase(other, "#/$defs/reply")}}


def parser_mode(spec: ToolSpec | None, schema: bool) -> str:
    """How to read a reply (CallParser): "text", "calls" (it must be calls), "auto" (its
    first character tells) or "either" (calls, or a JSON value of the response schema:
    known once it is complete)."""
    if spec is None or not spec.calls:
        return "text"
    if spec.forced:
        return "calls"
    return "either" if schema else "auto"


def _rebase(schema: Any, base: str) -> Any:
    """A schema moved under `base`: its local $refs ("#/...") made to point there."""
    if isinstance(schema, dict):
        out = {}
        for k, v in schema.items():
            if k == "$ref" and isinstance(v, str) and (v == "#" or v.startswith("#/")):
                out[k] = base + v[1:]
            elif k in ("enum", "const", "default", "examples"):
                out[k] = v
            else:
                out[k] = _rebase(v, base)
        return out
    if isinstance(schema, list):
        return [_rebase(x, base) for x in schema]
    return schema


# -- the request's fields ------------------------------------------------------------------------

def parse_tools(tools: Any, tool_choice: Any = None, parallel: Any = None) -> ToolSpec | None:
    """OpenAI's `tools`, `tool_choice` and `parallel_tool_calls`, checked (ToolError naming
    the field); None when there are no tools."""
    if tools is None or tools == []:
        if tool_choice not in (None, "none", "auto"):
            raise ToolError("needs 'tools'", "tool_choice")
        return None
    if not isinstance(tools, list):
        raise ToolError("expected an array of tools", "tools")
    funcs, seen = [], set()
    for i, t in enumerate(tools):
        where = f"tools[{i}]"
        if not isinstance(t, dict) or t.get("type") != "function" or not isinstance(t.get("function"), dict):
            raise ToolError('expected {"type": "function", "function": {...}}', where)
        fn = t["function"]
        name = fn.get("name")
        if not isinstance(name, str) or not NAME.match(name):
            raise ToolError("must be 1-64 letters, digits, '_' or '-'", where + ".function.name")
        if name in seen:
            raise ToolError(f"the name {name!r} is used twice", where + ".function.name")
        seen.add(name)
        desc = fn.get("description", "")
        if not isinstance(desc, str):
            raise ToolError("expected a string", where + ".function.description")
        params = fn.get("parameters", {"type": "object", "properties": {}, "additionalProperties": False})
        if not isinstance(params, dict) or params.get("type", "object") != "object":
            raise ToolError('expected an object schema ({"type": "object", ...})', where + ".function.parameters")
        try:
            compile_schema(params)
        except SchemaError as e:
            raise ToolError(str(e), where + ".function.parameters") from None
        funcs.append(Function(name, desc, params))
    choice = "auto" if tool_choice is None else tool_choice
    if isinstance(choice, dict):
        fn = choice.get("function")
        if choice.get("type") != "function" or not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise ToolError('expected "auto", "none", "required" or {"type": "function", "function": '
                            '{"name": ...}}', "tool_choice")
        choice = fn["name"]
        if choice not in seen:
            raise ToolError(f"no tool is named {choice!r}", "tool_choice")
    elif choice not in ("auto", "none", "required"):
        raise ToolError('expected "auto", "none", "required" or a named function', "tool_choice")
    if parallel is not None and not isinstance(parallel, bool):
        raise ToolError("expected true or false", "parallel_tool_calls")
    return ToolSpec(tuple(funcs), choice, True if parallel is None else parallel)


# -- messages ---------------------------------------------------------------------------------

def _arguments(call: Any, where: str) -> tuple[str, Any]:
    if not isinstance(call, dict):
        raise ToolError("expected a tool call object", where)
    fn = call.get("function")
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
        raise ToolError('expected {"function": {"name": ..., "arguments": ...}}', where)
    args = fn.get("arguments", "{}")
    if isinstance(args, str):
        try:
            args = json.loads(args) if args.strip() else {}
        except json.JSONDecodeError:
            raise ToolError("not valid JSON", where + ".function.arguments") from None
    return fn["name"], args


def prepare_messages(messages: list, spec: ToolSpec | None, native: bool) -> list:
    """Messages ready for a template: `developer` is a system message; with `native` (the
    template renders tools itself) tool calls carry their arguments as objects; otherwise
    the tool prompt joins the system message, an assistant's calls become its text in the
    call format, and tool results become user text in ```tool_output``` blocks."""
    if not isinstance(messages, list):
        return messages
    out: list = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            out.append(m)
            continue
        role = m.get("role")
        m = {**m, "role": "system"} if role == "developer" else dict(m)
        calls = m.get("tool_calls")
        if calls is not None and not isinstance(calls, list):
            raise ToolError("expected an array", f"messages[{i}].tool_calls")
        parsed = [_arguments(c, f"messages[{i}].tool_calls[{j}]") for j, c in enumerate(calls or [])]
        if native:
            if parsed:
                m["tool_calls"] = [{**c, "function": {**c["function"], "arguments": a}}
                                   for c, (_, a) in zip(calls, parsed)]
            out.append(m)
            continue
        if role == "tool":
            block = f"```tool_output\n{_text(m.get('content'), i)}\n```"
            if out and out[-1].get("_tool_results"):
                out[-1]["content"] += "\n" + block
            else:
                out.append({"role": "user", "content": block, "_tool_results": True})
            continue
        if parsed:
            shown = [{"name": n, "parameters": a} for n, a in parsed]
            text = json.dumps(shown[0] if len(shown) == 1 else shown, ensure_ascii=False)
            content = _text(m.get("content"), i)
            m = {"role": m["role"], "content": (content + "\n" + text) if content else text}
        out.append(m)
    out = [{k: v for k, v in m.items() if k != "_tool_results"} if isinstance(m, dict) else m for m in out]
    block = spec.prompt() if spec is not None else ""
    if block and not native:
        if out and isinstance(out[0], dict) and out[0].get("role") == "system":
            first = out[0]
            out[0] = {**first, "content": (_text(first.get("content"), 0) + "\n\n" + block).lstrip()}
        else:
            out.insert(0, {"role": "system", "content": block})
    return out


def _text(content: Any, i: int) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text" for p in content):
        return "".join(str(p.get("text", "")) for p in content)
    raise ToolError("expected a string or text parts", f"messages[{i}].content")


# -- the constraint for auto and none ---------------------------------------------------------

class ToolConstraint:
    """`tool_choice` auto (calls may start the reply) or none (they may not): the first
    token decides. A token whose first non-blank character opens a call continues under
    the calls' grammar; any other starts text, after which nothing is constrained."""

    START, TEXT, CALL = range(3)

    def __init__(self, vocab: TokenVocab, calls: Bound | None):
        self.vocab, self.calls = vocab, calls
        self.mode = self.START
        self.inner: SchemaConstraint | None = None
        self._call_starts: dict[int, State] = {}

    def candidates(self, logits: np.ndarray, want: int) -> tuple[np.ndarray, np.ndarray]:
        if self.mode == self.CALL:
            return self.inner.candidates(logits, want)
        if self.mode == self.TEXT:
            ids = best_where(logits, None, want)
            return ids, logits[ids]
        v = self.vocab
        ids = best_where(logits, text_starts(v), want)
        if self.calls is not None:
            valid, nexts = self.calls.exact(self.calls.start())
            valid = valid[~v.blank[valid]]
            self._call_starts = nexts
            ids = top_ids(np.concatenate([ids, valid]), logits, want)
        return ids, logits[ids]

    def advance(self, tok: int) -> None:
        if self.mode == self.CALL:
            self.inner.advance(tok)
        elif self.mode == self.START:
            if tok in self._call_starts and not self.vocab.blank[tok]:
                self.mode = self.CALL
                self.inner = SchemaConstraint(self.calls, self._call_starts[tok])
            else:
                self.mode = self.TEXT

    @property
    def done(self) -> bool:
        return self.mode == self.CALL and self.inner.done


def text_starts(v: TokenVocab) -> np.ndarray:
    """[n_vocab] bool: tokens a text reply may begin with (not blank, no call opener), and
    the end-of-text tokens (an empty reply). Built once per vocabulary."""
    mask = getattr(v, "_text_starts", None)
    if mask is None:
        has = np.fromiter((t is not None for t in v.texts), dtype=bool, count=v.n_vocab)
        mask = has & ~v.blank & ~np.isin(v.lead, CALL_LEADS)
        mask[v.stop_ids] = True
        v._text_starts = mask
    return mask


def best_where(logits: np.ndarray, mask: np.ndarray | None, want: int) -> np.ndarray:
    """The `want` best ids (where `mask`), best first, from a threshold below the highest
    logit widened until it holds enough (cheaper than a partial sort of the vocabulary)."""
    x = logits if mask is None else np.where(mask, logits, -np.inf)
    top = float(np.max(x))
    if top == -np.inf:
        return np.zeros(0, np.int64)
    gap = 8.0
    while True:
        cand = np.flatnonzero(x >= top - gap) if gap < np.inf else np.flatnonzero(x > -np.inf)
        if len(cand) >= want or gap == np.inf:
            break
        gap = gap * 4 if gap < 128 else np.inf
    return top_ids(cand, logits, want)


# -- reading the calls back ---------------------------------------------------------------------

class CallParser:
    """Reads a reply as it streams: ("content", text) for a text reply, or for calls
    ("call", index, id, name) once a name is complete and ("arguments", index, text) for
    the raw text of its parameters as it comes. The decoder guarantees the structure, so
    a scanner of brackets and strings suffices."""

    def __init__(self, mode: str, names: tuple[str, ...] = ()):
        self.mode = None if mode == "auto" else mode
        self.names = names                           # "either": the functions a call may name
        self.blank = ""                              # leading whitespace, until the mode is known
        self.state = "top"
        self.key = self.raw = ""
        self.depth, self.in_str, self.esc = 0, False, False
        self.index = -1
        self.calls: list[dict] = []                  # {"id", "name", "arguments"}
        self.text = ""

    def feed(self, piece: str) -> list[tuple]:
        if self.mode == "either":
            self.blank += piece
            return []
        if self.mode is None:
            self.blank += piece
            s = self.blank.lstrip()
            if not s:
                return []
            self.mode = "calls" if s[0] in "{[" else "text"
            piece, self.blank = self.blank, ""
        if self.mode == "text":
            self.text += piece
            return [("content", piece)] if piece else []
        events: list[tuple] = []
        args = ""
        for ch in piece:
            args = self._char(ch, args, events)
        if args:
            events.append(("arguments", self.index, args))
        return events

    def close(self) -> list[tuple]:
        """Events for what was held back at the end (an "either" reply, blank text)."""
        held, self.blank = self.blank, ""
        if self.mode == "either":
            try:
                value = json.loads(held)
            except ValueError:
                value = None
            calls = value if isinstance(value, list) and value else [value]
            if all(isinstance(c, dict) and set(c) == {"name", "parameters"} and c["name"] in self.names
                   for c in calls):
                self.mode = "calls"
                return self.feed(held)
            self.mode = "text"
        return self.feed(held) if held else []

    def _char(self, ch: str, args: str, events: list) -> str:
        st = self.state
        if st == "args":
            args += ch
            self.calls[-1]["arguments"] += ch
            if self.in_str:
                self.esc, self.in_str = (False, True) if self.esc else (ch == "\\", ch != '"')
            elif ch == '"':
                self.in_str = True
            elif ch in "{[":
                self.depth += 1
            elif ch in "}]":
                self.depth -= 1
                if self.depth == 0:
                    self.state = "object"
            return args
        if st in ("key", "name"):
            if self.esc:
                self.esc = False
            elif ch == "\\":
                self.esc = True
            elif ch == '"':
                value = json.loads('"' + self.raw + '"')
                self.raw = ""
                if st == "key":
                    self.key, self.state = value, "colon"
                else:
                    self.index += 1
                    if args:
                        events.append(("arguments", self.index - 1, args))
                        args = ""
                    self.calls.append({"id": "call_" + uuid.uuid4().hex[:24], "name": value, "arguments": ""})
                    events.append(("call", self.index, self.calls[-1]["id"], value))
                    self.state = "object"
                return args
            self.raw += ch
            return args
        if ch in " \t\n\r,":
            return args
        if st == "top" and ch == "{":
            self.state = "object"
        elif st == "object" and ch == '"':
            self.state = "key"
        elif st == "object" and ch == "}":
            self.state = "top"
        elif st == "colon" and ch == ":":
            self.state = "value"
        elif st == "value":
            if self.key == "name":
                self.state = "name"
            else:
                self.state, self.depth, self.in_str, self.esc = "args", 1, False, False
                args += ch
                self.calls[-1]["arguments"] += ch
        return args
