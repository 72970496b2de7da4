"""Where the server claims llama-server's behaviour, it has it: metric names, response
shapes, public routes, error bodies, CORS, the context per slot, --alias, n choices,
/apply-template. Modelled on llama.cpp's own tools/server/tests (unit/test_metrics.py,
test_security.py, test_chat_completion.py, ...), on the tiny random model."""
from __future__ import annotations

import json

import httpx
import pytest

from runner.modes.api_common import Options
from runner.modes.server import create_app, serve_in_thread

pytestmark = pytest.mark.fast

PROMPT = "The capital of France is"
CHAT = [{"role": "user", "content": "Name three fruits."}]


@pytest.fixture(scope="module")
def llm(tiny_path):
    import runner
    return runner.load(tiny_path, n_ctx=1024, threads=2)


@pytest.fixture(scope="module")
def base(llm):
    with serve_in_thread(create_app(llm, Options(log=False, n_predict=8))) as url:
        yield url


def post(url: str, body: dict, **kw) -> httpx.Response:
    return httpx.post(url, json=body, timeout=60, **kw)


# -- /metrics -------------------------------------------------------------------------------

def parse_metrics(text: str) -> dict[str, tuple[str, float]]:
    """{name: (type, value)} of the unlabelled llamacpp: samples, each with its # TYPE."""
    out, types = {}, {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            types[name] = kind
        elif line.startswith("llamacpp:") and "{" not in line:
            name, value = line.split(" ", 1)
            assert name in types, f"{name} has no # TYPE line"
            out[name] = (types[name], float(value))
    return out


def test_metrics_have_llama_server_names_types_and_values(base):
    n_processed = n_cached = n_predicted = 0
    for n in (4, 4):                                     # the second reuses the first's prompt
        r = post(base + "/completion", {"prompt": PROMPT + " Paris, and", "n_predict": n, "temperature": 0,
                                        "ignore_eos": True}).json()
        n_processed += r["timings"]["prompt_n"]
        n_cached += r["timings"]["cache_n"]
        n_predicted += r["timings"]["predicted_n"]
    res = httpx.get(base + "/metrics")
    assert res.headers["content-type"].startswith("text/plain") and "Process-Start-Time-Unix" in res.headers
    text, metrics = res.text, parse_metrics(res.text)
    counters = ["prompt_tokens_total", "prompt_tokens_cached_total", "prompt_seconds_total",
                "tokens_predicted_total", "tokens_predicted_seconds_total", "n_decode_total", "n_tokens_max"]
    gauges = ["prompt_tokens_seconds", "predicted_tokens_seconds", "requests_processing", "requests_deferred",
              "n_busy_slots_per_decode"]
    for names, kind in ((counters, "counter"), (gauges, "gauge")):
        for name in names:
            assert metrics[f"llamacpp:{name}"][0] == kind, name
            assert f"# HELP llamacpp:{name} " in text
    assert n_cached > 0
    assert metrics["llamacpp:prompt_tokens_total"][1] == n_processed     # cached tokens excluded
    assert metrics["llamacpp:prompt_tokens_cached_total"][1] == n_cached
    assert metrics["llamacpp:tokens_predicted_total"][1] == n_predicted
    assert metrics["llamacpp:n_decode_total"][1] > 0
    assert metrics["llamacpp:n_tokens_max"][1] == r["tokens_evaluated"] + 4
    assert metrics["llamacpp:requests_processing"][1] == 0
    assert metrics["llamacpp:predicted_tokens_seconds"][1] > 0
    # the throughput gauges cover the time since the previous scrape, as llama-server's do
    assert parse_metrics(httpx.get(base + "/metrics").text)["llamacpp:predicted_tokens_seconds"][1] == 0


# -- CORS -----------------------------------------------------------------------------------

PREFLIGHT = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization,content-type"}


def test_cors_answers_preflights_and_marks_answers_for_allowed_origins(llm):
    """By default pages on loopback origins may call the API (a preflight is answered,
    every answer carries Access-Control-Allow-Origin, errors included, so the page can
    read them), other sites' pages may not."""
    with serve_in_thread(create_app(llm, Options(log=False, api_key="k", n_predict=2))) as url:
        local = "http://localhost:3000"
        r = httpx.options(url + "/v1/chat/completions", headers={**PREFLIGHT, "Origin": local})
        assert r.status_code in (200, 204)
        assert r.headers["access-control-allow-origin"] == local
        assert "POST" in r.headers["access-control-allow-methods"]
        assert "authorization" in r.headers["access-control-allow-headers"].lower()
        ok = post(url + "/v1/completions", {"prompt": PROMPT, "max_tokens": 1},
                  headers={"Origin": local, "Authorization": "Bearer k"})
        assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == local
        denied = post(url + "/v1/completions", {"prompt": PROMPT}, headers={"Origin": "http://127.0.0.1:5173"})
        assert denied.status_code == 401 and denied.headers["access-control-allow-origin"] == "http://127.0.0.1:5173"
        foreign = httpx.options(url + "/v1/chat/completions", headers={**PREFLIGHT, "Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in foreign.headers
        plain = httpx.get(url + "/health", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in plain.headers


@pytest.mark.parametrize("origins, origin, allowed", [
    ("*", "https://app.example.org", "*"),
    ("https://app.example.org,chrome-extension://abc", "chrome-extension://abc", "chrome-extension://abc"),
    ("https://app.example.org", "https://other.example.org", None),
    ("none", "http://localhost:3000", None),
])
def test_cors_origins_flag(llm, origins, origin, allowed):
    with serve_in_thread(create_app(llm, Options(log=False, cors_origins=origins))) as url:
        r = httpx.options(url + "/v1/chat/completions", headers={**PREFLIGHT, "Origin": origin})
        assert r.status_code in (200, 204) and r.headers.get("access-control-allow-origin") == allowed
        r = httpx.get(url + "/props", headers={"Origin": origin})
        assert r.headers.get("access-control-allow-origin") == allowed


def test_cors_origins_flag_is_parsed():
    from runner.args import parse_args
    args = parse_args(["--server", "--cors-origins", "*"])
    assert Options.from_args(args).cors_origins == "*"
    assert Options.from_args(parse_args(["--server"])).cors_origins == "localhost"


# -- routes ---------------------------------------------------------------------------------

def test_completions_without_v1_is_the_native_completion(base):
    """llama-server routes POST /completions to /completion's handler (its shape), and
    only /v1/completions to OpenAI's."""
    body = {"prompt": PROMPT, "n_predict": 3, "temperature": 0}
    native = post(base + "/completion", body).json()
    alias = post(base + "/completions", body).json()
    assert alias["content"] == native["content"] and alias["stop"] is True and "choices" not in alias
    assert "choices" in post(base + "/v1/completions", {"prompt": PROMPT, "max_tokens": 3}).json()


def test_health_routes_are_public_and_models_need_the_key(llm):
    """llama-server's public routes under --api-key are /health and /v1/health (its
    /models and /v1/models need the key, as here)."""
    with serve_in_thread(create_app(llm, Options(log=False, api_key="k"))) as url:
        for path in ("/health", "/v1/health"):
            assert httpx.get(url + path).json() == {"status": "ok"}
        for path in ("/models", "/v1/models"):
            assert httpx.get(url + path).status_code == 401
            assert httpx.get(url + path, headers={"Authorization": "Bearer k"}).json()["data"]


# -- response shapes ------------------------------------------------------------------------

SAMPLING = ("seed", "temperature", "top_k", "top_p", "min_p", "typical_p", "repeat_last_n", "repeat_penalty",
            "presence_penalty", "frequency_penalty", "n_predict", "max_tokens", "ignore_eos", "n_probs", "samplers")


def test_props_nest_the_default_settings_in_params(llm, base):
    settings = httpx.get(base + "/props").json()["default_generation_settings"]
    assert set(settings) == {"params", "n_ctx"} and settings["n_ctx"] == llm.n_ctx
    params = settings["params"]
    assert set(SAMPLING) <= set(params)
    assert params["n_predict"] == params["max_tokens"] == 8 and params["seed"] == -1


def test_completion_reports_the_request_s_settings_and_shape(llm, base):
    body = {"prompt": PROMPT, "n_predict": 5, "temperature": 0.5, "top_k": 7, "seed": 3, "ignore_eos": True,
            "logit_bias": [[11, -2.5], [12, False]], "stop": ["zzz"], "repeat_penalty": 1.1}
    r = post(base + "/completion", body).json()
    g = r["generation_settings"]
    assert set(SAMPLING) <= set(g)
    assert (g["n_predict"], g["temperature"], g["top_k"], g["seed"], g["repeat_penalty"]) == (5, 0.5, 7, 3, 1.1)
    assert g["ignore_eos"] is True and g["stop"] == ["zzz"]
    assert g["logit_bias"] == [{"bias": -2.5, "token": 11}, {"bias": None, "token": 12}]
    assert r["tokens"] == [] and isinstance(r["has_new_line"], bool) and r["prompt"] == PROMPT
    with_tokens = post(base + "/completion", {**body, "return_tokens": True}).json()
    assert len(with_tokens["tokens"]) == with_tokens["tokens_predicted"] == 5
    assert with_tokens["has_new_line"] == ("\n" in with_tokens["content"])
    assert post(base + "/completion", {"prompt": PROMPT}).json()["generation_settings"]["n_predict"] == 8


def test_completion_stream_ends_with_the_settings(base):
    with httpx.stream("POST", base + "/completion", timeout=60,
                      json={"prompt": PROMPT, "n_predict": 4, "stream": True, "temperature": 0}) as r:
        events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: ")]
    last = events[-1]
    assert last["stop"] is True and isinstance(last["has_new_line"], bool)
    assert last["generation_settings"]["n_predict"] == 4 and last["generation_settings"]["stream"] is True
    assert all(e["tokens"] for e in events[:-1])


@pytest.mark.parametrize("path, body", [("/v1/chat/completions", {"messages": CHAT}),
                                        ("/v1/completions", {"prompt": PROMPT})])
def test_stream_timings_come_on_the_last_chunk(base, path, body):
    for with_usage in (False, True):
        extra = {"stream_options": {"include_usage": True}} if with_usage else {}
        with httpx.stream("POST", base + path, timeout=60,
                          json={**body, "max_tokens": 3, "stream": True, **extra}) as r:
            chunks = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
        timed = [i for i, c in enumerate(chunks) if "timings" in c]
        assert timed == [len(chunks) - 1], with_usage
        assert ("usage" in chunks[-1] and chunks[-1]["usage"] is not None) == with_usage


# -- errors ---------------------------------------------------------------------------------

def test_two_assistant_messages_at_the_end_are_a_400(base):
    messages = CHAT + [{"role": "assistant", "content": "Apples."}, {"role": "assistant", "content": "Pears."}]
    r = post(base + "/v1/chat/completions", {"messages": messages, "max_tokens": 2})
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and err["param"] == "messages" and "assistant" in err["message"]


def test_a_final_assistant_message_is_continued(llm, base):
    """An assistant prefill, as llama-server takes it: the reply continues the final
    assistant message, whose turn the prompt leaves open (greedy: the same tokens as a
    raw completion of that prompt)."""
    messages = CHAT + [{"role": "assistant", "content": "Sure: apples,"}]
    prompt = post(base + "/apply-template", {"messages": messages}).json()["prompt"]
    assert prompt.endswith("<start_of_turn>model\nSure: apples,")
    body = {"max_tokens": 6, "temperature": 0, "ignore_eos": True}
    chat = post(base + "/v1/chat/completions", {**body, "messages": messages}).json()
    raw = post(base + "/v1/completions", {**body, "prompt": prompt}).json()
    assert chat["choices"][0]["message"]["content"] == raw["choices"][0]["text"]
    assert chat["usage"]["prompt_tokens"] == raw["usage"]["prompt_tokens"]


def test_a_prompt_over_the_context_says_n_prompt_tokens_and_n_ctx(llm, base):
    prompt = "word " * (llm.n_ctx + 10)
    n = len(llm.tokenize(prompt))
    for path, body in (("/v1/completions", {"prompt": prompt, "max_tokens": 1}),
                       ("/completion", {"prompt": prompt, "n_predict": 1}),
                       ("/v1/chat/completions", {"messages": [{"role": "user", "content": prompt}]})):
        r = post(base + path, body)
        assert r.status_code == 400, path
        err = r.json()["error"]
        assert err["code"] == "context_length_exceeded" and err["type"] == "invalid_request_error"
        assert err["n_ctx"] == llm.n_ctx and err["n_prompt_tokens"] >= n, path


# -- the context per slot -------------------------------------------------------------------

def test_ctx_size_is_divided_among_the_slots(tiny_path):
    """`--server -c 1024 -np 2`, as llama-server: each slot holds 512 tokens, /props and
    /slots say so, and a prompt of more than 512 tokens is refused with those numbers."""
    from runner.__main__ import load_model
    from runner.args import parse_args
    args = parse_args(["--server", "-m", str(tiny_path), "-c", "1024", "-np", "2", "--log-disable", "-t", "2"])
    llm = load_model(args)
    with serve_in_thread(create_app(llm, Options.from_args(args))) as url:
        assert [s["n_ctx"] for s in httpx.get(url + "/slots").json()] == [512, 512]
        assert httpx.get(url + "/props").json()["default_generation_settings"]["n_ctx"] == 512
        prompt = llm.tokenize("word " * 600)
        r = post(url + "/completion", {"prompt": prompt, "n_predict": 1})
        assert r.status_code == 400 and r.json()["error"]["n_ctx"] == 512
        assert post(url + "/completion", {"prompt": prompt[:300], "n_predict": 2}).status_code == 200
    assert load_model(parse_args(["-m", str(tiny_path), "-c", "1024", "-np", "2", "--log-disable"])).n_ctx == 1024


# -- smaller things -------------------------------------------------------------------------

def test_alias_names_the_model_everywhere(llm):
    from runner.args import parse_args
    assert Options.from_args(parse_args(["--server", "--alias", "my-gemma"])).alias == "my-gemma"
    with serve_in_thread(create_app(llm, Options(log=False, n_predict=2, alias="my-gemma"))) as url:
        assert [m["id"] for m in httpx.get(url + "/v1/models").json()["data"]] == ["my-gemma"]
        assert httpx.get(url + "/props").json()["model_alias"] == "my-gemma"
        assert post(url + "/v1/chat/completions", {"messages": CHAT}).json()["model"] == "my-gemma"
        assert post(url + "/v1/completions", {"prompt": PROMPT}).json()["model"] == "my-gemma"
        assert post(url + "/completion", {"prompt": PROMPT}).json()["model"] == "my-gemma"


def test_apply_template_returns_the_chat_prompt(llm, base):
    messages = [{"role": "system", "content": "Be brief."}, *CHAT]
    r = post(base + "/apply-template", {"messages": messages})
    assert r.status_code == 200
    prompt = r.json()["prompt"]
    assert "Be brief." in prompt and "Name three fruits." in prompt
    assert llm.tokenize(prompt, add_bos=False) == llm.chat_prompt(messages).tokens
    assert post(base + "/apply-template", {"messages": []}).status_code == 400


@pytest.mark.parametrize("path, body", [("/v1/chat/completions", {"messages": CHAT}),
                                        ("/v1/completions", {"prompt": PROMPT})])
def test_n_choices(base, path, body):
    """`n` replies: each its own generation (seed + i: they differ, and reproduce), the
    usage counts the prompt once; greedy replies are all the same; streamed, each
    choice's chunks carry its index and the usage comes once at the end."""
    def text(c: dict) -> str:
        return c["message"]["content"] if "message" in c else c["text"]
    body = {**body, "max_tokens": 6, "ignore_eos": True}
    sampled = post(base + path, {**body, "n": 3, "temperature": 1.5, "top_k": 0, "seed": 7}).json()
    assert [c["index"] for c in sampled["choices"]] == [0, 1, 2]
    assert len({text(c) for c in sampled["choices"]}) > 1
    assert [text(c) for c in post(base + path, {**body, "n": 3, "temperature": 1.5, "top_k": 0,
                                                 "seed": 7}).json()["choices"]] == [text(c) for c in sampled["choices"]]
    one = post(base + path, {**body, "temperature": 0}).json()
    greedy = post(base + path, {**body, "n": 2, "temperature": 0}).json()
    assert [text(c) for c in greedy["choices"]] == [text(one["choices"][0])] * 2
    assert greedy["usage"]["prompt_tokens"] == one["usage"]["prompt_tokens"]
    assert greedy["usage"]["completion_tokens"] == 2 * one["usage"]["completion_tokens"]
    with httpx.stream("POST", base + path, timeout=60, json={**body, "n": 2, "temperature": 0, "stream": True,
                                                           "stream_options": {"include_usage": True}}) as r:
        chunks = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
    streamed = ["", ""]
    for c in chunks:
        for choice in c["choices"]:
            streamed[choice["index"]] += choice["delta"].get("content") or "" if "delta" in choice else choice["text"]
    assert streamed == [text(one["choices"][0])] * 2
    assert [c["usage"]["completion_tokens"] for c in chunks if c.get("usage")] == [2 * one["usage"]["completion_tokens"]]
    assert sum(1 for c in chunks for ch in c["choices"] if ch["finish_reason"]) == 2
    assert post(base + path, {**body, "n": 17}).status_code == 400
