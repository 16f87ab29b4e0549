"""Cross-entropy of a linear layer's output without ever holding the (tokens x vocab) logits.

With a 50k vocabulary the fp32 logits of 16k trained tokens take 3.3 GB, and autograd keeps them and their
gradient as well. Here logits exist one chunk of rows at a time: the forward computes each chunk's loss and, in
the same pass, its gradients (Liger-Kernel's method: no second matmul in the backward, which only scales them by
the incoming gradient). On CUDA with `liger_kernel` installed, Liger's Triton kernel does the same work fused.
"""
from __future__ import annotations

import torch

try:
    from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy
except ImportError:
    liger_fused_linear_cross_entropy = None

# Rows per chunk: 1024 x 50k fp32 logits = 200 MB transient, well under the activations of a 16k-token batch.
CHUNK_SIZE = 1024


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                         bias: torch.Tensor | None = None, chunk_size: int = CHUNK_SIZE,
                         softcap: float | None = None) -> torch.Tensor:
    """Sum over rows of cross_entropy(hidden @ weight.T + bias, targets), an fp32 scalar.

    Same loss and gradients as `F.cross_entropy(F.linear(hidden, weight, bias).float(), targets, reduction="sum")`,
    autocast included: the matmuls run in the autocast dtype, the softmax in fp32. Every row is a trained token
    (no ignore index). hidden [N, H], weight [V, H], targets [N]; N may be 0. `softcap` (Gemma 2's
    `final_logit_softcapping`) caps the logits to softcap * tanh(logits / softcap) first, as the model's own head
    does.
    """
    if hidden.is_cuda and len(hidden) and liger_fused_linear_cross_entropy is not None:
        # Liger follows autocast itself (bf16 matmuls, fp32 gradient accumulators for fp32 weights). It reads the
        # target count back with .item() in its forward and compares grad_output with 1 in its backward: two
        # host syncs per call, which the chunked path below does not have.
        return liger_fused_linear_cross_entropy(hidden, weight, targets, bias=bias, reduction="sum",
                                                softcap=softcap).float()
    device = hidden.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else hidden.dtype
    with torch.autocast(device, enabled=False):
        return _ChunkedLinearCrossEntropy.apply(hidden, weight, bias, targets, dtype, chunk_size,
                                                torch.is_grad_enabled(), softcap)


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    """Loss and gradients chunk by chunk in the forward; the backward scales them by grad_output.

    The inputs are cast to the compute dtype once; gradients come back in each input's own dtype, and the weight
    and bias gradients accumulate in fp32 across chunks. A weight or bias that does not require grad (LoRA's frozen
    head) costs no gradient matmul."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, dtype, chunk_size, grad_enabled, softcap):
        needs_hidden, needs_weight, needs_bias = (grad_enabled and n for n in ctx.needs_input_grad[:3])
        h, w = hidden.to(dtype), weight.to(dtype)
        b = None if bias is None else bias.to(dtype)
        loss = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad_hidden = torch.empty_like(hidden) if needs_hidden else None
        grad_weight = torch.zeros_like(weight, dtype=torch.float32) if needs_weight else None
        grad_bias = torch.zeros_like(bias, dtype=torch.float32) if needs_bias else None
        for start in range(0, len(h), chunk_size):
            rows = slice(start, start + chunk_size)
            h_chunk, t_chunk = h[rows], targets[rows]
            logits = torch.nn.functional.linear(h_chunk, w, b).float()
            if softcap is not None:
                capped = torch.tanh(logits / softcap)
                logits = capped * softcap
            lse = torch.logsumexp(logits, dim=-1)
            loss += (lse - logits.gather(1, t_chunk[:, None]).squeeze(1)).sum()
            if not (needs_hidden or needs_weight or needs_bias):
                continue
            # d(sum CE)/d logits = softmax - one_hot(target), built in place over the fp32 logits.
            grad_logits = logits.sub_(lse[:, None]).exp_()
            grad_logits[torch.arange(len(t_chunk), device=t_chunk.device), t_chunk] -= 1
            if softcap is not None:  # through softcap * tanh(z / softcap): times 1 - tanh^2
                grad_logits *= 1 - capped.square_()
            if needs_bias:
                grad_bias += grad_logits.sum(0)
            grad_logits = grad_logits.to(dtype)
            if needs_hidden:
                grad_hidden[rows] = grad_logits @ w
            if needs_weight and dtype == torch.float32:
                grad_weight.addmm_(grad_logits.T, h_chunk)
            elif needs_weight:
                grad_weight += grad_logits.T @ h_chunk  # a low-precision partial, summed in fp32
        ctx.save_for_backward(grad_hidden, grad_weight, grad_bias)
        ctx.dtypes = (hidden.dtype, weight.dtype, None if bias is None else bias.dtype)
        return loss

    @staticmethod
    def backward(ctx, grad_output):
        grads = tuple(None if g is None else (g * grad_output).to(dtype)
                      for g, dtype in zip(ctx.saved_tensors, ctx.dtypes))
        return (*grads, None, None, None, None, None)
