"""From one `datasets:` entry to its split units, streamed, and (for small sets and tests) to its train and
validation conversations.

A local `input_file_path` is a file or a directory of shards: JSON/JSONL (plain, `.gz`, `.zst`), Parquet or Arrow.
Without one the entry's hub dataset is loaded through `datasets.load_dataset` (with `hub_config` and `hub_split`,
`streaming` for sets too large to download first), with short timeouts so that an unreachable hub fails fast
with advice instead of hanging. Fraction and size are not applied here: the builder does that, per epoch where
the custom sampler asks for it.
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
from trainer.data.kinds.base import DatasetKind
from trainer.data.split import seeded_split
from trainer.data.tables import TABLE_SUFFIXES, check_columns, read_table_records
from trainer.errors import DataError
from trainer.paths import CHECKOUT

if TYPE_CHECKING:
    from trainer.config import DatasetConfig

JSON_SUFFIXES = tuple(f"{base}{compression}" for base in (".jsonl", ".json") for compression in ("", ".gz", ".zst"))


@dataclass
class SourceData:
    train: list[Conversation]
    val: list[Conversation]
    counts: dict[str, int]  # per-filter counts, in report order
    skipped: list[str] = field(default_factory=list)  # the first skipped records, each with file:line and why


@dataclass
class SourceStream:
    """One entry's split units as they are read; `counts` is complete once `units` is exhausted."""

    name: str
    kind: DatasetKind
    where: str  # the file, directory or hub dataset, for messages
    units: Iterator[list[Any]]
    counts: dict[str, int]
    bad: BadRecords

    def split_counts(self, train_units: int, val_units: int, train: int, val: int) -> dict[str, int]:
        """The kind's counts, then the split's, in report order; an entry left with no samples is an error."""
        counts = dict(self.counts)
        if self.kind.unit != "sample":
            counts.update({f"train_{self.kind.unit}s": train_units, f"val_{self.kind.unit}s": val_units})
        counts.update(train=train, val=val, bad_records_skipped=self.bad.count)
        if not train and not val:
            summary = ", ".join(f"{k} {v}" for k, v in counts.items())
            raise DataError(f"dataset '{self.name}' ({self.where}) has no samples left after filtering: {summary}")
        return counts


def resolve_input_path(input_file_path: str, cache_dir: str) -> Path:
    """A relative path is looked up in `cache_dir` first (OASST's `data_path`), then the current directory, then
    the repository root; the error lists every place tried. The found path is absolute, so that cache keys and
    sample origins do not depend on the working directory."""
    path = Path(input_file_path).expanduser()
    candidates = [path] if path.is_absolute() else [Path(cache_dir) / path, Path.cwd() / path,
                                                    CHECKOUT / path]
    for candidate in candidates:
        try:
            if candidate.is_file() or candidate.is_dir():
                return candidate.absolute()
        except OSError as e:  # a directory on the way without permission, a name too long: not "not found"
            raise DataError(f"input_file_path '{input_file_path}': cannot read {candidate}: {e.strerror or e}") \
                from None
        if candidate.is_symlink():
            try:
                candidate.stat()
                why = "leads to neither a file nor a directory"
            except OSError as e:
                why = "loops back on itself" if e.errno == errno.ELOOP else "points to nothing"
            raise DataError(f"input_file_path '{input_file_path}': {candidate.absolute()} is a symbolic link that "
                            f"{why}; point it at the data file or directory")
    tried = ", ".join(str(c.absolute()) for c in dict.fromkeys(candidates))
    raise DataError(f"input_file_path '{input_file_path}' not found (neither a file nor a directory); tried: {tried}")


def data_files(path: Path) -> list[Path]:
    """The files an input path stands for: itself, or a directory's shards in name order (its Parquet/Arrow files
    when it has any, which leaves out `datasets`' `dataset_info.json` and `state.json`, else its JSON files)."""
    if not path.is_dir():
        return [path]
    files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
    tables = [p for p in files if p.name.endswith(TABLE_SUFFIXES)]
    shards = tables or [p for p in files if p.name.endswith(JSON_SUFFIXES)]
    if not shards:
        raise DataError(f"{path}: the directory holds no data files (expected shards named *"
                        f"{', *'.join(TABLE_SUFFIXES + JSON_SUFFIXES)})")
    return shards


def _file_rows(files: list[Path], kind: DatasetKind, bad: BadRecords) -> Iterator[tuple[str, dict[str, Any]]]:
    for path in files:
        if path.name.endswith(TABLE_SUFFIXES):
            yield from read_table_records(path, kind.columns, kind.name)
        else:
            yield from ((f"{path}:{line}", record) for line, record in read_records(path, bad))


def open_source(ds: DatasetConfig, cache_dir: str, hub_timeout: float = 10.0) -> SourceStream:
    """The entry's units, read lazily from its files or hub dataset."""
    bad = BadRecords(skip=ds.skip_bad_lines)
    kind = ds.kind
    if ds.input_file_path:
        path = resolve_input_path(ds.input_file_path, cache_dir)
        where = str(path)
        rows: Iterable[tuple[str, dict[str, Any]]] = _file_rows(data_files(path), kind, bad)
    else:
        where = f"hub dataset '{ds.effective_hub_name}'"
        rows = _hub_rows(ds, hub_timeout)
    units, counts = kind.read(rows, ds.options, bad, ds.name)
    return SourceStream(ds.name, kind, where, units, counts, bad)


def load_source(ds: DatasetConfig, cache_dir: str, hub_timeout: float = 10.0) -> SourceData:
    """Read, filter and split one conversation dataset entry in memory (the builder streams instead)."""
    stream = open_source(ds, cache_dir, hub_timeout)
    # Split whole units (an OASST tree with all its threads), so that no prompt has threads on both sides.
    # An eval-only entry is all validation: never trained on, it shows what training does to other data.
    units = list(stream.units)
    train_units, val_units = ([], units) if ds.eval_only else seeded_split(units, ds.effective_val_split,
                                                                            ds.manual_seed)
    train = [conv for unit in train_units for conv in unit]
    val = [conv for unit in val_units for conv in unit]
    counts = stream.split_counts(len(train_units), len(val_units), len(train), len(val))
    return SourceData(train, val, counts, stream.bad.first)


# ----------------------------------------------------------------------------------------------------------
# The hub

def _hub_rows(ds: DatasetConfig, timeout: float) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every row of the hub dataset's `hub_split`, or of every split joined (OASST joins oasst1's train and
    validation, then splits); with `streaming` the rows arrive as they are downloaded."""
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
            loaded = datasets.load_dataset(name, ds.hub_config, split=ds.hub_split, streaming=ds.streaming)
    except Exception as e:  # datasets raises ConnectionError, FileNotFoundError, httpx errors, ValueError...
        offline = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("HF_DATASETS_OFFLINE")
        reason = f"'{name}' is a hub dataset name and this machine is offline (HF_HUB_OFFLINE/HF_DATASETS_OFFLINE " \
                 f"is set)" if offline else "the hub could not be reached or the dataset could not be loaded"
        raise DataError(
            f"dataset '{ds.name}': cannot load hub dataset '{name}': {reason}: {str(e).splitlines()[0]}; point at "
            f"a local file instead, e.g. in the datasets list: - {ds.name}: {{input_file_path: "
            f"{ds.kind.example_file}}}") from e
    splits = {ds.hub_split: loaded} if ds.hub_split else loaded
    for split, rows in splits.items():
        if rows.column_names is not None:  # a streamed set may not know its columns before its first row
            check_columns(f"hub dataset '{name}' split {split}", rows.column_names, ds.kind.columns,
                          ds.kind.name)
    return ((f"{name} {split} row {i}", row) for split, rows in splits.items() for i, row in enumerate(rows))
