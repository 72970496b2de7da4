"""NaN never reaches the sampler, and the flags agree with the server (issue 16, items 1
and 3): bad sampling values are refused where they are given (a 400 naming the field, a
flag error), a bias banning every token ends the reply, model settings that compute NaN
are refused at load, and a model whose weights compute NaN stops with one line naming
its file in every mode (--cli: status 1; --server: refuses to start, or a 503 in the
error shape; the chat: an error line, then the next prompt). Runs on the tiny random
model (tests/tiny.py) and copies of it with a broken number."""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest

from failures import error_of, one_error_line, run_cli
from runner.args import parse_args, sampling_from_args
from runner.gguf import GGUFError, GGUFFile
from runner.modes.api_common import Options
from runner.modes.server import create_app, serve_in_thread
from runner.sampling import SamplingParams, apply_penalties, sample
from tiny import write_tiny_gguf

pytestmark = pytest.mark.fast

PROMPT = "the cat is"


@pytest.fixture(scope="module")
def broken_path(tiny_path, tmp_path_factory) -> Path:
    """The tiny model with one Q8_0 block scale of blk.0.ffn_down set to the float16 bits
    of +inf (as a flipped bit in a block header can do): every forward pass gives NaN."""
    path = tmp_path_factory.mktemp("broken") / "broken.gguf"
    shutil.copy(tiny_path, path)
    g = GGUFFile(path)
    at = g.offset + g.data_offset + g.tensors["blk.0.ffn_down.weight"].offset
    del g
    with open(path, "r+b") as f:
        f.seek(at)
        f.write(np.array([np.inf], dtype="<f2").tobytes())
    return path


@pytest.fixture(scope="module")
def broken(broken_path):
    import runner
    return runner.load(broken_path, n_ctx=256, threads=1)


@pytest.fixture(scope="module")
def llm(tiny_path):
    import runner
    return runner.load(tiny_path, n_ctx=1024, threads=2)


@pytest.fixture(scope="module")
def base(llm):
    with serve_in_thread(create_app(llm, Options(log=False, n_predict=8))) as url:
        yield url


# -- item 1: NaN never reaches the sampler ---------------------------------------------------

def test_the_sampler_never_computes_nan():
    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05], dtype=np.float32))
    rng = np.random.default_rng(0)
    banned = SamplingParams(temperature=1.0, logit_bias={i: -math.inf for i in range(4)})
    assert sample(logits, banned, rng) is None                                # nothing left: an end
    assert sample(logits, SamplingParams(temperature=0, logit_bias=banned.logit_bias), rng) is None
    # a tiny repeat penalty or temperature must not overflow to inf (inf - inf is NaN)
    penalized = apply_penalties(np.array([30.0, -5.0], dtype=np.float32), [0, 1], 1e-300, 0.0, 0.0)
    assert np.isfinite(penalized).all() and penalized[0] > 1e20 and penalized[1] <= 0
    assert sample(logits, SamplingParams(temperature=1e-300, top_k=0, top_p=1.0, min_p=0.0), rng) == 0
    for bad in ({"repeat_penalty": 0.0}, {"temperature": math.nan}, {"top_p": math.inf},
                {"logit_bias": {1: math.nan}}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            SamplingParams(**bad)


@pytest.mark.parametrize("path", ["/v1/completions", "/completion", "/v1/chat/completions"])
def test_repeat_penalty_zero_is_a_400_naming_it(base, path):
    """llama.cpp refuses a repeat penalty <= 0 ("must be finite and greater than 0"): so
    do both APIs, and the flag."""
    body = {"prompt": PROMPT, "messages": [{"role": "user", "content": "hi"}], "repeat_penalty": 0,
            "max_tokens": 4, "temperature": 0}
    for stream in (False, True):
        r = httpx.post(base + path, json={**body, "stream": stream}, timeout=60)
        assert r.status_code == 400 and error_of(r)["param"] == "repeat_penalty", r.text
    with pytest.raises(SystemExit) as e:
        parse_args(["--cli", "--repeat-penalty", "0"])
    assert e.value.code == 2


@pytest.mark.parametrize("temperature", [0, 1.0])
@pytest.mark.parametrize("stream", [False, True])
def test_a_logit_bias_banning_every_token_ends_the_reply(llm, base, temperature, stream):
    body = {"prompt": PROMPT, "max_tokens": 8, "temperature": temperature, "stream": stream,
            "logit_bias": {str(i): -100 for i in range(llm.n_vocab)}}
    r = httpx.post(base + "/v1/completions", json=body, timeout=60)
    assert r.status_code == 200, r.text
    if stream:
        events = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: {")]
        assert all("error" not in e for e in events), events
        text = "".join(c["text"] for e in events for c in e["choices"])
        finish = [c["finish_reason"] for e in events for c in e["choices"] if c["finish_reason"]]
    else:
        choice = r.json()["choices"][0]
        text, finish = choice["text"], [choice["finish_reason"]]
        assert r.json()["usage"]["completion_tokens"] == 0
    assert text == "" and finish == ["stop"]


@pytest.mark.parametrize("setting, key", [({"eps": math.nan}, "gemma3.attention.layer_norm_rms_epsilon"),
                                          ({"rope_base": 0.0}, "gemma3.rope.freq_base")])
def test_settings_that_compute_nan_are_refused_at_load(tmp_path, setting, key):
    import runner
    path = write_tiny_gguf(tmp_path / "bad.gguf", **setting)
    with pytest.raises(GGUFError, match=key.replace(".", r"\.")):
        runner.load(path, n_ctx=64)
    one_error_line(run_cli("-m", str(path), "--cli", "-p", PROMPT, "-n", "2"), str(path), key)


def test_nan_logits_stop_the_cli_with_one_line_naming_the_file(broken_path):
    for temp in ("0", "0.8"):                       # greedy (drafted) and sampled decoding
        p = run_cli("-m", str(broken_path), "--cli", "-p", PROMPT, "-n", "4", "--temp", temp)
        assert p.returncode == 1
        one_error_line(p, str(broken_path), "NaN")


def test_nan_logits_keep_the_chat_running(broken_path):
    """Each message fails with one error line; the chat reads the next one and ends at EOF."""
    p = run_cli("-m", str(broken_path), stdin="hello\nagain\n")
    err = p.stderr.decode()
    assert p.returncode == 0 and "Traceback" not in err, err
    assert sum(str(broken_path) in line and "NaN" in line for line in err.splitlines()) == 2


def test_a_server_refuses_to_serve_a_model_that_computes_nan(broken_path):
    p = run_cli("-m", str(broken_path), "--server", "--nobrowser", "--port", "0")
    assert p.returncode == 1
    one_error_line(p, str(broken_path), "NaN")


@pytest.mark.parametrize("stream", [False, True])
def test_nan_logits_in_a_request_are_one_error_and_one_log_line(broken, broken_path, capfd, stream):
    """A server already running (the load probe passed, say) answers 503 in the error
    shape, naming the file, and logs it on one line."""
    with serve_in_thread(create_app(broken, Options(log=True))) as url:
        capfd.readouterr()
        r = httpx.post(url + "/v1/completions", json={"prompt": PROMPT, "max_tokens": 4, "stream": stream},
                       timeout=60)
        err = capfd.readouterr().err
    if stream:
        assert r.status_code == 200                 # the status went out before the first token
        events = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: {")]
        e = events[-1]["error"]
    else:
        assert r.status_code == 503
        e = error_of(r)
    assert e["type"] == "server_error" and str(broken_path) in e["message"] and "NaN" in e["message"]
    assert "Traceback" not in err and sum(str(broken_path) in line for line in err.splitlines()) == 1, err


# -- item 3: flags agree with the server -------------------------------------------------------

@pytest.mark.parametrize("flag, value", [("--presence-penalty", "nan"), ("--frequency-penalty", "inf"),
                                         ("--temp", "nan"), ("--top-p", "-inf"), ("--repeat-penalty", "inf")])
def test_nan_and_inf_flags_are_refused(flag, value, capsys):
    with pytest.raises(SystemExit) as e:
        parse_args(["--cli", flag, value])
    err = capsys.readouterr().err
    assert e.value.code == 2 and len(err.strip().splitlines()) == 1 and flag in err


def test_seed_minus_one_means_random(tiny_path, llm):
    assert sampling_from_args(parse_args(["--cli", "-s", "-1"])).seed is None
    texts = {llm.complete(PROMPT, max_tokens=8, temperature=1.0, top_k=0, top_p=1.0, seed=-1) for _ in range(4)}
    assert len(texts) > 1                           # each run draws its own seed
    p = run_cli("-m", str(tiny_path), "--cli", "-p", PROMPT, "-n", "4", "-s", "-1")
    assert p.returncode == 0 and "Traceback" not in p.stderr.decode()
