"""Typed run configuration: YAML sections merged in order, then `--key value` flags on top.

`--configs defaults reference-data reference-pythia-12b --num_train_epochs 8` reads every section of every
config file Delphi carries (`configs/*.yaml`) plus `--config_file` files, applies `defaults` first and then each
named section in order (nested mappings merge key by key, lists and scalars replace), then the flags. The result
is one frozen `TrainConfig` made of groups (model, adapters, data, optimisation, schedule, logging, outputs);
YAML files and flags use OASST's flat key names, each of which belongs to exactly one group. Unknown keys and
wrong types are reported all at once, each with where it came from.

One module per job: `entries` (the `datasets:` list), `groups` (the run's groups, each key with everything
known about it), `retired` (OASST keys Delphi refuses), `sections` (YAML files), `argv` (the command line, and
the whole path to a config), `resolved` (the config written beside a run). The names callers use are here.
"""
from trainer.config.argv import ParsedArgs, load_config, resolve, split_argv
from trainer.config.entries import DatasetConfig, parse_datasets
from trainer.config.groups import (DTYPES, GROUPS, KEY_GROUP, MODES, RESUME_LAST, RESUME_POLICY, TRAINER_ARGS,
                                   AdapterConfig, DataConfig, LoggingConfig, ModelConfig, OptimConfig, OutputConfig,
                                   ScheduleConfig, TrainConfig, build_config)
from trainer.config.resolved import RESOLVED_CONFIG, write_resolved
from trainer.config.retired import RETIRED_OASST_KEYS
from trainer.config.sections import default_config_files, read_sections
from trainer.paths import CONFIG_DIR

__all__ = ["CONFIG_DIR", "DTYPES", "GROUPS", "KEY_GROUP", "MODES", "RESOLVED_CONFIG", "RESUME_LAST", "RESUME_POLICY",
           "RETIRED_OASST_KEYS", "TRAINER_ARGS", "AdapterConfig", "DataConfig", "DatasetConfig", "LoggingConfig",
           "ModelConfig", "OptimConfig", "OutputConfig", "ParsedArgs", "ScheduleConfig", "TrainConfig",
           "build_config", "default_config_files", "load_config", "parse_datasets", "read_sections", "resolve",
           "split_argv", "write_resolved"]
