"""The server through the `openai` client (and raw HTTP where the shape itself is under
test), against the library's own generation as the reference: with temperature 0 (or a
seed) the server must produce exactly what `llm.complete` / `llm.chat` produce, and count
tokens exactly as our tokenizer does. Plumbing, not numerics: it runs on the tiny random
model (tests/tiny.py); JSON mode on the real model is in test_server_real.py."""
from __future__ import annotations

import json
import threading

import httpx
import numpy as np
import openai
import pytest

from runner.modes.api_common import Options
from runner.modes.server import create_app, serve_in_thread
from runner.sampling import SamplingParams, log_softmax

pytestmark = pytest.mark.fast

CHAT = [{"role": "user", "content": "Name three fruits."}]
PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def llm(tiny_path):
    import runner
    return runner.load(tiny_path, n_ctx=4096, threads=2)


@pytest.fixture(scope="module")
def base(llm):
    # a small default token limit: requests that give none (the error probes) stay short
    with serve_in_thread(create_app(llm, Options(log=False, n_predict=8))) as url:
        yield url


@pytest.fixture(scope="module")
def client(base):
    return openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0, timeout=120)


def error_of(resp: httpx.Response) -> dict:
    body = resp.json()
    assert set(body) == {"error"}
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    assert {"message", "type", "code"} <= set(body["error"])
    return body["error"]


# -- generation -----------------------------------------------------------------------------

def test_health_and_models(base, client):
    assert httpx.get(base + "/health").json() == {"status": "ok"}
    models = client.models.list().data
    assert len(models) == 1 and models[0].id == "tiny-gemma3"          # general.name "tiny gemma3"


def test_chat_equals_the_library_and_counts_tokens(llm, client):
    want = llm.chat(CHAT, max_tokens=8, temperature=0)
    ref = llm.stats
    r = client.chat.completions.create(model="anything", messages=CHAT, max_tokens=8, temperature=0)
    assert r.choices[0].message.content == want
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].finish_reason == ("length" if ref.finish_reason == "length" else "stop")
    assert r.usage.prompt_tokens == len(llm.chat_prompt(CHAT).tokens)
    assert r.usage.completion_tokens == ref.generated_tokens
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_chat_stream_equals_non_stream_and_reports_usage(client):
    full = client.chat.completions.create(model="m", messages=CHAT, max_tokens=8, temperature=0)
    chunks = list(client.chat.completions.create(model="m", messages=CHAT, max_tokens=8, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [full.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == full.usage.completion_tokens
    assert chunks[-1].usage.prompt_tokens == full.usage.prompt_tokens


def test_sse_framing_ends_with_done(base):
    body = {"messages": CHAT, "max_tokens": 3, "temperature": 0, "stream": True}
    with httpx.stream("POST", base + "/v1/chat/completions", json=body, timeout=60) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        events = [line for line in r.iter_lines() if line]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"
    assert all(json.loads(e[6:])["object"] == "chat.completion.chunk" for e in events[:-1])


def test_completions_equal_the_library(llm, client):
    want = llm.complete(PROMPT, max_tokens=8, temperature=0)
    ref = llm.stats
    r = client.completions.create(model="m", prompt=PROMPT, max_tokens=8, temperature=0)
    assert r.choices[0].text == want
    assert r.usage.prompt_tokens == len(llm.tokenize(PROMPT)) and r.usage.completion_tokens == ref.generated_tokens
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model="m", prompt=PROMPT, max_tokens=8, temperature=0, stream=True) if c.choices)
    assert streamed == want
    ids = llm.tokenize(PROMPT)                          # a prompt of token ids, as they are
    assert client.completions.create(model="m", prompt=ids, max_tokens=8, temperature=0).choices[0].text == want


def test_stop_strings(llm, client):
    seeded = {"temperature": 1.0, "top_p": 1.0, "seed": 5}                # varied text
    want = llm.complete(PROMPT, max_tokens=16, top_k=40, min_p=0.05, **seeded)
    stop = want[8:10]                                    # from the middle of the reply
    r = client.completions.create(model="m", prompt=PROMPT, max_tokens=16, stop=[stop, "zzz"], **seeded)
    assert r.choices[0].text == want[:want.index(stop)]
    assert r.choices[0].finish_reason == "stop"
    s = "".join(c.choices[0].text for c in client.completions.create(
        model="m", prompt=PROMPT, max_tokens=16, stop=stop, stream=True, **seeded) if c.choices)
    assert s == r.choices[0].text


def test_prefill_progress_is_streamed_on_request(llm, base):
    prompt = "A log of the flood, hour by hour. " + "The river rose slowly through the night. " * 80
    n = len(llm.tokenize(prompt))
    body = {"prompt": prompt, "max_tokens": 1, "temperature": 0, "stream": True, "return_progress": True}
    with httpx.stream("POST", base + "/v1/completions", json=body, timeout=120) as r:
        events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
    progress = [e["prompt_progress"] for e in events if "prompt_progress" in e]
    done = [p["processed"] for p in progress]
    assert len(progress) >= 3 and all(p["total"] == n for p in progress)
    assert done == sorted(done) and done[-1] > done[0] and done[-1] <= n
    assert all(e["choices"] for e in events if "prompt_progress" not in e)


def test_seed_reproducibility(client):
    def run(seed):
        return client.chat.completions.create(model="m", messages=CHAT, max_tokens=10, temperature=1.0,
                                              top_p=1.0, seed=seed).choices[0].message.content
    a = run(1234)
    assert run(1234) == a
    assert any(run(s) != a for s in (1, 2, 3))


def test_prefix_reuse_across_requests(llm, client):
    first = [{"role": "user", "content": "Tell me about the moon."}]
    r1 = client.chat.completions.create(model="m", messages=first, max_tokens=6, temperature=0)
    follow = first + [{"role": "assistant", "content": r1.choices[0].message.content},
                      {"role": "user", "content": "And the sun?"}]
    r2 = client.chat.completions.create(model="m", messages=follow, max_tokens=4, temperature=0)
    assert r2.usage.prompt_tokens_details.cached_tokens >= r1.usage.prompt_tokens


def test_chat_logprobs_shape(client):
    r = client.chat.completions.create(model="m", messages=CHAT, max_tokens=6, temperature=0, logprobs=True,
                                       top_logprobs=3)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    assert "".join(c.token for c in content) == r.choices[0].message.content
    for c in content:
        tops = [t.logprob for t in c.top_logprobs]
        assert len(tops) == 3 and tops == sorted(tops, reverse=True) and tops[0] <= 0
        assert c.logprob == pytest.approx(tops[0])       # greedy takes the most likely token
        assert bytes(c.bytes).decode("utf-8", "replace") == c.token


def test_completion_echo_logprobs_score_the_prompt(llm, client):
    r = client.completions.create(model="m", prompt=PROMPT, max_tokens=2, temperature=0, echo=True, logprobs=2)
    lp = r.choices[0].logprobs
    ids = llm.tokenize(PROMPT)
    assert r.choices[0].text.startswith(PROMPT)
    assert len(lp.tokens) == len(ids) - 1 + r.usage.completion_tokens          # BOS is not echoed
    assert "".join(lp.tokens) == r.choices[0].text
    ref = [float(log_softmax(row)[t]) for row, t in zip(llm.logits(ids)[:-1], ids[1:])]
    assert np.allclose(lp.token_logprobs[:len(ref)], ref, atol=2e-3)
    assert lp.text_offset[:3] == [0, len(lp.tokens[0]), len(lp.tokens[0]) + len(lp.tokens[1])]
    zero = client.completions.create(model="m", prompt=PROMPT, max_tokens=0, echo=True)
    assert zero.choices[0].text == PROMPT and zero.usage.completion_tokens == 0


def test_logit_bias_bans_a_token(llm, client):
    first = llm.tokenize(llm.complete(PROMPT, max_tokens=1, temperature=0), add_bos=False)[0]
    r = client.completions.create(model="m", prompt=PROMPT, max_tokens=1, temperature=0,
                                  logit_bias={str(first): -100}, logprobs=0)
    assert r.choices[0].logprobs.tokens[0] != llm.tokenizer.decode([first])


# -- llama.cpp endpoints, metrics -----------------------------------------------------------

def test_llama_cpp_endpoints(llm, base):
    text = "Hello world, <start_of_turn>"
    tok = httpx.post(base + "/tokenize", json={"content": text}).json()["tokens"]
    assert tok == llm.tokenize(text, add_bos=False)
    assert httpx.post(base + "/detokenize", json={"tokens": tok}).json()["content"] == text
    want = llm.complete(PROMPT, max_tokens=5, temperature=0)
    r = httpx.post(base + "/completion", json={"prompt": PROMPT, "n_predict": 5, "temperature": 0}, timeout=60).json()
    assert r["content"] == want and r["tokens_evaluated"] == len(llm.tokenize(PROMPT)) and r["stop"] is True
    props = httpx.get(base + "/props").json()
    assert props["default_generation_settings"]["n_ctx"] == llm.n_ctx and props["total_slots"] == 1


def test_a_lone_greedy_reply_drafts_and_equals_undrafted_decoding(llm, base):
    """The server drafts a greedy reply that is alone (engine.step's drafted rounds),
    reports it in llama.cpp's timings, and returns exactly the undrafted greedy text."""
    prompt = "The river rose slowly through the night, and by morning"
    undrafted = llm.engine.spawn(draft_max=0)
    want = "".join(t.text for t in undrafted.generate(llm.prompt_of(prompt), SamplingParams(temperature=0),
                                                      max_tokens=40, ignore_eos=True))
    assert undrafted.last.draft_n == 0
    r = httpx.post(base + "/completion", json={"prompt": prompt, "n_predict": 40, "temperature": 0,
                                               "ignore_eos": True}, timeout=120).json()
    assert r["content"] == want
    assert r["timings"]["draft_n"] > 0 and 0 < r["timings"]["draft_n_accepted"] <= r["timings"]["draft_n"]
    r = httpx.post(base + "/completion", json={"prompt": prompt, "n_predict": 8, "temperature": 0.7,
                                               "seed": 1}, timeout=120).json()
    assert "draft_n" not in r["timings"]                 # sampling never drafts


def test_metrics(base, client):
    client.completions.create(model="m", prompt=PROMPT, max_tokens=3, temperature=0)
    text = httpx.get(base + "/metrics").text
    values = {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines() if not line.startswith("#")}
    assert values["llamacpp:tokens_predicted_total"] >= 3
    assert values['gemma_runner_requests_total{path="/v1/completions",status="200"}'] >= 1
    assert values["llamacpp:predicted_tokens_seconds"] > 0
    assert "# TYPE gemma_runner_requests_total counter" in text


# -- errors ---------------------------------------------------------------------------------

def test_malformed_json_and_wrong_types_are_400(base):
    for body in (b"{not json", b"", b"[1, 2]", b'"text"'):
        r = httpx.post(base + "/v1/chat/completions", content=body, headers={"content-type": "application/json"})
        assert r.status_code == 400
        assert error_of(r)["type"] == "invalid_request_error"
    r = httpx.post(base + "/v1/completions", json={"prompt": PROMPT, "temperature": "hot"})
    assert r.status_code == 400 and error_of(r)["param"] == "temperature" and "number" in error_of(r)["message"]


@pytest.mark.parametrize("extra, param", [
    ({"temperature": 7}, "temperature"),
    ({"max_tokens": "many"}, "max_tokens"),
    ({"top_p": -1}, "top_p"),
    ({"stop": [1, 2]}, "stop"),
    ({"logit_bias": {"x": 1}}, "logit_bias"),
    ({"logit_bias": {"5": 300}}, "logit_bias"),
    ({"n": 0}, "n"),
    ({"response_format": {"type": "xml"}}, "response_format"),
    ({"messages": [{"role": "robot", "content": "hi"}]}, "messages"),
    ({"messages": "hi"}, "messages"),
    ({"messages": [{"role": "user", "content": [{"type": "audio"}]}]}, "messages"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:,"}}]}]},
     "messages"),                                        # this model has no vision tower
])
def test_bad_values_are_400_through_the_client(client, extra, param):
    kw = {"model": "m", "messages": CHAT, "max_tokens": 2, **extra}
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(**kw)
    assert e.value.status_code == 400
    err = e.value.body
    assert err["message"] and err["type"] == "invalid_request_error"
    if param:
        assert err["param"] == param


def test_prompt_longer_than_the_context_says_the_numbers(llm, client):
    prompt = "word " * (llm.n_ctx + 10)
    n = len(llm.tokenize(prompt))
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="m", prompt=prompt, max_tokens=1)
    msg = e.value.body["message"]
    assert str(n) in msg and str(llm.n_ctx) in msg and e.value.body["code"] == "context_length_exceeded"


def test_nothing_a_client_sends_is_a_500(base):
    bodies = [{}, {"prompt": None}, {"prompt": []}, {"prompt": [[1, 2], [3]]}, {"prompt": [-5]},
              {"prompt": [10**12]}, {"prompt": {"a": 1}}, {"messages": []}, {"messages": [None]},
              {"messages": [{"role": "user", "content": 5}]}, {"prompt": "x", "seed": 1.5},
              {"prompt": "x", "logprobs": 99}, {"prompt": "x", "stream": "yes"}, {"content": 5}, {"tokens": ["a"]},
              {"tokens": [1, 2**40]}, {"prompt": "x", "n_probs": -1}, {"prompt": "x", "stop": "\ud800"},
              {"prompt": "x", "logit_bias": [[1]]}, {"prompt": "x", "temperature": float("nan")}]
    for path in ("/v1/chat/completions", "/v1/completions", "/completion", "/tokenize", "/detokenize"):
        for body in bodies:
            r = httpx.post(base + path, content=json.dumps(body).encode(), headers={"content-type": "application/json"},
                           timeout=60)
            assert r.status_code < 500, (path, body, r.text)
            if r.status_code >= 400:
                error_of(r)
    r = httpx.get(base + "/no/such/route")
    assert r.status_code == 404 and error_of(r)


def test_api_key(llm):
    with serve_in_thread(create_app(llm, Options(api_key="sekrit", log=False, n_predict=8))) as url:
        c = openai.OpenAI(base_url=url + "/v1", api_key="wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError) as e:
            c.models.list()
        assert e.value.status_code == 401 and e.value.body["code"] == "invalid_api_key"
        for path in ("/v1/chat/completions", "/completion", "/tokenize"):       # no key at all
            r = httpx.post(url + path, json={"prompt": "x"})
            assert r.status_code == 401 and error_of(r)["type"] == "authentication_error"
        ok = openai.OpenAI(base_url=url + "/v1", api_key="sekrit", max_retries=0)
        assert ok.completions.create(model="m", prompt=PROMPT, max_tokens=1).usage.completion_tokens == 1
        assert httpx.get(url + "/health").status_code == 200          # public: monitoring
        assert httpx.get(url + "/").status_code == 200                # the page asks for the key itself


def test_health_is_503_while_loading(llm):
    ready = threading.Event()

    def slow_load():
        ready.wait(30)
        return llm
    with serve_in_thread(create_app(slow_load, Options(log=False, n_predict=8))) as url:
        r = httpx.get(url + "/health")
        assert r.status_code == 503 and error_of(r)["message"] == "Loading model"
        assert httpx.post(url + "/v1/completions", json={"prompt": "x"}).status_code == 503
        ready.set()
        for _ in range(100):
            if httpx.get(url + "/health").status_code == 200:
                break
            threading.Event().wait(0.05)
        assert httpx.get(url + "/health").json() == {"status": "ok"}


@pytest.mark.parametrize("draft_max", [0, 8])
def test_every_slot_drafts_as_configured(tiny_path, draft_max):
    """--draft-max applies to every slot: a lone greedy reply on the second slot drafts
    with 8 and never with 0 (the second slot is the one idle longest, and a prompt of
    token ids without BOS shares no prefix with the first slot's cache)."""
    import runner
    llm = runner.load(tiny_path, n_ctx=512, draft_max=draft_max)
    with serve_in_thread(create_app(llm, Options(parallel=2, log=False))) as url:
        body = {"n_predict": 24, "temperature": 0, "ignore_eos": True}
        first = httpx.post(url + "/completion", json={"prompt": PROMPT, **body}, timeout=60).json()
        second = httpx.post(url + "/completion", json={"prompt": llm.tokenize(PROMPT, add_bos=False), **body},
                            timeout=60).json()
    assert (first["id_slot"], second["id_slot"]) == (0, 1)
    for r in (first, second):
        assert ("draft_n" in r["timings"]) == (draft_max > 1)


def test_completion_reports_truncated_when_the_context_ran_out(tiny_path):
    """llama-server's `truncated` is true when the context filled (and when it shifted)."""
    import runner
    for shift in (False, True):
        llm = runner.load(tiny_path, n_ctx=64, context_shift=shift)
        with serve_in_thread(create_app(llm, Options(log=False))) as url:
            full = httpx.post(url + "/completion", json={"prompt": PROMPT, "n_predict": 200, "temperature": 0,
                                                         "ignore_eos": True}, timeout=60).json()
            short = httpx.post(url + "/completion", json={"prompt": PROMPT, "n_predict": 4, "temperature": 0},
                               timeout=60).json()
        assert full["truncated"] is True and short["truncated"] is False
        n = full["tokens_predicted"]
        assert full["stop_type"] == "limit" and n == (200 if shift else 64 - full["tokens_evaluated"])
