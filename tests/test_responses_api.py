"""OpenAI's Responses API through the `openai` package (client.responses.create, plain and
streamed) on the tiny random model: its text equals the library's greedy reply to the
same messages (llm.chat), its events follow OpenAI's documented order, and every bad
request is a 400 in OpenAI's error shape. The image case is in test_images_modes.py."""
from __future__ import annotations

import json

import httpx
import openai
import pytest

from runner.modes.api_common import Options
from runner.modes.server import create_app, serve_in_thread
from runner.sampling import SamplingParams

pytestmark = pytest.mark.fast

USER = "Name three fruits."
SYSTEM = "Answer in one word."


@pytest.fixture(scope="module")
def base(tiny):
    with serve_in_thread(create_app(tiny, Options(log=False, n_predict=8))) as url:
        yield url


@pytest.fixture(scope="module")
def client(base):
    return openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0, timeout=120)


def test_plain_equals_the_library(tiny, client):
    want = tiny.chat([{"role": "user", "content": USER}], max_tokens=8, temperature=0)
    ref = tiny.stats
    r = client.responses.create(model="gemma", input=USER, max_output_tokens=8, temperature=0)
    assert r.output_text == want
    assert r.object == "response" and r.id.startswith("resp_")
    assert r.status == ("incomplete" if ref.finish_reason == "length" else "completed")
    if r.status == "incomplete":
        assert r.incomplete_details.reason == "max_output_tokens"
    msg = r.output[0]
    assert msg.type == "message" and msg.role == "assistant" and msg.content[0].type == "output_text"
    assert r.usage.input_tokens == len(tiny.chat_prompt([{"role": "user", "content": USER}]))
    assert r.usage.output_tokens == ref.generated_tokens
    assert r.usage.total_tokens == r.usage.input_tokens + r.usage.output_tokens


def test_instructions_and_message_items_equal_the_library(tiny, client):
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello."}, {"role": "user", "content": USER}]
    want = tiny.chat(messages, max_tokens=8, temperature=0)
    r = client.responses.create(model="gemma", instructions=SYSTEM, max_output_tokens=8, temperature=0, input=[
        {"role": "user", "content": "Hi"},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Hello."}]},
        {"role": "user", "content": [{"type": "input_text", "text": USER}]}])
    assert r.output_text == want and r.instructions == SYSTEM
    developer = client.responses.create(model="gemma", max_output_tokens=8, temperature=0, input=[
        {"role": "developer", "content": SYSTEM}, {"role": "user", "content": USER}])
    assert developer.output_text == tiny.chat(messages[:1] + messages[3:], max_tokens=8, temperature=0)


def test_stream_follows_the_documented_events(tiny, client):
    want = tiny.chat([{"role": "user", "content": USER}], max_tokens=8, temperature=0)
    events = list(client.responses.create(model="gemma", input=USER, max_output_tokens=8, temperature=0,
                                          stream=True))
    kinds = [e.type for e in events]
    n = kinds.count("response.output_text.delta")
    end = "response.incomplete" if events[-1].response.status == "incomplete" else "response.completed"
    assert kinds == ["response.created", "response.in_progress", "response.output_item.added",
                     "response.content_part.added"] + ["response.output_text.delta"] * n + \
        ["response.output_text.done", "response.content_part.done", "response.output_item.done", end]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == want
    assert events[-4].text == want and events[-1].response.output[0].content[0].text == want
    item_ids = {e.item_id for e in events if hasattr(e, "item_id")}
    assert item_ids == {events[2].item.id}
    assert events[-1].response.usage.output_tokens == tiny.stats.generated_tokens


def test_raw_stream_names_its_events(base):
    body = {"input": USER, "max_output_tokens": 2, "stream": True}
    with httpx.stream("POST", base + "/v1/responses", json=body) as r:
        lines = [line for line in r.iter_lines() if line]
    names = [line[7:] for line in lines if line.startswith("event: ")]
    datas = [json.loads(line[6:]) for line in lines if line.startswith("data: ")]
    assert names == [d["type"] for d in datas] and names[0] == "response.created"


def test_json_object_format_gives_json(tiny, client):
    r = client.responses.create(model="gemma", input="A JSON object:", max_output_tokens=24, temperature=0,
                                text={"format": {"type": "json_object"}})
    if r.status == "completed":
        assert isinstance(json.loads(r.output_text), dict)
    else:
        assert r.output_text.lstrip().startswith("{")


def test_server_defaults_apply(tiny):
    with serve_in_thread(create_app(tiny, Options(log=False, sampling=SamplingParams(temperature=0)))) as url:
        c = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=120)
        r = c.responses.create(model="gemma", input=USER, max_output_tokens=6)
    assert r.output_text == tiny.chat([{"role": "user", "content": USER}], max_tokens=6, temperature=0)
    assert r.temperature == 0


@pytest.mark.parametrize("body, param", [
    ({}, "input"),
    ({"input": []}, "input"),
    ({"input": 5}, "input"),
    ({"input": [5]}, "input"),
    ({"input": [{"role": "robot", "content": "hi"}]}, "input"),
    ({"input": [{"role": "user", "content": [{"type": "input_audio"}]}]}, "input"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "file_id": "f"}]}]}, "input"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "data:,"}]}]}, "input"),
    ({"input": [{"type": "function_call_output", "call_id": "c", "output": "x"}]}, "input"),
    ({"input": "hi", "previous_response_id": "resp_1"}, "previous_response_id"),
    ({"input": "hi", "store": True}, "store"),
    ({"input": "hi", "background": True}, "background"),
    ({"input": "hi", "tools": [{"type": "function", "name": "f"}]}, "tools"),
    ({"input": "hi", "text": {"format": {"type": "json_schema", "name": "x", "schema": {}}}}, "text.format"),
    ({"input": "hi", "text": {"format": {"type": "xml"}}}, "text.format"),
    ({"input": "hi", "text": "plain"}, "text"),
    ({"input": "hi", "instructions": 3}, "instructions"),
    ({"input": "hi", "max_output_tokens": 0}, "max_output_tokens"),
    ({"input": "hi", "temperature": "hot"}, "temperature"),
    ({"input": "hi", "top_p": 2}, "top_p"),
    ({"input": "word " * 5000}, "input"),
])
def test_bad_requests_are_400_in_openai_shape(base, body, param):
    r = httpx.post(base + "/v1/responses", json=body, timeout=60)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and err["message"] and err["param"] == param


def test_nothing_a_client_sends_is_a_500(base):
    for body in [b"", b"[]", b"{", b'{"input": null}', b'{"input": [null]}', b'{"input": [{"content": 1}]}',
                 b'{"input": "x", "stream": "yes"}', b'{"input": "x", "metadata": 5}', b'{"input": "\\ud800"}']:
        r = httpx.post(base + "/v1/responses", content=body, headers={"content-type": "application/json"},
                       timeout=60)
        assert r.status_code < 500, (body, r.text)
        if r.status_code >= 400:
            assert r.json()["error"]["message"]
