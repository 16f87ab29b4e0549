"""`--help` for the config-driven commands, printed from the config's own declarations (types, defaults,
choices and help lines live on the fields in `trainer.config` and the dataset kinds; nothing here repeats them).
One line per key, so `delphi train -h | grep lora` finds what it should."""
from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any, Sequence

from trainer.config import GROUPS, RETIRED_OASST_KEYS, DatasetConfig, default_config_files
from trainer.data.kinds import KINDS
from trainer.schema import type_name

WIDTH = 34  # the flag-and-type column; a longer one pushes its text right, still on one line


def _default(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, str):
        return repr(value.split("\n")[0] + ("..." if "\n" in value else ""))
    if value == ():
        return "[]"
    return str(value).lower() if isinstance(value, bool) else str(value)


def _kind(f: dataclasses.Field, annotation: Any) -> str:
    if f.metadata.get("choices"):
        return "{" + ",".join(f.metadata["choices"]) + "}"
    if f.name == "datasets":
        return "list"
    if annotation is bool:
        return "[bool]"
    kind = type_name(annotation).replace(" or none", "|none")
    return f"{kind} (bare: {f.metadata['flag']})" if f.metadata.get("flag") else kind


def _line(flag: str, text: str, indent: int = 2) -> str:
    return f"{' ' * indent}{flag:<{WIDTH}} {text}" if len(flag) < WIDTH else f"{' ' * indent}{flag}  {text}"


def _field_lines(cls: type, skip: Sequence[str] = (), indent: int = 2) -> list[str]:
    hints = typing.get_type_hints(cls)
    return [_line(f"--{f.name} {_kind(f, hints[f.name])}", f"{f.metadata['help']} (default: {_default(f.default)})",
                  indent)
            for f in dataclasses.fields(cls) if f.name not in skip and "help" in f.metadata]


def _shown(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _sections(argv: Sequence[str]) -> list[str]:
    from trainer.config import read_sections, split_argv
    from trainer.errors import ConfigError

    try:
        files = default_config_files() + split_argv([a for a in argv if a not in ("-h", "--help")]).config_files
        sections = read_sections(files)
    except ConfigError as e:
        return [f"  (could not read the config files: {e})"]
    by_file: dict[Path, list[str]] = {}
    for name, section in sections.items():
        by_file.setdefault(section.file, []).append(name)
    return [f"  {_shown(file)}: {', '.join(names)}" for file, names in by_file.items()]


def config_help(prog: str, argv: Sequence[str], extra: dict[str, str] | None = None) -> str:
    """Usage, the sections `--configs` can name, every config key by group, the dataset options per kind, and the
    OASST keys Delphi refuses with what to use instead."""
    out = [f"usage: {prog} --configs SECTION [SECTION ...] [--config_file FILE ...] [--KEY VALUE ...]", "",
           "Sections are merged in order (`defaults` first, always; `--configs a,b` works too), then flags: "
           "--key value, --key=value, --key-with-dashes, a bare --switch (true), --no-KEY (false for a switch, none "
           "for an optional key). Names are never abbreviated.", "",
           "sections (--configs), from the config files and any --config_file:", *_sections(argv)]
    if extra:
        out += ["", f"{prog.split()[-1]} options:", *(_line(k, v) for k, v in extra.items())]
    for title, cls in GROUPS.values():
        out += ["", f"{title}:", *_field_lines(cls)]
    out += ["", "dataset entries (`datasets:` items: a name, or {name: {option: value}}); options of every kind:",
            *_field_lines(DatasetConfig, skip=("name",))]
    for name, kind in KINDS.items():
        hub = f"hub {kind.hub_name}" if kind.hub_name else "no hub default"
        out += ["", f"  {name} ({hub}, val_split {kind.val_split}, e.g. input_file_path: {kind.example_file})"
                + (":" if kind.options else "")]
        if kind.options:
            out += _field_lines(kind.options, indent=4)
    out += ["", "OASST keys and flags Delphi refuses, and what to use instead:",
            *(_line(key, advice) for key, advice in RETIRED_OASST_KEYS.items())]
    return "\n".join(out)
