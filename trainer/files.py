"""Checks of the files and directories a run reads or writes, made before any long work so that a bad path is one
line naming it instead of a traceback minutes later: a directory to write into, safetensors weights that are not
cut short, a pickle that torch refuses to load."""
from __future__ import annotations

import json
import os
import pickle
import struct
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from trainer.errors import ConfigError, RunError, first_line

HEADER_LIMIT = 100 << 20  # safetensors refuses headers above 100 MB


def check_writable_dir(path: Path | str, key: str) -> None:
    """`path` is a directory Delphi may create and write into: it is not a file, nor below one, and the nearest
    existing directory accepts a new file (tried for real: permission bits say nothing for root or on network
    file systems)."""
    if not str(path).strip():
        raise ConfigError(f"{key}: empty; expected a directory")
    path = Path(path)
    if path.is_symlink() and not path.exists():
        raise ConfigError(f"{key}: '{path}' is a symbolic link to '{os.readlink(path)}', which does not exist; create "
                          f"that directory or give another path")
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{key}: '{path}' is a file; expected a directory (created if missing)")
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"{key}: '{path}': '{existing}' is a file, so no directory can be made below it")
    probe = existing / f".delphi-write-test-{os.getpid()}"
    try:
        probe.touch()
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"{key}: '{path}': cannot write into '{existing}' ({e.strerror or e})") from None


def safetensors_problem(path: Path) -> str | None:
    """Why a .safetensors file cannot be loaded whole, or None: reads only its header, so it costs nothing."""
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(8)
            if len(head) < 8:
                return f"{path.name} is {size} bytes, too short for a safetensors header"
            (length,) = struct.unpack("<Q", head)
            if length > min(HEADER_LIMIT, size - 8):
                return f"{path.name} is cut short: its header alone would need {length:,} bytes"
            header = json.loads(f.read(length))
    except OSError as e:
        return f"{path.name} cannot be read ({e.strerror or e})"
    except (ValueError, UnicodeDecodeError):
        return f"{path.name} has a damaged header (not JSON)"
    if not isinstance(header, dict):
        return f"{path.name} has a damaged header (not a JSON object)"
    ends = [entry["data_offsets"][1] for name, entry in header.items()
            if name != "__metadata__" and isinstance(entry, dict) and "data_offsets" in entry]
    needed = 8 + length + max(ends, default=0)
    if needed > size:
        return f"{path.name} is cut short: {size:,} bytes of the {needed:,} its header describes"
    return None


def check_safetensors(directory: Path | str, what: str) -> None:
    """Every *.safetensors file directly in `directory` is whole; `what` says where it is for the message."""
    for path in sorted(Path(directory).glob("*.safetensors")):
        problem = safetensors_problem(path)
        if problem:
            raise ConfigError(f"{what} '{directory}': {problem}; the weights are damaged or were not fully "
                              f"written")


@contextmanager
def refused_pickles(where: str) -> Iterator[None]:
    """torch's `weights_only` loader refuses a pickle that would run code; that refusal is one line naming the
    directory, not a traceback through torch.load."""
    try:
        yield
    except pickle.UnpicklingError as e:
        raise RunError(f"{where}: refused to load a pickle that is not plain tensors ({first_line(e, 200)}); only "
                       f"load files you trust, and prefer safetensors") from None
