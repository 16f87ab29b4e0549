"""Typed config fields: each is declared once with its default, a one-line help and its choices, and values from
YAML or the command line are converted by the declared type. `trainer.config` (the run) and the dataset kinds
(their own options) build on this, and `--help` prints from the same declarations.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from typing import Any, Callable, Collection, Iterable, Sequence

from trainer.errors import ConfigError


# What a resume may do with a key whose value differs from the stored run's (`option(resume=...)`).
FIXED = "fixed"  # refused: it would continue a different training
FREE = "free"  # allowed: it does not change what is trained
CHANGEABLE = "changeable"  # allowed with --resume_with_changes: the schedule continues as planned with the new value


def option(default: Any, help: str, *, choices: Collection[str] | None = None, flag: str | None = None,
           trainer_arg: bool | str | None = None, resume: str | None = None, invocation: bool = False) -> Any:
    """A dataclass field with everything about the key kept beside its default.

    `choices` may be a registry (a dict): it is read when a value is checked, so a member registered later is a
    valid choice. `flag` is what a bare `--key` (and a YAML `true`) means for an optional string key, as OASST's
    `--resume_from_checkpoint` switch means "the newest checkpoint"; bool keys always read a bare flag as true.
    `trainer_arg`: passed to `transformers.TrainingArguments` as is, under the key's name (True) or another
    (a string); False: the `TrainingArguments` field of the same name is deliberately set otherwise. `resume`:
    FIXED, FREE or CHANGEABLE (None: the group's `resume_default`). `invocation`: how this command treats
    output_dir, not how the run trains (never written into resolved_config.yaml)."""
    return dataclasses.field(default=default, metadata={
        "help": help, "choices": choices, "flag": flag, "trainer_arg": trainer_arg, "resume": resume,
        "invocation": invocation})


class FieldProblems(ConfigError):
    """Out-of-range values found when a config object is built; the builder adds where each value came from."""

    def __init__(self, problems: list[tuple[str, str]]):
        super().__init__("invalid config:\n  " + "\n  ".join(f"'{k}' {m}" for k, m in problems))
        self.problems = problems


def check(problems: list[tuple[str, str]]) -> None:
    """`__post_init__`s collect (key, message) pairs and raise them together."""
    if problems:
        raise FieldProblems(problems)


def at_least(obj: Any, low: float, *names: str) -> list[tuple[str, str]]:
    return [(n, f"must be at least {low}, got {getattr(obj, n)}") for n in names if not getattr(obj, n) >= low]


def finite_positive(obj: Any, *names: str) -> list[tuple[str, str]]:
    return [(n, f"must be a finite number greater than 0, got {getattr(obj, n)}") for n in names
            if not (math.isfinite(getattr(obj, n)) and getattr(obj, n) > 0)]


def nearest(name: str, candidates: Iterable[str]) -> str:
    match = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.5)
    return f" (did you mean '{match[0]}'?)" if match else ""


def dashes_to_underscores(argv: Sequence[str]) -> list[str]:
    """`--wandb-entity x` and `--wandb_entity=x` name the same option; `--no-KEY` (OASST's "unset") keeps its dash
    after `no`. Values are left alone."""
    out = []
    for arg in argv:
        if arg.startswith("--") and len(arg) > 2:
            name, eq, value = arg[2:].partition("=")
            negated = name.startswith("no-")
            name = ("no-" if negated else "") + name[3 if negated else 0:].replace("-", "_")
            arg = f"--{name}{eq}{value}"
        out.append(arg)
    return out


def comma_list(value: str | None) -> list[str]:
    """`"a, b,,c"` -> `["a", "b", "c"]`: how every comma-list option (targets, tags, languages) is read."""
    return [part.strip() for part in (value or "").split(",") if part.strip()]


_TRUE = {"true", "yes", "y", "on", "1", "t"}
_FALSE = {"false", "no", "n", "off", "0", "f"}


def optional(annotation: Any) -> bool:
    """`X | None`: a key whose value may be none."""
    union = typing.get_origin(annotation) in (typing.Union, types.UnionType)
    return union and type(None) in typing.get_args(annotation)


def type_name(annotation: Any) -> str:
    """`int`, `str or none`, ... for messages and --help."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return f"{type_name(args[0])} or none"
    return getattr(annotation, "__name__", str(annotation))


def coerce(value: Any, annotation: Any, key: str, where: str, choices=None, flag: str | None = None) -> Any:
    """Convert a YAML or command-line value to the declared type, or raise naming key, value and type."""
    if flag is not None and (isinstance(value, bool) or str(value).lower() in ("true", "false")):
        return flag if value is True or str(value).lower() == "true" else None
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        return coerce(value, args[0], key, where, choices)
    fail = ConfigError(f"{where}: '{key}' must be {type_name(annotation)}, got {value!r}")
    if value is None or (isinstance(value, bool) and annotation in (int, float)):
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
                              f"{nearest(value, choices)}")
        return value
    raise TypeError(f"unsupported config type {annotation!r} for {key}")


def fields_of(cls: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls)}


def build(cls: type, values: dict[str, Any], where: Callable[[str], str],
          convert: dict[str, Callable[[Any, str], Any]] | None = None) -> tuple[Any, list[str]]:
    """`cls(**values)` with every value converted by its declared type; returns (object or None, problems), each
    problem prefixed with where its value came from. `convert` handles keys of a type `coerce` does not know."""
    hints = typing.get_type_hints(cls)
    fields = fields_of(cls)
    kwargs, problems = {}, []
    for key, value in values.items():
        try:
            if convert and key in convert:
                kwargs[key] = convert[key](value, where(key))
            else:
                kwargs[key] = coerce(value, hints[key], key, where(key), fields[key].metadata.get("choices"),
                                     fields[key].metadata.get("flag"))
        except ConfigError as e:
            problems.append(str(e))
    if problems:
        return None, problems
    try:
        return cls(**kwargs), []
    except FieldProblems as e:
        return None, [f"{where(key)}: '{key}' {message}" for key, message in e.problems]
