#!/usr/bin/env bash
# Make .venv/ (Python >= 3.11), install the project with its build and test extras, and
# write the default model to models/. Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)
if [ ! -e "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip 2>/dev/null || true
  .venv/bin/python -m pip install -q -e '.[build,test]'
  touch "$stamp"
fi
.venv/bin/python scripts/fetch_default_model.py
