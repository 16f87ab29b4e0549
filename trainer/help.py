"""`--help` for the config-driven commands, printed from the config's own declarations (types, defaults,
choices and help lines live on the fields in `trainer.config` and the dataset kinds; nothing here repeats them)."""
from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any, Sequence

from trainer.config import GROUPS, RETIRED_OASST_KEYS, DatasetConfig, default_config_files
from trainer.data.kinds import KINDS
from trainer.schema import type_name

WIDTH = 34


def _default(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, str):
        return repr(value.split("\n")[0] + ("..." if "\n" in value else ""))
    if value == ():
        return "[]"
    return str(value)


def _field_lines(cls: type, skip: Sequence[str] = ()) -> list[str]:
    hints = typing.get_type_hints(cls)
    lines = []
    for f in dataclasses.fields(cls):
        if f.name in skip or "help" not in f.metadata:
            continue
        if f.metadata.get("choices"):
            kind = "{" + ",".join(f.metadata["choices"]) + "}"
        elif hints[f.name] is bool:
            kind = "[true|false]"
        else:
            kind = "LIST" if f.name == "datasets" else type_name(hints[f.name]).upper().replace(" OR NONE", "|none")
        flag = f"  --{f.name} {kind}"
        text = f"{f.metadata['help']} (default: {_default(f.default)})"
        lines.append(f"{flag:<{WIDTH}} {text}" if len(flag) < WIDTH else f"{flag}\n{'':<{WIDTH}} {text}")
    return lines


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
    return [f"  {file}: {', '.join(names)}" for file, names in by_file.items()]


def config_help(prog: str, argv: Sequence[str], extra: dict[str, str] | None = None) -> str:
    """Usage, the sections `--configs` can name, every config key by group, the dataset options per kind."""
    out = [f"usage: {prog} --configs SECTION [SECTION ...] [--config_file FILE ...] [--KEY VALUE ...]", "",
           "Sections are merged in order (`defaults` first, always); flags override them: --key value, "
           "--key=value, --key-with-dashes, a bare --flag (true), --no-KEY (false for switches, none for optional "
           "keys).", "", "sections (--configs):", *_sections(argv)]
    if extra:
        out += ["", f"{prog.split()[-1]} options:", *(f"  {k:<{WIDTH - 2}} {v}" for k, v in extra.items())]
    for title, cls in GROUPS.values():
        out += ["", f"{title}:", *_field_lines(cls)]
    out += ["", "dataset entries (`datasets:` items: a name, or {name: {option: value}}); options of every kind:",
            *_field_lines(DatasetConfig, skip=("name",))]
    for name, kind in KINDS.items():
        default = f"hub {kind.hub_name}, val_split {kind.val_split}"
        out += ["", f"  {name} ({default})" + (":" if kind.options else "")]
        if kind.options:
            out += [f"  {line}" for line in _field_lines(kind.options)]
    out += ["", "OASST keys Delphi does not have: " + ", ".join(RETIRED_OASST_KEYS)]
    return "\n".join(out)
