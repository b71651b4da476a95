#!/usr/bin/env bash
# The test command: set up .venv, lint, run the whole suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/bootstrap.sh
.venv/bin/ruff check pegp_stream tests benchmarks
.venv/bin/python -m pytest -q --durations=10 "$@"
