"""Structured output and tools through the server, as the `openai` package (unchanged)
uses them: `chat.completions.parse` with a Pydantic model, tool calls, streamed tool
calls assembled by the package's own stream state, tool_choice, the follow-up prompt,
and 400s naming the field. Plumbing on the tiny random model: the constraint makes even
random weights write valid JSON, which `jsonschema` (the independent validator) checks."""
from __future__ import annotations

import json
from typing import Literal

import httpx
import jsonschema
import openai
import pytest
from openai.lib.streaming.chat import ChatCompletionStreamState
from pydantic import BaseModel, Field

from runner.chat import render, template_supports_tools
from runner.modes.api_common import Options
from runner.modes.server import create_app, serve_in_thread
from runner.structured.tools import parse_tools

pytestmark = pytest.mark.fast

CHAT = [{"role": "user", "content": "What is the weather in Paris?"}]
WEATHER = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 12},
                                            "unit": {"enum": ["celsius", "fahrenheit"]}},
           "required": ["city", "unit"], "additionalProperties": False}
ADD = {"type": "object", "properties": {"a": {"type": "integer", "minimum": -99, "maximum": 99},
                                        "b": {"type": "integer", "minimum": -99, "maximum": 99}},
       "required": ["a", "b"], "additionalProperties": False}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Current weather in a city",
                                           "parameters": WEATHER}},
         {"type": "function", "function": {"name": "add", "description": "Add two integers", "parameters": ADD}}]
PARAMS = {"get_weather": WEATHER, "add": ADD}


@pytest.fixture(scope="module")
def llm(tiny_path):
    import runner
    return runner.load(tiny_path, n_ctx=4096, threads=2)


@pytest.fixture(scope="module")
def base(llm):
    with serve_in_thread(create_app(llm, Options(log=False, n_predict=200))) as url:
        yield url


@pytest.fixture(scope="module")
def client(base):
    return openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0, timeout=120)


def check_calls(calls) -> list[tuple[str, str]]:
    """Each call has an id, a known name and arguments that validate; (name, arguments)."""
    out = []
    for c in calls:
        assert c.id and c.type == "function"
        jsonschema.validate(json.loads(c.function.arguments), PARAMS[c.function.name])
        out.append((c.function.name, c.function.arguments))
    return out


def streamed(client, **kw):
    """The completion the openai package assembles from a stream."""
    state = ChatCompletionStreamState()
    for chunk in client.chat.completions.create(stream=True, **kw):
        state.handle_chunk(chunk)
    return state.current_completion_snapshot


# -- response_format ------------------------------------------------------------------------

class Pet(BaseModel):
    name: str = Field(max_length=8)
    kind: Literal["cat", "dog", "parrot"]
    age: int = Field(ge=0, le=30)
    vaccinated: bool


def test_parse_with_a_pydantic_model_returns_the_object(client):
    for seed in range(2):
        r = client.chat.completions.parse(model="m", messages=[{"role": "user", "content": "Describe a pet."}],
                                          response_format=Pet, temperature=1.0, seed=seed, max_tokens=200)
        pet = r.choices[0].message.parsed
        assert isinstance(pet, Pet) and r.choices[0].finish_reason == "stop"
        assert Pet.model_validate_json(r.choices[0].message.content) == pet


@pytest.mark.parametrize("stream", [False, True])
def test_json_schema_output_validates_in_chat_and_completions(client, base, stream):
    schema = {"type": "array", "items": {"type": "string", "format": "date"}, "minItems": 1, "maxItems": 3}
    rf = {"type": "json_schema", "json_schema": {"name": "dates", "schema": schema, "strict": True}}
    if stream:
        text = "".join(c.choices[0].text for c in client.completions.create(
            model="m", prompt="Dates:", extra_body={"response_format": rf}, max_tokens=200, temperature=0,
            stream=True) if c.choices)
    else:
        r = client.chat.completions.create(model="m", messages=CHAT, response_format=rf, max_tokens=200, seed=3)
        assert r.choices[0].finish_reason == "stop"
        text = r.choices[0].message.content
    jsonschema.validate(json.loads(text), schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)


def test_llama_cpp_json_schema_field(base):
    schema = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 3, "maximum": 17}},
              "required": ["n"], "additionalProperties": False}
    r = httpx.post(base + "/completion", json={"prompt": "N:", "json_schema": schema, "n_predict": 100}, timeout=120)
    assert r.status_code == 200 and r.json()["stop_type"] == "eos"
    jsonschema.validate(json.loads(r.json()["content"]), schema)


# -- tools ----------------------------------------------------------------------------------

def brace_bias(llm, *pieces: tuple[str, float]) -> dict:
    """logit_bias on the byte tokens of characters ('{' pushes a reply into a call)."""
    return {str(llm.tokenizer.token_id(f"<0x{ord(c):02X}>")): b for c, b in pieces}


@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "add"}}])
def test_required_and_named_tools_always_call(client, choice):
    for seed in range(2):
        r = client.chat.completions.create(model="m", messages=CHAT, tools=TOOLS, tool_choice=choice,
                                           parallel_tool_calls=False, temperature=1.0, seed=seed)
        msg, finish = r.choices[0].message, r.choices[0].finish_reason
        assert finish == "tool_calls" and msg.content is None and len(msg.tool_calls) == 1
        names = [n for n, _ in check_calls(msg.tool_calls)]
        if isinstance(choice, dict):
            assert names == ["add"]


def test_tool_choice_none_never_calls(llm, client):
    for seed in range(2):
        r = client.chat.completions.create(model="m", messages=CHAT, tools=TOOLS, tool_choice="none",
                                           temperature=1.0, seed=seed, max_tokens=6,
                                           logit_bias=brace_bias(llm, ("{", 100), ("[", 100)))
        assert not r.choices[0].message.tool_calls and r.choices[0].finish_reason != "tool_calls"
        assert not r.choices[0].message.content.lstrip().startswith(("{", "["))


def test_auto_is_text_or_calls_that_validate(llm, client):
    kinds = set()
    for seed, bias in [(0, None), (1, None), (2, brace_bias(llm, ("{", 100)))]:
        r = client.chat.completions.create(model="m", messages=CHAT, tools=TOOLS, temperature=1.0, seed=seed,
                                           logit_bias=bias, max_tokens=300)
        msg = r.choices[0].message
        if msg.tool_calls:                      # (cut by the limit, OpenAI's shape: finish_reason "length")
            assert r.choices[0].finish_reason == "tool_calls" and msg.content is None
            check_calls(msg.tool_calls)
            kinds.add("calls")
        else:
            assert not msg.content.lstrip().startswith(("{", "["))
            kinds.add("text")
    assert kinds == {"text", "calls"}


def test_parallel_calls_come_as_a_list_unless_turned_off(llm, client):
    """With a '[' pushed first (and ']' favoured, so that random weights close the list),
    a reply is a list of calls; with parallel_tool_calls false '[' cannot start it."""
    bias = brace_bias(llm, ("[", 100), ("]", 10))
    r = client.chat.completions.create(model="m", messages=CHAT, tools=TOOLS, temperature=1.0, seed=0,
                                       logit_bias=bias, max_tokens=300)
    assert r.choices[0].finish_reason == "tool_calls" and len(check_calls(r.choices[0].message.tool_calls)) >= 1
    r = client.chat.completions.create(model="m", messages=CHAT, tools=TOOLS, tool_choice="required", seed=0,
                                       parallel_tool_calls=False, temperature=1.0, logit_bias=bias)
    assert r.choices[0].finish_reason == "tool_calls" and len(r.choices[0].message.tool_calls) == 1


def test_tools_beside_a_response_format_give_calls_or_that_json(client):
    """tool_choice auto with a json_schema response_format: the reply is calls, or a
    value of the response schema (read once it is complete)."""
    schema = {"type": "object", "properties": {"answer": {"type": "string", "maxLength": 10}},
              "required": ["answer"], "additionalProperties": False}
    rf = {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}}
    for seed in range(3):
        for stream in (False, True):
            kw = dict(model="m", messages=CHAT, tools=TOOLS, response_format=rf, temperature=1.0, seed=seed,
                      parallel_tool_calls=False)
            r = (streamed(client, **kw) if stream else client.chat.completions.create(**kw)).choices[0]
            if r.message.tool_calls:
                assert r.finish_reason == "tool_calls" and check_calls(r.message.tool_calls)
            else:
                assert r.finish_reason == "stop"
                jsonschema.validate(json.loads(r.message.content), schema)


@pytest.mark.parametrize("choice, push", [("required", False), ("auto", True), ("auto", False)])
def test_streamed_replies_assemble_to_the_non_streamed_ones(llm, client, choice, push):
    """Calls (and, with auto, text) arrive in a stream as the openai package assembles
    them into the same reply as a non-streamed request with the same seed."""
    kw = dict(model="m", messages=CHAT, tools=TOOLS, tool_choice=choice, temperature=1.0, seed=5,
              logit_bias=brace_bias(llm, ("{", 100)) if push else None, parallel_tool_calls=choice == "auto",
              max_tokens=60 if choice == "auto" and not push else None)
    whole = client.chat.completions.create(**kw).choices[0]
    parts = streamed(client, **kw).choices[0]
    assert whole.finish_reason == parts.finish_reason
    if choice == "auto" and not push:
        assert not whole.message.tool_calls and parts.message.content == whole.message.content
        return
    assert whole.finish_reason == "tool_calls"
    assert check_calls(parts.message.tool_calls) == check_calls(whole.message.tool_calls)
    assert [c.index for c in parts.message.tool_calls] == list(range(len(whole.message.tool_calls)))


# -- the prompt -----------------------------------------------------------------------------

def test_a_follow_up_with_the_tools_result_renders_in_the_built_in_format():
    spec = parse_tools(TOOLS[:1])
    messages = [{"role": "developer", "content": "Be brief."}, CHAT[0],
                {"role": "assistant", "content": None, "tool_calls": [{
                    "id": "call_1", "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris", "unit": "celsius"}'}}]},
                {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 21}'}]
    text = "".join(render(messages, "gemma", tools=spec))
    defs = "[\n" + json.dumps({"name": "get_weather", "description": "Current weather in a city",
                               "parameters": WEATHER}) + "\n]"
    assert text == (
        "<bos><start_of_turn>user\nBe brief.\n\n"
        "You have access to functions. If you decide to invoke any of the function(s),\n"
        "you MUST put it in the format of\n"
        '{"name": function name, "parameters": dictionary of argument name and its value}\n'
        "To call several functions at once, put the calls in a JSON list: [{...}, {...}]\n"
        "You SHOULD NOT include any other text in the response if you call a function\n"
        f"{defs}\n\nWhat is the weather in Paris?<end_of_turn>\n"
        '<start_of_turn>model\n{"name": "get_weather", "parameters": {"city": "Paris", "unit": "celsius"}}'
        "<end_of_turn>\n"
        '<start_of_turn>user\n```tool_output\n{"temp": 21}\n```<end_of_turn>\n'
        "<start_of_turn>model\n")


def test_the_server_renders_the_follow_up_and_answers(llm, client):
    messages = [CHAT[0], {"role": "assistant", "tool_calls": [{"id": "c", "type": "function", "function": {
        "name": "add", "arguments": '{"a": 1, "b": 2}'}}]}, {"role": "tool", "tool_call_id": "c", "content": "3"}]
    r = client.chat.completions.create(model="m", messages=messages, tools=TOOLS, max_tokens=4, temperature=0)
    assert r.usage.prompt_tokens == len(llm.chat_prompt(messages, tools=parse_tools(TOOLS)).tokens)


TOOL_TEMPLATE = ("{% if tools %}TOOLS:{% for t in tools %}{{ t.function.name }};{% endfor %}{{ '\\n' }}{% endif %}"
                 "{% for m in messages %}{{ m.role }}: {% if m.tool_calls %}{% for c in m.tool_calls %}"
                 "{{ c.function.name }}{{ c.function.arguments | tojson }}{% endfor %}{% else %}{{ m.content }}"
                 "{% endif %}{{ '\\n' }}{% endfor %}")


def test_a_template_that_renders_tools_gets_them_and_others_the_built_in_prompt():
    spec = parse_tools(TOOLS)
    assert template_supports_tools(TOOL_TEMPLATE)
    msgs = [CHAT[0], {"role": "assistant", "tool_calls": [{"id": "c", "type": "function", "function": {
        "name": "add", "arguments": '{"a": 1, "b": 2}'}}]}, {"role": "tool", "content": "3"}]
    assert "".join(render(msgs, TOOL_TEMPLATE, tools=spec)) == (
        'TOOLS:get_weather;add;\nuser: What is the weather in Paris?\nassistant: add{"a": 1, "b": 2}\ntool: 3\n')
    plain = "{% for m in messages %}{{ m.role }}: {{ m.content }}{{ '\\n' }}{% endfor %}"
    assert not template_supports_tools(plain)
    text = "".join(render(msgs, plain, tools=spec))
    assert text.startswith("system: You have access to functions.") and "```tool_output\n3\n```" in text
    assert 'assistant: {"name": "add", "parameters": {"a": 1, "b": 2}}' in text


# -- the Responses API ------------------------------------------------------------------------

FLAT = [{"type": "function", **t["function"]} for t in TOOLS]       # the Responses API's tool shape


def test_responses_required_and_named_tools_call_and_stream_the_same(client):
    """Function tools on /v1/responses: function_call output items whose arguments
    validate; a stream's events build the same items, arguments delta by delta."""
    for choice in ("required", {"type": "function", "name": "add"}):
        kw = dict(model="m", input=CHAT[0]["content"], tools=FLAT, tool_choice=choice, temperature=1.0,
                  max_output_tokens=200, extra_body={"seed": 2})
        r = client.responses.create(**kw)
        assert r.status == "completed" and r.output and all(o.type == "function_call" for o in r.output)
        for o in r.output:
            assert o.call_id and (choice == "required" or o.name == "add")
            jsonschema.validate(json.loads(o.arguments), PARAMS[o.name])
        events = list(client.responses.create(**kw, stream=True))
        final = events[-1].response
        assert events[-1].type == "response.completed"
        assert [(o.name, o.arguments) for o in final.output] == [(o.name, o.arguments) for o in r.output]
        for i, o in enumerate(final.output):
            deltas = [e.delta for e in events if e.type == "response.function_call_arguments.delta"
                      and e.output_index == i]
            done = [e for e in events if e.type == "response.output_item.done" and e.output_index == i]
            assert "".join(deltas) == o.arguments and done[0].item.arguments == o.arguments


def test_responses_tool_choice_none_answers_in_text(client):
    r = client.responses.create(model="m", input=CHAT[0]["content"], tools=FLAT, tool_choice="none",
                                temperature=0, max_output_tokens=8)
    assert [o.type for o in r.output] == ["message"]


def test_responses_follow_up_renders_as_the_chat_one(llm, client):
    """function_call and function_call_output items render as an assistant message with
    tool_calls and a tool message: the prompt (its token count) and the greedy reply are
    those of the same conversation through chat completions."""
    args = '{"a": 1, "b": 2}'
    r = client.responses.create(model="m", tools=FLAT, temperature=0, max_output_tokens=6, tool_choice="none", input=[
        CHAT[0], {"type": "function_call", "call_id": "c1", "name": "add", "arguments": args},
        {"type": "function_call_output", "call_id": "c1", "output": "3"}])
    messages = [CHAT[0], {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "add", "arguments": args}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "3"}]
    chat = client.chat.completions.create(model="m", messages=messages, tools=TOOLS, tool_choice="none",
                                          temperature=0, max_tokens=6)
    assert r.usage.input_tokens == chat.usage.prompt_tokens == len(
        llm.chat_prompt(messages, tools=parse_tools(TOOLS, "none")).tokens)
    assert r.output_text == chat.choices[0].message.content


# -- the Anthropic Messages API -----------------------------------------------------------------

CUSTOM = [{"name": t["function"]["name"], "description": t["function"]["description"],
           "input_schema": t["function"]["parameters"]} for t in TOOLS]    # Anthropic's tool shape


@pytest.fixture(scope="module")
def claude(base):
    import anthropic
    return anthropic.Anthropic(base_url=base, api_key="unused", max_retries=0, timeout=120)


def test_anthropic_any_and_named_tools_call_and_stream_the_same(claude):
    """Custom tools on /v1/messages: tool_use blocks whose input validates, stop_reason
    tool_use; the SDK's stream helper assembles the same blocks from input_json_delta."""
    for choice in ({"type": "any"}, {"type": "tool", "name": "add"}):
        # room for the long strings a random model writes at temperature 1 (its sampled
        # text changes with any last-bit change in the products)
        kw = dict(model="m", max_tokens=600, messages=CHAT, tools=CUSTOM, tool_choice=choice,
                  extra_body={"temperature": 1.0, "seed": 4})
        m = claude.messages.create(**kw)
        assert m.stop_reason == "tool_use" and m.content and all(b.type == "tool_use" for b in m.content)
        for b in m.content:
            assert b.id.startswith("toolu_") and (choice["type"] == "any" or b.name == "add")
            jsonschema.validate(b.input, PARAMS[b.name])
        with claude.messages.stream(**kw) as s:
            final = s.get_final_message()
        assert final.stop_reason == "tool_use"
        assert [(b.name, b.input) for b in final.content] == [(b.name, b.input) for b in m.content]


def test_anthropic_tool_choice_none_and_one_call_at_a_time(claude):
    m = claude.messages.create(model="m", max_tokens=8, messages=CHAT, tools=CUSTOM, tool_choice={"type": "none"},
                               extra_body={"temperature": 0})
    assert [b.type for b in m.content] == ["text"] and m.stop_reason != "tool_use"
    m = claude.messages.create(model="m", max_tokens=200, messages=CHAT, tools=CUSTOM,
                               tool_choice={"type": "any", "disable_parallel_tool_use": True},
                               extra_body={"temperature": 1.0, "seed": 1})
    assert len(m.content) == 1 and m.content[0].type == "tool_use"


def test_anthropic_follow_up_renders_as_the_chat_one(llm, claude, client):
    """An assistant's text and tool_use blocks, then the user's tool_result: the prompt
    and the greedy reply are those of the same conversation through chat completions."""
    r = claude.messages.create(model="m", max_tokens=6, tools=CUSTOM, tool_choice={"type": "none"},
                               extra_body={"temperature": 0}, messages=[
        CHAT[0], {"role": "assistant", "content": [{"type": "text", "text": "Adding."},
                                                   {"type": "tool_use", "id": "t1", "name": "add",
                                                    "input": {"a": 1, "b": 2}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "3"}]}])
    messages = [CHAT[0], {"role": "assistant", "content": "Adding.", "tool_calls": [
        {"id": "t1", "type": "function", "function": {"name": "add", "arguments": '{"a": 1, "b": 2}'}}]},
        {"role": "tool", "tool_call_id": "t1", "content": "3"}]
    chat = client.chat.completions.create(model="m", messages=messages, tools=TOOLS, tool_choice="none",
                                          temperature=0, max_tokens=6)
    assert r.usage.input_tokens + r.usage.cache_read_input_tokens == chat.usage.prompt_tokens == len(
        llm.chat_prompt(messages, tools=parse_tools(TOOLS, "none")).tokens)
    assert r.content[0].text == chat.choices[0].message.content


# -- errors ---------------------------------------------------------------------------------

@pytest.mark.parametrize("extra, param, words", [
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {
        "type": "object", "properties": {"zip": {"type": "string", "pattern": "[0-9]+"}}}}}},
     "response_format", ["'pattern'", "#/properties/zip"]),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}, "response_format", ["schema"]),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"format": "email",
                                                                                        "type": "string"}}}},
     "response_format", ['"email"']),
    ({"tools": {"type": "function"}}, "tools", ["array"]),
    ({"tools": [{"type": "function"}]}, "tools[0]", ["function"]),
    ({"tools": [{"type": "function", "function": {"name": "bad name!"}}]}, "tools[0].function.name", ["letters"]),
    ({"tools": [TOOLS[1], TOOLS[1]]}, "tools[1].function.name", ["twice"]),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}}]},
     "tools[0].function.parameters", ["object"]),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"x": {"type": "array", "uniqueItems": True}}}}}]},
     "tools[0].function.parameters", ["'uniqueItems'", "#/properties/x"]),
    ({"tools": TOOLS, "tool_choice": "always"}, "tool_choice", ["required"]),
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice", ["nope"]),
    ({"tool_choice": "required"}, "tool_choice", ["tools"]),
    ({"tools": TOOLS, "parallel_tool_calls": "yes"}, "parallel_tool_calls", ["true or false"]),
    ({"messages": [CHAT[0], {"role": "assistant", "tool_calls": [{"id": "c", "type": "function", "function": {
        "name": "add", "arguments": "{not json"}}]}]}, "messages", ["messages[1].tool_calls[0].function.arguments"]),
    ({"messages": [CHAT[0], {"role": "assistant", "tool_calls": "add"}]}, "messages", ["messages[1].tool_calls"]),
])
def test_unsupported_keywords_and_malformed_tools_are_400_naming_the_field(base, extra, param, words):
    r = httpx.post(base + "/v1/chat/completions", json={"messages": CHAT, "max_tokens": 2, **extra}, timeout=60)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param and err["type"] == "invalid_request_error"
    for w in words:
        assert w in err["message"], err["message"]


def test_schema_errors_on_the_other_endpoints(base):
    bad = {"type": "string", "pattern": "x"}
    r = httpx.post(base + "/completion", json={"prompt": "x", "json_schema": bad})
    assert r.status_code == 400 and r.json()["error"]["param"] == "json_schema" and "'pattern'" in r.text
    r = httpx.post(base + "/v1/completions", json={"prompt": "x", "response_format": {
        "type": "json_schema", "json_schema": {"name": "s", "schema": bad}}})
    assert r.status_code == 400 and r.json()["error"]["param"] == "response_format"


ODD_TOOLS = [1, "x", {}, [None], [1], ["x"], [{}], [{"type": None}], [{"type": "function", "name": 5}],
             [{"type": "function", "name": "f", "parameters": 3}], [{"name": "f", "input_schema": 3}],
             [{"name": "f", "input_schema": {"type": "object", "properties": 4}}], [{"type": "custom", "name": []}]]
ODD_CHOICES = [1, "x", "any", {}, {"type": 3}, {"type": "tool"}, {"type": "tool", "name": 3}, {"type": "function"},
               {"type": "function", "name": []}, {"type": "any", "disable_parallel_tool_use": "y"}]


def test_nothing_sent_about_tools_to_responses_or_messages_is_a_500(base):
    c = httpx.Client(timeout=60)
    hi = [{"role": "user", "content": "hi"}]
    bodies = [("/v1/responses", {"input": "hi", "max_output_tokens": 2, **extra}) for extra in
              [{"tools": t} for t in ODD_TOOLS] + [{"tools": FLAT, "tool_choice": ch} for ch in ODD_CHOICES]]
    bodies += [("/v1/messages", {"messages": hi, "max_tokens": 2, **extra}) for extra in
               [{"tools": t} for t in ODD_TOOLS] + [{"tools": CUSTOM, "tool_choice": ch} for ch in ODD_CHOICES]]
    for item in [{"type": "function_call"}, {"type": "function_call", "call_id": 1},
                 {"type": "function_call", "call_id": "a", "name": 1},
                 {"type": "function_call", "call_id": "a", "name": "add", "arguments": "{x"}]:
        bodies.append(("/v1/responses", {"input": hi + [item, {"type": "function_call_output", "call_id": "a",
                                                               "output": 3}], "max_output_tokens": 2}))
    for block in [{"type": "tool_use"}, {"type": "tool_use", "id": 1, "name": "f"},
                  {"type": "tool_use", "id": "a", "name": "f", "input": 3}, {"type": "tool_result", "tool_use_id": 3}]:
        bodies.append(("/v1/messages", {"messages": hi + [{"role": "assistant", "content": [block]},
                                                          {"role": "user", "content": [block]}], "max_tokens": 2}))
    for path, body in bodies:
        r = c.post(base + path, json=body)
        assert r.status_code in (200, 400), (path, body, r.status_code, r.text)

