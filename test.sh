#!/usr/bin/env bash
# Quickstart, command 2: set up and run the test suite. Extra arguments go to pytest
# (e.g. `bash test.sh -k towers` for a subset; `-n 0` for one process). Every test runs by default; none is
# marked slow. Two pytest-xdist workers, a test file each at a time (a file's session fixtures are built once):
# 12 min 21 s against 18 min 05 s in one process on the 2-core machine (README, Development).
set -euo pipefail
source "$(dirname "$0")/scripts/setup.sh"
ruff check src tests benchmarks
ruff format --check src tests benchmarks
mypy  # src/, with the settings of [tool.mypy] in pyproject.toml (its cache: .mypy_cache/)
python -m pytest -n "${TEST_WORKERS:-2}" --dist loadfile "$@"
