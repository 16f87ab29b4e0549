#!/usr/bin/env bash
# Creates .venv-ipu: the libraries Graphcore's IPU pipeline loads checkpoints with (transformers 4.25.1,
# tokenizers 0.13.3; see README "Export"), in a venv of its own so the main .venv is never touched.
# `python -m trainer.export --target ipu --verify` runs a forward pass in it. Once; later calls return at once
# unless the pins below changed. torch goes in first and alone (this machine's CPU build, as setup.sh does);
# transformers 4.25.1 was built against numpy 1.x, hence numpy<2.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${DELPHI_IPU_VENV:-.venv-ipu}
pins="transformers==4.25.1 tokenizers==0.13.3 numpy<2"
stamp=$venv/.delphi-installed
want=$(echo "${DELPHI_IPU_TORCH:-torch==2.13.0} $pins" | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then exit 0; fi
python3 -m venv "$venv"
export PIP_DISABLE_PIP_VERSION_CHECK=1
"$venv/bin/pip" install -q ${DELPHI_IPU_TORCH:-torch==2.13.0}
"$venv/bin/pip" install -q $pins
echo "$want" > "$stamp"
