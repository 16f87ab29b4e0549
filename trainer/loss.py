"""Token-weighted causal-LM loss that runs the output layer only where a label is trained.

With a 50k vocabulary the output layer is most of a small model's work, and in SFT most positions are prompt or
padding. A forward pre-hook on the output layer keeps only the hidden states whose *next* token is trained, so the
model's own forward (whatever wraps it: peft, DeepSpeed, DDP) returns logits of shape (trained tokens, vocab).
With `chunked`, the hook hands the layer no rows at all and the loss comes from `linear_cross_entropy` over the
kept hidden states, so those logits are never materialized either.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
import torch.nn.functional as F

from trainer.linear_cross_entropy import linear_cross_entropy
from trainer.tokens import IGNORE_INDEX

# Batch entries that are for the loss and the token accounting, not for the model's forward.
NOT_MODEL_INPUTS = ("labels", "use_cache", "num_real_tokens", "num_trained_tokens", "trained_index", "trained_targets")


def trained_positions(labels: torch.Tensor) -> torch.Tensor:
    """Where the hidden state predicts a trained token: position t is kept when labels[t + 1] != -100.

    >>> trained_positions(torch.tensor([[-100, -100, 5, 6, -100]])).tolist()
    [[False, True, True, False, False]]
    """
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = labels[:, 1:] != IGNORE_INDEX
    return keep


@contextlib.contextmanager
def score_only(output_layer: torch.nn.Module, index: torch.Tensor, batch_shape: torch.Size,
               chunked: bool = False) -> Iterator[list[torch.Tensor]]:
    """While active, the output layer sees the hidden states at `index` (flat positions of the rows x width
    batch). With `chunked` it sees none of them: they are appended to the yielded list instead."""
    kept: list[torch.Tensor] = []

    def select(_module, args):
        hidden, *rest = args
        if hidden.shape[:2] != batch_shape:
            raise RuntimeError(f"output layer got hidden states of shape {tuple(hidden.shape)}, expected the batch "
                               f"shape {tuple(batch_shape)}; was logits_to_keep set?")
        chosen = hidden.flatten(0, 1).index_select(0, index)
        if chunked:
            kept.append(chosen)
            chosen = chosen[:0]
        return (chosen, *rest)

    handle = output_layer.register_forward_pre_hook(select)
    try:
        yield kept
    finally:
        handle.remove()


def summed_token_loss(model: torch.nn.Module, output_layer: torch.nn.Module, inputs: dict[str, torch.Tensor],
                      chunked: bool = False, softcap: float | None = None) -> tuple[torch.Tensor, torch.Tensor, object]:
    """Sum of the cross-entropy over trained tokens, their count, and the model outputs.

    The caller divides by the trained-token count of the whole optimizer step, so a long answer weighs by its
    tokens, not by the batch it happened to land in. The collator's `trained_index` / `trained_targets` select the
    trained positions without a boolean mask (whose size the host would read back from the GPU every step); a
    batch without them gets the mask. `chunked` (a plain `nn.Linear` output layer only: not a LoRA-adapted or
    quantized head) never builds the (trained tokens x vocab) logits; `outputs.logits` is then empty, and the
    model's final-logit soft-capping, which its forward applies after the head, must be given as `softcap`
    (`final_logit_softcapping`: Gemma 2).
    """
    if chunked and type(output_layer) is not torch.nn.Linear:
        raise ValueError(f"chunked loss needs a plain torch.nn.Linear output layer, got "
                         f"{type(output_layer).__name__} (an adapted or quantized head)")
    labels = inputs["labels"]
    if "trained_index" in inputs:
        index, targets = inputs["trained_index"], inputs["trained_targets"]
    else:
        index = trained_positions(labels).flatten().nonzero().squeeze(1)
        targets = labels.flatten()[index + 1]
    model_inputs = {k: v for k, v in inputs.items() if k not in NOT_MODEL_INPUTS}
    with score_only(output_layer, index, labels.shape, chunked) as kept:
        outputs = model(**model_inputs, use_cache=False)
    if chunked:
        loss = linear_cross_entropy(kept[0], output_layer.weight, targets, output_layer.bias, softcap=softcap)
    else:
        loss = F.cross_entropy(outputs.logits.float(), targets, reduction="sum")
    return loss, targets.new_full((), targets.numel()), outputs
