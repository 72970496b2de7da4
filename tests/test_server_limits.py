"""The server's time and connection limits (issue 16, item 4), over raw sockets: a bare
request line, a half-sent body, a silent or idle connection and a slow header are each
answered (408 in the API's error shape) or closed within the configured timeout; a
slow but steady body is not cut off; bodies over the limit get 413; and a thousand idle
connections do not keep a new client from being served. Short timeouts keep it quick."""
from __future__ import annotations

import json
import os
import resource
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from runner.modes.api_common import Options
from runner.modes.server import create_app, serve_in_thread

pytestmark = pytest.mark.fast

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 0.5                # the server's header and body timeout here
MARGIN = 5.0                 # what "within the timeout" allows for a loaded machine


@pytest.fixture(scope="module")
def llm(tiny_path):
    import runner
    return runner.load(tiny_path, n_ctx=256, threads=1)


@pytest.fixture(scope="module")
def addr(llm):
    options = Options(log=False, timeout=TIMEOUT, keep_alive=TIMEOUT, max_body=4096)
    with serve_in_thread(create_app(llm, options)) as url:
        host, port = url.split("//")[1].rsplit(":", 1)
        yield host, int(port)


def exchange(addr, chunks: list[bytes], pause: float = 0.0, wait: float = 30.0) -> tuple[float, bytes]:
    """Send `chunks` (`pause` seconds apart), then read until the server closes; the
    seconds from the first byte to the close, and what came back (ending in <reset> if the
    server hung up while we were still sending). Gives up after `wait`: <still open>."""
    s = socket.create_connection(addr)
    s.settimeout(wait)
    t0 = time.monotonic()
    out = b""
    try:
        for c in chunks:
            s.sendall(c)
            time.sleep(pause)
        while chunk := s.recv(65536):
            out += chunk
    except socket.timeout:
        out += b"<still open>"
    except (BrokenPipeError, ConnectionResetError):
        out += b"<reset>"
    finally:
        s.close()
    return time.monotonic() - t0, out


def status_and_error(raw: bytes) -> tuple[int, dict]:
    head, _, body = raw.partition(b"\r\n\r\n")
    assert b"connection: close" in head.lower(), head
    error = json.loads(body)["error"]
    assert {"message", "type", "code"} <= set(error)
    return int(head.split()[1]), error


def test_a_bare_request_line_is_answered_and_closed(addr):
    took, raw = exchange(addr, [b"GET /\r\n"])
    assert took < TIMEOUT + MARGIN
    assert status_and_error(raw)[0] == 408


def test_a_slow_header_is_cut_off_at_the_timeout(addr):
    """The header timeout counts from the start, not between bytes (slowloris)."""
    chunks = [b"GET /health HTTP/1.1\r\n"] + [b"X-a: b\r\n"] * 20
    took, raw = exchange(addr, chunks, pause=TIMEOUT / 5)
    assert took < 2 * TIMEOUT + MARGIN and (raw.startswith(b"HTTP/1.1 408") or raw.endswith(b"<reset>")), raw


def test_a_half_sent_body_is_answered_and_closed(addr):
    head = b"POST /tokenize HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"
    took, raw = exchange(addr, [head + b'{"content": "hal'])
    assert took < TIMEOUT + MARGIN
    status, error = status_and_error(raw)
    assert status == 408 and "body" in error["message"]


def test_a_silent_connection_is_closed(addr):
    took, raw = exchange(addr, [])
    assert took < TIMEOUT + MARGIN and raw == b""


def test_an_idle_connection_after_a_response_is_closed(addr):
    took, raw = exchange(addr, [b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"])
    assert raw.startswith(b"HTTP/1.1 200") and took < TIMEOUT + MARGIN


def test_a_slow_but_steady_body_is_read(addr):
    """The body timeout is the longest pause between reads: a body that keeps coming,
    for longer than the timeout in all, is read to the end."""
    body = json.dumps({"content": "hello world, " * 8}).encode()
    head = (b"POST /tokenize HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nConnection: close\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body))
    pieces = [head] + [body[i:i + 30] for i in range(0, len(body), 30)]         # 4 pieces
    took, raw = exchange(addr, pieces, pause=TIMEOUT / 3)
    assert took > TIMEOUT and raw.startswith(b"HTTP/1.1 200"), raw[:200]


def test_a_body_over_the_limit_is_413(addr):
    host, port = addr
    r = httpx.post(f"http://{host}:{port}/tokenize", json={"content": "x" * 5000})    # Content-Length says so
    assert r.status_code == 413 and r.json()["error"]["message"]

    def chunked():                               # no Content-Length: counted as it arrives
        yield b'{"content": "'
        for _ in range(10):
            yield b"x" * 1000
        yield b'"}'
    r = httpx.post(f"http://{host}:{port}/tokenize", content=chunked(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["message"]


def test_idle_connections_do_not_lock_out_a_new_client(tiny_path):
    """A server under the usual 1024 open-file limit (set here; its cap is then 512
    connections) is sent 1,100 connections that never send a byte, more than it could
    hold; a new client is still served at once, because the longest idle connections make
    room. (Without the cap the new client waits for a descriptor that never frees up.
    This process holds the client ends: if its own limit is lower, it opens fewer, leaving
    100 descriptors spare.)"""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 1200 <= hard or hard == resource.RLIM_INFINITY:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1200), hard))
    n = min(1100, resource.getrlimit(resource.RLIMIT_NOFILE)[0] - 100)

    def server_limits():
        resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 1024))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OPENBLAS_NUM_THREADS": "1"}
    server = subprocess.Popen([sys.executable, "-m", "runner", "-m", str(tiny_path), "--server", "--nobrowser",
                               "--port", "0", "--timeout", "60", "--log-disable", "-c", "256"], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, preexec_fn=server_limits)
    idle: list[socket.socket] = []
    try:
        url = server.stdout.readline().decode().split(" at ")[1].split()[0].rstrip("/")
        host, port = url.split("//")[1].rsplit(":", 1)
        for _ in range(200):                     # the model loads in the background
            if httpx.get(url + "/health").status_code == 200:
                break
            time.sleep(0.05)
        for _ in range(n):
            idle.append(socket.create_connection((host, int(port)), timeout=10))
        t0 = time.monotonic()
        r = httpx.get(url + "/health", timeout=10)
        assert r.status_code == 200 and time.monotonic() - t0 < MARGIN
        for s in idle:                           # the server closed the oldest ones: EOF
            s.setblocking(False)
        deadline, closed = time.monotonic() + MARGIN, 0
        while closed < n - 512 and time.monotonic() < deadline:
            time.sleep(0.1)
            closed = sum(_closed(s) for s in idle)
        assert closed >= n - 512, (closed, n)
    finally:
        for s in idle:
            s.close()
        server.terminate()
        server.wait(10)


def _closed(s: socket.socket) -> bool:
    try:
        return s.recv(1) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True
