"""Varlen attention for packed rows, as a transformers attention implementation fed by the collator.

Packed rows only stay isolated if the attention kernel knows where each sample starts. transformers' own paths
find that out from `position_ids` on the GPU (`find_packed_sequence_indices`, flash-attention's
`_is_packed_sequence`), reading results back to the host every forward, or every layer. Registered under its own
name, this implementation gets no mask built at all (transformers builds masks only for the names it knows) and
takes the boundaries from the collator's `cu_seq_lens_q/k` and `max_length_q/k` (`DataCollator(flash_kwargs=True)`),
computed on the CPU: nothing is read back. On CUDA the kernel is PyTorch's own flash-attention varlen
(`torch.nn.attention.varlen`, no `flash_attn` package needed); on the CPU, causal SDPA per sample (for tests).

Only models whose attention hands its extra keyword arguments to the attention function can use it: GPT-NeoX
does; Falcon (fixed attention classes) and MPT (its own eager attention) do not.
"""
from __future__ import annotations

import importlib.util

import torch
import torch.nn.functional as F

NAME = "delphi_varlen"


def available() -> bool:
    """torch ships its flash varlen kernel (2.9 and later)."""
    return importlib.util.find_spec("torch.nn.attention.varlen") is not None


def register() -> str:
    """Makes `attn_implementation=NAME` loadable; returns NAME."""
    from transformers import AttentionInterface

    AttentionInterface.register(NAME, varlen_attention)
    return NAME


def varlen_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                     attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0, *,
                     cu_seq_lens_q: torch.Tensor, cu_seq_lens_k: torch.Tensor, max_length_q: int,
                     max_length_k: int, **_) -> tuple[torch.Tensor, None]:
    """query/key/value (batch, heads, width, head_dim) -> (batch, width, heads, head_dim), each sequence of the
    flattened rows attending causally to itself only."""
    if dropout:
        raise ValueError(f"{NAME} attention has no dropout; set the model's attention dropout to 0")
    batch, heads, width, dim = query.shape
    device = query.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else query.dtype
    q, k, v = (t.transpose(1, 2).reshape(batch * width, t.shape[1], dim).to(dtype) for t in (query, key, value))
    if query.is_cuda:
        out = _flash_varlen(q, k, v, cu_seq_lens_q, cu_seq_lens_k, max_length_q, max_length_k, scaling)
    else:
        bounds = cu_seq_lens_q.tolist()
        out = torch.cat([F.scaled_dot_product_attention(*(t[a:b].transpose(0, 1) for t in (q, k, v)),
                                                        is_causal=True, scale=scaling).transpose(0, 1)
                         for a, b in zip(bounds, bounds[1:])])
    return out.view(batch, width, heads, dim), None


def _flash_varlen(q, k, v, cu_q, cu_k, max_q, max_k, scale):
    from torch.nn.attention.varlen import varlen_attn

    from trainer.compat import varlen_causal_kwargs

    return varlen_attn(q, k, v, cu_q, cu_k, max_q, max_k, scale=scale, **varlen_causal_kwargs())
