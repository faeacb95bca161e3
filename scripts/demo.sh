#!/usr/bin/env bash
# Set up the environment and run the quick-start training job. Extra arguments are flags.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m trainers.train_lm "$@"
