"""Gemma 2 (2B, 9B, 27B and their -it models)."""
from __future__ import annotations

from trainer.architectures import residual_dropout
from trainer.architectures.base import Architecture
from trainer.architectures.llama import LLAMA_LINEARS


def tiny_config(vocab_size: int, hidden: int, layers: int, heads: int, max_positions: int):
    """Local (sliding-window) and global layers alternating, attention-logit and final-logit soft-capping and
    tied embeddings, as every Gemma 2 has; the window scaled down from 4,096 to 16 tokens."""
    from transformers import Gemma2Config

    head_dim = hidden // heads
    return Gemma2Config(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
                        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads // 2,
                        head_dim=head_dim, query_pre_attn_scalar=head_dim, max_position_embeddings=max_positions,
                        sliding_window=16, pad_token_id=None, bos_token_id=None, eos_token_id=None)


# Attention-logit soft-capping (tanh at 50) is honoured by eager, flex and flash-attention 2 only: transformers
# refuses sdpa for the class, and torch's varlen kernel has no soft-capping, so a GPU's padding-free rows take
# flash-attention 2 where `flash_attn` is installed and are otherwise packed rows under eager attention. The
# final-logit soft-capping (tanh at 30) is applied by the chunked loss too (trainer.linear_cross_entropy).
# Residual dropout goes on the post-attention and post-feedforward norms' outputs, the last step before each add.
ARCHITECTURE = Architecture("gemma2", dropout_fields=(), packing="position_ids", tiny_config=tiny_config,
                            family="Gemma 2", lora_targets=LLAMA_LINEARS, varlen=True, torch_varlen=False,
                            after_load=residual_dropout.on_outputs("post_attention_layernorm",
                                                                   "post_feedforward_layernorm"))
