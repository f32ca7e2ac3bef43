#!/usr/bin/env bash
# Create .venv (once) and install the package with its test, export and docs extras.
# Usage: source scripts/setup.sh   (used by run.sh, test.sh and .ci/run)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
stamp=.venv/.installed-$(cat pyproject.toml | cksum | cut -d' ' -f1)
if [ ! -f "$stamp" ]; then
  python -m pip install -q --upgrade pip >/dev/null
  python -m pip install -q -e ".[test,export,docs]"
  touch "$stamp"
fi
