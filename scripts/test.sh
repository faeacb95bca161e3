#!/usr/bin/env bash
# Set up the environment and run the test suite (two workers). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# Two pytest workers (the machine has two cores); KS_TEST_WORKERS=0 runs in one process.
# The ten slowest tests are listed at the end, to keep CI (under 15 minutes) in view.
exec .venv/bin/python -m pytest -q -n "${KS_TEST_WORKERS:-2}" --durations=10 "$@"
