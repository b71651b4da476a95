#!/usr/bin/env bash
# Set up .venv with pegp-stream (editable) and its test and benchmark extras. Safe to re-run: it installs
# again only when pyproject.toml changed. Needs python3 >= 3.11 with venv and pip; PyPI (or a mirror).
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
# PyPI's torch for x86_64 is a CUDA build: a fresh venv takes about 6.2 GB. Fail before pip half-fills the disk.
need_gb=${PEGP_STREAM_NEED_GB:-7}
[[ -x .venv/bin/python ]] || "$python" -m venv .venv
stamp=.venv/.pegp-stream-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [[ ! -f $stamp || $(cat "$stamp") != "$want" ]]; then
  if ! .venv/bin/python -c 'import torch' 2>/dev/null; then
    free_gb=$(df --output=avail -BG .venv | tail -1 | tr -dc '0-9')
    if (( free_gb < need_gb )); then
      echo "bootstrap: $free_gb GB free under $(pwd), a new .venv with torch needs about $need_gb GB" \
           "(set PEGP_STREAM_NEED_GB to override)" >&2
      exit 1
    fi
  fi
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -e '.[test,bench]'
  echo "$want" > "$stamp"
fi
