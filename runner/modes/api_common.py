"""What the API adapters (openai_api, llama_api, embeddings_api, responses_api,
anthropic_api) share: options, state, errors, request field validation, a request's
sampling settings and job, and the one loop that turns a job's events into a response
(collected, or streamed as server-sent events).

Every value a client sends passes through `Fields`, which names the field, the expected
type or range and what was found, so that a bad request is a 400 with a useful message
and never a traceback.
"""
from __future__ import annotations

import asyncio
import json
import math
import re
import sys
import threading
import time
import traceback
import uuid
from contextlib import aclosing
from dataclasses import dataclass, field, replace
from typing import Any, AsyncIterator, Callable

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import StreamingResponse

from ..chat import ChatError
from ..engine import ContextError, Prompt
from ..generation import ModelError, Result, Token
from ..sampling import OPTIONS, SEED_MASK, SamplingParams, in_range, range_text
from ..structured import SchemaConstraint, SchemaError
from ..structured.tools import ToolConstraint, ToolSpec, calls_or_schema
from .slots import Job, Metrics

MAX_LOGPROBS = 20            # top alternatives a request may ask for (OpenAI's limit)
MAX_STOP = 16                # stop strings in one request
MAX_CHOICES = 16             # `n`: replies to one request (each runs as its own job)


class APIError(Exception):
    """An error for the client: status and OpenAI's error body."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None, extra: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.extra = extra or {}                   # more fields of the error object (llama-server's)

    def body(self) -> dict:
        body = error_body(self.message, self.type, self.param, self.code)
        body["error"].update(self.extra)
        return body


def error_body(message: str, type: str = "invalid_request_error", param: str | None = None,
               code: str | int | None = None) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def bad(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


@dataclass
class Options:
    """The server's settings (from the command line, or given directly by tests)."""
    host: str = "127.0.0.1"
    port: int = 8080
    api_key: str | None = None
    parallel: int = 1
    pooling: str | None = None           # embeddings (--pooling); None: the model file's, else mean
    nobrowser: bool = True
    log: bool = True
    sampling: SamplingParams = field(default_factory=SamplingParams)   # a request's defaults
    n_predict: int = -1                  # default token limit (-1: none)
    model_path: str = ""
    timeout: float = 10.0                # seconds for a request's head; the longest pause in its body
    keep_alive: float = 5.0              # seconds an idle connection stays open between requests
    max_connections: int = 512           # then new ones replace the longest idle (limits.py)
    max_body: int = 100 << 20            # bytes of a request body (a few images as base64)
    allowed_hosts: tuple[str, ...] = ()  # Host names accepted besides loopback ones (origin.py)
    cors_origins: str = "localhost"      # other origins whose pages may call the API (origin.CorsPolicy)
    alias: str | None = None             # the model's id in the API (--alias); None: from its name

    @classmethod
    def from_args(cls, args) -> Options:
        from ..args import sampling_from_args
        return cls(host=args.host, port=args.port, api_key=args.api_key or None, parallel=args.parallel,
                   pooling=args.pooling,
                   nobrowser=args.nobrowser, log=not args.log_disable, sampling=sampling_from_args(args),
                   n_predict=args.n_predict, model_path=args.model or "", timeout=args.timeout,
                   allowed_hosts=tuple(n for arg in args.allowed_hosts for n in arg.split(",")),
                   cors_origins=args.cors_origins, alias=args.alias)


class State:
    """The app's state: the model (None while it loads), the slots, the counters."""

    def __init__(self, options: Options):
        self.options = options
        self.llm = None
        self.metrics = Metrics()
        self.pool = None                 # slots.SlotPool once the model is loaded
        self.load_error: str | None = None
        self.started = int(time.time())
        self._prompt_lock = threading.Lock()

    @property
    def model_id(self) -> str:
        """The model's id in /v1/models and replies: --alias, else from its name."""
        return self.options.alias or model_id(self.llm)

    def log(self, message: str) -> None:
        if self.options.log:
            print(message, file=sys.stderr, flush=True)

    def chat_prompt(self, messages: list, tools: ToolSpec | None = None):
        """The model's prompt for `messages`, one request at a time: images are encoded
        here, and the model's image cache is not thread-safe. An image from a client must
        be a data: URI (ImageError otherwise): a path would read the server's own files,
        a URL would be fetched."""
        from ..chat import ImageRef, message_parts
        from ..images import check_remote
        for m in messages:
            if isinstance(m, dict) and isinstance(m.get("content"), list):
                for part in message_parts(m["content"]):
                    if isinstance(part, ImageRef):
                        check_remote(part.source)
        with self._prompt_lock:
            return self.llm.chat_prompt(messages, tools=tools)

    def finished(self, r: Result) -> None:
        self.log(f"slot {r.slot}: prompt {r.prompt_tokens} tokens ({r.cached_tokens} cached, "
                 f"{r.prefill_tok_s:.0f} tok/s), {r.generated_tokens} generated "
                 f"({r.decode_tok_s:.1f} tok/s), {r.finish_reason}")


# -- request fields -------------------------------------------------------------------------

MAX_JSON_DEPTH = 100         # nesting of a request body (a chat request needs about 6)


class _BadNumber(ValueError):
    """A number the request body may not hold."""


def _json_float(s: str) -> float:
    v = float(s)
    if not math.isfinite(v):                        # 1e400 parses as inf
        raise _BadNumber(f"the number {s[:40]} is out of range (not a finite 64-bit float)")
    return v


def _json_int(s: str) -> int:
    # why check the digits first: Python refuses to convert more than 4,300 of them
    v = int(s) if len(s) <= 21 else None
    if v is None or not -(1 << 63) <= v < (1 << 64):
        raise _BadNumber(f"the integer {s[:24]}{'...' if len(s) > 24 else ''} is out of range "
                         f"({len(s.lstrip('-'))} digits; integers here fit in 64 bits)")
    return v


def _json_constant(s: str) -> Any:
    raise _BadNumber(f"{s} is not a JSON number")   # NaN, Infinity: Python's extension, not JSON


def _depth(value: Any) -> int:
    """How deeply arrays and objects nest in `value` (walked without recursion)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, dict):
            v = v.values()
        elif not isinstance(v, list):
            continue
        deepest = max(deepest, d)
        if d <= MAX_JSON_DEPTH:
            stack.extend((x, d + 1) for x in v if isinstance(x, (dict, list)))
    return deepest


def parse_json(raw: bytes) -> Any:
    """The request body as JSON, checked up front: numbers that fit 64 bits, nesting up
    to MAX_JSON_DEPTH (so that no later step meets inf, a 5,000-digit integer or a
    RecursionError)."""
    if not raw.strip():
        raise bad("the request body is empty: expected a JSON object")
    try:
        body = json.loads(raw, parse_float=_json_float, parse_int=_json_int, parse_constant=_json_constant)
    except _BadNumber as e:
        raise bad(f"the request body is not accepted: {e}") from None
    except RecursionError:
        raise bad(f"the request body nests arrays or objects more than {MAX_JSON_DEPTH} levels deep") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise bad(f"the request body is not valid JSON: {e}") from None
    if _depth(body) > MAX_JSON_DEPTH:
        raise bad(f"the request body nests arrays or objects more than {MAX_JSON_DEPTH} levels deep")
    return body


async def request_json(request) -> Any:
    """The request's body through parse_json, once per request: the route's validation
    (bodies.validator) parses it first and the handler gets the same object (kept in the
    request's state, shared by every Request object of one request)."""
    state = request.state
    if not hasattr(state, "json_body"):
        state.json_body = parse_json(await request.body())
    return state.json_body


def _type_name(v: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "an array",
            dict: "an object", type(None): "null"}.get(type(v), type(v).__name__)


class Fields:
    """Typed access to a request's JSON object; each getter raises a 400 naming the field."""

    def __init__(self, body: Any):
        if not isinstance(body, dict):
            raise bad(f"the request body must be a JSON object, not {_type_name(body)}")
        self.body = body

    def has(self, name: str) -> bool:
        return self.body.get(name) is not None

    def raw(self, name: str, default: Any = None) -> Any:
        v = self.body.get(name)
        return default if v is None else v

    def _expect(self, name: str, value: Any, what: str) -> APIError:
        return bad(f"'{name}' must be {what}, got {_type_name(value)} {json.dumps(value)[:40]}", name)

    def number(self, name: str, default: float | None, lo: float | None = None,
               hi: float | None = None) -> float | None:
        v = self.body.get(name)
        if v is None:
            return default
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise self._expect(name, v, "a number")
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            raise bad(f"'{name}' must be {_range(lo, hi)}, got {v}", name)
        return float(v)

    def integer(self, name: str, default: int | None, lo: int | None = None, hi: int | None = None) -> int | None:
        v = self.body.get(name)
        if v is None:
            return default
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        if isinstance(v, bool) or not isinstance(v, int):
            raise self._expect(name, v, "an integer")
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            raise bad(f"'{name}' must be {_range(lo, hi)}, got {v}", name)
        return v

    def boolean(self, name: str, default: bool) -> bool:
        v = self.body.get(name)
        if v is None:
            return default
        if not isinstance(v, bool):
            raise self._expect(name, v, "true or false")
        return v

    def string(self, name: str, default: str | None = None) -> str | None:
        v = self.body.get(name)
        if v is None:
            return default
        if not isinstance(v, str):
            raise self._expect(name, v, "a string")
        return v

    def obj(self, name: str) -> dict | None:
        v = self.body.get(name)
        if v is not None and not isinstance(v, dict):
            raise self._expect(name, v, "an object")
        return v

    def stop(self, name: str = "stop") -> list[str]:
        v = self.body.get(name)
        if v is None:
            return []
        if isinstance(v, str):
            return [v] if v else []
        if not isinstance(v, list) or not all(isinstance(s, str) for s in v):
            raise self._expect(name, v, "a string or an array of strings")
        if len(v) > MAX_STOP:
            raise bad(f"'{name}' may hold at most {MAX_STOP} strings, got {len(v)}", name)
        return [s for s in v if s]

    def token_ids(self, name: str, v: Any, n_vocab: int) -> list[int]:
        if not isinstance(v, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in v):
            raise self._expect(name, v, "an array of token ids")
        out_of_range = [t for t in v if not 0 <= t < n_vocab]
        if out_of_range:
            raise bad(f"'{name}': token id {out_of_range[0]} is out of range (the vocabulary has "
                      f"{n_vocab} tokens: 0..{n_vocab - 1})", name)
        return v

    def logit_bias(self, n_vocab: int, name: str = "logit_bias") -> dict[int, float]:
        """OpenAI's {"token id": bias} (bias -100..100; -100 bans the token), or llama.cpp's
        [[id, bias], ...] where a bias of false bans."""
        v = self.body.get(name)
        if v is None:
            return {}
        pairs = list(v.items()) if isinstance(v, dict) else v
        if not isinstance(pairs, list) or not all(isinstance(p, (list, tuple)) and len(p) == 2 for p in pairs):
            raise self._expect(name, v, 'an object mapping token ids to biases ({"123": -100})')
        out: dict[int, float] = {}
        for key, b in pairs:
            try:
                tok = int(key) if not isinstance(key, (bool, float)) else None
            except (TypeError, ValueError):           # [null, 1], [[5], 1]
                tok = None
            if tok is None or not 0 <= tok < n_vocab:
                raise bad(f"'{name}': key {json.dumps(key)} is not a token id (0..{n_vocab - 1})", name)
            if b is False:
                b = -100
            if isinstance(b, bool) or not isinstance(b, (int, float)) or not -100 <= b <= 100:
                raise bad(f"'{name}': the bias of token {tok} must be a number from -100 to 100, "
                          f"got {json.dumps(b)}", name)
            # why: OpenAI documents -100 as a ban; a finite -100 could still win a greedy
            # pick among tokens that are all unlikely
            out[tok] = -math.inf if b <= -100 else float(b)
        return out


def _range(lo, hi) -> str:
    if lo is not None and hi is not None:
        return f"from {lo} to {hi}"
    return f">= {lo}" if lo is not None else f"<= {hi}"


def sampling_params(f: Fields, defaults: SamplingParams, n_vocab: int, server_seed: int | None) -> SamplingParams:
    """A request's sampling settings: every declared option (runner.sampling) by its name,
    in its range; the logit bias and the seed (llama.cpp's -1: random) read specially."""
    given: dict[str, Any] = {}
    for name, opt in OPTIONS.items():
        lo, hi = opt.metadata["lo"], opt.metadata["hi"]
        if opt.type == "int":
            given[name] = f.integer(name, getattr(defaults, name), lo, hi)
        elif opt.type == "float":
            given[name] = f.number(name, getattr(defaults, name), lo, hi)
            if not in_range(opt, given[name]):       # an open bound (repeat_penalty > 0)
                raise bad(f"'{name}' must be {range_text(opt)}, got {given[name]:g}", name)
    seed = f.integer("seed", server_seed)
    given["seed"] = None if seed is None or seed == -1 else seed & 0xFFFFFFFFFFFFFFFF   # numpy wants >= 0
    return replace(defaults, logit_bias=f.logit_bias(n_vocab), **given)


def max_tokens(f: Fields, default: int, *names: str) -> int | None:
    """The token limit from the first of `names` present; None: no limit."""
    for name in names:
        if f.has(name):
            n = f.integer(name, None, -1)
            return None if n == -1 else n
    return None if default < 0 else default


def sampling_fields(f: Fields, **extra: Any) -> Fields:
    """A request of another shape (Responses, Anthropic) as the chat-completions fields
    request_job reads: its sampling options under their own names (temperature, top_p,
    top_k, and llama.cpp's others), the model, and `extra` (stop, response_format)."""
    keep = {k: v for k, v in f.body.items() if k in OPTIONS or k in ("seed", "model")}
    return Fields({**keep, **extra})


# -- responses ------------------------------------------------------------------------------

def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def token_piece(tokenizer, tok: int) -> tuple[str, list[int]]:
    """A token's text and its bytes (a byte token is one raw byte of a UTF-8 character)."""
    b = tokenizer.byte_of(tok)
    if b is not None:
        return bytes([b]).decode("utf-8", "replace"), [b]
    text = tokenizer.decode([tok])
    return text, list(text.encode("utf-8"))


def finite(x: float) -> float:
    return x if math.isfinite(x) else -9999.0     # JSON has no -inf; OpenAI's "impossible"


def model_id(llm) -> str:
    """The model's name as an id: "Gemma 3 270m" -> "gemma-3-270m"."""
    return re.sub(r"[^a-z0-9.]+", "-", llm.name.lower()).strip("-") or "gemma"


def sse(obj: Any) -> bytes:
    return b"data: " + json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"


def sse_event(obj: dict) -> bytes:
    """A named server-sent event (`event: TYPE`), as the Responses and Anthropic APIs
    send them: the name is the object's own "type"."""
    return b"event: " + obj["type"].encode() + b"\n" + sse(obj)


SSE_DONE = b"data: [DONE]\n\n"
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


# -- a request's prompt and job -------------------------------------------------------------

def check_context(state: State, prompt: Prompt, param: str) -> None:
    """A 400 for a prompt the context cannot hold, with OpenAI's code and llama-server's
    n_prompt_tokens and n_ctx (its exceed_context_size_error)."""
    engine = state.llm.engine
    try:
        engine.check_fits(prompt)
    except ContextError as e:
        if not len(prompt):
            raise bad(f"'{param}': {e}", param) from None
        raise APIError(400, f"'{param}': {e}", param=param, code="context_length_exceeded",
                       extra={"n_prompt_tokens": len(prompt), "n_ctx": engine.n_ctx}) from None


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


async def request_job(state: State, f: Fields, prompt: Prompt, limit: int | None, param: str,
                      tools: ToolSpec | None = None, schema_param: str | None = None, choices: bool = False) -> Job:
    """The job of a request: its prompt (checked against the context), sampling settings,
    stop strings and what constrains the output (response_format, json_schema, tools;
    `schema_param` names the schema's field in errors when the API calls it otherwise).
    `choices`: the API takes `n` (see n_jobs)."""
    check_context(state, prompt, param)
    o, llm = state.options, state.llm
    if f.integer("n", 1, 1, MAX_CHOICES if choices else 1) != 1 and not choices:
        raise bad("only one choice per request is supported here (n = 1)", "n")
    if f.integer("best_of", 1, 1, 1) != 1:
        raise bad("best_of is not supported (only 1)", "best_of")
    f.string("model")                               # any model name is accepted: there is one
    job = Job(prompt=prompt, params=sampling_params(f, o.sampling, llm.n_vocab, o.sampling.seed),
              max_tokens=limit, stop=f.stop(), ignore_eos=f.boolean("ignore_eos", False),
              progress=f.boolean("return_progress", False))
    job.constraint = await output_constraint(state, f, tools, schema_param)
    return job


def response_schema(f: Fields) -> Any:
    """The schema the output must follow: OpenAI's response_format (json_object: any
    object, or llama.cpp's extension {"type": "json_object", "schema": ...}; json_schema:
    its schema), else llama.cpp's `json_schema`; None: free text."""
    rf = f.obj("response_format") or {}
    kind = rf.get("type", "text")
    if kind == "json_object":
        return rf.get("schema", {"type": "object"})
    if kind == "json_schema":
        js = rf.get("json_schema")
        if not isinstance(js, dict):
            raise bad("'response_format.json_schema' must be an object with 'name' and 'schema'", "response_format")
        if "name" in js and (not isinstance(js["name"], str) or not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", js["name"])):
            raise bad("'response_format.json_schema.name' must be 1-64 letters, digits, '_' or '-'",
                      "response_format")
        if not isinstance(js.get("strict", False), bool):
            raise bad("'response_format.json_schema.strict' must be true or false", "response_format")
        if "schema" not in js:
            raise bad("'response_format.json_schema.schema' is required", "response_format")
        return js["schema"]
    if kind != "text":
        raise bad(f"response_format type must be 'text', 'json_object' or 'json_schema', got {kind!r}",
                  "response_format")
    if f.has("json_schema"):
        return f.raw("json_schema")
    return None


async def output_constraint(state: State, f: Fields, tools: ToolSpec | None,
                            schema_param: str | None = None) -> Callable[[], Any] | None:
    """A maker of the reply's constraint, or None: the response schema, the tools' calls,
    or both as alternatives (structured/tools.py). A schema that is not supported is a
    400 naming the keyword."""
    schema = response_schema(f)
    if schema is None and tools is None:
        return None
    structured = await run_in_threadpool(state.llm.structured)
    bound = None
    if schema is not None:
        param = schema_param or ("response_format" if f.has("response_format") else "json_schema")
        try:
            bound = await run_in_threadpool(structured.bind, schema)
        except SchemaError as e:
            raise bad(f"'{param}': {e}", param) from None
    if tools is None or not tools.calls:
        if bound is None:                           # tool_choice none: text, never a call
            return lambda: ToolConstraint(structured.vocab, None)
        return lambda: SchemaConstraint(bound)
    both = bound is not None and not tools.forced
    try:
        calls = await run_in_threadpool(structured.bind, calls_or_schema(tools.schema(), schema) if both
                                        else tools.schema())
    except SchemaError as e:
        raise bad(f"'tools': {e}", "tools") from None
    if tools.forced or both:
        return lambda: SchemaConstraint(calls)
    return lambda: ToolConstraint(structured.vocab, calls)


def n_jobs(f: Fields, job: Job) -> list[Job]:
    """The request's `n` replies: one job each, the i-th with seed + i when the request
    (or the server) fixed one, so that they differ yet reproduce; greedy ones are equal."""
    n, seed = f.integer("n", 1, 1, MAX_CHOICES), job.params.seed
    return [job] + [replace(job, params=replace(job.params, seed=None if seed is None else (seed + i) & SEED_MASK))
                    for i in range(1, n)]


# -- running a job ----------------------------------------------------------------------------

def job_error(state: State, e: Exception) -> APIError | Exception:
    """An error raised while generating: a client mistake becomes a 400; anything else is
    logged with its traceback."""
    if isinstance(e, (ContextError, ChatError)):
        return bad(str(e))
    if isinstance(e, ModelError):                   # the server's model, not the request: one line
        state.log(f"error during generation: {e}")
        return APIError(503, str(e), "server_error", code="model_error")
    if not isinstance(e, APIError):
        state.log("error during generation:\n" + "".join(traceback.format_exception(e)).rstrip())
    return e


async def collect(state: State, job: Job, request: Request) -> tuple[str, list[Token], Result | None, list | None]:
    """Run a job to the end (or until the client leaves: then the result is None); its
    text, tokens, result and prompt log-probabilities (if it scored its prompt)."""
    text, tokens, result, scored = [], [], None, None
    async with aclosing(state.pool.run(job, request.is_disconnected)) as events:
        async for kind, v in events:
            if kind == "token":
                text.append(v.text)
                tokens.append(v)
            elif kind == "prompt_logprobs":
                scored = v
            elif kind == "done":
                result = v
                state.finished(v)
            elif kind == "error":
                raise job_error(state, v)
    return "".join(text), tokens, result, scored


async def collect_all(state: State, jobs: list[Job], request: Request) -> list[tuple] | None:
    """`collect` for several jobs at once (a request's n replies, queued for the slots
    like any request); None if the client left. One failing stops the others."""
    tasks = [asyncio.ensure_future(collect(state, job, request)) for job in jobs]
    try:
        done = await asyncio.gather(*tasks)
    finally:
        for t in tasks:
            t.cancel()                               # no-op for those that ended
    return None if any(r is None for _, _, r, _ in done) else done


async def events(state: State, jobs: list[Job]) -> AsyncIterator[tuple[int, str, Any]]:
    """The events of several jobs run at once, each with its job's index, in the order
    they come; closing this cancels the jobs still running."""
    if len(jobs) == 1:
        async with aclosing(state.pool.run(jobs[0])) as run:
            async for kind, v in run:
                yield 0, kind, v
        return
    queue: asyncio.Queue = asyncio.Queue()

    async def pump(i: int, job: Job) -> None:
        try:
            async with aclosing(state.pool.run(job)) as run:
                async for kind, v in run:
                    await queue.put((i, kind, v))
        finally:
            await queue.put((i, None, None))

    tasks = [asyncio.ensure_future(pump(i, job)) for i, job in enumerate(jobs)]
    try:
        running = len(jobs)
        while running:
            i, kind, v = await queue.get()
            if kind is None:
                running -= 1
            else:
                yield i, kind, v
    finally:
        for t in tasks:
            t.cancel()


def error_chunks(e: Exception) -> list[dict]:
    """An error once a stream began (the status is already sent), as OpenAI's error body."""
    return [e.body() if isinstance(e, APIError) else
            error_body("the server failed while generating; see its log", "server_error")]


def stream(state: State, job: Job | list[Job], render: Callable[[str, Any], list[dict]] | list[Callable],
           opening: list[dict] = (), done: bool = True, frame: Callable[[dict], bytes] = sse,
           error: Callable[[Exception], list[dict]] = error_chunks) -> StreamingResponse:
    """A job's events as server-sent events: the `opening` chunks, then each event
    ("progress", "prompt_logprobs", "token", "done") as the chunks the API's `render`
    makes of it (an error after the stream began becomes the chunks `error` makes of
    it), then [DONE] if `done`. `frame` writes a chunk (named events: sse_event). Several
    jobs (n replies): one `render` each, their events interleaved."""
    jobs = job if isinstance(job, list) else [job]
    renders = render if isinstance(render, list) else [render]

    async def body() -> AsyncIterator[bytes]:
        for c in opening:
            yield frame(c)
        async with aclosing(events(state, jobs)) as run:
            async for i, kind, v in run:
                if kind == "error":
                    chunks = error(job_error(state, v))
                else:
                    if kind == "done":
                        state.finished(v)
                    chunks = renders[i](kind, v)
                for c in chunks:
                    yield frame(c)
        if done:
            yield SSE_DONE

    return StreamingResponse(body(), media_type="text/event-stream", headers=SSE_HEADERS)
