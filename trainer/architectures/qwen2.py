"""Qwen2 (Qwen2, Qwen2.5 and their Coder/Math variants)."""
from __future__ import annotations

from trainer.architectures import residual_dropout
from trainer.architectures.base import Architecture
from trainer.architectures.llama import LLAMA_LINEARS


def tiny_config(vocab_size: int, hidden: int, layers: int, heads: int, max_positions: int):
    """Grouped-query attention, q/k/v biases and tied embeddings, as Qwen2.5-0.5B/1.5B have."""
    from transformers import Qwen2Config

    return Qwen2Config(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
                       num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads // 2,
                       max_position_embeddings=max_positions, tie_word_embeddings=True)


# As Llama. Qwen2.5's sliding window is off (`use_sliding_window: false`); where a checkpoint turns it on, the
# window reaches the attention function, which flash-attention 2 and delphi_varlen both honour.
ARCHITECTURE = Architecture("qwen2", dropout_fields=(), packing="position_ids", tiny_config=tiny_config,
                            family="Qwen2 / Qwen2.5", lora_targets=LLAMA_LINEARS, varlen=True,
                            after_load=residual_dropout.on_outputs("self_attn", "mlp"))
