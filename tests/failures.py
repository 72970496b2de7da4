"""Running the command line as a user would, and checking that a failure is one line:
shared by the tests of issue 16 (test_nan_safety.py, test_one_line_errors.py)."""
from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent


def run_cli(*argv: str, stdin: str = "", limit_memory: int | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess:
    """`python -m runner ARGV`; with `limit_memory`, under that address-space limit."""
    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (limit_memory, limit_memory))
    env = {**os.environ, "PYTHONIOENCODING": "utf-8", "OPENBLAS_NUM_THREADS": "1",
           "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "runner", *argv], cwd=ROOT, env=env, input=stdin.encode(),
                          capture_output=True, timeout=timeout, preexec_fn=limit if limit_memory else None)


def one_error_line(p: subprocess.CompletedProcess, *words: str) -> str:
    """The error a failed run printed: its last stderr line, with no traceback or warning
    before it and every one of `words` in it."""
    err = p.stderr.decode()
    assert "Traceback" not in err and "Warning" not in err, err
    line = err.strip().splitlines()[-1]
    assert line.startswith("gemma-runner: "), err
    for w in words:
        assert w in line, (w, line)
    return line


def error_of(r: httpx.Response) -> dict:
    """The error of an API response, checked to be in OpenAI's error shape."""
    body = r.json()
    assert set(body) == {"error"} and {"message", "type", "param", "code"} <= set(body["error"]), body
    return body["error"]
