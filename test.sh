#!/usr/bin/env bash
# Quickstart, command 2: set up and run the test suite. Extra arguments go to pytest
# (e.g. `bash test.sh -m slow` for the slow tests only, `bash test.sh -m ""` for everything).
set -euo pipefail
source "$(dirname "$0")/scripts/setup.sh"
ruff check src tests benchmarks
python -m pytest "$@"
