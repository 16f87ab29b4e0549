"""The architectures Delphi trains, one module each; `ARCHITECTURES` is the registry.

Adding one is a module defining `ARCHITECTURE = Architecture(...)` (dropout fields, packing isolation, tiny-model
config, quirks) and one line below; model loading, the collator, the tiny models and the error messages follow.
"""
from __future__ import annotations

from trainer.architectures import falcon, gpt_neox, mpt
from trainer.architectures.base import Architecture, Isolation

ARCHITECTURES: dict[str, Architecture] = {a.model_type: a for a in (gpt_neox.ARCHITECTURE, mpt.ARCHITECTURE,
                                                                     falcon.ARCHITECTURE)}

__all__ = ["ARCHITECTURES", "Architecture", "Isolation"]

