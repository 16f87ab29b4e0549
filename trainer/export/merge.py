"""Adapters merged into their base loaded in its original precision, never into 4-bit weights.

A QLoRA run trained against an NF4 copy of the base; merging into those 4-bit weights would round most of the
update away and leave a quantized checkpoint, so the base is reloaded unquantized from its own files (peft #1080,
jondurbin/qlora `merge_weights.py`) and the adapter merged there.
"""
from __future__ import annotations

from pathlib import Path

import torch

from trainer.errors import ConfigError
from trainer.export.source import ADAPTER_CONFIG, EXPORT_RECORD, RunOutput, read_export_record
from trainer.inference import load_base_with_adapter


def load_full_model(run: RunOutput):
    """A full (not adapter) run's model, in the checkpoint's own precision."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(run.path, dtype="auto", trust_remote_code=run.trust_remote_code)


def load_adapter_model(run: RunOutput, tokenizer):
    """The base (unquantized, original precision, rows resized as in training) with the adapter attached."""
    refuse_merged_base(run, Path(run.base_model))
    return load_base_with_adapter(run.path, run.base_model, run.config, tokenizer, "auto", run.trust_remote_code)


def refuse_merged_base(run: RunOutput, base: Path) -> None:
    """Merging an adapter twice adds its update twice; a base that is itself an adapter has no weights."""
    if (base / ADAPTER_CONFIG).is_file():
        raise ConfigError(f"base model '{base}' is itself a peft adapter; pass the model it was trained on "
                          f"with --base_model")
    record = read_export_record(base)
    if record and record.get("adapter_sha256") == run.adapter_sha256:
        raise ConfigError(f"base model '{base}' already has the adapter {run.path} merged into it "
                          f"({base / EXPORT_RECORD}: "
                          f"adapter_sha256 matches); export from the adapter's own base, or use '{base}' as is")


def cast_parameters(model, dtype: torch.dtype) -> None:
    """Parameters only: `.half()` would also cast the rotary `inv_freq` buffers, and the reloaded model (which
    recomputes them in fp32) would then drift from the one that was checked."""
    for p in model.parameters():
        p.data = p.data.to(dtype)
    model.config.dtype = dtype
