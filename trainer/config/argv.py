"""The command line: `--configs a b --key value --key=value --flag --no-key` split into its parts, and the whole
path from it to a validated `TrainConfig` (sections merged in order, then the flags, each value remembered with
where it came from)."""
from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from trainer.config.groups import FIELDS, KEY_GROUP, TYPE_HINTS, TrainConfig, build_config
from trainer.config.retired import RETIRED_OASST_KEYS
from trainer.config.sections import deep_merge, default_config_files, read_sections
from trainer.errors import ConfigError
from trainer.schema import comma_list, dashes_to_underscores, nearest, optional, type_name


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
            key = name.removeprefix("no-")
            earlier = next((f"--{n}" + (f" {v}" if v is not None else "") for n, v in overrides
                            if n.removeprefix("no-") == key), None)
            if earlier is not None:  # the last wins, as with OASST's argparse (scripts append overrides), but said
                given = f"--{name}" + (f" {values[0]}" if values else "")
                print(f"warning: command line: '{key}' given twice ({earlier}, then {given}); the last is used",
                      file=sys.stderr)
            overrides.append((name, values[0] if values else None))
    return ParsedArgs(configs, files, overrides, extra)


def load_config(argv: list[str], config_files: list[Path] | None = None) -> TrainConfig:
    """The whole path from a command line to a validated TrainConfig."""
    return resolve(split_argv(argv), config_files)


def _field_type(key: str):
    return TYPE_HINTS[KEY_GROUP[key]][key]


def _bare_flag(key: str, where: str) -> str:
    """What `--key` alone means: true for switches, the key's declared flag value, else an error."""
    if _field_type(key) is bool:
        return "true"
    flag = FIELDS[key].metadata.get("flag")
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
    raise ConfigError(f"{where}: '{key}' cannot be unset (it is {type_name(kind)}, default {FIELDS[key].default!r}); "
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
        expanded = os.path.expandvars(values["output_dir"])
        unset = re.search(r"\$(\w+|\{\w+\})", expanded)
        if unset:
            raise ConfigError(f"{origins.get('output_dir', 'config')}: output_dir '{values['output_dir']}': "
                              f"{unset.group(0)} is not set in the environment; set it or write the directory out")
        values["output_dir"] = expanded
    return build_config(values, origins)

