#!/usr/bin/env bash
# Sets up .venv if needed, then runs the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/setup_ipu_env.sh  # the IPU export test loads with transformers 4.25.1 there
source scripts/env.sh
exec .venv/bin/python -m pytest "$@"
