#!/usr/bin/env bash
# The demo, end to end on this machine: set up .venv if needed, build tiny models, then run the pipeline on the
# bundled data, and chat with the result on example prompts.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/env.sh
py=.venv/bin/python
$py scripts/make_tiny_models.py
$py -m trainer.data --configs demo-data tiny-pythia --examples 1
$py trainer_sft.py --configs demo-data tiny-pythia demo-train
EXAMPLE_PROMPTS='["What is a meme?", "Who coined the word?"]' \
    $py -m trainer.chat --model outputs/tiny-pythia --temperature 0 --output_length 32
