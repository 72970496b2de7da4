#!/usr/bin/env bash
# The test command: set up what is missing (venv, packages, model), then run the suite.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/python -m pytest -q "$@"
