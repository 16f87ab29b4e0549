#!/usr/bin/env bash
# Export a training output: bash scripts/export.sh outputs/tiny-pythia exports/tiny-pythia [--target ipu --verify]
# (arguments as `python -m trainer.export --help`). --verify creates the old-library venv first.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [[ " $* " == *" --verify "* ]]; then bash scripts/setup_ipu_env.sh; fi
source scripts/env.sh
exec .venv/bin/python -m trainer.export "$@"
