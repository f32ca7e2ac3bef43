#!/usr/bin/env bash
# Quickstart, command 2: set up and run the test suite. Extra arguments go to pytest
# (e.g. `bash test.sh -k towers` for a subset; `-n 0` for one process). Every test runs by default; none is
# marked slow. Two pytest-xdist workers share the tests; files whose fixtures train a run keep to one worker.
set -euo pipefail
source "$(dirname "$0")/scripts/setup.sh"
ruff check src tests benchmarks
python -m pytest -n 2 --dist loadgroup "$@"
