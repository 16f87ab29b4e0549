"""Typed run configuration: YAML sections merged in order, then `--key value` flags on top.

`--configs defaults reference-data reference-pythia-12b --num_train_epochs 8` reads every section of every
config file Delphi carries (`configs/*.yaml`) plus `--config_file` files, applies `defaults` first and then each
named section in order (nested mappings merge key by key, lists and scalars replace), then the flags. The result
is one frozen `TrainConfig` made of groups (model, adapters, data, optimisation, schedule, logging, outputs);
YAML files and flags use OASST's flat key names, each of which belongs to exactly one group. Unknown keys and
wrong types are reported all at once, each with where it came from.
"""
from __future__ import annotations

import dataclasses
import math
import os
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from trainer.data.kinds import KINDS
from trainer.errors import ConfigError
from trainer.formats import FORMATS
from trainer.paths import CONFIG_DIR
from trainer.schema import (at_least, build, check, comma_list, dashes_to_underscores, fields_of, finite_positive,
                            nearest, option, optional, type_name)

# OASST `config.yaml` keys (and `trainer_sft.py` flags) that Delphi deliberately does not have, with what to do
# instead.
RETIRED_OASST_KEYS = {
    "poly_eps": "it only tunes OASST's PolyLoss; Delphi trains with cross-entropy",
    "loss_fn": "Delphi trains with token-weighted cross-entropy",
    "fuse_gelu": "it patched OASST's own GELU kernel; transformers' kernels are used as they are",
    "samples_mixing": "use `packing: true`, which keeps samples from attending to each other",
    "random_offset_probability": "Delphi truncates by dropping the oldest turns, never a random window",
    "datasets_extra": "lists replace on merge: name every dataset in one `datasets` list",
    "quantization": "8-bit AdamW is not offered; use QLoRA for low-memory training",
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
    "superhot": "RoPE scaling (SuperHOT) is not offered: Delphi trains GPT-NeoX, MPT and Falcon at their positions",
    "superhot_config": "RoPE scaling (SuperHOT) is not offered",
    "world_size": "the launcher sets it (`torchrun --nproc_per_node N`, `deepspeed --num_gpus N`)",
}
RESUME_LAST = "last"  # resume_from_checkpoint: the newest checkpoint in output_dir (OASST's and HF's `True`)
# How this invocation treats output_dir, not how the run trains: never written into resolved_config.yaml, so
# rerunning from that file does not start over or change a run again.
INVOCATION_KEYS = ("overwrite_output_dir", "resume_with_changes")
RESOLVED_CONFIG = "resolved_config.yaml"
SEED_LIMIT = 2**32  # numpy's legacy seeding, which transformers' set_seed uses, takes 0 .. 2**32 - 1
MAX_EPOCHS = 10_000


# ----------------------------------------------------------------------------------------------------------
# Datasets

@dataclass(frozen=True)
class DatasetConfig:
    """One entry of the `datasets:` list: the options every kind has, plus the kind's own (`options`)."""

    name: str = option("", "the dataset kind")
    input_file_path: str | None = option(None, "local file or directory of shards: JSON/JSONL (.gz, .zst), Parquet, "
                                               "Arrow; relative: cache_dir, cwd, repository")
    hub_name: str | None = option(None, "hub dataset, used without input_file_path; none: the kind's")
    hub_config: str | None = option(None, "the hub dataset's configuration (load_dataset's name)")
    hub_split: str | None = option(None, "the hub dataset's split to read; none: every split, joined")
    streaming: bool = option(False, "read the hub dataset as it downloads instead of downloading it first")
    val_split: float | None = option(None, "held-out share; none: the kind's")
    fraction: float = option(1.0, "share of the training split to use (per epoch with use_custom_sampler)")
    size: int | None = option(None, "number of training samples to use instead of a fraction")
    manual_seed: int = option(287631038922, "split seed (OASST's)")
    skip_bad_lines: bool = option(False, "skip and count malformed lines instead of stopping at the first")
    options: Any = None  # the kind's options object (`DatasetKind.options`), None for kinds without any

    def __post_init__(self) -> None:
        problems = []
        if not 0.0 <= self.effective_val_split < 1.0:
            problems.append(("val_split", f"must be in [0, 1), got {self.val_split}"))
        if not 0.0 < self.fraction <= 1.0:
            problems.append(("fraction", f"must be in (0, 1], got {self.fraction}"))
        if self.size is not None and self.size < 1:
            problems.append(("size", f"must be at least 1, got {self.size}"))
        if self.size is not None and self.fraction != 1.0:
            problems.append(("size", "give 'fraction' or 'size', not both"))
        if not 0 <= self.manual_seed < 2**64:
            problems.append(("manual_seed", f"must be in 0..2**64-1, got {self.manual_seed}"))
        if self.input_file_path:
            problems += [(key, "applies to hub datasets; this entry reads input_file_path")
                         for key in ("hub_config", "hub_split", "streaming") if getattr(self, key)]
        check(problems)

    @classmethod
    def of(cls, name: str, **values: Any) -> DatasetConfig:
        """An entry from Python values, checked as a YAML entry would be (kind options given flat)."""
        return parse_datasets([{name: values}], "DatasetConfig.of")[0]

    @property
    def kind(self):
        return KINDS[self.name]

    @property
    def effective_val_split(self) -> float:
        return self.kind.val_split if self.val_split is None else self.val_split

    @property
    def effective_hub_name(self) -> str | None:
        return self.hub_name or self.kind.hub_name

    def option_items(self) -> dict[str, Any]:
        """Every option of the entry, the kind's own included, for cache keys, reports and resolved configs."""
        common = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "options"}
        return common | (dataclasses.asdict(self.options) if self.options is not None else {})


COMMON_DATASET_OPTIONS = tuple(f for f in fields_of(DatasetConfig) if f not in ("name", "options"))


def kind_options(name: str) -> tuple[str, ...]:
    cls = KINDS[name].options
    return tuple(fields_of(cls)) if cls else ()


def parse_datasets(items: Any, where: str) -> tuple[DatasetConfig, ...]:
    """`datasets:` entries are a bare name (`- alpaca`) or a one-key mapping (`- oasst_export: {lang: en}`)."""
    if items is None:
        return ()
    if not isinstance(items, (list, tuple)):
        raise ConfigError(f"{where}: 'datasets' must be a list of dataset entries, got {items!r}")
    out, problems = [], []
    for i, item in enumerate(items):
        here = f"{where}: datasets[{i}]"
        if isinstance(item, DatasetConfig):
            out.append(item)
            continue
        if isinstance(item, str):
            name, options = item, {}
        elif isinstance(item, dict) and len(item) == 1:
            (name, options), = item.items()
            options = options or {}
        elif isinstance(item, dict) and sum(v is None for v in item.values()) == 1 and \
                next(k for k, v in item.items() if v is None) in KINDS:
            # The model card's YAML: options indented at the name's own column parse as siblings of it.
            name = next(k for k, v in item.items() if v is None)
            options = {k: v for k, v in item.items() if k != name}
            print(f"warning: {here}: the options of '{name}' ({', '.join(options)}) sit at the same indentation "
                  f"as '{name}:'; read them as its options (indent them one level deeper to silence this)",
                  file=sys.stderr)
        else:
            problems.append(f"{here}: expected a dataset name or a mapping '{{name: {{options}}}}', got {item!r}")
            continue
        if name not in KINDS:
            problems.append(f"{here}: unknown dataset '{name}'{nearest(str(name), KINDS)}; known: {', '.join(KINDS)}")
            continue
        if not isinstance(options, dict):
            problems.append(f"{here}: options of '{name}' must be a mapping, got {options!r}")
            continue
        entry, entry_problems = _dataset_entry(name, options, f"{here} ({name})")
        problems += entry_problems
        if entry is not None:
            out.append(entry)
    if problems:
        raise ConfigError("\n".join(problems))
    return tuple(out)


def _dataset_entry(name: str, options: dict[str, Any], here: str) -> tuple[DatasetConfig | None, list[str]]:
    own = kind_options(name)
    common, specific, problems = {}, {}, []
    for key, value in options.items():
        if key in COMMON_DATASET_OPTIONS:
            common[key] = value
        elif key in own:
            specific[key] = value
        else:
            other = [k for k in KINDS if key in kind_options(k)]
            hint = f"; it applies to {', '.join(other)} only" if other else nearest(key, COMMON_DATASET_OPTIONS + own)
            problems.append(f"{here}: unknown option '{key}'{hint}")
    kind_cls = KINDS[name].options
    extra = None
    if kind_cls is not None:
        extra, found = build(kind_cls, specific, lambda _key: here)
        problems += found
    entry, found = build(DatasetConfig, {"name": name, **common}, lambda _key: here)
    problems += found
    if problems or entry is None:
        return None, problems
    return dataclasses.replace(entry, options=extra), []


# ----------------------------------------------------------------------------------------------------------
# The run, in groups

DTYPES = ("fp32", "fp16", "bf16")
MODES = ("full", "lora", "qlora")


@dataclass(frozen=True)
class ModelConfig:
    model_name: str | None = option(None, "hub name or local directory of the model to fine-tune")
    tokenizer_name: str | None = option(None, "hub name or directory of the tokenizer; none: model_name's")
    dtype: str = option("fp16", "compute precision (mixed precision on GPUs; trained weights stay fp32)",
                        choices=DTYPES)
    residual_dropout: float = option(0.1, "dropout on the attention and MLP outputs before the residual add")
    use_flash_attention: bool = option(False, "flash-attention 2 where it is installed on CUDA, else SDPA")
    gradient_checkpointing: bool = option(False, "recompute activations in the backward pass to save memory")
    chunked_loss: bool = option(True, "cross-entropy in chunks straight from the hidden states: the (tokens x vocab) "
                                      "logits are never built")
    compile: bool = option(False, "torch.compile the model (shapes vary with the data: pays off on long GPU runs)")
    pad_vocab_size_to_multiple_of: int = option(16, "embedding rows round up to a multiple of this (OASST: 16)")
    mpt: bool = option(False, "the checkpoint must be MPT (the qlora fork's --mpt); max_seq_len grows to max_length")
    trust_remote_code: bool = option(False, "run the checkpoint's own modelling code instead of transformers'")

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
    val_max_length: int | None = option(None, "tokens per validation sample; none: max_length")
    label_masking: bool = option(True, "train only on assistant replies (false: on every token)")
    use_custom_sampler: bool = option(False, "draw each dataset's fraction/size anew every epoch")
    sort_by_length: bool = option(False, "batch samples of similar length together (less padding)")
    packing: bool = option(False, "several samples per row, isolated from each other")
    padding_free: bool = option(False, "micro-batches of whole samples up to a token budget, packed (isolated) "
                                       "without padding; one row with a varlen attention kernel")
    max_tokens_per_batch: int | None = option(None, "padding_free: the micro-batch's token budget; none: "
                                                    "per_device_train_batch_size x max_length")
    cache_dir: str = option(".cache", "tokenized-dataset cache; relative dataset paths are looked up here first")
    preprocessing_num_workers: int | None = option(None, "processes that tokenize datasets (the output does not "
                                                         "depend on it); none: one per CPU, at most 8")

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
    rng_seed: int = option(0xA1221F97, "seed for initialisation, dropout, sampling and shuffling")
    learning_rate: float = option(1e-5, "peak learning rate")
    per_device_train_batch_size: int = option(2, "samples per micro-batch per device")
    per_device_eval_batch_size: int = option(2, "samples per evaluation batch per device")
    gradient_accumulation_steps: int = option(32, "micro-batches per optimizer step")
    adam_beta1: float = option(0.9, "AdamW beta1")
    adam_beta2: float = option(0.95, "AdamW beta2")
    adam_epsilon: float = option(1e-12, "AdamW epsilon")
    weight_decay: float = option(0.0, "AdamW weight decay")
    max_grad_norm: float = option(2.0, "gradient clipping norm")
    deepspeed: bool = option(False, "train under DeepSpeed with deepspeed_config")
    deepspeed_config: str = option("configs/zero2.json", "DeepSpeed JSON (its \"auto\" values come from this config)")
    divergence_spike_factor: float = option(5.0, "stop the run when the logged loss stays above this many times "
                                                 "its running median (taken as at least 1); 0: off (a nan or inf "
                                                 "loss or gradient norm always stops it)")
    divergence_window: int = option(20, "the running median of the spike rule covers this many logged losses")
    divergence_patience: int = option(3, "logged losses in a row above the spike line that stop the run")

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
        check(problems)


@dataclass(frozen=True)
class ScheduleConfig:
    num_train_epochs: float = option(3.0, "passes over the training data (fractions allowed)")
    warmup_steps: int = option(600, "optimizer steps of linear warm-up")
    lr_scheduler_type: str = option("linear", "decay after warm-up, without DeepSpeed (with it: the JSON's "
                                              "scheduler)", choices=("linear", "cosine"))
    eval_steps: int = option(200, "evaluate every this many optimizer steps")
    save_steps: int = option(1000, "save a checkpoint every this many optimizer steps")

    def __post_init__(self) -> None:
        problems = at_least(self, 1, "eval_steps", "save_steps") + at_least(self, 0, "warmup_steps")
        problems += finite_positive(self, "num_train_epochs")
        if math.isfinite(self.num_train_epochs) and self.num_train_epochs > MAX_EPOCHS:
            problems.append(("num_train_epochs", f"must be at most {MAX_EPOCHS:,}, got {self.num_train_epochs:g}"))
        check(problems)


@dataclass(frozen=True)
class LoggingConfig:
    logging_steps: int = option(10, "log training metrics every this many optimizer steps")
    log_wandb: bool = option(True, "log to wandb (with report_to: wandb)")
    report_to: str = option("wandb", "where metrics go besides metrics.jsonl", choices=("wandb", "none"))
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
    output_dir: str = option("saved_model", "where the model, checkpoints and metrics go ($VARS are expanded)")
    save_total_limit: int = option(4, "checkpoints kept")
    resume_from_checkpoint: str | None = option(
        None, f"a checkpoint directory; {RESUME_LAST} (a bare --resume_from_checkpoint): the newest complete one in "
              f"output_dir, which must have one; none: the newest complete one if any", flag=RESUME_LAST)
    overwrite_output_dir: bool = option(False, "start over in an output_dir that holds another run (that run is "
                                               "moved aside to OUTPUT_DIR.previous-TIME, not deleted)")
    resume_with_changes: bool = option(False, "resume although num_train_epochs, learning_rate or max_grad_norm "
                                              "changed: the schedule continues as if planned with the new values")

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

    def flat(self) -> dict[str, Any]:
        """Every key under its flat (OASST) name: what YAML, the command line and resolved_config.yaml use."""
        out = {key: getattr(getattr(self, group), key) for key, group in KEY_GROUP.items()}
        out["datasets"] = [{d.name: {k: v for k, v in d.option_items().items() if k != "name"}}
                           for d in self.data.datasets]
        return out


# ----------------------------------------------------------------------------------------------------------
# Reading sections

@dataclass
class Section:
    values: dict[str, Any]
    file: Path
    lines: dict[str, int]  # top-level key -> line in `file`
    line: int  # where the section starts


def read_sections(paths: list[Path]) -> dict[str, Section]:
    """Every top-level section of the given YAML files; a name defined twice is an error naming both places."""
    sections: dict[str, Section] = {}
    for path in paths:
        try:
            raw = path.read_bytes()
        except OSError as e:
            raise ConfigError(f"{path}: cannot read config file: {e.strerror}") from None
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            line = raw.count(b"\n", 0, e.start) + 1
            raise ConfigError(f"{path}:{line}: not UTF-8 text (byte 0x{raw[e.start]:02x}); config files must be "
                              f"UTF-8") from None
        loader = yaml.SafeLoader(text)
        try:
            root = loader.get_single_node()
            if root is None:
                continue
            if not isinstance(root, yaml.MappingNode):
                raise ConfigError(f"{path}:{root.start_mark.line + 1}: expected a mapping of section names "
                                  f"to settings")
            for key_node, value_node in root.value:
                name = str(key_node.value)
                where = f"{path}:{key_node.start_mark.line + 1}"
                if name in sections:
                    s = sections[name]
                    raise ConfigError(f"{where}: section '{name}' is already defined at {s.file}:{s.line}")
                _refuse_repeated_keys(value_node, path, name)
                values = loader.construct_object(value_node, deep=True)
                if values is None:
                    values = {}
                if not isinstance(values, dict):
                    raise ConfigError(f"{where}: section '{name}' must be a mapping of keys to values, "
                                      f"got {type(values).__name__}")
                lines = {}
                if isinstance(value_node, yaml.MappingNode):
                    lines = {str(k.value): k.start_mark.line + 1 for k, _ in value_node.value}
                sections[name] = Section(values, path, lines, key_node.start_mark.line + 1)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            at = f":{mark.line + 1}" if mark else ""
            raise ConfigError(f"{path}{at}: not valid YAML: {getattr(e, 'problem', e)}") from None
        finally:
            loader.dispose()
    return sections


def _refuse_repeated_keys(node: yaml.Node, path: Path, section: str) -> None:
    """YAML keeps the last of a key given twice in one mapping without a word; a config that says two things is
    refused, naming both lines."""
    stack = [node]
    while stack:
        current = stack.pop()
        if isinstance(current, yaml.MappingNode):
            seen: dict[str, int] = {}
            for key, value in current.value:
                if isinstance(key, yaml.ScalarNode):
                    line = key.start_mark.line + 1
                    if key.value in seen:
                        raise ConfigError(f"{path}:{line}: key '{key.value}' given twice in section '{section}' "
                                          f"(first at line {seen[key.value]}); keep one")
                    seen[key.value] = line
                stack.append(value)
        elif isinstance(current, yaml.SequenceNode):
            stack.extend(current.value)


def default_config_files() -> list[Path]:
    return sorted(CONFIG_DIR.glob("*.yaml"))


def deep_merge(base: dict, top: dict) -> dict:
    """Nested mappings merge key by key; any other value (lists included) replaces."""
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
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


# ----------------------------------------------------------------------------------------------------------
# Command line

@dataclass
class ParsedArgs:
    configs: list[str]
    config_files: list[Path]
    overrides: list[tuple[str, str | None]]  # (key, raw value); None means the bare flag
    extra: dict[str, Any]  # options the entry point declared itself (e.g. --dump), by name


def split_argv(argv: list[str], extra_options: dict[str, bool] | None = None) -> ParsedArgs:
    """Splits `--configs a b --key value --key=value --flag --no-key` into its parts; dashes in a name are
    underscores (`--wandb-entity`), and `--configs a,b` is `--configs a b`, as in OASST. Names must be whole: no
    prefix matching (OASST's argparse read `--learning_rat` as `--learning_rate`).

    `extra_options` maps an entry point's own option names to whether they take a value.
    """
    extra_options = extra_options or {}
    argv = dashes_to_underscores(argv)
    configs: list[str] = []
    files: list[Path] = []
    overrides: list[tuple[str, str | None]] = []
    extra: dict[str, Any] = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--"):
            raise ConfigError(f"command line: unexpected argument {arg!r}; options look like --key value")
        name, eq, inline = arg[2:].partition("=")
        values: list[str] = [inline] if eq else []
        i += 1
        if not eq:
            while i < len(argv) and not argv[i].startswith("--"):
                values.append(argv[i])
                i += 1
        if name == "configs":
            configs += [c for v in values for c in comma_list(v)]
        elif name == "config_file":
            files += [Path(v) for v in values]
        elif name in extra_options:
            if extra_options[name] and len(values) != 1:
                raise ConfigError(f"command line: --{name} takes one value")
            extra[name] = values[0] if extra_options[name] else True
            if not extra_options[name] and values:
                raise ConfigError(f"command line: --{name} takes no value, got {values!r}")
        else:
            if len(values) > 1:
                raise ConfigError(f"command line: --{name} takes one value, got {values!r}")
            overrides.append((name, values[0] if values else None))
    return ParsedArgs(configs, files, overrides, extra)


def load_config(argv: list[str], config_files: list[Path] | None = None) -> TrainConfig:
    """The whole path from a command line to a validated TrainConfig."""
    return resolve(split_argv(argv), config_files)


def _field_type(key: str):
    return TYPE_HINTS[KEY_GROUP[key]][key]


def _field(key: str) -> dataclasses.Field:
    return fields_of(GROUPS[KEY_GROUP[key]][1])[key]


def _bare_flag(key: str, where: str) -> str:
    """What `--key` alone means: true for switches, the key's declared flag value, else an error."""
    if _field_type(key) is bool:
        return "true"
    flag = _field(key).metadata.get("flag")
    if flag is None:
        raise ConfigError(f"{where}: '{key}' needs a value ({type_name(_field_type(key))})")
    return flag


def _negated(key: str, where: str) -> Any:
    """OASST's `--no-KEY`: false for a switch, none for an optional key; any other key has no "off" value."""
    if key in RETIRED_OASST_KEYS or key not in KEY_GROUP:
        return None  # build_config names the retired or unknown key
    kind = _field_type(key)
    if kind is bool:
        return False
    if optional(kind):
        return None
    raise ConfigError(f"{where}: '{key}' cannot be unset (it is {type_name(kind)}, default {_field(key).default!r}); "
                      f"give a value with --{key} VALUE")


def resolve(args: ParsedArgs, config_files: list[Path] | None = None) -> TrainConfig:
    files = (config_files if config_files is not None else default_config_files()) + args.config_files
    sections = read_sections(files)
    names = (["defaults"] if "defaults" in sections and "defaults" not in args.configs else []) + args.configs
    values: dict[str, Any] = {}
    origins: dict[str, str] = {}
    for name in names:
        if name not in sections:
            raise ConfigError(f"--configs: unknown section '{name}'{nearest(name, sections)}; sections are read "
                              f"from {', '.join(str(f) for f in files) or 'no files'}")
        s = sections[name]
        values = deep_merge(values, s.values)
        for key in s.values:
            origins[key] = f"{s.file}:{s.lines.get(key, s.line)} (section '{name}')"
    for key, raw in args.overrides:
        where = f"command line --{key}"
        if key.startswith("no-"):
            if raw is not None:
                raise ConfigError(f"{where}: --{key} takes no value, got {raw!r}")
            values[key[3:]], origins[key[3:]] = _negated(key[3:], where), where
            continue
        if key not in KEY_GROUP:
            values[key], origins[key] = raw, where  # build_config reports it with the nearest key
            continue
        if raw is None:
            raw = _bare_flag(key, where)
        if key == "datasets":
            try:
                raw = yaml.safe_load(raw)
            except yaml.YAMLError:
                raise ConfigError(f"{where}: 'datasets' must be a YAML list, got {raw!r}") from None
        values[key], origins[key] = raw, where
    if isinstance(values.get("output_dir"), str):
        # A wandb agent starts every run with one command: `--output_dir=outputs/sweeps/x/$WANDB_RUN_ID` gives
        # each its own directory, so none resumes another's checkpoints.
        values["output_dir"] = os.path.expandvars(values["output_dir"])
    return build_config(values, origins)


def write_resolved(config: TrainConfig, directory: Path | str) -> Path:
    """Write the resolved config (plain YAML, loadable as a section) beside a run's outputs."""
    path = Path(directory) / RESOLVED_CONFIG
    path.parent.mkdir(parents=True, exist_ok=True)
    values = {k: v for k, v in config.flat().items() if k not in INVOCATION_KEYS}
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(yaml.safe_dump({"resolved": values}, sort_keys=False, allow_unicode=True))
    tmp.replace(path)  # whole or absent, whenever a run is killed
    return path
