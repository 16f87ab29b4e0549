"""MPT (MosaicML; the airoboros QLoRA fine-tunes), through transformers' own class."""
from __future__ import annotations

from trainer import compat
from trainer.architectures.base import Architecture


def tiny_config(vocab_size: int, hidden: int, layers: int, heads: int, max_positions: int):
    from transformers import MptConfig

    return MptConfig(d_model=hidden, n_heads=heads, n_layers=layers, expansion_ratio=4, max_seq_len=max_positions,
                     vocab_size=vocab_size, attn_config={"attn_impl": "torch", "alibi": True})


def grow_max_seq_len(hf_config, max_length: int) -> list[str]:
    """ALiBi extrapolates, so the qlora fork's `--mpt` runs train past the checkpoint's max_seq_len."""
    if hf_config.max_seq_len >= max_length:
        return []
    note = f"MPT max_seq_len {hf_config.max_seq_len} -> {max_length} (ALiBi extrapolates)"
    hf_config.max_seq_len = max_length
    return [note]


# Packed rows: ALiBi ignores position_ids, so MPT gets a 4D block-diagonal mask. `resid_pdrop` is what
# MosaicML's remote code reads; transformers' class needs compat.set_mpt_residual_dropout.
ARCHITECTURE = Architecture("mpt", dropout_fields=("resid_pdrop",), packing="block_mask", tiny_config=tiny_config,
                            layer_class="MptBlock",
                            family="MPT", lora_targets=("Wqkv", "out_proj", "up_proj", "down_proj"),
                            adapt_config=grow_max_seq_len, after_load=compat.set_mpt_residual_dropout)
