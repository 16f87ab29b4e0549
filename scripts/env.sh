# Sourced by demo.sh and test.sh: everything stays inside the checkout and nothing reaches for a hub.
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export HF_HOME="$root/.cache/hf" HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export WANDB_MODE="${WANDB_MODE:-offline}" WANDB_DIR="$root/.cache/wandb" WANDB_CACHE_DIR="$root/.cache/wandb-cache" \
       WANDB_CONFIG_DIR="$root/.cache/wandb-config"
mkdir -p "$WANDB_DIR"  # wandb warns "git root ... does not exist" when it is missing
export DS_ACCELERATOR="${DS_ACCELERATOR:-cpu}" TORCH_EXTENSIONS_DIR="$root/.cache/torch-extensions" \
       TORCHINDUCTOR_CACHE_DIR="$root/.cache/inductor" PIP_CACHE_DIR="$root/.cache/pip"
# Third-party reference files (never copied here): ../shared/data when it is there; tests needing it skip otherwise.
if [ -z "${DELPHI_REFERENCE_DATA:-}" ] && [ -d "$root/../shared/data" ]; then
  export DELPHI_REFERENCE_DATA=$(cd "$root/../shared/data" && pwd)
fi
