#!/usr/bin/env bash
# Set up (idempotent) and run the whole test suite. Fails when a test fails or when no tests are collected.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export PYTHONUNBUFFERED=1
# pytest exits 5 when nothing was collected; that is a failure here, as is any failed test.
exec .venv/bin/python -m pytest -q --durations=15 "$@"
