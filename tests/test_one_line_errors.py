"""Tracebacks become one-line errors (issue 16, item 2): a token id past the vocabulary,
a context too large for memory, runaway chat templates, an endless prompt file and
hostile request bodies each end with one line: a non-zero exit status and no traceback on
the command line, a precise 400 in the API's error shape and one log line on the server.
Runs on the tiny random model (tests/tiny.py)."""
from __future__ import annotations

import httpx
import pytest

from failures import error_of, one_error_line, run_cli
from runner.chat import ChatError, render, resolve_template
from runner.gguf import GGUFError
from runner.modes.api_common import Options
from runner.modes.server import create_app, serve_in_thread
from tiny import write_tiny_gguf

pytestmark = pytest.mark.fast

PROMPT = "the cat is"


@pytest.fixture(scope="module")
def llm(tiny_path):
    import runner
    return runner.load(tiny_path, n_ctx=1024, threads=2)


@pytest.fixture(scope="module")
def logged(llm):
    """A server that logs (to stderr, which capfd reads)."""
    with serve_in_thread(create_app(llm, Options(log=True, n_predict=4))) as url:
        yield url


# -- item 2: one-line errors instead of tracebacks ---------------------------------------------

def test_a_token_id_past_the_vocabulary_is_refused_at_load(tmp_path):
    import runner
    path = write_tiny_gguf(tmp_path / "bos.gguf", bos_id=2 ** 31)
    with pytest.raises(GGUFError, match="tokenizer.ggml.bos_token_id"):
        runner.load(path, n_ctx=64)
    p = run_cli("-m", str(path), "--cli", "-p", PROMPT, "-n", "2")
    assert p.returncode == 1
    one_error_line(p, "tokenizer.ggml.bos_token_id", str(2 ** 31))


@pytest.mark.parametrize("n_ctx", ["1000000000000", "2147483648"])
def test_a_context_too_large_for_memory_says_what_it_needs(tiny_path, n_ctx):
    p = run_cli("-m", str(tiny_path), "--cli", "-p", PROMPT, "-n", "2", "-c", n_ctx)
    assert p.returncode == 1
    line = one_error_line(p, f"{int(n_ctx):,} tokens", "available", "-c")
    assert "TiB" in line                            # what it needs, in the unit that fits


BOMBS = ["{% for i in range(10**9) %}x{% endfor %}",            # OverflowError in the sandbox
         "{{ 'x' * 10**10 }}",                                   # a 10 GB string
         "{{ 2 ** 10000000 }}",                                  # a number of 3 million digits
         "{% set ns = namespace(s='ab') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
         "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
         "{% for i in range(99999) %}{% for j in range(99999) %}{% endfor %}{% endfor %}"]


@pytest.mark.parametrize("template", BOMBS)
def test_runaway_chat_templates_are_chat_errors(template, monkeypatch):
    import runner.sandbox
    monkeypatch.setattr(runner.sandbox, "MAX_SECONDS", 0.3)      # the nested loop's bound, kept short
    with pytest.raises(ChatError, match="chat template"):
        resolve_template(template, None)
    with pytest.raises(ChatError, match="chat template"):
        render([{"role": "user", "content": "hi"}], template)


def test_a_runaway_chat_template_flag_is_one_line(tiny_path):
    p = run_cli("-m", str(tiny_path), "--cli", "-p", PROMPT, "-n", "2", "--chat-template", BOMBS[0])
    assert p.returncode == 2
    one_error_line(p, "--chat-template", "OverflowError")


def test_a_prompt_file_without_end_is_capped(tiny_path):
    """-f /dev/zero under a 3 GB address-space limit: read up to the cap, then one line."""
    p = run_cli("-m", str(tiny_path), "--cli", "-f", "/dev/zero", "-n", "2", limit_memory=3 << 30)
    assert p.returncode == 1
    one_error_line(p, "/dev/zero", "MiB")


HOSTILE = [(b'{"prompt": "x", "max_tokens": ' + b"9" * 5000 + b"}", "integer"),
           (b'{"prompt": "x", "temperature": 1e400}', "1e400"),
           (b'{"prompt": "x", "top_p": -1e400}', "-1e400"),
           (b'{"prompt": "x", "temperature": NaN}', "NaN"),
           (b'{"prompt": "x", "logit_bias": {"5": Infinity}}', "Infinity"),
           (b'{"prompt": "x", "stop": ' + b"[" * 1000 + b"]" * 1000 + b"}", "deep"),
           (b'{"prompt": "x", "response_format": ' + b'{"a":' * 150 + b"1" + b"}" * 150 + b"}", "deep")]


ROUTES = ["/v1/completions", "/completion", "/v1/chat/completions", "/tokenize"]


# every route parses its body the same way (api_common.parse_json): each body goes to one
@pytest.mark.parametrize("raw, word, path", [(raw, word, ROUTES[i % len(ROUTES)]) for i, (raw, word) in enumerate(HOSTILE)])
def test_hostile_bodies_are_a_precise_400_and_one_log_line(logged, raw, word, path, capfd):
    capfd.readouterr()
    r = httpx.post(logged + path, content=raw, headers={"content-type": "application/json"}, timeout=60)
    err = capfd.readouterr().err
    assert r.status_code == 400 and word in error_of(r)["message"], r.text
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
