#!/usr/bin/env bash
# The test command: set up .venv, lint, run the whole suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/bootstrap.sh
# System tools the tests drive for real: promtool (Prometheus rules and config) and Chromium (status page).
if ! command -v promtool >/dev/null || ! command -v chromium >/dev/null; then
  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus chromium
fi
.venv/bin/ruff check pegp_stream tests benchmarks
.venv/bin/python -m mypy  # the package; [tool.mypy] in pyproject.toml says what is strict
.venv/bin/python -m pytest -q --durations=10 "$@"
