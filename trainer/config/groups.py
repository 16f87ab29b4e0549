"""The run's typed groups (model, adapters, data, optimisation, schedule, logging, outputs) and `TrainConfig`, made
of them. YAML files and flags use OASST's flat key names, each of which belongs to exactly one group.

Everything Delphi knows about a key is declared with it (`trainer.schema.option`): default, help, choices, what a
bare flag means, the `TrainingArguments` field it is passed as (`trainer_arg`), whether a resume may change it
(`resume`, else its group's `resume_default`), and whether it only steers this invocation (`invocation`). The
tables below (`TRAINER_ARGS`, `RESUME_POLICY`, `INVOCATION_KEYS`) are derived from those declarations.
"""
from __future__ import annotations

import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from trainer.config.entries import DatasetConfig, parse_datasets
from trainer.config.retired import RETIRED_OASST_KEYS
from trainer.errors import ConfigError
from trainer.formats import FORMATS
from trainer.schema import (CHANGEABLE, FIXED, FREE, at_least, build, check, comma_list, fields_of, finite_positive,
                            nearest, option)
from trainer.strategy import FSDP_SHARDING, OPTIMIZERS

RESUME_LAST = "last"  # resume_from_checkpoint: the newest checkpoint in output_dir (OASST's and HF's `True`)
SEED_LIMIT = 2**32  # numpy's legacy seeding, which transformers' set_seed uses, takes 0 .. 2**32 - 1
MAX_BATCH = 2**20  # samples per micro-batch (or micro-batches per step): beyond, slicing the sampler overflows
MAX_EPOCHS = 10_000
DTYPES = ("fp32", "fp16", "bf16")
MODES = ("full", "lora", "qlora")


@dataclass(frozen=True)
class ModelConfig:
    model_name: str | None = option(None, "hub name or local directory of the model to fine-tune")
    tokenizer_name: str | None = option(None, "hub name or directory of the tokenizer; none: model_name's")
    dtype: str = option("fp16", "compute precision (mixed precision on GPUs; trained weights stay fp32)",
                        choices=DTYPES)
    residual_dropout: float = option(0.1, "dropout on the attention and MLP outputs before the residual add")
    use_flash_attention: bool = option(False, "flash-attention 2 where it is installed on CUDA, else SDPA",
                                       resume=FREE)
    # Not the Trainer's: `trainer.models.load_model` enables it (QLoRA's way for QLoRA).
    gradient_checkpointing: bool = option(False, "recompute activations in the backward pass to save memory",
                                          trainer_arg=False, resume=FREE)
    activation_offload: bool = option(False, "keep the activations saved for the backward pass in host memory "
                                             "(with gradient_checkpointing: only each layer's input)", resume=FREE)
    chunked_loss: bool = option(True, "cross-entropy in chunks straight from the hidden states: the (tokens x vocab) "
                                      "logits are never built")
    compile: bool = option(False, "torch.compile the model (shapes vary with the data: pays off on long GPU runs)",
                           trainer_arg="torch_compile")
    pad_vocab_size_to_multiple_of: int = option(16, "embedding rows round up to a multiple of this (OASST: 16)")
    mpt: bool = option(False, "the checkpoint must be MPT (the qlora fork's --mpt); max_seq_len grows to max_length",
                       resume=FREE)
    trust_remote_code: bool = option(False, "run the checkpoint's own modelling code instead of transformers'",
                                     resume=FREE)

    def __post_init__(self) -> None:
        problems = at_least(self, 1, "pad_vocab_size_to_multiple_of")
        if not 0.0 <= self.residual_dropout < 1.0:
            problems.append(("residual_dropout", f"must be in [0, 1), got {self.residual_dropout}"))
        check(problems)

    @property
    def tokenizer(self) -> str | None:
        """The tokenizer to load: tokenizer_name, else the model's own."""
        return self.tokenizer_name or self.model_name


@dataclass(frozen=True)
class AdapterConfig:
    mode: str = option("full", "full fine-tuning, LoRA adapters, or QLoRA (4-bit base + LoRA)", choices=MODES)
    lora_r: int = option(16, "LoRA rank (the qlora flag name; OASST's default)")
    lora_alpha: int = option(32, "LoRA scaling numerator")
    lora_dropout: float = option(0.05, "dropout on the LoRA input")
    lora_target_modules: str = option("all", "comma list of module names, or all: every linear layer but the head")
    quant_type: str = option("nf4", "qlora: 4-bit data type", choices=("nf4", "fp4"))
    double_quant: bool = option(True, "qlora: quantize the quantization constants too")

    def __post_init__(self) -> None:
        problems = at_least(self, 1, "lora_r", "lora_alpha")
        if not 0.0 <= self.lora_dropout < 1.0:
            problems.append(("lora_dropout", f"must be in [0, 1), got {self.lora_dropout}"))
        check(problems)

    @property
    def lora_targets(self) -> str | list[str]:
        """peft's `target_modules`: "all-linear" for `all`, else the listed module names."""
        return "all-linear" if self.lora_target_modules == "all" else comma_list(self.lora_target_modules)


@dataclass(frozen=True)
class DataConfig:
    datasets: tuple[DatasetConfig, ...] = option((), "the datasets: names, or {name: {options}}")
    prompt_format: str = option("oasst", "how conversations are rendered", choices=FORMATS)
    plain_user_name: str = option("User", "plain format: the user's speaker name")
    plain_bot_name: str = option("Assistant", "plain format: the assistant's speaker name")
    use_system_prefix: bool = option(False, "put system_prefix before every conversation")
    system_prefix: str = option(
        "You are Joi, a large language model trained by Open-Assistant. Answer as concisely as possible.\n"
        "Knowledge cutoff: 2021-09-01\nCurrent date: 2023-03-12", "the system prompt used with use_system_prefix")
    max_length: int = option(512, "tokens per training sample; longer ones lose their oldest exchanges")
    val_max_length: int | None = option(None, "tokens per validation sample; none: max_length", resume=FREE)
    label_masking: bool = option(True, "train only on assistant replies (false: on every token)")
    use_custom_sampler: bool = option(False, "draw each dataset's fraction/size anew every epoch")
    sort_by_length: bool = option(False, "batch samples of similar length together (less padding)")
    packing: bool = option(False, "several samples per row, isolated from each other")
    padding_free: bool = option(False, "micro-batches of whole samples up to a token budget, packed (isolated) "
                                       "without padding; one row with a varlen attention kernel")
    max_tokens_per_batch: int | None = option(None, "padding_free: the micro-batch's token budget; none: "
                                                    "per_device_train_batch_size x max_length")
    cache_dir: str = option(".cache", "tokenized-dataset cache; relative dataset paths are looked up here first",
                            resume=FREE)
    preprocessing_num_workers: int | None = option(None, "processes that tokenize datasets (the output does not "
                                                         "depend on it); none: one per CPU, at most 8", resume=FREE)

    def __post_init__(self) -> None:
        problems = at_least(self, 1, "max_length")
        if self.preprocessing_num_workers is not None and self.preprocessing_num_workers < 1:
            problems.append(("preprocessing_num_workers", f"must be at least 1, got {self.preprocessing_num_workers}"))
        if self.max_tokens_per_batch is not None and self.max_tokens_per_batch < self.max_length:
            problems.append(("max_tokens_per_batch", f"must be at least max_length ({self.max_length}): a budget "
                                                     f"holds any one sample, got {self.max_tokens_per_batch}"))
        if self.val_max_length is not None and not 1 <= self.val_max_length <= self.max_length:
            problems.append(("val_max_length", f"must be in 1..max_length ({self.max_length}): evaluation batches "
                                               f"are collated like training ones, got {self.val_max_length}"))
        check(problems)

    def token_budget(self, batch_size: int) -> int:
        """padding_free's micro-batch budget: `max_tokens_per_batch`, else as many tokens as `batch_size` samples
        of `max_length` (the same work per step as the padded batches it replaces, at most)."""
        return self.max_tokens_per_batch or batch_size * self.max_length

    @property
    def system(self) -> str | None:
        """The configured system prompt, None when `use_system_prefix` is off."""
        return self.system_prefix if self.use_system_prefix else None


@dataclass(frozen=True)
class OptimConfig:
    rng_seed: int = option(0xA1221F97, "seed for initialisation, dropout, sampling and shuffling",
                           trainer_arg="seed")
    learning_rate: float = option(1e-5, "peak learning rate", trainer_arg=True, resume=CHANGEABLE)
    per_device_train_batch_size: int = option(2, "samples per micro-batch per device", trainer_arg=True)
    per_device_eval_batch_size: int = option(2, "samples per evaluation batch per device", trainer_arg=True,
                                             resume=FREE)
    gradient_accumulation_steps: int = option(32, "micro-batches per optimizer step", trainer_arg=True)
    adam_beta1: float = option(0.9, "AdamW beta1", trainer_arg=True)
    adam_beta2: float = option(0.95, "AdamW beta2", trainer_arg=True)
    adam_epsilon: float = option(1e-12, "AdamW epsilon", trainer_arg=True)
    weight_decay: float = option(0.0, "AdamW weight decay", trainer_arg=True)
    max_grad_norm: float = option(2.0, "gradient clipping norm", trainer_arg=True, resume=CHANGEABLE)
    # The Trainer's `deepspeed`, `fsdp` and `optim` come from trainer.strategy (`training_arguments`).
    deepspeed: bool = option(False, "train under DeepSpeed with deepspeed_config", trainer_arg=False)
    deepspeed_config: str = option("configs/zero2.json", "DeepSpeed JSON (its \"auto\" values come from this config), "
                                                         "or zero2, zero3, zero3_offload: the ones Delphi carries")
    fsdp: str | None = option(None, "shard with torch FSDP2: full_shard (weights, gradients, optimizer state) or "
                                    "shard_grad_op (weights kept whole from forward to backward); none: off",
                              choices=tuple(FSDP_SHARDING), trainer_arg=False)
    optim: str = option("adamw_torch", "adamw_torch (QLoRA: paged AdamW on CUDA), or bitsandbytes' adamw_8bit, "
                                       "paged_adamw_8bit, paged_adamw_32bit (CUDA only)", choices=tuple(OPTIMIZERS),
                        trainer_arg=False)
    divergence_spike_factor: float = option(5.0, "stop the run when the logged loss stays above this many times "
                                                 "its running median (taken as at least 1); 0: off (a nan or inf "
                                                 "loss or gradient norm always stops it)", resume=FREE)
    divergence_window: int = option(20, "the running median of the spike rule covers this many logged losses",
                                    resume=FREE)
    divergence_patience: int = option(3, "logged losses in a row above the spike line that stop the run",
                                      resume=FREE)

    def __post_init__(self) -> None:
        problems = at_least(self, 1, "per_device_train_batch_size", "per_device_eval_batch_size",
                            "gradient_accumulation_steps", "divergence_window", "divergence_patience")
        problems += finite_positive(self, "learning_rate")
        for name in ("weight_decay", "max_grad_norm", "adam_epsilon", "divergence_spike_factor"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                problems.append((name, f"must be a finite number of at least 0, got {value}"))
        for name in ("adam_beta1", "adam_beta2"):
            if not 0.0 <= getattr(self, name) < 1.0:
                problems.append((name, f"must be in [0, 1), got {getattr(self, name)}"))
        if not 0 <= self.rng_seed < SEED_LIMIT:
            problems.append(("rng_seed", f"must be in 0..{SEED_LIMIT - 1}, got {self.rng_seed}"))
        for name in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps"):
            if getattr(self, name) > MAX_BATCH:
                problems.append((name, f"must be at most {MAX_BATCH:,}, got {getattr(self, name):,}"))
        check(problems)


@dataclass(frozen=True)
class ScheduleConfig:
    num_train_epochs: float = option(3.0, "passes over the training data (fractions allowed)", trainer_arg=True,
                                     resume=CHANGEABLE)
    warmup_steps: int = option(600, "optimizer steps of linear warm-up", trainer_arg=True)
    lr_scheduler_type: str = option("linear", "decay after warm-up, without DeepSpeed (with it: the JSON's "
                                              "scheduler)", choices=("linear", "cosine"), trainer_arg=True)
    eval_steps: int = option(200, "evaluate every this many optimizer steps", trainer_arg=True, resume=FREE)
    save_steps: int = option(1000, "save a checkpoint every this many optimizer steps", trainer_arg=True,
                             resume=FREE)

    def __post_init__(self) -> None:
        problems = at_least(self, 1, "eval_steps", "save_steps") + at_least(self, 0, "warmup_steps")
        problems += finite_positive(self, "num_train_epochs")
        if math.isfinite(self.num_train_epochs) and self.num_train_epochs > MAX_EPOCHS:
            problems.append(("num_train_epochs", f"must be at most {MAX_EPOCHS:,}, got {self.num_train_epochs:g}"))
        check(problems)


@dataclass(frozen=True)
class LoggingConfig:
    resume_default: ClassVar[str] = FREE  # where metrics go never changes what is trained
    logging_steps: int = option(10, "log training metrics every this many optimizer steps", trainer_arg=True)
    log_wandb: bool = option(True, "log to wandb (with report_to: wandb)")
    # The Trainer reports nowhere: RunLog writes metrics.jsonl and wandb itself.
    report_to: str = option("wandb", "where metrics go besides metrics.jsonl", choices=("wandb", "none"),
                            trainer_arg=False)
    wandb_project: str = option("delphi", "wandb project")
    wandb_entity: str | None = option(None, "wandb entity (team or user)")
    wandb_run_name: str | None = option(None, "wandb run name")
    wandb_group: str | None = option(None, "wandb group (a sweep sets it)")
    wandb_tags: str | None = option(None, "comma list of wandb tags")
    log_dir: str = option("base", "OASST's run label: with wandb_run_name unset the run is named "
                                  "{model}-{log_dir}-finetuned (last path parts)")
    verbose: bool = option(False, "OASST's verbose: print the dataset stats at start (as show_dataset_stats)")
    show_dataset_stats: bool = option(False, "print OASST's dataset stats at start: train and eval sizes, shares, "
                                             "per-epoch draws")

    def __post_init__(self) -> None:
        check(at_least(self, 1, "logging_steps"))

    @property
    def wants_wandb(self) -> bool:
        return self.log_wandb and self.report_to == "wandb"

    @property
    def tags(self) -> list[str]:
        return comma_list(self.wandb_tags)

    @property
    def shows_dataset_stats(self) -> bool:
        return self.verbose or self.show_dataset_stats

    def oasst_run_name(self, model_name: str | None) -> str:
        """OASST's wandb run name, `{model}-{log_dir}-finetuned`, with the last path part of each
        (`EleutherAI/pythia-12b-deduped` -> `pythia-12b-deduped`) so that local paths stay readable."""
        return f"{Path(model_name or 'model').name}-{Path(self.log_dir).name}-finetuned"


@dataclass(frozen=True)
class OutputConfig:
    resume_default: ClassVar[str] = FREE  # where the run is kept never changes what is trained
    output_dir: str = option("saved_model", "where the model, checkpoints and metrics go ($VARS are expanded)",
                             trainer_arg=True)
    # Delphi rotates, complete checkpoints only (trainer.checkpoints); the Trainer's limit stays off.
    save_total_limit: int = option(4, "checkpoints kept", trainer_arg=False)
    resume_from_checkpoint: str | None = option(
        None, f"a checkpoint directory; {RESUME_LAST} (a bare --resume_from_checkpoint): the newest complete one in "
              f"output_dir, which must have one; none: the newest complete one if any", flag=RESUME_LAST,
        trainer_arg=False)  # `train` passes the checkpoint it resolved (trainer.resume) to `Trainer.train`
    overwrite_output_dir: bool = option(False, "start over in an output_dir that holds another run (that run is "
                                               "moved aside to OUTPUT_DIR.previous-TIME, not deleted)",
                                       invocation=True)
    resume_with_changes: bool = option(False, "resume although num_train_epochs, learning_rate or max_grad_norm "
                                              "changed: the schedule continues as if planned with the new values",
                                      invocation=True)

    def __post_init__(self) -> None:
        check(at_least(self, 1, "save_total_limit"))


# The groups in the order --help lists them, with their titles.
GROUPS: dict[str, tuple[str, type]] = {
    "model": ("model", ModelConfig),
    "adapters": ("LoRA / QLoRA", AdapterConfig),
    "data": ("data", DataConfig),
    "optim": ("optimisation", OptimConfig),
    "schedule": ("schedule", ScheduleConfig),
    "logging": ("logging", LoggingConfig),
    "outputs": ("outputs", OutputConfig),
}
KEY_GROUP: dict[str, str] = {key: group for group, (_, cls) in GROUPS.items() for key in fields_of(cls)}
TYPE_HINTS = {group: typing.get_type_hints(cls) for group, (_, cls) in GROUPS.items()}
FIELDS = {key: fields_of(GROUPS[group][1])[key] for key, group in KEY_GROUP.items()}
# Derived from the declarations: key -> its TrainingArguments name; key -> what a resume may do with it.
TRAINER_ARGS: dict[str, str] = {key: key if f.metadata["trainer_arg"] is True else f.metadata["trainer_arg"]
                                for key, f in FIELDS.items() if f.metadata["trainer_arg"]}
RESUME_POLICY: dict[str, str] = {
    key: f.metadata["resume"] or getattr(GROUPS[KEY_GROUP[key]][1], "resume_default", FIXED)
    for key, f in FIELDS.items()}
INVOCATION_KEYS = tuple(key for key, f in FIELDS.items() if f.metadata["invocation"])


@dataclass(frozen=True)
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    adapters: AdapterConfig = field(default_factory=AdapterConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    outputs: OutputConfig = field(default_factory=OutputConfig)

    @classmethod
    def of(cls, **values: Any) -> TrainConfig:
        """A config from flat keys in Python values (tests, benchmarks), checked as YAML values would be."""
        return build_config(values, {})

    def replace(self, **values: Any) -> TrainConfig:
        """A copy with some flat keys changed, checked again."""
        return build_config(self.flat() | values, {})

    def trainer_args(self) -> dict[str, Any]:
        """The keys declared with a `trainer_arg`, under their TrainingArguments names."""
        return {arg: getattr(getattr(self, KEY_GROUP[key]), key) for key, arg in TRAINER_ARGS.items()}

    def flat(self) -> dict[str, Any]:
        """Every key under its flat (OASST) name: what YAML, the command line and resolved_config.yaml use."""
        out = {key: getattr(getattr(self, group), key) for key, group in KEY_GROUP.items()}
        out["datasets"] = [{d.name: {k: v for k, v in d.option_items().items() if k != "name"}}
                           for d in self.data.datasets]
        return out



def build_config(values: dict[str, Any], origins: dict[str, str]) -> TrainConfig:
    """Validate merged flat values into a TrainConfig; every problem is reported, each with its origin."""
    grouped: dict[str, dict[str, Any]] = {group: {} for group in GROUPS}
    problems = []
    for key, value in values.items():
        where = origins.get(key, "config")
        if key in RETIRED_OASST_KEYS:
            problems.append(f"{where}: '{key}' is an OASST option Delphi does not have: {RETIRED_OASST_KEYS[key]}")
        elif key not in KEY_GROUP:
            problems.append(f"{where}: unknown key '{key}'{nearest(key, KEY_GROUP)}")
        else:
            grouped[KEY_GROUP[key]][key] = value
    parts = {}
    for group, (_, cls) in GROUPS.items():
        convert = {"datasets": parse_datasets} if group == "data" else None
        parts[group], found = build(cls, grouped[group], lambda key: origins.get(key, "config"), convert)
        problems += found
    if problems:
        raise ConfigError("\n".join(problems))
    return TrainConfig(**parts)
