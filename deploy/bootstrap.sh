#!/usr/bin/env bash
# Set up .venv with pegp-stream (editable) and its test and benchmark extras. Safe to re-run: it installs
# again only when pyproject.toml changed. Needs python3 >= 3.11 with venv and pip; PyPI (or a mirror).
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
[[ -x .venv/bin/python ]] || "$python" -m venv .venv
stamp=.venv/.pegp-stream-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [[ ! -f $stamp || $(cat "$stamp") != "$want" ]]; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -e '.[test,bench]'
  echo "$want" > "$stamp"
fi
