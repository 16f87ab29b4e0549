"""What Delphi knows about one model architecture, in one entry: every place that would otherwise special-case a
`model_type` reads it from here."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ContextManager, Literal

# How samples sharing a packed row are kept from attending to each other (see trainer/data/collate.py).
Isolation = Literal["position_ids", "block_mask"]


@dataclass(frozen=True)
class Architecture:
    model_type: str  # config.json's model_type
    # Config fields holding the residual dropout: dropout on the attention and MLP outputs before they join the
    # residual stream, which is what OASST's `residual_dropout` patched in (attention-prob dropout is left alone).
    # Classes without such a field get it from `after_load` instead (trainer.architectures.residual_dropout).
    dropout_fields: tuple[str, ...]
    packing: Isolation  # verified by tests/test_collate.py to keep packed samples apart
    # (vocab_size, hidden, layers, heads, max_positions) -> a transformers config of a tiny model (demo, tests)
    tiny_config: Callable[[int, int, int, int, int], Any]
    family: str = ""  # what people call the checkpoints of this class, for messages and the README
    # The linear layers of one decoder layer, as the class names them: what `lora_target_modules: all` adapts
    # (tests/test_models.py checks that peft's all-linear resolves to exactly these).
    lora_targets: tuple[str, ...] = ()
    # Its attention hands the collator's `cu_seq_lens` to the attention function (tests/test_packed_attention.py):
    # a padding-free micro-batch is then one row under a varlen kernel, with no mask and nothing read back.
    varlen: bool = False
    # torch's varlen kernel (`delphi_varlen`) does everything this attention asks for; False where it asks for
    # something that kernel cannot do (Gemma 2's attention-logit soft-capping): only flash-attention 2 then.
    torch_varlen: bool = True
    # Changes to the loaded config before the weights load, given the training max_length; returns notes.
    adapt_config: Callable[[Any, int], list[str]] | None = None
    # Applied to the built model with the residual dropout rate (e.g. settings its class does not read from the
    # config).
    after_load: Callable[[Any, float], None] | None = None
    # Entered while the model loads in 4 bits (e.g. to make its linear layers quantizable).
    quantized_load: Callable[[], ContextManager] | None = None
    # The transformer layer's class name: FSDP2 shards and gathers one of these at a time. None: the model class's
    # `_no_split_modules` (accelerate's own default).
    layer_class: str | None = None
