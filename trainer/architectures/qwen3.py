"""Qwen3 (the dense models, 0.6B to 32B; hybrid thinking is a matter of the chat template)."""
from __future__ import annotations

from trainer.architectures import residual_dropout
from trainer.architectures.base import Architecture
from trainer.architectures.llama import LLAMA_LINEARS


def tiny_config(vocab_size: int, hidden: int, layers: int, heads: int, max_positions: int):
    """Grouped-query attention, per-head q/k RMSNorm and tied embeddings, as Qwen3-0.6B has."""
    from transformers import Qwen3Config

    return Qwen3Config(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
                       num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads // 2,
                       head_dim=hidden // heads, max_position_embeddings=max_positions, tie_word_embeddings=True)


ARCHITECTURE = Architecture("qwen3", dropout_fields=(), packing="position_ids", tiny_config=tiny_config,
                            family="Qwen3", lora_targets=LLAMA_LINEARS, varlen=True,
                            after_load=residual_dropout.on_outputs("self_attn", "mlp"))
