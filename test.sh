#!/usr/bin/env bash
# Quickstart, command 2: set up and run the test suite. Extra arguments go to pytest
# (e.g. `bash test.sh -k towers` for a subset). Every test runs by default; none is marked slow.
set -euo pipefail
source "$(dirname "$0")/scripts/setup.sh"
ruff check src tests benchmarks
python -m pytest "$@"
