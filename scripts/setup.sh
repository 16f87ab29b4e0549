#!/usr/bin/env bash
# Creates .venv with the pinned stack, once; later calls return at once unless the pins changed.
# torch goes in first and alone: pip takes this machine's CPU build from local disk. On a GPU machine set
# DELPHI_TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128" (or any CUDA build) first.
set -euo pipefail
cd "$(dirname "$0")/.."
stamp=.venv/.delphi-installed
want=$(cat pyproject.toml scripts/constraints.txt | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then exit 0; fi
python3 -m venv .venv
export PIP_DISABLE_PIP_VERSION_CHECK=1
.venv/bin/pip install -q ${DELPHI_TORCH:-torch==2.13.0}
.venv/bin/pip install -q -c scripts/constraints.txt -e ".[test]"
echo "$want" > "$stamp"
