"""Loading a fine-tuned model for generation: a training output (full model, or a LoRA/QLoRA adapter over its
base) or an export directory, with its tokenizer and the run's resolved config.

A LoRA or QLoRA output holds only the adapter (`adapter_config.json`); its base is loaded again in full precision
(never 4-bit, so QLoRA chats run on any CPU) and the adapter is attached through peft. The resolved config says how
the model was prompted in training; an export may not carry one, and then the caller picks a format from the
tokenizer (`trainer.formats.detect_format`).

Code shipped in a loaded directory runs only when the user asks (`trust_remote_code`, their flag): the
`trust_remote_code` recorded in a run's resolved config says what that run was allowed, not what whoever loads it
later allows, so it is ignored here.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from trainer import compat
from trainer.checkpoints import check_complete
from trainer.config import RESOLVED_CONFIG, TrainConfig, load_config
from trainer.errors import ConfigError
from trainer.files import check_safetensors, refused_pickles
from trainer.models import TORCH_DTYPES, resize_embeddings
from trainer.paths import bundled, looks_like_path

ADAPTER_CONFIG = "adapter_config.json"
EXPORT_RECORD = "delphi_export.json"  # written by `trainer.export`


@dataclass
class InferenceModel:
    model: Any  # a transformers causal LM in eval mode (adapters merged unless asked otherwise)
    tokenizer: Any
    config: TrainConfig | None  # the run's resolved config; None for a directory without one
    device: torch.device
    notes: list[str] = field(default_factory=list)  # how it was loaded, one line each, for the user


def load_for_inference(path: str | Path, *, device: str | None = None, dtype: torch.dtype | None = None,
                       merge: bool = True, trust_remote_code: bool = False,
                       base_model: str | None = None) -> InferenceModel:
    """The model and tokenizer in `path`, ready for `generate`.

    `device` defaults to CUDA when present, else CPU; `dtype` to fp32 on CPU and the run's `dtype` on CUDA.
    `merge` folds LoRA adapters into the base weights (faster generation); False keeps the peft model.
    `base_model` replaces the base an adapter names (when it has moved).
    """
    from transformers import AutoTokenizer

    path = Path(path)
    if not (path / "config.json").is_file() and not (path / ADAPTER_CONFIG).is_file():
        raise ConfigError(f"--model: '{path}' holds neither config.json nor {ADAPTER_CONFIG}; expected a training "
                          f"output or an exported model directory")
    if not (path / EXPORT_RECORD).is_file():
        check_complete(path)
    check_safetensors(path, "--model")
    config = read_resolved_config(path)
    target = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if dtype is None:
        dtype = torch.float32 if target.type == "cpu" or config is None else TORCH_DTYPES[config.model.dtype]
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise ConfigError(f"--model: '{path}' has no loadable tokenizer: {str(e).splitlines()[0]}") from None
    notes = [f"config: {path / RESOLVED_CONFIG}" if config else f"config: none in {path}"]
    with refused_pickles(f"--model '{path}'"):
        if (path / ADAPTER_CONFIG).is_file():
            model = _load_with_adapter(path, config, tokenizer, dtype, merge, notes, trust_remote_code, base_model)
        else:
            from transformers import AutoModelForCausalLM

            model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, trust_remote_code=trust_remote_code)
            notes.append(f"model: {path} ({dtype})")
    model.to(target).eval()
    return InferenceModel(model, tokenizer, config, target, notes)



def read_resolved_config(path: Path) -> TrainConfig | None:
    """`resolved_config.yaml` of a run; a `checkpoint-N` directory uses its run's (the one beside it)."""
    candidates = [path / RESOLVED_CONFIG]
    if path.name.startswith("checkpoint-"):
        candidates.append(path.parent / RESOLVED_CONFIG)
    for file in candidates:
        if file.is_file():
            return load_config(["--config_file", str(file), "--configs", "resolved"], config_files=[])
    return None


def _load_with_adapter(path: Path, config: TrainConfig | None, tokenizer, dtype: torch.dtype, merge: bool,
                       notes: list[str], trust_remote_code: bool, base_model: str | None):
    base = base_model or _base_path(read_adapter_config(path).get("base_model_name_or_path"), path)
    model = load_base_with_adapter(path, base, config, tokenizer, dtype, trust_remote_code)
    notes.append(f"model: {config.adapters.mode if config else 'lora'} adapter {path} on base {base} "
                 f"({dtype}{', merged' if merge else ''})")
    return model.merge_and_unload() if merge else model


def read_adapter_config(path: Path) -> dict:
    try:
        adapter = json.loads((path / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path / ADAPTER_CONFIG}: not readable JSON ({e})") from None
    if not isinstance(adapter, dict):
        raise ConfigError(f"{path / ADAPTER_CONFIG}: expected a JSON object")
    return adapter


def check_base_present(adapter_dir: Path, base: str) -> None:
    """An adapter's base given as a path must still be there: one line naming --base_model otherwise."""
    if looks_like_path(base) and not Path(base).is_dir():
        raise ConfigError(f"{adapter_dir}: the adapter's base model '{base}' is not there (moved or deleted?); "
                          f"pass its directory with --base_model")


def load_base_with_adapter(adapter_dir: Path, base: str, config: TrainConfig | None, tokenizer, dtype,
                           trust_remote_code: bool = False):
    """The base in full precision (a QLoRA base too: its adapter's deltas apply to the original weights, never
    merged into 4-bit ones), embedding rows sized as training sized them, then the peft adapter attached."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    check_base_present(adapter_dir, base)
    if Path(base).is_dir():
        check_safetensors(base, "base model")
    try:
        model = AutoModelForCausalLM.from_pretrained(base, dtype=dtype, trust_remote_code=trust_remote_code)
    except OSError as e:
        raise ConfigError(f"{adapter_dir}: cannot load the base model '{base}' ({str(e).splitlines()[0]}); "
                          f"pass its directory with --base_model") from None
    resize_embeddings(model, tokenizer, config.model.pad_vocab_size_to_multiple_of if config else 16)
    with compat.quiet_peft_model_init():
        return PeftModel.from_pretrained(model, adapter_dir)


def _base_path(name: str | None, adapter_dir: Path) -> str:
    """The base as the adapter names it: a hub name or a directory, relative to where training ran, which is
    usually the repository (so the repository is tried after the working directory)."""
    if not name:
        raise ConfigError(f"{adapter_dir / ADAPTER_CONFIG}: 'base_model_name_or_path' is empty; cannot find the "
                          f"base model the adapter was trained on")
    return bundled(name)


def context_length(model, tokenizer) -> int:
    """How many tokens one prompt plus its reply may span: the model's positions or the tokenizer's
    `model_max_length` (training sets it to `max_length`), whichever is smaller."""
    limits = [getattr(model.config, key) for key in ("max_position_embeddings", "max_seq_len", "n_positions")
              if isinstance(getattr(model.config, key, None), int)]
    if tokenizer.model_max_length and tokenizer.model_max_length < 1e9:
        limits.append(int(tokenizer.model_max_length))
    if not limits:
        raise ConfigError("the model config names no maximum positions and the tokenizer no model_max_length; "
                          "cannot tell how long a chat may grow")
    return min(limits)
