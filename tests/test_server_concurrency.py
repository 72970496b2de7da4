"""Several clients at once: every simultaneous greedy stream equals the same request made
alone, and a client that disconnects mid-stream stops its generation and frees its slot
without disturbing the others."""
from __future__ import annotations

import json
import threading
import time

import httpx
import openai
import pytest

from runner.modes.api_common import Options
from runner.modes.server import create_app, serve_in_thread


@pytest.fixture(scope="module", autouse=True)
def exact_mode():
    """The exact mode (float32 activations) for this module: its tests compare texts
    computed along different paths (streams decoded together and alone), equal to the
    last bit only there. In the default mode the activations are rounded to 8 bits, so a last-bit difference between
    paths can move a code by a step and a greedy near-tie the other way (as llama.cpp's
    results depend on its batch size); the kernels read the variable at every product
    and child processes inherit it."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GEMMA_RUNNER_KERNELS", "float32")
        yield


TOPICS = ["the sea", "a red bicycle", "winter mornings", "a lost key", "the moon", "bread", "a library", "rain"]
PROMPTS = [f"Write one sentence about {t}." for t in TOPICS]


@pytest.fixture(scope="module")
def two_slots(llm):
    with serve_in_thread(create_app(llm, Options(parallel=2, log=False, n_predict=8))) as url:
        yield url


@pytest.fixture(scope="module")
def one_slot(llm):
    with serve_in_thread(create_app(llm, Options(parallel=1, log=False, n_predict=8))) as url:
        yield url


def stream_chat(base: str, prompt: str, max_tokens: int = 12) -> tuple[str, str, int]:
    """(text, finish_reason, completion tokens) of one streamed chat completion."""
    client = openai.OpenAI(base_url=base + "/v1", api_key="x", max_retries=0, timeout=300)
    text, finish, used = [], None, None
    for c in client.chat.completions.create(model="m", messages=[{"role": "user", "content": prompt}], stream=True,
                                            max_tokens=max_tokens, temperature=0,
                                            stream_options={"include_usage": True}):
        if c.choices:
            text.append(c.choices[0].delta.content or "")
            finish = c.choices[0].finish_reason or finish
        if c.usage:
            used = c.usage.completion_tokens
    return "".join(text), finish, used


def metric(base: str, name: str) -> float:
    for line in httpx.get(base + "/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise KeyError(name)


def run_together(base: str, prompts: list[str], max_tokens: int = 12) -> list:
    results: list = [None] * len(prompts)
    start = threading.Barrier(len(prompts))

    def client(i: int) -> None:
        start.wait()
        results[i] = stream_chat(base, prompts[i], max_tokens)
    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    busiest = 0
    while any(t.is_alive() for t in threads):
        busiest = max(busiest, sum(s["is_processing"] for s in httpx.get(base + "/slots").json()))
        time.sleep(0.05)
    for t in threads:
        t.join()
    return results, busiest


def test_eight_simultaneous_streams_each_equal_their_own_sequential_result(two_slots):
    alone = [stream_chat(two_slots, p) for p in PROMPTS]
    together, busiest = run_together(two_slots, PROMPTS)
    assert together == alone
    assert busiest == 2                                  # both slots really ran at once
    assert all(n and n > 0 for _, _, n in together)
    assert metric(two_slots, "llamacpp:requests_deferred") == 0
    assert metric(two_slots, "llamacpp:requests_processing") == 0


def start_long_stream(base: str, chunks_before_leaving: int, left: threading.Event) -> threading.Thread:
    """A client that streams a long completion, reads a few chunks, then disconnects."""
    def run() -> None:
        body = {"prompt": "Once upon a time", "max_tokens": 400, "ignore_eos": True, "temperature": 0,
                "stream": True}
        with httpx.Client(timeout=300) as c, c.stream("POST", base + "/v1/completions", json=body) as r:
            seen = 0
            for line in r.iter_lines():
                if line.startswith("data: {") and json.loads(line[6:])["choices"]:
                    seen += 1
                    if seen == chunks_before_leaving:
                        break
        left.set()                                       # the connection is closed here
    t = threading.Thread(target=run)
    t.start()
    return t


def test_a_client_leaving_stops_its_generation_and_frees_the_slot(one_slot):
    ref = stream_chat(one_slot, PROMPTS[0])
    tokens_before = metric(one_slot, "llamacpp:tokens_predicted_total")
    cancelled_before = metric(one_slot, "gemma_runner_completions_cancelled_total")
    left = threading.Event()
    leaver = start_long_stream(one_slot, 3, left)
    while not any(s["is_processing"] for s in httpx.get(one_slot + "/slots").json()):
        time.sleep(0.02)
    waiting = {}                                          # queued behind the long stream (one slot)
    other = threading.Thread(target=lambda: waiting.update(r=stream_chat(one_slot, PROMPTS[0])))
    other.start()
    assert left.wait(120)
    t0 = time.monotonic()
    while metric(one_slot, "gemma_runner_completions_cancelled_total") == cancelled_before:
        assert time.monotonic() - t0 < 5, "the generation went on after its client left"
        time.sleep(0.02)
    other.join(120)
    leaver.join(10)
    assert waiting["r"] == ref                            # the queued client got the slot, and a right answer
    long_tokens = metric(one_slot, "llamacpp:tokens_predicted_total") - tokens_before - ref[2]
    assert 3 <= long_tokens < 60                          # stopped near where its client left, not at 400
    assert not any(s["is_processing"] for s in httpx.get(one_slot + "/slots").json())


def test_a_client_leaving_does_not_disturb_the_others(two_slots):
    prompts = PROMPTS[:3]
    alone = [stream_chat(two_slots, p) for p in prompts]
    left = threading.Event()
    leaver = start_long_stream(two_slots, 2, left)
    together, _ = run_together(two_slots, prompts)
    leaver.join(60)
    assert left.is_set() and together == alone


def test_a_client_leaving_while_queued_is_never_run(one_slot):
    runs_before = metric(one_slot, "gemma_runner_completions_total")
    # long enough to outlast both queued clients' 0.5 s (at 40-50 tok/s, 40 tokens did not)
    busy = threading.Thread(target=lambda: httpx.post(one_slot + "/v1/completions", timeout=120, json={
        "prompt": "Once upon a time", "max_tokens": 160, "ignore_eos": True, "temperature": 0}))
    busy.start()
    while not any(s["is_processing"] for s in httpx.get(one_slot + "/slots").json()):
        time.sleep(0.02)
    for stream in (False, True):                         # both kinds of request give up in the queue
        with pytest.raises(httpx.ReadTimeout):
            with httpx.stream("POST", one_slot + "/v1/completions", timeout=0.5,
                              json={"prompt": "x", "max_tokens": 5, "stream": stream}) as r:
                for _ in r.iter_lines():
                    pass
    busy.join(120)
    time.sleep(1.0)                                      # longer than the queue's check interval
    assert metric(one_slot, "gemma_runner_completions_total") == runs_before + 1
    assert metric(one_slot, "llamacpp:requests_deferred") == 0


def test_a_non_streaming_client_leaving_frees_its_slot_within_a_second(one_slot):
    """A client that gives up on a long non-streaming request (its read times out and it
    closes the connection) stops the generation: the slot is idle within 1 s, the
    cancellation is counted, and the next request's text is unchanged."""
    ref = stream_chat(one_slot, PROMPTS[1])
    cancelled_before = metric(one_slot, "gemma_runner_completions_cancelled_total")
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(one_slot + "/completion", timeout=0.5,
                   json={"prompt": "Once upon a time", "n_predict": 400, "ignore_eos": True, "temperature": 0})
    t0 = time.monotonic()
    while any(s["is_processing"] for s in httpx.get(one_slot + "/slots").json()):
        assert time.monotonic() - t0 < 1.0, "the slot kept generating after its client left"
        time.sleep(0.02)
    assert metric(one_slot, "gemma_runner_completions_cancelled_total") == cancelled_before + 1
    assert stream_chat(one_slot, PROMPTS[1]) == ref
