#!/usr/bin/env bash
# Quickstart, command 1: set up and run the main job (train on the built-in digits dataset).
# Extra arguments go to `alexnet train`, e.g. `bash run.sh --epochs 2`.
set -euo pipefail
source "$(dirname "$0")/scripts/setup.sh"
alexnet train "$@"
