"""Falcon (the instruct chatbots of the Falcon tutorial)."""
from __future__ import annotations

from trainer import compat
from trainer.architectures.base import Architecture


def tiny_config(vocab_size: int, hidden: int, layers: int, heads: int, max_positions: int):
    from transformers import FalconConfig

    return FalconConfig(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                        num_attention_heads=heads, multi_query=True, new_decoder_architecture=False,
                        parallel_attn=True, bias=False, alibi=False, bos_token_id=0, eos_token_id=0,
                        max_position_embeddings=max_positions)


# Packed rows: rotary positions and `create_causal_mask`, as GPT-NeoX. 4-bit: see compat.falcon_linears_quantizable.
ARCHITECTURE = Architecture("falcon", dropout_fields=("hidden_dropout",), packing="position_ids",
                            layer_class="FalconDecoderLayer",
                            tiny_config=tiny_config, family="Falcon",
                            lora_targets=("query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"),
                            quantized_load=compat.falcon_linears_quantizable)
