#!/usr/bin/env bash
# Create .venv (if missing) and install the pinned requirements and the package.
# Idempotent: a second run only checks that everything is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.requirements.sha256
want=$(cat requirements.txt pyproject.toml | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "installing requirements into .venv (the first run takes a few minutes; log: .venv/install.log)"
  if ! {
    .venv/bin/python -m pip install --upgrade pip &&
    .venv/bin/python -m pip install -r requirements.txt &&
    .venv/bin/python -m pip install --no-deps -e .
  } > .venv/install.log 2>&1; then
    tail -n 40 .venv/install.log
    echo "setup failed: see .venv/install.log" >&2
    exit 1
  fi
  echo "$want" > "$stamp"
fi
