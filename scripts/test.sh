#!/usr/bin/env bash
# Set up (idempotent) and run the whole test suite. Fails when a test fails or when no tests are collected.
# Test files run in parallel, one pytest-xdist worker per CPU core up to 4 (each test runs torch on one thread);
# RF_TEST_WORKERS=N sets the count, 0 runs everything in this one process.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export PYTHONUNBUFFERED=1
cores=$(nproc)
workers=${RF_TEST_WORKERS:-$(( cores < 4 ? cores : 4 ))}
# pytest exits 5 when nothing was collected; that is a failure here, as is any failed test.
exec .venv/bin/python -m pytest -q --durations=15 -n "$workers" --dist loadfile "$@"
