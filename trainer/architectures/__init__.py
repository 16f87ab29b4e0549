"""The architectures Delphi trains, one module each; `ARCHITECTURES` is the registry.

Adding one is a module defining `ARCHITECTURE = Architecture(...)` (dropout fields, packing isolation, tiny-model
config, LoRA targets, attention kernels, quirks) and one line below; model loading, the collator, the tiny models
and the error messages follow.
"""
from __future__ import annotations

from trainer.architectures import falcon, gemma2, gemma3, gpt_neox, llama, mistral, mpt, phi3, qwen2, qwen3
from trainer.architectures.base import Architecture, Isolation

ARCHITECTURES: dict[str, Architecture] = {a.model_type: a for a in (
    gpt_neox.ARCHITECTURE, mpt.ARCHITECTURE, falcon.ARCHITECTURE, llama.ARCHITECTURE, qwen2.ARCHITECTURE,
    qwen3.ARCHITECTURE, mistral.ARCHITECTURE, gemma2.ARCHITECTURE, gemma3.ARCHITECTURE, phi3.ARCHITECTURE)}


def supported() -> str:
    """The families, for messages: `gpt_neox (GPT-NeoX / Pythia), ...`."""
    return ", ".join(f"{a.model_type} ({a.family})" for a in ARCHITECTURES.values())


__all__ = ["ARCHITECTURES", "Architecture", "Isolation", "supported"]
