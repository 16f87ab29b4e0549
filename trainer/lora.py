"""LoRA adapters through peft's public API, on a full-precision or a 4-bit base."""
from __future__ import annotations

import torch

from trainer import compat
from trainer.config import AdapterConfig


def linear_module_names(model) -> frozenset[str]:
    """The last name component of every linear layer except the output head: what `lora_target_modules` names."""
    head = model.get_output_embeddings()
    return frozenset(name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                     if isinstance(module, torch.nn.Linear) and module is not head)


def lora_config(adapters: AdapterConfig):
    """`all` is peft's "all-linear": every linear layer (4-bit ones included) except the output head."""
    from peft import LoraConfig

    return LoraConfig(r=adapters.lora_r, lora_alpha=adapters.lora_alpha, lora_dropout=adapters.lora_dropout,
                      target_modules=adapters.lora_targets, bias="none", task_type="CAUSAL_LM")


def add_adapters(model, adapters: AdapterConfig, sharded: bool = False):
    """Freezes the base and wraps it with LoRA; a 4-bit base is first made trainable-through (fp32 norms) by peft's
    prepare_model_for_kbit_training, unless it is `sharded` (FSDP / ZeRO-3), where every weight must keep the one
    dtype the engine flattens. Activation checkpointing is the caller's (`load_model`), for every mode: peft's
    own switch for it calls transformers' deprecated `gradient_checkpointing_enable`."""
    from peft import get_peft_model, prepare_model_for_kbit_training

    if adapters.mode == "qlora" and not sharded:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    with compat.quiet_peft_model_init():
        return get_peft_model(model, lora_config(adapters))
