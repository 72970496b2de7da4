"""--cli through a subprocess, as a script would run it.

The reference for every output is the library: `llm.complete` (or `llm.chat`) with the
same prompt and settings must give exactly what --cli prints after the prompt."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
from conftest import cold

ROOT = Path(__file__).resolve().parent.parent
PROMPT = "The capital of France is"


def cli(*argv, stdin: str | None = None, timeout: float = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONIOENCODING": "utf-8"}
    return subprocess.run([sys.executable, "-m", "runner", *argv], cwd=ROOT, env=env, timeout=timeout,
                          input=(stdin or "").encode(), capture_output=True)


def out(p: subprocess.CompletedProcess) -> str:
    return p.stdout.decode("utf-8")


def err(p: subprocess.CompletedProcess) -> str:
    return p.stderr.decode("utf-8")


def test_greedy_output_is_the_prompt_then_llm_complete(llm):
    p = cli("--cli", "-p", PROMPT, "-n", "12", "--temp", "0", "-c", "512")
    assert p.returncode == 0, err(p)
    assert out(p) == PROMPT + cold(llm).complete(PROMPT, max_tokens=12, temperature=0)
    lines = err(p).strip().splitlines()          # the load line and the timings, on stderr only
    assert lines[0].startswith("loading ") and "generated 12 tokens" in lines[-1]
    assert "Traceback" not in err(p)


def test_seeded_sampling_from_stdin_with_log_disable(llm):
    """-f - reads standard input (one trailing newline dropped, as llama.cpp does); a seed
    makes sampling repeatable; --log-disable leaves stderr empty, -ngl included."""
    prompt = "Once upon a time, in a faraway land,"
    p = cli("--cli", "-f", "-", "-n", "10", "--temp", "0.9", "-s", "7", "--no-display-prompt", "--log-disable",
            "-ngl", "99", stdin=prompt + "\n")
    assert p.returncode == 0 and p.stderr == b""
    assert out(p) == cold(llm).complete(prompt, max_tokens=10, temperature=0.9, seed=7)


def test_file_prompt_escapes_and_stop_string(llm, tmp_path):
    """-f FILE with -e (escapes in the prompt and in -r) and a stop string; plain piped
    stdin works too when there is no -p or -f."""
    f = tmp_path / "prompt.txt"
    f.write_text("Q: What is the capital of France?\\nA:\n")
    prompt = "Q: What is the capital of France?\nA:"
    want = cold(llm).complete(prompt, max_tokens=16, temperature=0, stop=["\n"])
    assert llm.stats.finish_reason == "stop" and want, "the reference should meet the stop string"
    p = cli("--cli", "-f", str(f), "-e", "-r", "\\n", "-n", "16", "--temp", "0", "--log-disable")
    assert p.returncode == 0, err(p)
    assert out(p) == prompt + want
    q = cli("--cli", "-n", "16", "--temp", "0", "-r", "\n", "--log-disable", stdin=prompt)
    assert out(q) == prompt + want


def test_chat_template_sends_the_prompt_as_a_user_turn(llm):
    q = "Name a color."
    p = cli("--cli", "--chat-template", "gemma", "-p", q, "-n", "8", "--temp", "0", "--log-disable")
    assert p.returncode == 0, err(p)
    assert out(p) == q + "\n" + cold(llm).chat([{"role": "user", "content": q}], max_tokens=8, temperature=0)


def test_json_schema_output_is_the_librarys_and_validates(llm, tmp_path):
    """--json-schema / --json-schema-file: the completion is JSON the schema accepts, as
    llm.complete gives it with the same schema."""
    schema = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 20},
                                               "age": {"type": "integer", "minimum": 0, "maximum": 120}},
              "required": ["name", "age"], "additionalProperties": False}
    prompt = "A person, as JSON:\n"
    want = cold(llm).complete(prompt, max_tokens=64, temperature=0, json_schema=schema)
    assert llm.stats.finish_reason == "stop"
    jsonschema.validate(json.loads(want), schema)
    f = tmp_path / "person.json"
    f.write_text(json.dumps(schema))
    for flag in (["-j", json.dumps(schema)], ["--json-schema-file", str(f)]):
        p = cli("--cli", "-p", prompt, "-n", "64", "--temp", "0", "--no-display-prompt", *flag)
        assert p.returncode == 0, err(p)
        assert out(p) == want and "ended by the end of the constrained output" in err(p)


@pytest.mark.parametrize("how", ["name", "file"])
def test_named_and_file_chat_templates(llm, tmp_path, how):
    """--chat-template chatml (llama.cpp's name) and the same format from
    --chat-template-file: the prompt the model reads is ChatML's text, as llama.cpp's
    llm_chat_apply_template writes it."""
    q = "Name a color."
    chatml = f"<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n"
    want = cold(llm).complete(chatml, max_tokens=8, temperature=0)
    if how == "name":
        flags = ["--chat-template", "chatml"]
    else:
        f = tmp_path / "chatml.jinja"
        f.write_text("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
                     "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
        flags = ["--chat-template-file", str(f)]
    p = cli("--cli", *flags, "-p", q, "-n", "8", "--temp", "0", "--log-disable")
    assert p.returncode == 0, err(p)
    assert out(p) == q + "\n" + want


def test_n_zero_prints_only_the_prompt():
    p = cli("--cli", "-p", PROMPT, "-n", "0", "--log-disable")
    assert p.returncode == 0 and out(p) == PROMPT and p.stderr == b""


def test_prompt_too_long_for_the_context():
    p = cli("--cli", "-p", "word " * 40, "-c", "16", "-n", "4")
    assert p.returncode == 1 and out(p) == ""
    last = err(p).strip().splitlines()[-1]
    assert "the context holds 16" in last and "Traceback" not in err(p)


@pytest.mark.parametrize("argv, stdin, status, needle", [
    (["--cli", "--temp", "hot"], None, 2, "--temp"),
    (["--cli", "--bogus-flag"], None, 2, "--bogus-flag"),
    (["--cli", "-n", "-5", "-p", "x"], None, 2, "-n"),
    (["--cli", "--top-p", "1.5", "-p", "x"], None, 2, "--top-p"),
    (["--cli", "-p", "x", "-f", "y"], None, 2, "-p and -f"),
    (["--cli", "--image", "a.png", "-p", "x"], None, 2, "--mmproj"),
    (["--cli", "--log-disable"], "", 2, "no prompt"),
    (["--cli", "-f", "/nonexistent/prompt.txt"], None, 1, "no such file"),
    (["--cli", "-f", "/"], None, 1, "directory"),
    (["--cli", "--chat-template", "{% if %}", "-p", "x"], None, 2, "--chat-template"),
    (["--cli", "--chat-template", "llama2", "-p", "x"], None, 2, "unknown chat template 'llama2'"),
    (["--cli", "--chat-template-file", "/nonexistent/t.jinja", "-p", "x"], None, 1, "no such file"),
    (["--cli", "--chat-template", "gemma", "--chat-template-file", "t.jinja", "-p", "x"], None, 2,
     "--chat-template-file"),
    (["--cli", "-m", "/nonexistent/model.gguf", "-p", "x"], None, 1, "no such file"),
    (["--cli", "-p", "x", "-j", '{"type": "string", "pattern": "a+"}'], None, 2, "keyword 'pattern'"),
    (["--cli", "-p", "x", "--json-schema", "{not json"], None, 2, "--json-schema: not valid JSON"),
    (["--cli", "-p", "x", "-jf", "/nonexistent/schema.json"], None, 1, "--json-schema-file: /nonexistent"),
    (["--cli", "-p", "x", "-j", "{}", "-jf", "s.json"], None, 2, "use one of them"),
])
def test_user_errors_are_one_line_and_a_status(argv, stdin, status, needle):
    p = cli(*argv, stdin=stdin)
    assert p.returncode == status, err(p)
    lines = [line for line in err(p).splitlines() if not line.startswith("loading ")]
    assert len(lines) == 1 and needle in lines[0], err(p)
    assert out(p) == ""


def test_bad_utf8_file(tmp_path):
    f = tmp_path / "bad.txt"
    f.write_bytes(b"caf\xe9")
    p = cli("--cli", "-f", str(f), "--log-disable")
    assert p.returncode == 1 and err(p).strip() == f"gemma-runner: {f}: not UTF-8 text (byte 3)"


def test_help_lists_every_flag():
    p = cli("--help")
    assert p.returncode == 0 and p.stderr == b""
    text = out(p)
    for flag in ["-m", "--model", "--mmproj", "-p", "--prompt", "-f", "--file", "-e", "--escape", "-c",
                 "--ctx-size", "-n", "--n-predict", "--temp", "--top-k", "--top-p", "--min-p",
                 "--repeat-penalty", "--repeat-last-n", "--presence-penalty", "--frequency-penalty", "-s",
                 "--seed", "-t", "--threads", "-r", "--reverse-prompt", "--ignore-eos", "--chat-template",
                 "--no-display-prompt", "--silent-prompt", "--log-disable", "--verbose", "--image", "--version",
                 "-ngl", "--n-gpu-layers", "--cli", "--server", "--host", "--port", "--nobrowser", "--api-key"]:
        assert f" {flag}" in text, flag
    assert max(map(len, text.splitlines())) <= 100


def test_ngl_is_accepted_and_said_once():
    p = cli("--cli", "-p", PROMPT, "-n", "1", "-ngl", "35", "--temp", "0")
    assert p.returncode == 0
    assert err(p).count("CPU") == 1
