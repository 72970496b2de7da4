"""The server with the real 270M model, where the weights matter: JSON mode must end its
object on a real model's text (the tiny random model of test_server.py rambles)."""
from __future__ import annotations

import json

import openai
import pytest

from runner.modes.api_common import Options
from runner.modes.server import create_app, serve_in_thread


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
