#!/usr/bin/env bash
# The demo, end to end on this machine: set up .venv (and the IPU pipeline's old-library venv) if needed, build
# tiny models, then on the bundled data: data report -> train (samples and changes against the base model
# at every evaluation) -> export the best checkpoint -> export for the IPU -> verify under
# transformers 4.25.1 / tokenizers 0.13.3 -> chat with the export on example prompts.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/setup_ipu_env.sh
source scripts/env.sh
py=.venv/bin/python
$py scripts/make_tiny_models.py
$py -m trainer.data --configs demo-data tiny-pythia --examples 1
$py trainer_sft.py --configs demo-data tiny-pythia demo-train
rm -rf exports/tiny-pythia-best exports/tiny-pythia-ipu
$py -m trainer.export outputs/tiny-pythia exports/tiny-pythia-best --checkpoint best
$py -m trainer.export outputs/tiny-pythia exports/tiny-pythia-ipu --target ipu --verify
EXAMPLE_PROMPTS='["What is a meme?", "Why did the Roman Empire split into east and west?"]' \
    $py -m trainer.chat --model exports/tiny-pythia-ipu --temperature 0 --output_length 32
