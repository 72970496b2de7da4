"""The product itself: the PyInstaller runner built from this checkout, the default model
packed into it, run as a user would (no Python, an empty environment, a read-only
directory). The reference is `python -m runner` with the same model and flags."""
from __future__ import annotations

import json
import os
import pty
import select
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest

from runner.bundle import COOKIE_MAGIC, FOOTER, pack

ROOT = Path(__file__).resolve().parent.parent
CLI = ["--cli", "-p", "The capital of France is", "-n", "16", "--temp", "0", "--log-disable"]


@pytest.fixture(scope="module")
def built(tmp_path_factory, model_path):
    """(bare runner, packed executable), built from this checkout into a temp dir."""
    d = tmp_path_factory.mktemp("build")
    r = subprocess.run([str(ROOT / ".venv" / "bin" / "pyinstaller"), "--noconfirm", "--log-level", "ERROR",
                        "--distpath", str(d / "dist"), "--workpath", str(d / "work"),
                        str(ROOT / "packaging" / "gemma-runner.spec")], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    bare = d / "dist" / "gemma-runner"
    exe = d / "dist" / "gemma-3-270m.llamafile"
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "pack.py"), "--runner", str(bare),
                        "--model", str(model_path), "-o", str(exe)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return bare, exe


@pytest.fixture(scope="module")
def reference(model_path):
    r = subprocess.run([sys.executable, "-m", "runner", "-m", str(model_path)] + CLI, capture_output=True,
                       text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_cli_prints_what_python_prints(built, reference):
    r = subprocess.run([str(built[1])] + CLI, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout == reference and r.stderr == ""


def test_version_names_the_embedded_model(built):
    r = subprocess.run([str(built[1]), "--version"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "Gemma 3 270m" in r.stdout


def test_runs_without_python_in_an_empty_environment(built, reference, tmp_path):
    """No PATH, no HOME, no Python to find: the file carries its own."""
    r = subprocess.run([str(built[1])] + CLI, capture_output=True, text=True, timeout=300, env={},
                       cwd=str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert r.stdout == reference


def test_runs_from_a_read_only_directory(built, reference):
    """As an unprivileged user (root ignores directory permissions), from a directory and
    a file it cannot write (under /tmp itself: pytest's own temp dirs are private)."""
    d = Path(tempfile.mkdtemp(prefix="ro-", dir="/tmp"))
    exe = d / "gemma.llamafile"
    shutil.copy2(built[1], exe)
    exe.chmod(0o555)
    d.chmod(0o555)
    try:
        r = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", str(exe)] + CLI,
                           capture_output=True, text=True, timeout=300, cwd=str(d), env={"TMPDIR": "/tmp"})
        assert r.returncode == 0, r.stderr
        assert r.stdout == reference
        probe = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "touch",
                                str(d / "x")], capture_output=True)
        assert probe.returncode != 0                     # the directory really is read-only for it
    finally:
        d.chmod(0o755)
        shutil.rmtree(d)


def compiled(cache: Path) -> dict[Path, int]:
    """The kernels' cache files under `cache` and their modification times."""
    return {p: p.stat().st_mtime_ns for p in cache.glob("**/kernels-*/*") if p.is_file()}


def test_compiled_kernels_are_cached_across_launches(built, reference, tmp_path):
    """The first launch compiles the kernels into the user's cache directory; the next
    launch (a new extraction folder) loads them: it writes nothing there."""
    env = {"GEMMA_RUNNER_CACHE": str(tmp_path / "cache")}
    runs = []
    for _ in range(2):
        r = subprocess.run([str(built[1])] + CLI, capture_output=True, text=True, timeout=300, env=env)
        assert r.returncode == 0 and r.stdout == reference, r.stderr
        runs.append(compiled(tmp_path / "cache"))
    assert any(p.suffix == ".nbi" for p in runs[0]) and runs[1] == runs[0]


def test_an_unwritable_cache_directory_falls_back_to_the_temporary_one(built, reference, tmp_path):
    (tmp_path / "blocker").write_text("")                  # a file where a directory must go
    (tmp_path / "tmp").mkdir()
    env = {"GEMMA_RUNNER_CACHE": str(tmp_path / "blocker" / "cache"), "TMPDIR": str(tmp_path / "tmp")}
    r = subprocess.run([str(built[1])] + CLI, capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0 and r.stdout == reference, r.stderr
    assert any(p.suffix == ".nbi" for p in compiled(tmp_path / "tmp"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_server_answers_health(built):
    port = free_port()
    p = subprocess.Popen([str(built[1]), "--server", "--nobrowser", "--port", str(port), "--log-disable"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline, status = time.monotonic() + 120, None
        while time.monotonic() < deadline:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
                status = r.status_code
                if status == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        assert status == 200 and r.json() == {"status": "ok"}
    finally:
        p.terminate()
        p.wait(30)


def test_repl_starts_and_exits_on_ctrl_d(built):
    """In a pseudo-terminal: the banner and the >>> prompt appear, Ctrl-D ends it with 0."""
    master, slave = pty.openpty()
    p = subprocess.Popen([str(built[1])], stdin=slave, stdout=slave, stderr=slave, close_fds=True,
                         env={"TERM": "xterm", "COLUMNS": "100", "LINES": "30"})
    os.close(slave)
    seen = b""
    try:
        deadline = time.monotonic() + 120
        while b">>> " not in seen and time.monotonic() < deadline:
            if select.select([master], [], [], 0.5)[0]:
                try:
                    seen += os.read(master, 65536)
                except OSError:
                    break
        assert b">>> " in seen, seen.decode(errors="replace")[-2000:]
        assert b"Gemma 3 270m" in seen
        os.write(master, b"\x04")
        assert p.wait(30) == 0
    finally:
        if p.poll() is None:
            p.kill()
        os.close(master)


def test_a_bare_runner_says_it_has_no_model(built):
    r = subprocess.run([str(built[0]), "--cli", "-p", "hi"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert r.stderr.strip() == "gemma-runner: this runner has no embedded model: pass -m FILE.gguf"


def test_a_payload_that_is_not_gguf(built, tmp_path):
    junk = tmp_path / "weights.bin"
    junk.write_bytes(b"not weights at all\n" * 1000)
    exe = tmp_path / "junk.llamafile"
    pack(str(built[0]), str(exe), {"model": str(junk)})
    r = subprocess.run([str(exe), "--cli", "-p", "hi"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "not a GGUF file" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_a_corrupt_index(built, tmp_path):
    exe = tmp_path / "corrupt.llamafile"
    shutil.copy2(built[1], exe)
    data = bytearray(exe.read_bytes())
    c = data.rfind(COOKIE_MAGIC)
    pkg = c + 88 - int.from_bytes(data[c + 8:c + 12], "big")
    magic, ioff, ilen, pstart = FOOTER.unpack(data[pkg - FOOTER.size:pkg])
    index = json.loads(bytes(data[ioff:ioff + ilen]))
    index["files"]["model"]["length"] = 10 ** 13
    data[ioff:ioff + ilen] = json.dumps(index).encode().ljust(ilen)
    exe.write_bytes(bytes(data))
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    r = subprocess.run([str(exe), "--cli", "-p", "hi"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert "embedded index is corrupt" in r.stderr and len(r.stderr.strip().splitlines()) == 1
