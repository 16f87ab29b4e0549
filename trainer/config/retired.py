"""OASST `config.yaml` keys (and `trainer_sft.py` flags) that Delphi deliberately does not have, with what to do
instead: such a key is refused with this line, never ignored."""
from __future__ import annotations

RETIRED_OASST_KEYS = {
    "poly_eps": "it only tunes OASST's PolyLoss; Delphi trains with cross-entropy",
    "loss_fn": "Delphi trains with token-weighted cross-entropy",
    "fuse_gelu": "it patched OASST's own GELU kernel; transformers' kernels are used as they are",
    "samples_mixing": "use `packing: true`, which keeps samples from attending to each other",
    "random_offset_probability": "Delphi truncates by dropping the oldest turns, never a random window",
    "datasets_extra": "lists replace on merge: name every dataset in one `datasets` list",
    "quantization": "8-bit AdamW is `optim: adamw_8bit` (on CUDA)",
    "per_digit_tokens": "the tokenizer is used as the model ships it",
    "is_reward_model": "Delphi does supervised fine-tuning only",
    "seq2seqmodel": "Delphi trains decoder-only causal LMs",
    "eval_size": "use each dataset's `val_split`",
    "eval_accumulation_steps": "evaluation keeps no logits, so there is nothing to accumulate",
    "freeze_layer": "use LoRA to train a subset of the weights",
    "int8_training": "8-bit training is not offered; use `mode: qlora` (4-bit base + LoRA) or `mode: lora`",
    "peft_model": "use `mode: lora` (or `qlora`; `mode: full` for peft_model: false) with lora_r, lora_alpha, "
                  "lora_target_modules",
    "peft_type": "LoRA is the adapter Delphi trains: `mode: lora` or `mode: qlora`",
    "save_strategy": "checkpoints are saved every `save_steps` optimizer steps (OASST's 'steps')",
    "use_system_tag": "OASST's per-reply tags from message labels are not rendered; use `use_system_prefix` with "
                      "`system_prefix`, or system turns in `messages` / `sharegpt` data",
    "system_property_dropout": "it only applies to OASST's system tags (see use_system_tag)",
    "system_add_length": "it only applies to OASST's system tags (see use_system_tag)",
    "residual_dropout_lima": "use `residual_dropout` (the same rate in every layer)",
    "superhot": "RoPE scaling (SuperHOT) is not offered: Delphi trains each model at the positions it was trained for",
    "superhot_config": "RoPE scaling (SuperHOT) is not offered",
    "world_size": "the launcher sets it (`torchrun --nproc_per_node N`, `deepspeed --num_gpus N`)",
}
