#!/usr/bin/env bash
# Quickstart, command 2: set up and run the test suite. Extra arguments go to pytest
# (e.g. `bash test.sh -k towers` for a subset; `-n 0` for one process). Every test runs by default; none is
# marked slow. Two pytest-xdist workers, a test file each at a time (the fixtures a file shares are built once:
# docs/development.md). The manual is built first: a broken link, anchor or page left out of its nav fails.
set -euo pipefail
source "$(dirname "$0")/scripts/setup.sh"
ruff check src tests benchmarks scripts
ruff format --check src tests benchmarks scripts
mypy  # src/, with the settings of [tool.mypy] in pyproject.toml (its cache: .mypy_cache/)
NO_MKDOCS_2_WARNING=1 mkdocs build --strict --quiet --site-dir site
python -m pytest -n "${TEST_WORKERS:-2}" --dist loadfile --no-loadscope-reorder "$@"
