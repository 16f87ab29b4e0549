"""Varlen attention for packed rows, as a transformers attention implementation fed by the collator.

Packed rows only stay isolated if the attention kernel knows where each sample starts. transformers' own paths
find that out from `position_ids` on the GPU (`find_packed_sequence_indices`, flash-attention's
`_is_packed_sequence`), reading results back to the host every forward, or every layer. Registered under its own
name, this implementation gets no mask built at all (transformers builds masks only for the names it knows) and
takes the boundaries from the collator's `cu_seq_lens_q/k` and `max_length_q/k` (`DataCollator(flash_kwargs=True)`),
computed on the CPU: nothing is read back. On CUDA the kernel is PyTorch's own flash-attention varlen
(`torch.nn.attention.varlen`, no `flash_attn` package needed); on the CPU, causal SDPA per sample (for tests).

Only models whose attention hands its extra keyword arguments to the attention function can use it: GPT-NeoX,
Llama, Qwen2, Qwen3, Mistral, Gemma 3 and Phi-3 do; Falcon (fixed attention classes) and MPT (its own eager
attention) do not. Grouped-query attention and sliding windows (Mistral v0.1, Gemma 3's local layers, Phi-3-mini)
are honoured; logit soft-capping (Gemma 2) is not, and refused.
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
                     max_length_k: int, sliding_window: int | None = None, softcap: float | None = None,
                     **_) -> tuple[torch.Tensor, None]:
    """query (batch, heads, width, head_dim), key/value (batch, kv_heads, width, head_dim), kv_heads dividing heads
    (grouped-query attention) -> (batch, width, heads, head_dim), each sequence of the flattened rows attending
    causally to itself only, and to its last `sliding_window` tokens only where the layer has a window."""
    if dropout:
        raise ValueError(f"{NAME} attention has no dropout; set the model's attention dropout to 0")
    if softcap is not None:
        raise ValueError(f"{NAME} attention has no logit soft-capping (Gemma 2); use eager or flash_attention_2")
    batch, heads, width, dim = query.shape
    device = query.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else query.dtype
    q, k, v = (t.transpose(1, 2).reshape(batch * width, t.shape[1], dim).to(dtype) for t in (query, key, value))
    gqa = key.shape[1] != heads
    if query.is_cuda:
        out = _flash_varlen(q, k, v, cu_seq_lens_q, cu_seq_lens_k, max_length_q, max_length_k, scaling,
                            sliding_window, gqa)
    else:
        bounds = cu_seq_lens_q.tolist()
        out = torch.cat([_causal_sdpa(*(t[a:b].transpose(0, 1) for t in (q, k, v)), scaling, sliding_window,
                                      gqa).transpose(0, 1) for a, b in zip(bounds, bounds[1:])])
    return out.view(batch, width, heads, dim), None


def _causal_sdpa(q, k, v, scale, window, gqa):
    """One sequence, (heads, length, head_dim): causal, within the last `window` tokens where one is given (the
    window transformers' masks draw: key j is seen by query i when i - window < j <= i)."""
    if window is None:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=gqa)
    i = torch.arange(q.shape[1], device=q.device)
    seen = (i[None, :] <= i[:, None]) & (i[None, :] > i[:, None] - window)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=seen, scale=scale, enable_gqa=gqa)


def _flash_varlen(q, k, v, cu_q, cu_k, max_q, max_k, scale, window, gqa):
    from torch.nn.attention.varlen import varlen_attn

    from trainer.compat import varlen_causal_kwargs

    return varlen_attn(q, k, v, cu_q, cu_k, max_q, max_k, scale=scale, enable_gqa=gqa,
                       **varlen_causal_kwargs(window))
