"""Typed run configuration: YAML sections merged in order, then `--key value` flags on top.

`--configs defaults reference-data reference-pythia-12b --num_train_epochs 8` reads every section of every
`configs/*.yaml` (plus `--config_file` files), applies `defaults` first and then each named section in order
(nested mappings merge key by key, lists and scalars replace), then the flags. The result is one frozen
`TrainConfig`; unknown keys and wrong types are reported all at once, each with where it came from.
"""
from __future__ import annotations

import dataclasses
import difflib
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from trainer.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = REPO_ROOT / "configs"


def repo_relative(path: str) -> str:
    """A relative path that does not exist from here is taken from the repository (the demo's
    `.cache/tiny/...`, `configs/zero2.json`); anything else, a hub name included, is returned as given."""
    local = Path(path)
    if local.is_absolute() or local.exists() or not (REPO_ROOT / local).exists():
        return path
    return str(REPO_ROOT / local)

# OASST `config.yaml` keys that Delphi deliberately does not have, with what to do instead.
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
}


class FieldProblems(ConfigError):
    """Out-of-range values found when a TrainConfig is built; `build_config` adds where each value came from."""

    def __init__(self, problems: list[tuple[str, str]]):
        super().__init__("invalid config:\n  " + "\n  ".join(f"'{k}' {m}" for k, m in problems))
        self.problems = problems


# ----------------------------------------------------------------------------------------------------------
# Datasets

@dataclass(frozen=True)
class DatasetKind:
    hub_name: str | None  # where `datasets.load_dataset` finds it when no local file is given
    val_split: float  # the upstream default for this source
    options: frozenset[str] = frozenset()  # options beyond the common ones


DATASET_KINDS = {
    # OASST's defaults: val_split 0.2, lang "en", top_k None.
    "oasst_export": DatasetKind(
        "OpenAssistant/oasst1", 0.2,
        frozenset({"lang", "top_k", "tree_state", "include_deleted", "include_synthetic", "include_spam"})),
    # OASST's `alpaca` entry means yahma/alpaca-cleaned, split 80/20.
    "alpaca": DatasetKind("yahma/alpaca-cleaned", 0.2),
    # The qlora fork holds out 10% of a local file.
    "airoboros": DatasetKind("jondurbin/airoboros-gpt4-1.4", 0.1),
}


@dataclass(frozen=True)
class DatasetConfig:
    """One entry of the `datasets:` list."""

    name: str  # one of DATASET_KINDS
    input_file_path: str | None = None  # local JSON/JSONL(.gz); relative paths: see `resolve_input_path`
    hub_name: str | None = None  # defaults to the kind's hub name; used only without input_file_path
    val_split: float | None = None  # None: the kind's default
    fraction: float = 1.0  # share of the training split to use (per epoch with use_custom_sampler)
    size: int | None = None  # absolute number of training samples instead of a fraction
    manual_seed: int = 287631038922  # OASST's split seed
    skip_bad_lines: bool = False  # skip and count malformed lines instead of stopping at the first
    # oasst_export only
    lang: str = "en"  # comma list, checked on the tree's root prompt
    top_k: int | None = None  # keep only replies ranked better than k (unranked only children pass)
    tree_state: str = "ready_for_export"  # comma list
    include_deleted: bool = False
    include_synthetic: bool = False
    include_spam: bool = False  # root prompts whose review_result is false or null

    @property
    def kind(self) -> DatasetKind:
        return DATASET_KINDS[self.name]

    @property
    def effective_val_split(self) -> float:
        return self.kind.val_split if self.val_split is None else self.val_split

    @property
    def effective_hub_name(self) -> str | None:
        return self.hub_name or self.kind.hub_name

    def option_items(self) -> dict[str, Any]:
        """The options that apply to this kind, for cache keys and reports."""
        allowed = COMMON_DATASET_OPTIONS | self.kind.options
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name in allowed | {"name"}}


COMMON_DATASET_OPTIONS = frozenset(
    {"input_file_path", "hub_name", "val_split", "fraction", "size", "manual_seed", "skip_bad_lines"})


# ----------------------------------------------------------------------------------------------------------
# The run

PROMPT_FORMATS = ("oasst", "airoboros", "alpaca", "plain")
DTYPES = ("fp32", "fp16", "bf16")
MODES = ("full", "lora", "qlora")
QUANT_TYPES = ("nf4", "fp4")


@dataclass(frozen=True)
class TrainConfig:
    # Model and tokenizer
    model_name: str | None = None  # hub name or local directory
    tokenizer_name: str | None = None  # defaults to model_name
    prompt_format: str = field(default="oasst", metadata={"choices": PROMPT_FORMATS})
    plain_user_name: str = "User"  # the `plain` format's "Name: text" speaker names
    plain_bot_name: str = "Assistant"
    pad_vocab_size_to_multiple_of: int = 16  # embedding rows round up to this (OASST: 16)
    dtype: str = field(default="fp16", metadata={"choices": DTYPES})
    residual_dropout: float = 0.1
    use_flash_attention: bool = False
    gradient_checkpointing: bool = False
    # Fine-tuning mode. Where the qlora fork has a flag, the name is the same (`--lora_r 64 --mpt True`).
    mode: str = field(default="full", metadata={"choices": MODES})  # qlora: 4-bit base + LoRA adapters
    lora_r: int = 16  # OASST HEAD's LoRA defaults: r 16, alpha 32, dropout 0.05
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_target_modules: str = "all"  # comma list of module names, or "all": every linear layer but the output head
    quant_type: str = field(default="nf4", metadata={"choices": QUANT_TYPES})  # qlora only
    double_quant: bool = True  # qlora only: quantize the quantization constants too
    mpt: bool = False  # the checkpoint must be MPT; its max_seq_len grows to max_length (ALiBi)
    trust_remote_code: bool = False  # run the checkpoint's own modelling code instead of transformers' class

    # Data
    datasets: tuple[DatasetConfig, ...] = ()
    max_length: int = 512
    val_max_length: int | None = None  # defaults to max_length
    label_masking: bool = True  # false: train on prompts too, not only on assistant replies
    use_system_prefix: bool = False
    system_prefix: str = (
        "You are Joi, a large language model trained by Open-Assistant. Answer as concisely as possible.\n"
        "Knowledge cutoff: 2021-09-01\nCurrent date: 2023-03-12")
    use_custom_sampler: bool = False  # per-dataset fraction/size drawn anew each epoch
    sort_by_length: bool = False  # batches of similar length (less padding)
    packing: bool = False  # several samples per row, isolated by position ids
    cache_dir: str = ".cache"  # tokenized-dataset cache; relative dataset paths are looked up here first

    # Optimisation
    rng_seed: int = 0xA1221F97
    learning_rate: float = 1e-5
    num_train_epochs: float = 3
    per_device_train_batch_size: int = 2
    per_device_eval_batch_size: int = 2
    gradient_accumulation_steps: int = 32
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    adam_epsilon: float = 1e-12
    weight_decay: float = 0.0
    warmup_steps: int = 600
    max_grad_norm: float = 2.0
    deepspeed: bool = False
    deepspeed_config: str = "configs/zero2.json"

    # Bookkeeping
    output_dir: str = "saved_model"
    log_dir: str = "base"
    eval_steps: int = 200
    save_steps: int = 1000
    save_total_limit: int = 4
    logging_steps: int = 10
    log_wandb: bool = True
    verbose: bool = False

    # Training run (trainer/train.py)
    lr_scheduler_type: str = field(default="linear", metadata={"choices": ("linear", "cosine")})  # without
    # DeepSpeed; under DeepSpeed the JSON's scheduler (WarmupDecayLR in configs/zero2.json) is used
    resume_from_checkpoint: str | None = None  # a checkpoint directory; unset: the newest one in output_dir, if any
    report_to: str = field(default="wandb", metadata={"choices": ("wandb", "none")})  # and log_wandb must be true
    wandb_project: str = "delphi"
    wandb_entity: str | None = None
    wandb_run_name: str | None = None
    wandb_group: str | None = None
    wandb_tags: str | None = None  # comma list

    def __post_init__(self) -> None:
        problems = []
        for name in ("max_length", "per_device_train_batch_size", "per_device_eval_batch_size",
                     "gradient_accumulation_steps", "pad_vocab_size_to_multiple_of", "eval_steps", "save_steps",
                     "logging_steps", "lora_r", "lora_alpha"):
            if getattr(self, name) < 1:
                problems.append((name, f"must be at least 1, got {getattr(self, name)}"))
        for name in ("warmup_steps", "weight_decay", "max_grad_norm"):
            if getattr(self, name) < 0:
                problems.append((name, f"must be at least 0, got {getattr(self, name)}"))
        for name in ("learning_rate", "num_train_epochs"):
            if getattr(self, name) <= 0:
                problems.append((name, f"must be greater than 0, got {getattr(self, name)}"))
        if self.val_max_length is not None and not 1 <= self.val_max_length <= self.max_length:
            problems.append(("val_max_length", f"must be in 1..max_length ({self.max_length}): evaluation batches "
                                               f"are collated like training ones, got {self.val_max_length}"))
        for name in ("residual_dropout", "lora_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                problems.append((name, f"must be in [0, 1), got {getattr(self, name)}"))
        if problems:
            raise FieldProblems(problems)

    @property
    def lora_targets(self) -> str | list[str]:
        """peft's `target_modules`: "all-linear" for `all`, else the listed module names."""
        if self.lora_target_modules == "all":
            return "all-linear"
        return [t.strip() for t in self.lora_target_modules.split(",") if t.strip()]

    @property
    def effective_tokenizer_name(self) -> str | None:
        return self.tokenizer_name or self.model_name

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["datasets"] = [{d.name: {k: v for k, v in d.option_items().items() if k != "name"}}
                           for d in self.datasets]
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
            text = path.read_text(encoding="utf-8")
        except OSError as e:
            raise ConfigError(f"{path}: cannot read config file: {e.strerror}") from None
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


# ----------------------------------------------------------------------------------------------------------
# Types

def _nearest(name: str, candidates) -> str:
    match = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.5)
    return f" (did you mean '{match[0]}'?)" if match else ""


_TRUE = {"true", "yes", "y", "on", "1", "t"}
_FALSE = {"false", "no", "n", "off", "0", "f"}


def coerce(value: Any, annotation: Any, key: str, where: str, choices=None) -> Any:
    """Convert a YAML or command-line value to the declared type, or raise naming key, value and type."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        return coerce(value, args[0], key, where, choices)
    expected = getattr(annotation, "__name__", str(annotation))
    fail = ConfigError(f"{where}: '{key}' must be {expected}, got {value!r}")
    if value is None:
        raise fail
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
            return value.lower() in _TRUE
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise fail
    if annotation is int:
        if isinstance(value, bool):
            raise fail
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value, 0)
            except ValueError:
                raise fail from None
        raise fail
    if annotation is float:
        if isinstance(value, bool):
            raise fail
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 6e-6 as a string
            try:
                return float(value)
            except ValueError:
                raise fail from None
        raise fail
    if annotation is str:
        if isinstance(value, (dict, list)):
            raise fail
        value = str(value)
        if choices and value not in choices:
            raise ConfigError(f"{where}: '{key}' must be one of {', '.join(choices)}, got {value!r}"
                              f"{_nearest(value, choices)}")
        return value
    raise TypeError(f"unsupported config type {annotation!r} for {key}")


_TRAIN_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
_TRAIN_TYPES = typing.get_type_hints(TrainConfig)
_DATASET_TYPES = typing.get_type_hints(DatasetConfig)


def parse_datasets(items: Any, where: str) -> tuple[DatasetConfig, ...]:
    """`datasets:` entries are a bare name (`- alpaca`) or a one-key mapping (`- oasst_export: {lang: en}`)."""
    if items is None:
        return ()
    if not isinstance(items, list):
        raise ConfigError(f"{where}: 'datasets' must be a list of dataset entries, got {items!r}")
    out, problems = [], []
    for i, item in enumerate(items):
        here = f"{where}: datasets[{i}]"
        if isinstance(item, str):
            name, options = item, {}
        elif isinstance(item, dict) and len(item) == 1:
            (name, options), = item.items()
            options = options or {}
        elif isinstance(item, dict) and sum(v is None for v in item.values()) == 1 and \
                next(k for k, v in item.items() if v is None) in DATASET_KINDS:
            # The model card's YAML: options indented at the name's own column parse as siblings of it.
            name = next(k for k, v in item.items() if v is None)
            options = {k: v for k, v in item.items() if k != name}
            print(f"warning: {here}: the options of '{name}' ({', '.join(options)}) sit at the same indentation "
                  f"as '{name}:'; read them as its options (indent them one level deeper to silence this)",
                  file=sys.stderr)
        else:
            problems.append(f"{here}: expected a dataset name or a mapping '{{name: {{options}}}}', got {item!r}")
            continue
        if name not in DATASET_KINDS:
            problems.append(f"{here}: unknown dataset '{name}'{_nearest(str(name), DATASET_KINDS)}; "
                            f"known: {', '.join(DATASET_KINDS)}")
            continue
        if not isinstance(options, dict):
            problems.append(f"{here}: options of '{name}' must be a mapping, got {options!r}")
            continue
        allowed = COMMON_DATASET_OPTIONS | DATASET_KINDS[name].options
        kwargs, entry_problems = {}, []
        for key, value in options.items():
            if key not in allowed:
                other = [k for k, kind in DATASET_KINDS.items() if key in kind.options]
                hint = f"; it applies to {', '.join(other)} only" if other else _nearest(key, allowed)
                entry_problems.append(f"{here} ({name}): unknown option '{key}'{hint}")
                continue
            try:
                kwargs[key] = coerce(value, _DATASET_TYPES[key], key, f"{here} ({name})")
            except ConfigError as e:
                entry_problems.append(str(e))
        if not entry_problems:
            ds = DatasetConfig(name=name, **kwargs)
            entry_problems = _check_dataset(ds, f"{here} ({name})")
            out.append(ds)
        problems += entry_problems
    if problems:
        raise ConfigError("\n".join(problems))
    return tuple(out)


def _check_dataset(ds: DatasetConfig, where: str) -> list[str]:
    problems = []
    if not 0.0 <= ds.effective_val_split < 1.0:
        problems.append(f"{where}: 'val_split' must be in [0, 1), got {ds.val_split}")
    if not 0.0 < ds.fraction <= 1.0:
        problems.append(f"{where}: 'fraction' must be in (0, 1], got {ds.fraction}")
    if ds.size is not None and ds.size < 1:
        problems.append(f"{where}: 'size' must be at least 1, got {ds.size}")
    if ds.size is not None and ds.fraction != 1.0:
        problems.append(f"{where}: give 'fraction' or 'size', not both")
    if ds.top_k is not None and ds.top_k < 1:
        problems.append(f"{where}: 'top_k' must be at least 1, got {ds.top_k}")
    return problems


def build_config(values: dict[str, Any], origins: dict[str, str]) -> TrainConfig:
    """Validate merged values into a TrainConfig; every problem is reported, each with its origin."""
    kwargs, problems = {}, []
    for key, value in values.items():
        where = origins.get(key, "config")
        if key in RETIRED_OASST_KEYS:
            problems.append(f"{where}: '{key}' is an OASST option Delphi does not have: {RETIRED_OASST_KEYS[key]}")
            continue
        if key not in _TRAIN_FIELDS:
            problems.append(f"{where}: unknown key '{key}'{_nearest(key, _TRAIN_FIELDS)}")
            continue
        try:
            if key == "datasets":
                kwargs[key] = parse_datasets(value, where)
            else:
                kwargs[key] = coerce(value, _TRAIN_TYPES[key], key, where,
                                     _TRAIN_FIELDS[key].metadata.get("choices"))
        except ConfigError as e:
            problems.append(str(e))
    if problems:
        raise ConfigError("\n".join(problems))
    try:
        return TrainConfig(**kwargs)
    except FieldProblems as e:
        raise ConfigError("\n".join(f"{origins.get(key, 'config')}: '{key}' {message}"
                                     for key, message in e.problems)) from None


# ----------------------------------------------------------------------------------------------------------
# Command line

@dataclass
class ParsedArgs:
    configs: list[str]
    config_files: list[Path]
    overrides: list[tuple[str, str | None]]  # (key, raw value); None means the bare flag
    extra: dict[str, Any]  # options the entry point declared itself (e.g. --dump), by name


def split_argv(argv: list[str], extra_options: dict[str, bool] | None = None) -> ParsedArgs:
    """Splits `--configs a b --key value --key=value --flag` into its parts.

    `extra_options` maps an entry point's own option names to whether they take a value.
    """
    extra_options = extra_options or {}
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
            configs += values
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


def resolve(args: ParsedArgs, config_files: list[Path] | None = None) -> TrainConfig:
    files = (config_files if config_files is not None else default_config_files()) + args.config_files
    sections = read_sections(files)
    names = (["defaults"] if "defaults" in sections and "defaults" not in args.configs else []) + args.configs
    values: dict[str, Any] = {}
    origins: dict[str, str] = {}
    for name in names:
        if name not in sections:
            raise ConfigError(f"--configs: unknown section '{name}'{_nearest(name, sections)}; sections are read "
                              f"from {', '.join(str(f) for f in files) or 'no files'}")
        s = sections[name]
        values = deep_merge(values, s.values)
        for key in s.values:
            origins[key] = f"{s.file}:{s.lines.get(key, s.line)} (section '{name}')"
    for key, raw in args.overrides:
        where = f"command line --{key}"
        if key.startswith("no-") and key[3:] in _TRAIN_FIELDS and raw is None:
            values[key[3:]], origins[key[3:]] = None, where
            continue
        if key not in _TRAIN_FIELDS:
            values[key], origins[key] = raw, where  # build_config reports it with the nearest key
            continue
        if raw is None:
            if _TRAIN_TYPES[key] is not bool:
                raise ConfigError(f"{where}: '{key}' needs a value ({getattr(_TRAIN_TYPES[key], '__name__', '')})")
            raw = "true"
        if key == "datasets":
            try:
                raw = yaml.safe_load(raw)
            except yaml.YAMLError:
                raise ConfigError(f"{where}: 'datasets' must be a YAML list, got {raw!r}") from None
        values[key], origins[key] = raw, where
    return build_config(values, origins)


def write_resolved(config: TrainConfig, directory: Path | str) -> Path:
    """Write the resolved config (plain YAML, loadable as a section) beside a run's outputs."""
    path = Path(directory) / "resolved_config.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({"resolved": config.to_dict()}, sort_keys=False, allow_unicode=True))
    return path
