"""Typed request bodies (issue 16, item 6): /openapi.json describes every route's body
(runner/modes/bodies.py), a body that breaks its schema is a 400 naming the field in the
API's error shape (never FastAPI's 422) with a one-line log, and schemathesis, run
against /openapi.json over every operation, finds no 5xx and sees every schema-invalid
body refused with a 4xx. The server runs the tiny random model with a 64-token context,
so that whatever max_tokens a generated request asks for, its generation is short."""
from __future__ import annotations

import json
import subprocess
import sys
import threading

import httpx
import pytest

from runner.modes import bodies
from runner.modes.api_common import Options
from runner.modes.server import create_app, serve_in_thread

CHAT = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def llm(tiny_path):
    import runner
    return runner.load(tiny_path, n_ctx=64, threads=1)


@pytest.fixture(scope="module")
def served(llm):
    """(base URL, the server's log lines)."""
    app = create_app(llm, Options(log=True, n_predict=4))
    lines: list[str] = []
    lock = threading.Lock()

    def log(message: str) -> None:
        with lock:
            lines.append(message)

    app.state.gemma.log = log
    with serve_in_thread(app) as url:
        yield url, lines


@pytest.fixture
def base(served):
    return served[0]


def tracebacks(lines: list[str]) -> list[str]:
    return [m for m in lines if "Traceback" in m]


# -- the schema -------------------------------------------------------------------------------

@pytest.mark.fast
def test_openapi_json_declares_the_body_of_every_post_route(base):
    r = httpx.get(base + "/openapi.json")
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    schema = r.json()
    components = schema["components"]["schemas"]
    posts = {path: ops["post"] for path, ops in schema["paths"].items() if "post" in ops}
    assert set(posts) == {"/v1/chat/completions", "/v1/completions", "/completion", "/tokenize", "/detokenize", "/apply-template",
                          "/v1/embeddings", "/embedding", "/v1/responses", "/v1/messages",
                          "/v1/messages/count_tokens"}
    for path, op in posts.items():
        ref = op["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        model = components[ref.rsplit("/", 1)[1]]
        assert model["type"] == "object" and model["additionalProperties"] is True, path
        assert model["examples"], path
        error = op["responses"]["400"]["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
        assert error == ("AnthropicErrorResponse" if path.startswith("/v1/messages") else "ErrorResponse")
        assert "422" not in op["responses"], path
    chat = components["ChatCompletionRequest"]["properties"]
    assert chat["temperature"]["anyOf"][0] == {"type": "number", "minimum": 0.0, "maximum": 2.0}
    assert chat["repeat_penalty"]["anyOf"][0]["exclusiveMinimum"] == 0.0
    assert chat["top_logprobs"]["anyOf"][0] == {"type": "integer", "minimum": 0, "maximum": 20}
    assert components["MessagesRequest"]["required"] == ["messages", "max_tokens"]
    # the page and the aliases (/chat/completions, /completions, /embeddings, /responses) are left out
    assert not {"/", "/favicon.ico", "/chat/completions", "/completions", "/embeddings", "/responses"} & set(
        schema["paths"])


@pytest.mark.fast
def test_no_docs_page(base):
    """/docs would load Swagger UI's scripts from a CDN: the schema is served, the page not."""
    for path in ("/docs", "/redoc"):
        assert httpx.get(base + path).status_code == 404


@pytest.mark.fast
def test_the_schema_is_behind_the_api_key_like_the_api(llm):
    with serve_in_thread(create_app(llm, Options(log=False, api_key="k"))) as url:
        assert httpx.get(url + "/openapi.json").status_code == 401
        assert httpx.get(url + "/openapi.json", headers={"Authorization": "Bearer k"}).status_code == 200
        assert httpx.get(url + "/openapi.json", headers={"Host": "evil.example"}).status_code == 403


@pytest.mark.fast
@pytest.mark.parametrize("model, body", [
    (bodies.ChatCompletionRequest, {"messages": [{"role": "tool", "tool_call_id": "c1", "content": "42"},
                                                 {"role": "assistant", "content": None, "tool_calls": [{}]}],
                                    "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
                                    "tool_choice": "required", "parallel_tool_calls": False,
                                    "response_format": {"type": "json_schema", "json_schema": {"name": "x",
                                                                                               "schema": {}}},
                                    "max_tokens": 16.0, "some_new_field": {"x": 1}, "logit_bias": [[5, False]]}),
    (bodies.ChatCompletionRequest, {"messages": CHAT, "tool_choice": {"type": "function", "function": {"name": "f"}},
                                    "response_format": {"type": "json_object", "schema": {"type": "object"}}}),
    (bodies.LlamaCompletionRequest, {"prompt": [1, 2], "json_schema": {"type": "object"}, "n_predict": -1,
                                     "stop": "\n", "seed": -1}),
    (bodies.CompletionRequest, {"prompt": ["one prompt in a batch"], "logit_bias": {"5": -100}}),
    (bodies.ResponsesRequest, {"input": [{"type": "function_call_output", "call_id": "c", "output": "1"}],
                               "tools": [{"type": "function", "name": "f"}], "text": {"format": {"type": "text"}}}),
    (bodies.MessagesRequest, {"max_tokens": 1, "messages": CHAT, "tools": [{"name": "f", "input_schema": {}}],
                              "tool_choice": {"type": "auto"}, "system": [{"type": "text", "text": "be brief"}]}),
    (bodies.EmbeddingRequest, {"input": [[1, 2], "text"], "encoding_format": "base64", "dimensions": 64}),
])
def test_the_models_take_what_clients_send(model, body):
    """Unknown fields, tools, tool_choice, response_format json_schema and tool messages
    pass the models (the adapters decide what they support); integers may be 16.0."""
    model.model_validate(body)


BAD = [
    ("/v1/chat/completions", {"messages": CHAT, "temperature": 7}, "temperature", "from 0.0 to 2.0"),
    ("/v1/chat/completions", {"messages": []}, "messages", "at least 1"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": 5}]}, "messages", "messages[0].content"),
    ("/v1/chat/completions", {"messages": CHAT, "max_tokens": 2.5}, "max_tokens", "an integer"),
    ("/v1/chat/completions", {"messages": CHAT, "stream": "yes"}, "stream", "true or false"),
    ("/v1/chat/completions", {"messages": CHAT, "response_format": {"type": "xml"}}, "response_format", "'xml'"),
    ("/v1/completions", {"prompt": 5}, "prompt", "a string or an array of token ids"),
    ("/v1/completions", {"prompt": "x", "stop": ["a"] * 17}, "stop", "at most 16"),
    ("/v1/completions", {"prompt": "x", "repeat_penalty": 0}, "repeat_penalty", "> 0"),
    ("/completion", {"prompt": "x", "n_probs": 21}, "n_probs", "<= 20"),
    ("/tokenize", {"content": ["x"]}, "content", "a string"),
    ("/detokenize", {"tokens": [-1]}, "tokens", ">= 0"),
    ("/v1/embeddings", {"input": "x", "encoding_format": "int8"}, "encoding_format", "'int8'"),
    ("/embedding", {"content": [[]]}, "content", "token-id arrays"),
    ("/v1/responses", {"input": []}, "input", "non-empty"),
    ("/v1/messages", {"messages": CHAT}, None, "'max_tokens' is required"),
    ("/v1/messages", {"messages": [{"role": "system", "content": "x"}], "max_tokens": 1}, None, "'system'"),
    ("/v1/messages/count_tokens", {"messages": CHAT, "system": 5}, None, "system"),
]


@pytest.mark.fast
@pytest.mark.parametrize("path, body, param, words", BAD)
def test_a_body_against_its_schema_is_a_400_in_the_apis_shape(served, path, body, param, words):
    base, lines = served
    before = len(lines)
    r = httpx.post(base + path, json=body, timeout=60)
    assert r.status_code == 400, r.text
    if path.startswith("/v1/messages"):
        out = r.json()
        assert out["type"] == "error" and out["error"]["type"] == "invalid_request_error"
        message = out["error"]["message"]
    else:
        error = r.json()["error"]
        assert error["type"] == "invalid_request_error" and error["param"] == param
        message = error["message"]
    assert words in message, message
    logged = lines[before:]
    assert len(logged) == 1 and "\n" not in logged[0] and path in logged[0] and "400" in logged[0], logged


@pytest.mark.fast
def test_logit_bias_pairs_whose_key_is_not_a_number_are_one_line(served):
    """[[null, 1]] made Fields.logit_bias call int(None): a 400 with a traceback in the log
    (schemathesis found it)."""
    base, lines = served
    before = len(lines)
    for key in (None, [5], {}):
        r = httpx.post(base + "/v1/completions", json={"prompt": "x", "logit_bias": [[key, 1]]}, timeout=60)
        assert r.status_code == 400 and r.json()["error"]["param"] == "logit_bias", r.text
    assert not tracebacks(lines[before:]) and len(lines) - before == 3


@pytest.mark.fast
def test_a_body_is_parsed_once_per_request(base, monkeypatch):
    """The route's validation and its handler share one parse of the body."""
    from runner.modes import api_common
    calls = []
    real = api_common.parse_json
    monkeypatch.setattr(api_common, "parse_json", lambda raw: calls.append(len(raw)) or real(raw))
    for path, body in [("/v1/chat/completions", {"messages": CHAT, "max_tokens": 2}),
                       ("/tokenize", {"content": "hello"}), ("/v1/embeddings", {"input": "hello"})]:
        calls.clear()
        r = httpx.post(base + path, json=body, timeout=60)
        assert r.status_code == 200, r.text
        assert len(calls) == 1, (path, calls)


@pytest.mark.fast
def test_integers_written_as_floats_still_generate(base):
    r = httpx.post(base + "/v1/completions", json={"prompt": "x", "max_tokens": 2.0, "temperature": 0}, timeout=60)
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] <= 2


# -- schemathesis -----------------------------------------------------------------------------

def test_schemathesis_finds_no_5xx_on_any_operation(served, tmp_path):
    """schemathesis's own CLI against /openapi.json: every operation, positive and
    negative cases (coverage and fuzzing phases, plus the examples), checks
    not_a_server_error and negative_data_rejection (a body the schema refuses gets a 4xx).
    The server log holds no traceback: every refusal was one line."""
    pytest.importorskip("schemathesis")
    base, lines = served
    report = tmp_path / "report.json"
    cmd = [sys.executable, "-m", "schemathesis.cli", "run", base + "/openapi.json",
           "--checks", "not_a_server_error,negative_data_rejection", "--mode", "all",
           "--phases", "examples,coverage,fuzzing", "--max-examples", "12", "--seed", "16",
           "--generation-database", "none", "--workers", "1", "--request-timeout", "30", "--no-color",
           "--report", "json", "--report-json-path", str(report)]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)   # its cache: .schemathesis/
    assert report.exists(), p.stdout[-3000:] + p.stderr[-3000:]
    out = json.loads(report.read_text())
    summary = f"schemathesis: {out['test_cases']['generated']} cases generated over " \
              f"{out['operations']['tested']} operations in {out['running_time']:.0f} s"
    print(summary)
    assert p.returncode == 0 and out["exit_code"] == 0, p.stdout[-5000:]
    assert out["failures"] == [] and out["errors"] == [], p.stdout[-5000:]
    assert out["operations"]["tested"] == out["operations"]["total"] >= 15
    assert out["test_cases"]["generated"] > 500 and out["test_cases"]["with_failures"] == 0, summary
    assert not tracebacks(lines), "\n".join(tracebacks(lines))[:5000]
