#!/usr/bin/env bash
# Make .venv/ (Python >= 3.11), install the project with the extras asked for (default
# "build,test"; scripts/build.sh asks for "build" only, so that building never installs
# torch), and write the default model to models/. Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
EXTRAS="${1:-build,test}"
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.installed-$(cat pyproject.toml <(echo "$EXTRAS") | sha256sum | cut -c1-16)
if [ ! -e "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip 2>/dev/null || true
  .venv/bin/python -m pip install -q -e ".[$EXTRAS]"
  touch "$stamp"
fi
.venv/bin/python scripts/fetch_default_model.py
