"""Mistral (Mistral-7B v0.1-v0.3 and their Instruct models)."""
from __future__ import annotations

from trainer.architectures import residual_dropout
from trainer.architectures.base import Architecture
from trainer.architectures.llama import LLAMA_LINEARS


def tiny_config(vocab_size: int, hidden: int, layers: int, heads: int, max_positions: int):
    """Grouped-query attention, untied embeddings and a sliding window (v0.1's 4,096, scaled down to 16 tokens
    so that the tests' samples cross it)."""
    from transformers import MistralConfig

    return MistralConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads // 2,
                         max_position_embeddings=max_positions, sliding_window=16, tie_word_embeddings=False)


# v0.1 attends through a 4,096-token sliding window (v0.2 and v0.3 have none): the masks, flash-attention 2 and
# delphi_varlen all honour it.
ARCHITECTURE = Architecture("mistral", dropout_fields=(), packing="position_ids", tiny_config=tiny_config,
                            family="Mistral", lora_targets=LLAMA_LINEARS, varlen=True,
                            after_load=residual_dropout.on_outputs("self_attn", "mlp"))
