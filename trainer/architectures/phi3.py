"""Phi-3 (Phi-3-mini/medium, Phi-3.5-mini, Phi-4-mini: `Phi3ForCausalLM`)."""
from __future__ import annotations

from trainer.architectures.base import Architecture


def tiny_config(vocab_size: int, hidden: int, layers: int, heads: int, max_positions: int):
    """Fused qkv and gate_up projections and untied embeddings, as Phi-3-mini has."""
    from transformers import Phi3Config

    return Phi3Config(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
                      num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads // 2,
                      max_position_embeddings=max_positions, original_max_position_embeddings=max_positions,
                      tie_word_embeddings=False, pad_token_id=None, bos_token_id=None, eos_token_id=None)


# The class has the residual dropout itself (`resid_pdrop`, on the attention and MLP outputs before each add).
# Phi-3-mini-4k attends through a 2,047-token sliding window, which the masks and both varlen kernels honour.
ARCHITECTURE = Architecture("phi3", dropout_fields=("resid_pdrop",), packing="position_ids", tiny_config=tiny_config,
                            family="Phi-3 / Phi-3.5", lora_targets=("qkv_proj", "o_proj", "gate_up_proj", "down_proj"),
                            varlen=True)
