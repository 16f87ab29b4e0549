"""Loading the model to fine-tune: GPT-NeoX (Pythia), MPT or Falcon, fully, with LoRA, or 4-bit with LoRA (QLoRA).

`check_model_source` reads only config.json (and builds the model on the meta device), so a wrong path, a wrong
`--mpt`, an unsupported architecture or a misspelt LoRA target fails in about a second, before any weights load.
`load_model` then loads, resizes the embeddings for the chat tokens and wraps the adapters.
"""
from __future__ import annotations

import logging
import os
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch

from trainer.config import TrainConfig
from trainer.errors import ConfigError
from trainer.lora import add_adapters, linear_module_names
from trainer.tokens import padded_vocab_size

log = logging.getLogger(__name__)

# The config fields that hold each architecture's residual dropout (dropout on the attention and MLP outputs
# before they join the residual stream, which is what OASST's `residual_dropout` patched in). Attention-prob
# dropout is left as the checkpoint has it.
RESIDUAL_DROPOUT_FIELDS = {
    "gpt_neox": ("hidden_dropout",),
    "falcon": ("hidden_dropout",),
    "mpt": ("resid_pdrop",),  # read by MosaicML's remote code; transformers' class: see _set_mpt_residual_dropout
}
TORCH_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")


@dataclass(frozen=True)
class ModelSource:
    """What check_model_source learnt from config.json, reused by load_model."""

    name: str  # the hub name or local directory, as given
    model_type: str  # one of RESIDUAL_DROPOUT_FIELDS
    hf_config: Any  # transformers PretrainedConfig
    remote_code: bool  # the checkpoint's own modelling code will run
    linear_names: frozenset[str]  # last name components of the linear layers other than the output head


@dataclass
class LoadedModel:
    model: Any  # a transformers model, or a peft PeftModel around one
    attention: str  # the attention implementation in use
    trainable_params: int
    total_params: int  # 4-bit weights counted as their unpacked number of values
    optimizer: str  # the TrainingArguments `optim` to train it with
    notes: list[str] = field(default_factory=list)  # decisions worth a line in the run's log


def check_model_source(config: TrainConfig) -> ModelSource:
    """Cheap checks before any weights load; each failure is a ConfigError naming the key and the path."""
    from transformers import AutoConfig

    name = config.model_name
    if not name:
        raise ConfigError("model_name: not set; give a hub name or a local Hugging Face model directory")
    local = Path(name)
    if local.exists() and not (local / "config.json").is_file():
        raise ConfigError(f"model_name: '{name}' has no config.json; expected a Hugging Face model directory")
    try:
        hf_config = AutoConfig.from_pretrained(name, trust_remote_code=config.trust_remote_code)
    except (OSError, ValueError) as e:
        where = "cannot read its config.json" if local.exists() else "not a local directory and not on the hub"
        raise ConfigError(f"model_name: '{name}': {where}: {str(e).splitlines()[0]}") from None
    model_type = hf_config.model_type
    if config.mpt and model_type != "mpt":
        raise ConfigError(f"mpt: true, but '{name}' is a {model_type} checkpoint (config.json model_type); "
                          f"drop --mpt or point model_name at an MPT checkpoint")
    if model_type not in RESIDUAL_DROPOUT_FIELDS:
        raise ConfigError(f"model_name: '{name}' is a {model_type} checkpoint; supported: "
                          f"{', '.join(RESIDUAL_DROPOUT_FIELDS)}")
    if local.exists() and not any(local.glob("*.safetensors")) and not any(local.glob("*.bin")):
        raise ConfigError(f"model_name: '{name}' has config.json but no weights (*.safetensors or *.bin)")
    _check_tokenizer_source(config)
    remote_code = config.trust_remote_code and bool(getattr(hf_config, "auto_map", None))
    with torch.device("meta"):
        from transformers import AutoModelForCausalLM

        skeleton = AutoModelForCausalLM.from_config(hf_config, trust_remote_code=config.trust_remote_code)
    source = ModelSource(name, model_type, hf_config, remote_code, linear_module_names(skeleton))
    _check_lora_targets(config, source)
    return source


def _check_tokenizer_source(config: TrainConfig) -> None:
    name = config.effective_tokenizer_name
    key = "tokenizer_name" if config.tokenizer_name else "model_name"
    local = Path(name)
    if local.is_dir() and not any((local / f).is_file() for f in TOKENIZER_FILES):
        raise ConfigError(f"{key}: '{name}' holds no tokenizer (none of {', '.join(TOKENIZER_FILES)}); "
                          f"set tokenizer_name to the tokenizer's directory")


def _check_lora_targets(config: TrainConfig, source: ModelSource) -> None:
    wanted = config.lora_targets
    if config.mode == "full" or wanted == "all-linear":
        return
    unknown = [t for t in wanted if t not in source.linear_names]
    if unknown or not wanted:
        raise ConfigError(f"lora_target_modules: {', '.join(unknown) or 'empty'} not among the linear layers of "
                          f"'{source.name}' ({source.model_type}): {', '.join(sorted(source.linear_names))}, "
                          f"or 'all'")


def load_model(config: TrainConfig, tokenizer) -> LoadedModel:
    """The model ready to train: dropout, attention, dtype, vocab, checkpointing and adapters as configured."""
    from transformers import AutoModelForCausalLM

    source = check_model_source(config)
    hf_config = source.hf_config
    notes: list[str] = []
    for name in RESIDUAL_DROPOUT_FIELDS[source.model_type]:
        setattr(hf_config, name, config.residual_dropout)
    hf_config.use_cache = False  # a training forward must not build a cache (it also breaks packed rows)
    if source.model_type == "mpt" and hf_config.max_seq_len < config.max_length:
        notes.append(f"MPT max_seq_len {hf_config.max_seq_len} -> {config.max_length} (ALiBi extrapolates)")
        hf_config.max_seq_len = config.max_length
    attention, why = choose_attention(config, source)
    notes.append(f"attention: {attention} ({why})")
    kwargs: dict[str, Any] = {"config": hf_config, "dtype": weights_dtype(config),
                              "trust_remote_code": config.trust_remote_code}
    if not source.remote_code:
        kwargs["attn_implementation"] = attention
    if config.mode == "qlora":
        kwargs["quantization_config"] = quantization_config(config)
        kwargs["device_map"] = {"": _local_device()}
    quantizable = _falcon_linears_as_nn_linear() if config.mode == "qlora" and source.model_type == "falcon" \
        else nullcontext()
    with quantizable:
        model = AutoModelForCausalLM.from_pretrained(source.name, **kwargs)
    if config.mode == "qlora":
        notes.append(f"4-bit {config.quant_type}: {check_quantized(model, source.name)} linear layers quantized")
        _keep_4bit_weights_trainable(model)
    if source.model_type == "mpt" and not source.remote_code:
        _set_mpt_residual_dropout(model, config.residual_dropout)
    notes += resize_embeddings(model, tokenizer, config.pad_vocab_size_to_multiple_of)
    check_vocab_fits(model, tokenizer, config)
    if config.gradient_checkpointing and config.mode != "qlora":  # qlora: prepare_model_for_kbit_training does it
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    if config.mode == "full":
        trainable = total = sum(p.numel() for p in model.parameters())
    else:
        model = add_adapters(model, config)
        trainable, total = model.get_nb_trainable_parameters()
        targets = sorted({n.rsplit(".", 1)[-1] for n in model.peft_config["default"].target_modules})
        notes.append(f"LoRA r={config.lora_r} alpha={config.lora_alpha} on {', '.join(targets)}")
    optimizer = optimizer_name(config)
    notes.append(f"{config.mode}: {trainable:,} of {total:,} parameters trainable; optimizer {optimizer}")
    for note in notes:
        log.info(note)
    return LoadedModel(model, attention, trainable, total, optimizer, notes)


def weights_dtype(config: TrainConfig) -> torch.dtype:
    """Trained weights stay fp32 (the Trainer's fp16/bf16 autocast does the half-precision compute, and Adam
    needs fp32 master weights) unless DeepSpeed keeps the master copy itself; frozen LoRA bases load in
    `dtype` to save memory; QLoRA's non-quantized layers are fp32, as prepare_model_for_kbit_training wants."""
    if config.mode == "lora" or (config.mode == "full" and config.deepspeed):
        return TORCH_DTYPES[config.dtype]
    return torch.float32


def choose_attention(config: TrainConfig, source: ModelSource) -> tuple[str, str]:
    """The fastest attention the model class and platform offer, and why it was chosen."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING
    from transformers.utils import is_flash_attn_2_available

    if source.remote_code:
        return "remote code", "trust_remote_code: the checkpoint's own code picks its attention"
    model_class = MODEL_FOR_CAUSAL_LM_MAPPING[type(source.hf_config)]
    fallback = "sdpa" if getattr(model_class, "_supports_sdpa", False) else "eager"
    if not config.use_flash_attention:
        return fallback, "use_flash_attention is false"
    missing = [why for ok, why in (
        (getattr(model_class, "_supports_flash_attn", False), f"{model_class.__name__} has no flash-attention 2"),
        (is_flash_attn_2_available(), "flash-attn 2 is not installed or there is no CUDA device"),
        (config.dtype != "fp32", "flash-attention 2 needs fp16 or bf16")) if not ok]
    if missing:
        return fallback, "; ".join(missing)
    return "flash_attention_2", "use_flash_attention is true"


def quantization_config(config: TrainConfig):
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=config.quant_type,
                              bnb_4bit_use_double_quant=config.double_quant,
                              bnb_4bit_compute_dtype=TORCH_DTYPES[config.dtype])


def _local_device() -> int | str:
    """bitsandbytes places the whole 4-bit model on this process's device (DDP: one GPU per rank)."""
    return int(os.environ.get("LOCAL_RANK", 0)) if torch.cuda.is_available() else "cpu"


@contextmanager
def _falcon_linears_as_nn_linear() -> Iterator[None]:
    """Builds Falcon with plain nn.Linear layers while it loads in 4 bits.

    transformers 5.x replaces only modules whose type *is* nn.Linear with bitsandbytes layers, so Falcon's
    `FalconLinear(nn.Linear)` stays unquantized without a word. FalconLinear's forward is `x @ W.T + b`, the
    same as nn.Linear's, so nothing else changes; the class is restored as soon as the model is built.
    """
    from transformers.models.falcon import modeling_falcon

    original = modeling_falcon.FalconLinear
    modeling_falcon.FalconLinear = torch.nn.Linear
    try:
        yield
    finally:
        modeling_falcon.FalconLinear = original


def check_quantized(model, name: str) -> int:
    """The number of 4-bit layers; none is an error, because training would silently run unquantized."""
    import bitsandbytes as bnb
    import transformers

    count = sum(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())
    if count == 0:
        raise ConfigError(f"mode: qlora, but loading '{name}' in 4 bits quantized no layer (transformers "
                          f"{transformers.__version__} did not convert its linear layers)")
    return count


def _keep_4bit_weights_trainable(model) -> None:
    """On CPUs with AVX512-BF16, bitsandbytes 0.50 repacks a Linear4bit's weight into an inference-only layout at
    its first no-grad eval forward and never packs it back, so the next training step (after any evaluation)
    fails in its forward. Turning that repacking off keeps the one layout that trains."""
    import bitsandbytes as bnb

    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False


def _set_mpt_residual_dropout(model, p: float) -> None:
    """transformers' MptBlock and MptMLP take their residual dropout from `attn_config.attn_pdrop`, which
    transformers 5.x types as int (0.1 fails its validation), so the rate is set on the built modules."""
    from transformers.models.mpt.modeling_mpt import MptBlock, MptMLP

    for module in model.modules():
        if isinstance(module, MptBlock):
            module.resid_attn_dropout.p = p
        elif isinstance(module, MptMLP):
            module.hidden_dropout = p


def resize_embeddings(model, tokenizer, multiple: int) -> list[str]:
    """Embedding rows = len(tokenizer) rounded up to `multiple`, as OASST does (Pythia: 50,688 -> 50,288)."""
    rows = model.get_input_embeddings().num_embeddings
    target = padded_vocab_size(tokenizer, multiple)
    if rows == target:
        return []
    model.resize_token_embeddings(target)
    return [f"embedding rows {rows:,} -> {target:,} (tokenizer {len(tokenizer):,} rounded up to x{multiple})"]


def check_vocab_fits(model, tokenizer, config: TrainConfig) -> None:
    """Every token id must have a row in both the input embedding and the output head."""
    largest = max(tokenizer.get_vocab().values())
    rows = {"input embedding": model.get_input_embeddings().num_embeddings,
            "output head": model.get_output_embeddings().weight.shape[0]}
    short = [f"the {part} of model_name '{config.model_name}' has {n:,} rows"
             for part, n in rows.items() if n <= largest]
    if short:
        raise ConfigError(f"tokenizer_name: '{config.effective_tokenizer_name}' has token ids up to {largest:,} but "
                          + " and ".join(short))


def optimizer_name(config: TrainConfig) -> str:
    """QLoRA's paged AdamW pages optimizer state to host memory; bitsandbytes pages only on CUDA. Otherwise torch's
    fused AdamW (transformers' own default since torch 2.8): one kernel per parameter instead of a chain of
    per-op passes, about 7x faster than the foreach AdamW on CPU (2.7 s -> 0.4 s a step for 70M parameters)."""
    if config.mode == "qlora" and torch.cuda.is_available():
        return "paged_adamw_32bit"
    return "adamw_torch_fused"
