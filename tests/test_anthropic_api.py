"""Anthropic's Messages API through the `anthropic` package (client.messages.create, plain
and streamed, count_tokens, the x-api-key header) on the tiny random model: its text
equals the library's greedy reply to the same messages (llm.chat), the stream follows
Anthropic's documented events, and every error on these routes (validation, 401, 404,
405, 503) is in Anthropic's shape while the OpenAI routes keep OpenAI's. The image case
is in test_images_modes.py."""
from __future__ import annotations

import json
import threading

import anthropic
import httpx
import pytest

from runner.modes.api_common import Options
from runner.modes.server import create_app, serve_in_thread
from runner.sampling import SamplingParams

pytestmark = pytest.mark.fast

KEY = "s3cret"
USER = [{"role": "user", "content": "Name three fruits."}]
SYSTEM = "Answer in one word."
GREEDY = {"temperature": 0}            # the SDK no longer has sampling arguments: sent as extra_body


@pytest.fixture(scope="module")
def base(tiny):
    with serve_in_thread(create_app(tiny, Options(log=False, api_key=KEY))) as url:
        yield url


@pytest.fixture(scope="module")
def client(base):
    return anthropic.Anthropic(base_url=base, api_key=KEY, max_retries=0, timeout=120)


def error_of(r: httpx.Response, kind: str) -> str:
    body = r.json()
    assert body["type"] == "error" and set(body) == {"type", "error"}
    assert body["error"]["type"] == kind and body["error"]["message"]
    return body["error"]["message"]


def test_plain_equals_the_library(tiny, client):
    want = tiny.chat(USER, max_tokens=8, temperature=0)
    ref = tiny.stats
    m = client.messages.create(model="gemma", max_tokens=8, messages=USER, extra_body=GREEDY)
    assert m.type == "message" and m.role == "assistant" and m.id.startswith("msg_")
    assert [b.type for b in m.content] == ["text"] and m.content[0].text == want
    assert m.stop_reason == {"length": "max_tokens", "stop": "end_turn"}[ref.finish_reason]
    u = m.usage
    assert u.input_tokens + u.cache_read_input_tokens == len(tiny.chat_prompt(USER))
    assert u.output_tokens == ref.generated_tokens


def test_system_prompt_as_text_or_blocks(tiny, client):
    want = tiny.chat([{"role": "system", "content": SYSTEM}] + USER, max_tokens=8, temperature=0)
    for system in (SYSTEM, [{"type": "text", "text": "Answer in "}, {"type": "text", "text": "one word."}]):
        m = client.messages.create(model="gemma", max_tokens=8, system=system, messages=USER, extra_body=GREEDY)
        assert m.content[0].text == want


def test_a_conversation_with_blocks(tiny, client):
    turns = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}] + USER
    want = tiny.chat(turns, max_tokens=8, temperature=0)
    blocks = [{"role": "user", "content": [{"type": "text", "text": "Hi"}]},
              {"role": "assistant", "content": [{"type": "thinking", "thinking": "hm", "signature": ""},
                                                {"type": "text", "text": "Hello."}]}] + USER
    m = client.messages.create(model="gemma", max_tokens=8, messages=blocks, extra_body=GREEDY)
    assert m.content[0].text == want


def test_stream_follows_the_documented_events(tiny, client):
    want = tiny.chat(USER, max_tokens=8, temperature=0)
    events = list(client.messages.create(model="gemma", max_tokens=8, messages=USER, stream=True,
                                         extra_body=GREEDY))
    kinds = [e.type for e in events]
    n = kinds.count("content_block_delta")
    assert kinds == ["message_start", "content_block_start"] + ["content_block_delta"] * n + \
        ["content_block_stop", "message_delta", "message_stop"]              # the SDK drops the ping
    assert "".join(e.delta.text for e in events if e.type == "content_block_delta") == want
    assert events[-2].delta.stop_reason == "max_tokens"
    assert events[-2].usage.output_tokens == tiny.stats.generated_tokens
    with client.messages.stream(model="gemma", max_tokens=8, messages=USER, extra_body=GREEDY) as s:
        assert "".join(s.text_stream) == want
        final = s.get_final_message()
    assert final.content[0].text == want and final.usage.output_tokens == tiny.stats.generated_tokens


def test_raw_stream_has_the_ping_and_names_every_event(base):
    with httpx.stream("POST", base + "/v1/messages", headers={"x-api-key": KEY},
                      json={"messages": USER, "max_tokens": 2, "stream": True}) as r:
        lines = [line for line in r.iter_lines() if line]
    names = [line[7:] for line in lines if line.startswith("event: ")]
    datas = [json.loads(line[6:]) for line in lines if line.startswith("data: ")]
    assert names == [d["type"] for d in datas]
    assert names[:3] == ["message_start", "content_block_start", "ping"] and names[-1] == "message_stop"


def test_stop_reasons(tiny, client):
    text = tiny.chat(USER, max_tokens=12, temperature=0)
    word = text.strip()[2:4] or text[:1]
    m = client.messages.create(model="gemma", max_tokens=12, messages=USER, stop_sequences=[word], extra_body=GREEDY)
    assert m.stop_reason == "stop_sequence" and m.stop_sequence == word
    assert m.content[0].text == tiny.chat(USER, max_tokens=12, temperature=0, stop=[word])
    eos = tiny.tokenizer.eos_id                      # a bias that makes the first token the end of text
    m = client.messages.create(model="gemma", max_tokens=12, messages=USER,
                               extra_body={**GREEDY, "logit_bias": {str(eos): 100}})
    assert m.stop_reason == "end_turn" and m.stop_sequence is None and m.content[0].text == ""


def test_count_tokens(tiny, client):
    r = client.messages.count_tokens(model="gemma", system=SYSTEM, messages=USER)
    assert r.input_tokens == len(tiny.chat_prompt([{"role": "system", "content": SYSTEM}] + USER))


def test_server_default_temperature_applies(tiny):
    with serve_in_thread(create_app(tiny, Options(log=False, sampling=SamplingParams(temperature=0)))) as url:
        c = anthropic.Anthropic(base_url=url, api_key="x", max_retries=0, timeout=120)
        m = c.messages.create(model="gemma", max_tokens=6, messages=USER)
    assert m.content[0].text == tiny.chat(USER, max_tokens=6, temperature=0)


def test_api_key_and_route_errors_are_anthropic_shaped(base, client):
    with pytest.raises(anthropic.AuthenticationError) as e:
        anthropic.Anthropic(base_url=base, api_key="wrong", max_retries=0).messages.create(
            model="gemma", max_tokens=2, messages=USER)
    assert e.value.status_code == 401 and e.value.body["error"]["type"] == "authentication_error"
    r = httpx.post(base + "/v1/messages/count_tokens", json={"messages": USER})              # no key
    assert r.status_code == 401 and "API key" in error_of(r, "authentication_error")
    r = httpx.post(base + "/v1/messages/nope", json={}, headers={"x-api-key": KEY})
    assert r.status_code == 404 and error_of(r, "not_found_error")
    r = httpx.get(base + "/v1/messages", headers={"x-api-key": KEY})
    assert r.status_code == 405 and error_of(r, "invalid_request_error")
    r = httpx.post(base + "/v1/chat/completions", json={}, headers={"x-api-key": KEY})       # OpenAI's stay OpenAI's
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"


def test_error_bodies_of_any_shape_become_anthropics():
    from runner.modes.anthropic_api import translate
    openai_shaped = json.dumps({"error": {"message": "bad field", "type": "invalid_request_error"}}).encode()
    assert json.loads(translate(400, openai_shaped)) == \
        {"type": "error", "error": {"type": "invalid_request_error", "message": "bad field"}}
    failed = json.dumps({"error": {"message": "see its log", "type": "server_error"}}).encode()
    assert json.loads(translate(503, failed))["error"]["type"] == "api_error"
    assert json.loads(translate(413, b"Request Entity Too Large")) == \
        {"type": "error", "error": {"type": "request_too_large", "message": "Request Entity Too Large"}}
    assert json.loads(translate(408, b""))["error"] == {"type": "invalid_request_error", "message": "HTTP 408"}


def test_503_while_loading_is_anthropic_shaped(tiny):
    ready = threading.Event()

    def slow_load():
        ready.wait(30)
        return tiny
    with serve_in_thread(create_app(slow_load, Options(log=False))) as url:
        r = httpx.post(url + "/v1/messages", json={"messages": USER, "max_tokens": 2})
        assert r.status_code == 503 and error_of(r, "overloaded_error") == "Loading model"
        ready.set()


IMAGE = {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.png"}}


@pytest.mark.parametrize("body, words", [
    ({"messages": USER}, "max_tokens"),
    ({"messages": USER, "max_tokens": 0}, "max_tokens"),
    ({"messages": USER, "max_tokens": "many"}, "max_tokens"),
    ({"messages": [], "max_tokens": 4}, "messages"),
    ({"messages": "hi", "max_tokens": 4}, "messages"),
    ({"messages": [{"role": "system", "content": "x"}], "max_tokens": 4}, "'system'"),
    ({"messages": [{"role": "user", "content": 5}], "max_tokens": 4}, "content"),
    ({"messages": [{"role": "user", "content": [{"type": "audio"}]}], "max_tokens": 4}, "type"),
    ({"messages": [{"role": "user", "content": [IMAGE]}], "max_tokens": 4}, "base64"),
    ({"messages": [{"role": "user", "content": [{"type": "image", "source": {
        "type": "base64", "media_type": "image/png", "data": "AAAA"}}]}], "max_tokens": 4}, "--mmproj"),
    ({"messages": [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t"}]}], "max_tokens": 4},
     "tool"),
    ({"messages": USER, "max_tokens": 4, "tools": [{"name": "f", "input_schema": {}}]}, "tools"),
    ({"messages": USER, "max_tokens": 4, "system": 5}, "system"),
    ({"messages": USER, "max_tokens": 4, "system": [{"type": "image"}]}, "system"),
    ({"messages": USER, "max_tokens": 4, "stop_sequences": [1]}, "stop_sequences"),
    ({"messages": USER, "max_tokens": 4, "temperature": -1}, "temperature"),
    ({"messages": USER, "max_tokens": 4, "top_k": "all"}, "top_k"),
    ({"messages": USER, "max_tokens": 4, "output_config": {"format": {"type": "json_schema", "schema": {}}}},
     "output_config"),
    ({"messages": [{"role": "user", "content": "word " * 5000}], "max_tokens": 4}, "context"),
])
def test_bad_requests_are_400_in_anthropic_shape(base, body, words):
    r = httpx.post(base + "/v1/messages", json=body, headers={"x-api-key": KEY}, timeout=60)
    assert r.status_code == 400, r.text
    assert words in error_of(r, "invalid_request_error")


def test_nothing_a_client_sends_is_a_500(base):
    for path in ("/v1/messages", "/v1/messages/count_tokens"):
        for body in [b"", b"[]", b"{", b'{"messages": null}', b'{"messages": [null], "max_tokens": 2}',
                     b'{"messages": [{"role": "user"}], "max_tokens": 2}', b'{"max_tokens": 2, "messages": [{}]}',
                     b'{"messages": [{"role": "user", "content": "x"}], "max_tokens": 2, "stream": "yes"}',
                     b'{"messages": [{"role": "user", "content": [{"type": "text"}]}], "max_tokens": 2}']:
            r = httpx.post(base + path, content=body, headers={"x-api-key": KEY, "content-type": "application/json"},
                           timeout=60)
            assert r.status_code < 500, (path, body, r.text)
            if r.status_code >= 400:
                error_of(r, "invalid_request_error")
