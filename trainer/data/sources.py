"""From one `datasets:` entry to its conversations, split into train and validation.

A local `input_file_path` is read with the format's reader; without one the kind's hub dataset is loaded
through `datasets`, with short timeouts so that an unreachable hub fails fast with advice instead of hanging.
Fraction and size are not applied here: the builder does that, per epoch where the custom sampler asks for it.
"""
from __future__ import annotations

import errno
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainer.compat import hub_timeouts
from trainer.data.conversation import Conversation
from trainer.data.jsonl import BadRecords, read_records
from trainer.data.split import seeded_split
from trainer.errors import DataError
from trainer.paths import CHECKOUT

if TYPE_CHECKING:
    from trainer.config import DatasetConfig


@dataclass
class SourceData:
    train: list[Conversation]
    val: list[Conversation]
    counts: dict[str, int]  # per-filter counts, in report order
    skipped: list[str] = field(default_factory=list)  # the first skipped records, each with file:line and why


def resolve_input_path(input_file_path: str, cache_dir: str) -> Path:
    """A relative path is looked up in `cache_dir` first (OASST's `data_path`), then the current directory, then
    the repository root; the error lists every place tried. The found path is absolute, so that cache keys and
    sample origins do not depend on the working directory."""
    path = Path(input_file_path).expanduser()
    candidates = [path] if path.is_absolute() else [Path(cache_dir) / path, Path.cwd() / path,
                                                    CHECKOUT / path]
    for candidate in candidates:
        try:
            if candidate.is_file():
                return candidate.absolute()
        except OSError as e:  # a directory on the way without permission, a name too long: not "not found"
            raise DataError(f"input_file_path '{input_file_path}': cannot read {candidate}: {e.strerror or e}") \
                from None
        if candidate.is_symlink():
            try:
                candidate.stat()
                why = "does not lead to a file"
            except OSError as e:
                why = "loops back on itself" if e.errno == errno.ELOOP else "points to nothing"
            raise DataError(f"input_file_path '{input_file_path}': {candidate.absolute()} is a symbolic link that "
                            f"{why}; point it at the data file")
    tried = ", ".join(str(c.absolute()) for c in dict.fromkeys(candidates))
    raise DataError(f"input_file_path '{input_file_path}' not found (or not a file); tried: {tried}")


def load_source(ds: DatasetConfig, cache_dir: str, hub_timeout: float = 10.0) -> SourceData:
    """Read, filter and split one dataset entry; an entry left with no samples is an error."""
    bad = BadRecords(skip=ds.skip_bad_lines)
    if ds.input_file_path:
        path = resolve_input_path(ds.input_file_path, cache_dir)
        where = str(path)
        rows: Iterable[tuple[str, dict[str, Any]]] = (
            (f"{path}:{line}", record) for line, record in read_records(path, bad))
    else:
        where = f"hub dataset '{ds.effective_hub_name}'"
        rows = _hub_rows(ds, hub_timeout)
    kind = ds.kind
    units, counts = kind.read(rows, ds.options, bad, ds.name)
    # Split whole units (an OASST tree with all its threads), so that no prompt has threads on both sides.
    train_units, val_units = seeded_split(units, ds.effective_val_split, ds.manual_seed)
    train = [conv for unit in train_units for conv in unit]
    val = [conv for unit in val_units for conv in unit]
    if kind.unit != "sample":
        counts.update({f"train_{kind.unit}s": len(train_units), f"val_{kind.unit}s": len(val_units)})
    counts.update(train=len(train), val=len(val), bad_records_skipped=bad.count)
    if not train and not val:
        summary = ", ".join(f"{k} {v}" for k, v in counts.items())
        raise DataError(f"dataset '{ds.name}' ({where}) has no samples left after filtering: {summary}")
    return SourceData(train, val, counts, bad.first)


# ----------------------------------------------------------------------------------------------------------
# The hub

def _hub_rows(ds: DatasetConfig, timeout: float) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every row of every split of the hub dataset (OASST joins oasst1's train and validation, then splits)."""
    name = ds.effective_hub_name
    if not name:
        raise DataError(f"dataset '{ds.name}': no input_file_path and no hub dataset to load; give one in the "
                        f"datasets list, e.g.\n    - {ds.name}: {{input_file_path: {ds.kind.example_file}}}")
    if name.startswith((".", "/", "~")) or "\\" in name or ".." in name.split("/") or name.count("/") > 1:
        # datasets.load_dataset reads a local directory under such a name, which is not what hub_name says
        raise DataError(f"dataset '{ds.name}': hub_name '{name}' is a path, not a hub dataset (owner/name); give a "
                        f"local file as input_file_path")
    import datasets

    try:
        with hub_timeouts(timeout):
            loaded = datasets.load_dataset(name)
    except Exception as e:  # datasets raises ConnectionError, FileNotFoundError, httpx errors, ValueError...
        offline = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("HF_DATASETS_OFFLINE")
        reason = "the hub is offline (HF_HUB_OFFLINE/HF_DATASETS_OFFLINE is set)" if offline else \
            "the hub could not be reached or the dataset could not be loaded"
        raise DataError(
            f"dataset '{ds.name}': cannot load hub dataset '{name}': {reason}: {str(e).splitlines()[0]}; point at "
            f"a local file instead, e.g. in the datasets list: - {ds.name}: {{input_file_path: "
            f"{ds.kind.example_file}}}") from e
    return ((f"{name} {split} row {i}", row) for split in loaded for i, row in enumerate(loaded[split]))
