"""Config files: every top-level section of every YAML file read with the line each key is on, and how sections
merge (nested mappings key by key, lists and scalars replace)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from trainer.errors import ConfigError
from trainer.paths import CONFIG_DIR


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
    refused, naming both lines. An alias inside the node its anchor names (a section that merges itself with
    `<<: *e` or lists itself in `datasets: [*e]`) is a cycle that building the values would follow forever: refused
    at once, naming the line. A node shared through several aliases is checked once."""
    checked: set[int] = set()
    stack: list[tuple[yaml.Node, tuple[int, ...]]] = [(node, ())]
    while stack:
        current, outer = stack.pop()  # `outer`: the nodes that contain it
        if id(current) in checked:
            continue
        checked.add(id(current))
        inner = (*outer, id(current))
        if isinstance(current, yaml.MappingNode):
            seen: dict[str, int] = {}
            children = []
            for key, value in current.value:
                line = key.start_mark.line + 1
                if isinstance(key, yaml.ScalarNode):
                    if key.value in seen:
                        raise ConfigError(f"{path}:{line}: key '{key.value}' given twice in section '{section}' "
                                          f"(first at line {seen[key.value]}); keep one")
                    seen[key.value] = line
                children.append((line, value))
        elif isinstance(current, yaml.SequenceNode):
            children = [(current.start_mark.line + 1, item) for item in current.value]
        else:
            continue
        for line, child in children:
            if id(child) in inner:
                raise ConfigError(f"{path}:{line}: section '{section}' contains itself through a YAML alias (the "
                                  f"anchor at line {child.start_mark.line + 1}): an alias cycle; refer to another "
                                  f"section's anchor, or merge sections with --configs")
            stack.append((child, inner))


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

