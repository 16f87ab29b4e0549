"""Token-weighted causal-LM loss that runs the output layer only where a label is trained.

With a 50k vocabulary the output layer is most of a small model's work, and in SFT most positions are prompt or
padding. A forward pre-hook on the output layer keeps only the hidden states whose *next* token is trained, so the
model's own forward (whatever wraps it: peft, DeepSpeed, DDP) returns logits of shape (trained tokens, vocab).
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
import torch.nn.functional as F

from trainer.tokens import IGNORE_INDEX



def trained_positions(labels: torch.Tensor) -> torch.Tensor:
    """Where the hidden state predicts a trained token: position t is kept when labels[t + 1] != -100.

    >>> trained_positions(torch.tensor([[-100, -100, 5, 6, -100]])).tolist()
    [[False, True, True, False, False]]
    """
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = labels[:, 1:] != IGNORE_INDEX
    return keep


@contextlib.contextmanager
def score_only(output_layer: torch.nn.Module, keep: torch.Tensor) -> Iterator[None]:
    """While active, the output layer sees hidden[keep] (trained positions, flattened row by row)."""

    def select(_module, args):
        hidden, *rest = args
        if hidden.shape[:2] != keep.shape:
            raise RuntimeError(f"output layer got hidden states of shape {tuple(hidden.shape)}, expected the batch "
                               f"shape {tuple(keep.shape)}; was logits_to_keep set?")
        return (hidden[keep], *rest)

    handle = output_layer.register_forward_pre_hook(select)
    try:
        yield
    finally:
        handle.remove()


def summed_token_loss(model: torch.nn.Module, output_layer: torch.nn.Module,
                      inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, object]:
    """Sum of the cross-entropy over trained tokens, their count, and the model outputs.

    The caller divides by the trained-token count of the whole optimizer step, so a long answer weighs by its
    tokens, not by the batch it happened to land in.
    """
    labels = inputs["labels"]
    model_inputs = {k: v for k, v in inputs.items() if k not in ("labels", "use_cache", "num_real_tokens")}
    keep = trained_positions(labels)
    targets = labels[:, 1:][labels[:, 1:] != IGNORE_INDEX]
    with score_only(output_layer, keep):
        outputs = model(**model_inputs, use_cache=False)
    loss = F.cross_entropy(outputs.logits.float(), targets, reduction="sum")
    return loss, targets.new_tensor(targets.numel()), outputs
