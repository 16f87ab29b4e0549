"""Residual dropout for classes that have no place for it (Llama, Qwen, Mistral, Gemma): a forward hook on the
decoder-layer modules whose output is added to the residual stream, as OASST's `patch_model` wrapped LLaMA's
attention and MLP. The rate then means the same thing for every family: dropout on what each attention and MLP
block adds to the residual stream, in training only."""
from __future__ import annotations

from typing import Any, Callable

import torch.nn.functional as F


class ResidualDropout:
    """Forward hook: dropout on a module's output (the first element where it returns a tuple), in training."""

    def __init__(self, p: float):
        self.p = p

    def __call__(self, module, args, output):
        if not module.training:
            return None
        if isinstance(output, tuple):
            return (F.dropout(output[0], self.p, training=True), *output[1:])
        return F.dropout(output, self.p, training=True)


def on_outputs(*names: str) -> Callable[[Any, float], None]:
    """An `Architecture.after_load` hooking residual dropout onto every module called one of `names` (the last
    component of its name, e.g. `model.layers.3.mlp`); a rate of 0 adds nothing."""

    def add(model, p: float) -> None:
        if not p:
            return
        for name, module in model.named_modules():
            if name.rsplit(".", 1)[-1] in names:
                module.register_forward_hook(ResidualDropout(p))

    return add


def rates(model) -> set[float]:
    """The residual dropout rates hooked onto a model (empty where none is)."""
    return {hook.p for module in model.modules() for hook in module._forward_hooks.values()
            if isinstance(hook, ResidualDropout)}
