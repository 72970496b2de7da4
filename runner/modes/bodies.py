"""The request bodies of the API, declared as Pydantic models: published in /openapi.json
(so that generic tooling, client generators and schemathesis see them) and checked
before a route runs.

Each model is as permissive as the API it copies (clients send fields of other versions:
every model takes unknown fields; tools, tool_choice, response_format and the like are
loosely typed) and typed where the adapters' own validation (api_common.Fields) rejects:
types, number ranges, arrays. The models only reject: the adapters still read the raw
JSON themselves, so the two checks overlap. What the models refuse, the adapters refuse
too, except a few fields the adapters ignore but the APIs type (`model` on count_tokens
must be a string, `parallel_tool_calls` true or false, `tool_choice` a string or an
object).
Types are strict (a number is not a string, 1 is not true), as Fields reads them,
except that an integer may be written 5.0, as Fields and JSON Schema allow.

A route declares its body in its decorator:

    @app.post("/v1/chat/completions", **bodies.route(bodies.ChatCompletionRequest))

which publishes the schema and adds a dependency that parses the body with
api_common.request_json (the hardened parser: 64-bit numbers, bounded nesting; the
handler gets the same parsed object) and validates it. A mismatch is an APIError 400 naming the field in the style of Fields
("'temperature' must be from 0.0 to 2.0, got 7"), so it is logged on one line and
answered in the API's error shape (Anthropic's under /v1/messages): never FastAPI's 422.
"""
from __future__ import annotations

import json
from typing import Annotated, Any, Literal, Union

from fastapi import Depends, FastAPI
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, WrapValidator, create_model
from pydantic.json_schema import models_json_schema
from pydantic_core import PydanticCustomError
from starlette.requests import Request

from ..sampling import OPTIONS, range_text
from .api_common import MAX_LOGPROBS, MAX_STOP, _type_name, bad, request_json

REF = "#/components/schemas/{model}"


class Body(BaseModel):
    """A JSON object that may hold fields besides the declared ones."""
    model_config = ConfigDict(extra="allow", strict=True)


def example(body: dict) -> ConfigDict:
    """A model's configuration with an example body (in the schema: docs, schemathesis's
    examples phase)."""
    return ConfigDict(json_schema_extra={"examples": [body]})


# -- value types ------------------------------------------------------------------------------

def _whole(v: Any) -> Any:
    # why: Fields.integer (and JSON Schema) take 5.0 as the integer 5; strict mode would not
    return int(v) if isinstance(v, float) and v.is_integer() else v


def integer(description: str | None = None, **bounds: int) -> Any:
    """An integer in `bounds` (ge, le), which may be written 5.0."""
    # why the validator last: it runs first, and the bounds stay in the JSON schema
    # (before them, Pydantic would write "ge" where JSON Schema reads "minimum")
    return Annotated[int, Field(description=description, **bounds), BeforeValidator(_whole)]


TokenId = integer(ge=0)
TokenIds = Annotated[list[TokenId], Field(min_length=1)]
Limit = integer("tokens to generate at most; -1: no limit", ge=-1)
Logprobs = integer(ge=0, le=MAX_LOGPROBS)
Object = dict[str, Any]


def one_of(what: str, *types: Any) -> Any:
    """A union of `types` whose mismatch reads "must be {what}" (Pydantic would list one
    error per alternative)."""
    def check(value: Any, handler) -> Any:
        try:
            return handler(value)
        except ValidationError:
            raise PydanticCustomError("form", "must be {what}", {"what": what}) from None
    return Annotated[Union[types], WrapValidator(check)]


Stop = one_of(f"a string or an array of at most {MAX_STOP} strings", str,
              Annotated[list[str], Field(max_length=MAX_STOP)])
Bias = Union[Literal[False], Annotated[float, Field(ge=-100, le=100)]]
LogitBias = one_of('an object mapping token ids to biases from -100 to 100 or false ({"123": -100}), or an array '
                   'of [token id, bias] pairs',
                   dict[str, Bias], list[Annotated[list[Any], Field(min_length=2, max_length=2)]])
Prompt = one_of("a string or an array of token ids", str, TokenIds,
                Annotated[list[Union[str, TokenIds]], Field(min_length=1, max_length=1,
                                                            description="a batch of one prompt")])
EmbeddingInput = one_of("a string, an array of token ids, or a non-empty array of strings and token-id arrays",
                        str, TokenIds, Annotated[list[Union[str, TokenIds]], Field(min_length=1)])
ToolChoice = Union[str, Object]


def _sampling_field(opt) -> tuple[Any, Any]:
    lo, hi, above = opt.metadata["lo"], opt.metadata["hi"], opt.metadata["above"]
    bounds = {"gt" if above else "ge": lo} if lo is not None else {}
    if hi is not None:
        bounds["le"] = hi
    if opt.type == "int":
        return Union[integer(**bounds), None], Field(None, description=opt.metadata["help"])
    return Union[float, None], Field(None, description=opt.metadata["help"], **bounds)


# every sampling option of runner.sampling under its own name (as Fields reads them)
Sampling = create_model(
    "Sampling", __base__=Body,
    **{name: _sampling_field(opt) for name, opt in OPTIONS.items() if opt.type in ("int", "float")},
    logit_bias=(Union[LogitBias, None], None),
    seed=(Union[integer("-1: random"), None], None))


# -- OpenAI and llama.cpp generation ----------------------------------------------------------

class ResponseFormat(Body):
    type: Literal["text", "json_object", "json_schema"] = "text"
    json_schema: Union[Object, None] = None


class Generation(Sampling):
    """What every generation request may hold besides its prompt (api_common.request_job)."""
    model: Union[str, None] = None
    stream: Union[bool, None] = None
    stop: Union[Stop, None] = None
    n: Union[integer(ge=1), None] = None
    best_of: Union[integer(ge=1), None] = None
    ignore_eos: Union[bool, None] = None
    return_progress: Union[bool, None] = None
    response_format: Union[ResponseFormat, None] = None
    json_schema: Any = Field(None, description="llama.cpp's extension: a JSON schema the output follows")


class ContentPart(Body):
    type: str


class ChatMessage(Body):
    role: str
    content: Union[one_of("a string or an array of content parts", str, list[ContentPart]), None] = None


class ChatCompletionRequest(Generation):
    """POST /v1/chat/completions"""
    model_config = example({"messages": [{"role": "user", "content": "Name three fruits."}], "max_tokens": 16})
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_tokens: Union[Limit, None] = None
    max_completion_tokens: Union[Limit, None] = None
    logprobs: Union[bool, None] = None
    top_logprobs: Union[Logprobs, None] = None
    stream_options: Union[Object, None] = None
    tools: Union[list[Object], None] = None
    tool_choice: Union[ToolChoice, None] = None
    parallel_tool_calls: Union[bool, None] = None


class CompletionRequest(Generation):
    """POST /v1/completions"""
    model_config = example({"prompt": "The capital of France is", "max_tokens": 8})
    prompt: Prompt
    max_tokens: Union[Limit, None] = None
    echo: Union[bool, None] = None
    logprobs: Union[Logprobs, None] = None
    suffix: Union[str, None] = None
    stream_options: Union[Object, None] = None


class LlamaCompletionRequest(Generation):
    """POST /completion (llama.cpp)"""
    model_config = example({"prompt": "The capital of France is", "n_predict": 8})
    prompt: Prompt
    n_predict: Union[Limit, None] = None
    max_tokens: Union[Limit, None] = None
    n_probs: Union[Logprobs, None] = None


class TokenizeRequest(Body):
    """POST /tokenize"""
    model_config = example({"content": "Hello world", "with_pieces": True})
    content: str
    add_special: Union[bool, None] = None
    parse_special: Union[bool, None] = None
    with_pieces: Union[bool, None] = None


class ApplyTemplateRequest(Body):
    """POST /apply-template"""
    model_config = example({"messages": [{"role": "user", "content": "Hello"}]})
    messages: Annotated[list[ChatMessage], Field(min_length=1)]


class DetokenizeRequest(Body):
    """POST /detokenize"""
    model_config = example({"tokens": [2, 100, 200]})
    tokens: Union[list[TokenId], None] = None


# -- embeddings -------------------------------------------------------------------------------

class LlamaEmbeddingRequest(Body):
    """POST /embedding: `content` (or `input`)"""
    model_config = example({"content": "Hello world"})
    content: Union[EmbeddingInput, None] = None
    input: Union[EmbeddingInput, None] = None
    embd_normalize: Union[integer(ge=-1), None] = None


class EmbeddingRequest(LlamaEmbeddingRequest):
    """POST /v1/embeddings: `input` (or llama.cpp's `content`)"""
    model_config = example({"input": ["Hello world", "Goodbye"]})
    model: Union[str, None] = None
    encoding_format: Union[Literal["float", "base64"], None] = None
    dimensions: Union[integer(ge=1), None] = None
    user: Union[str, None] = None


# -- OpenAI Responses -------------------------------------------------------------------------

class ResponsesRequest(Sampling):
    """POST /v1/responses"""
    model_config = example({"input": "Name three fruits.", "max_output_tokens": 16})
    input: one_of("a string or a non-empty array of message items", str,
                  Annotated[list[Object], Field(min_length=1)])
    model: Union[str, None] = None
    instructions: Union[str, None] = None
    max_output_tokens: Union[Limit, None] = None
    stream: Union[bool, None] = None
    text: Union[Object, None] = None
    metadata: Union[Object, None] = None
    store: Union[bool, None] = None
    background: Union[bool, None] = None
    previous_response_id: Union[str, None] = None
    tools: Union[list[Object], None] = None
    tool_choice: Union[ToolChoice, None] = None
    parallel_tool_calls: Union[bool, None] = None


# -- Anthropic Messages -----------------------------------------------------------------------

class AnthropicMessage(Body):
    role: Literal["user", "assistant"]
    content: one_of("a string or an array of content blocks", str, list[Object])


class CountTokensRequest(Body):
    """POST /v1/messages/count_tokens"""
    model_config = example({"messages": [{"role": "user", "content": "Name three fruits."}]})
    messages: Annotated[list[AnthropicMessage], Field(min_length=1)]
    model: Union[str, None] = None
    system: Union[one_of("a string or an array of text blocks", str, list[Object]), None] = None
    tools: Union[list[Object], None] = None
    tool_choice: Union[ToolChoice, None] = None
    output_config: Union[Object, None] = None


class MessagesRequest(Sampling, CountTokensRequest):
    """POST /v1/messages"""
    model_config = example({"max_tokens": 16, "messages": [{"role": "user", "content": "Name three fruits."}]})
    max_tokens: integer(ge=1)
    stop_sequences: Union[Stop, None] = None
    stream: Union[bool, None] = None
    metadata: Union[Object, None] = None


# -- error answers (documented, not validated) -----------------------------------------------

class ErrorDetail(BaseModel):
    message: str
    type: str
    param: Union[str, None] = None
    code: Union[str, int, None] = None


class ErrorResponse(BaseModel):
    """OpenAI's error shape (every route but Anthropic's)"""
    error: ErrorDetail


class AnthropicErrorDetail(BaseModel):
    type: str
    message: str


class AnthropicErrorResponse(BaseModel):
    """Anthropic's error shape (/v1/messages and below)"""
    type: Literal["error"]
    error: AnthropicErrorDetail


PUBLISHED: dict[str, type[BaseModel]] = {}      # the models route() refers to, by name


# -- validation -------------------------------------------------------------------------------

TYPES = {"float_type": "a number", "int_type": "an integer", "bool_type": "true or false", "string_type": "a string",
         "list_type": "an array", "dict_type": "an object", "model_type": "an object", "model_attributes_type":
         "an object", "none_required": "null"}
BOUNDS = {"greater_than_equal": ">= {ge}", "greater_than": "> {gt}", "less_than_equal": "<= {le}",
          "less_than": "< {lt}"}


def where(loc: tuple) -> str:
    """A Pydantic location as a path: messages[0].content"""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else f".{part}" if out else str(part)
    return out


def _got(value: Any) -> str:
    return "null" if value is None else f"{_type_name(value)} {json.dumps(value)[:40]}"


def message(error: dict) -> str:
    """One Pydantic error in the words of api_common.Fields."""
    name, kind, ctx, value = where(error["loc"]), error["type"], error.get("ctx") or {}, error.get("input")
    if kind == "missing":
        return f"'{name}' is required"
    if kind in TYPES:
        return f"'{name}' must be {TYPES[kind]}, got {_got(value)}"
    if kind == "form":
        return f"'{name}' must be {ctx['what']}, got {_got(value)}"
    if kind == "literal_error":
        return f"'{name}' must be {ctx['expected']}, got {_got(value) if not isinstance(value, str) else repr(value)}"
    if kind in BOUNDS:
        opt = OPTIONS.get(name)
        allowed = range_text(opt) if opt is not None else BOUNDS[kind].format(**ctx)
        return f"'{name}' must be {allowed}, got {value}"
    if kind == "too_short":
        return f"'{name}' must hold at least {ctx['min_length']} item(s), got {ctx['actual_length']}"
    if kind == "too_long":
        return f"'{name}' may hold at most {ctx['max_length']} item(s), got {ctx['actual_length']}"
    return f"'{name}': {error['msg']}"


def validator(model: type[BaseModel]):
    """A route dependency: the request body, parsed and checked against `model` (a 400
    naming the first wrong field)."""
    async def check(request: Request) -> None:
        body = await request_json(request)      # parsed once: the route gets this object
        if not isinstance(body, dict):
            raise bad(f"the request body must be a JSON object, not {_type_name(body)}")
        try:
            model.model_validate(body)
        except ValidationError as e:
            first = e.errors(include_url=False)[0]
            param = str(first["loc"][0]) if first["loc"] else None
            raise bad(message(first), param) from None
    return check


def route(model: type[BaseModel], *, anthropic: bool = False, listed: bool = True) -> dict:
    """A POST route's decorator arguments: its body's schema, its validation and its
    documented 400 (`listed` False: an alias left out of /openapi.json, still checked)."""
    error = AnthropicErrorResponse if anthropic else ErrorResponse
    PUBLISHED[model.__name__] = model
    return {"dependencies": [Depends(validator(model))], "include_in_schema": listed,
            "openapi_extra": {"requestBody": {"required": True, "content": {
                "application/json": {"schema": {"$ref": REF.format(model=model.__name__)}}}}},
            "responses": {400: {"model": error, "description": "the request is invalid (the field is named)"}}}


def publish(app: FastAPI) -> None:
    """Add the request models that route() refers to to the app's OpenAPI components."""
    plain = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = plain()
            _, defs = models_json_schema([(m, "validation") for m in PUBLISHED.values()], ref_template=REF)
            schema.setdefault("components", {}).setdefault("schemas", {}).update(defs["$defs"])
        return app.openapi_schema

    app.openapi = openapi
