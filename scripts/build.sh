#!/usr/bin/env bash
# Build the product from a fresh clone: set up (.venv, packages, default model), build the
# bare runner with PyInstaller, and pack the default model into dist/<model>.llamafile.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh build >&2
MODEL="${MODEL:-models/gemma-3-270m-q4_k_m.gguf}"
.venv/bin/pyinstaller --noconfirm --log-level WARN --distpath dist --workpath build/pyinstaller \
    packaging/gemma-runner.spec >&2
.venv/bin/python scripts/pack.py --runner dist/gemma-runner --model "$MODEL" >&2
