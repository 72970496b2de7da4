"""The server with the real 270M model, where the weights matter: JSON mode must end its
object on a real model's text (the tiny random model of test_server.py rambles)."""
from __future__ import annotations

import json

import openai
import pytest

from runner.modes.api_common import Options
from runner.modes.server import create_app, serve_in_thread


@pytest.fixture(scope="module", autouse=True)
def exact_mode():
    """The exact mode (float32 activations) for this module: its tests compare texts
    computed along different paths (the server and the library, and greedy tool calls measured in it), equal to the last bit only there (see
    test_repl.exact_mode); the kernels read the variable at every product and child
    processes inherit it."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GEMMA_RUNNER_KERNELS", "float32")
        yield



@pytest.fixture(scope="module")
def client(llm):
    with serve_in_thread(create_app(llm, Options(log=False, n_predict=8))) as url:
        yield openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=120)


def test_json_object_output_parses(client):
    haiku = [{"role": "user", "content": "Write a haiku about the sea."}]
    r = client.chat.completions.create(model="m", messages=haiku, max_tokens=48, temperature=0,
                                       response_format={"type": "json_object"})
    assert r.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(r.choices[0].message.content), dict)
    # sampled: whatever the draw, a finished reply is an object; an unfinished one a prefix
    for seed in range(3):
        r = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "Describe a cat."}],
                                           max_tokens=24, temperature=1.0, seed=seed,
                                           response_format={"type": "json_object"})
        text = r.choices[0].message.content
        if r.choices[0].finish_reason == "stop":
            assert isinstance(json.loads(text), dict)
        else:
            assert text.lstrip().startswith("{")


WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "The current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 30},
                                                    "unit": {"enum": ["celsius", "fahrenheit"]}},
                   "required": ["city", "unit"], "additionalProperties": False}}}


def test_tool_calls_on_the_real_model_parse_and_validate(client):
    """The built-in Gemma tool prompt on the real model: a required call names the tool
    and its arguments validate; the streamed reply assembles to the same call. One call
    (parallel_tool_calls false): allowed a list, the greedy 270M repeats the call (with
    the other unit) until the token limit."""
    from openai.lib.streaming.chat import ChatCompletionStreamState
    import jsonschema
    messages = [{"role": "user", "content": "What is the weather like in Paris today?"}]
    kw = dict(model="m", messages=messages, tools=[WEATHER_TOOL], tool_choice="required", temperature=0,
              max_tokens=64, parallel_tool_calls=False)
    r = client.chat.completions.create(**kw)
    assert r.choices[0].finish_reason == "tool_calls"
    (call,) = r.choices[0].message.tool_calls
    assert call.function.name == "get_weather"
    jsonschema.validate(json.loads(call.function.arguments), WEATHER_TOOL["function"]["parameters"])
    state = ChatCompletionStreamState()
    for chunk in client.chat.completions.create(stream=True, **kw):
        state.handle_chunk(chunk)
    (again,) = state.current_completion_snapshot.choices[0].message.tool_calls
    assert (again.function.name, again.function.arguments) == (call.function.name, call.function.arguments)


def test_tool_calls_in_the_default_mode_parse_and_validate(client, monkeypatch):
    """The same required call with 8-bit activations (the default mode; the module runs
    the exact one): the bar is the property a client relies on, one call of the tool
    whose arguments validate, streamed or not. Not the same text as the exact mode's, nor
    necessarily streamed and not: the streamed request finds its prompt in the cache, and
    a last-bit difference between those paths can move an 8-bit code (see
    test_repl.exact_mode)."""
    import jsonschema
    monkeypatch.delenv("GEMMA_RUNNER_KERNELS")
    messages = [{"role": "user", "content": "What is the weather like in Paris today?"}]
    kw = dict(model="m", messages=messages, tools=[WEATHER_TOOL], tool_choice="required", temperature=0,
              max_tokens=64, parallel_tool_calls=False)
    r = client.chat.completions.create(**kw)
    chunks = list(client.chat.completions.create(stream=True, **kw))
    from openai.lib.streaming.chat import ChatCompletionStreamState
    state = ChatCompletionStreamState()
    for chunk in chunks:
        state.handle_chunk(chunk)
    for choice in (r.choices[0], state.current_completion_snapshot.choices[0]):
        assert choice.finish_reason == "tool_calls"
        (call,) = choice.message.tool_calls
        assert call.function.name == "get_weather"
        jsonschema.validate(json.loads(call.function.arguments), WEATHER_TOOL["function"]["parameters"])
