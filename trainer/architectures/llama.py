"""Llama (Llama 2, Llama 3.x, and every checkpoint built on `LlamaForCausalLM`: TinyLlama, SmolLM, Yi, ...)."""
from __future__ import annotations

from trainer.architectures import residual_dropout
from trainer.architectures.base import Architecture

# The linear layers of a Llama-style decoder layer (also Qwen2, Qwen3, Mistral, Gemma 2 and 3).
LLAMA_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def tiny_config(vocab_size: int, hidden: int, layers: int, heads: int, max_positions: int):
    """Grouped-query attention and tied embeddings, as Llama 3.2 1B/3B have."""
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
                       num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads // 2,
                       max_position_embeddings=max_positions, tie_word_embeddings=True)


# Packed rows: `create_causal_mask` splits them where position_ids restart; the attention hands `cu_seq_lens` to
# the attention function. No residual dropout in the class: hooked on each layer's attention and MLP output.
ARCHITECTURE = Architecture("llama", dropout_fields=(), packing="position_ids", tiny_config=tiny_config,
                            family="Llama 2 / 3.x", lora_targets=LLAMA_LINEARS, varlen=True,
                            after_load=residual_dropout.on_outputs("self_attn", "mlp"))
