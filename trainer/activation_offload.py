"""Activation offloading: the tensors a forward pass saves for its backward pass go to host memory and come back
when the backward pass needs them, as TRL and torchtune offer beside activation checkpointing.

torch's own saved-tensor hooks do the work (`torch.autograd.graph.save_on_cpu`); pinned host buffers on CUDA let
the copies overlap compute. With activation checkpointing, only each layer's input is saved, so only those move.
On a CPU-only run the activations already live in host memory: the hooks change nothing but are kept, so that the
option means the same everywhere (and the tests can check that it leaves loss and gradients exactly as they were).
"""
from __future__ import annotations

from contextlib import nullcontext
from typing import ContextManager


def offloaded_activations(enabled: bool) -> ContextManager:
    """Entered around a training forward pass (the backward pass may run outside it)."""
    if not enabled:
        return nullcontext()
    import torch

    return torch.autograd.graph.save_on_cpu(pin_memory=torch.cuda.is_available())
