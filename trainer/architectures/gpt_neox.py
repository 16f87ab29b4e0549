"""GPT-NeoX (Pythia, the OASST SFT models)."""
from __future__ import annotations

from trainer.architectures.base import Architecture


def tiny_config(vocab_size: int, hidden: int, layers: int, heads: int, max_positions: int):
    from transformers import GPTNeoXConfig

    return GPTNeoXConfig(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                         num_attention_heads=heads, intermediate_size=4 * hidden,
                         max_position_embeddings=max_positions, rotary_pct=0.25, tie_word_embeddings=False,
                         bos_token_id=0, eos_token_id=0)


# Packed rows: `create_causal_mask` splits a row into causal blocks wherever position_ids restart.
ARCHITECTURE = Architecture("gpt_neox", dropout_fields=("hidden_dropout",), packing="position_ids",
                            layer_class="GPTNeoXLayer",
                            tiny_config=tiny_config, family="GPT-NeoX / Pythia",
                            lora_targets=("query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"), varlen=True)
