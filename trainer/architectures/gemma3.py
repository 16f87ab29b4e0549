"""Gemma 3, text only (`gemma3_text`: Gemma-3-1B and -270M; the 4B-27B checkpoints are multimodal `gemma3`)."""
from __future__ import annotations

from trainer.architectures import residual_dropout
from trainer.architectures.base import Architecture
from trainer.architectures.llama import LLAMA_LINEARS


def tiny_config(vocab_size: int, hidden: int, layers: int, heads: int, max_positions: int):
    """A local (sliding-window) then a global layer, per-head q/k RMSNorm and tied embeddings, as Gemma 3 has
    (5 local per global, window 512); the window scaled down to 16 tokens."""
    from transformers import Gemma3TextConfig

    head_dim = hidden // heads
    return Gemma3TextConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
                            num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads // 2,
                            head_dim=head_dim, query_pre_attn_scalar=head_dim,
                            max_position_embeddings=max_positions, sliding_window=16,
                            layer_types=["sliding_attention", "full_attention"] * (layers // 2)
                            + ["sliding_attention"] * (layers % 2),
                            pad_token_id=None, bos_token_id=None, eos_token_id=None)


# No soft-capping (Gemma 3 replaced it by q/k norms), so sdpa, flash-attention 2 and delphi_varlen all apply; the
# sliding window reaches the attention function, which honours it.
ARCHITECTURE = Architecture("gemma3_text", dropout_fields=(), packing="position_ids", tiny_config=tiny_config,
                            family="Gemma 3 (text)", lora_targets=LLAMA_LINEARS, varlen=True,
                            after_load=residual_dropout.on_outputs("post_attention_layernorm",
                                                                   "post_feedforward_layernorm"))
