"""From one `datasets:` entry to its conversations, split into train and validation.

A local `input_file_path` is read with the format's reader; without one the kind's hub dataset is loaded
through `datasets`, with short timeouts so that an unreachable hub fails fast with advice instead of hanging.
Fraction and size are not applied here: the builder does that, per epoch where the custom sampler asks for it.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainer.config import REPO_ROOT, DatasetConfig
from trainer.data.airoboros import airoboros_conversation
from trainer.data.alpaca import alpaca_conversation
from trainer.data.conversation import Conversation
from trainer.data.jsonl import BadRecords, read_records
from trainer.data.oasst import TreeFilter, load_trees, new_counts, trees_from_records
from trainer.data.split import seeded_split
from trainer.errors import DataError

# Formats whose records are independent samples, split per sample.
RECORD_READERS: dict[str, Callable[[dict[str, Any], str, str], Conversation]] = {
    "alpaca": alpaca_conversation,
    "airoboros": airoboros_conversation,
}
HUB_TIMEOUT_VARIABLES = ("HF_HUB_ETAG_TIMEOUT", "HF_HUB_DOWNLOAD_TIMEOUT")


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
    candidates = [path] if path.is_absolute() else [Path(cache_dir) / path, Path.cwd() / path, REPO_ROOT / path]
    for candidate in candidates:
        if candidate.is_file():
            return candidate.absolute()
    tried = "\n  ".join(str(c.resolve()) for c in dict.fromkeys(candidates))
    raise DataError(f"input_file_path '{input_file_path}' not found; tried:\n  {tried}")


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
    data = _load_oasst(ds, rows, bad) if ds.name == "oasst_export" else _load_records(ds, rows, bad)
    data.counts["bad_records_skipped"] = bad.count
    data.skipped = bad.first
    if not data.train and not data.val:
        counts = ", ".join(f"{k} {v}" for k, v in data.counts.items())
        raise DataError(f"dataset '{ds.name}' ({where}) has no samples left after filtering: {counts}")
    return data


def _load_oasst(ds: DatasetConfig, rows: Iterable[tuple[str, dict[str, Any]]], bad: BadRecords) -> SourceData:
    counts = new_counts()
    kept = load_trees(trees_from_records(rows, bad), TreeFilter.from_config(ds), counts, bad, ds.name)
    # Split whole trees, so that no prompt has threads on both sides (OASST's method, trees without threads too).
    train_trees, val_trees = seeded_split(kept, ds.effective_val_split, ds.manual_seed)
    train = [thread for tree in train_trees for thread in tree]
    val = [thread for tree in val_trees for thread in tree]
    counts.update(train_trees=len(train_trees), val_trees=len(val_trees), train=len(train), val=len(val))
    return SourceData(train, val, counts)


def _load_records(ds: DatasetConfig, rows: Iterable[tuple[str, dict[str, Any]]], bad: BadRecords) -> SourceData:
    convert = RECORD_READERS[ds.name]
    samples = []
    read = 0
    for where, record in rows:
        read += 1
        try:
            samples.append(convert(record, where, ds.name))
        except DataError as e:
            bad.handle(e)
    train, val = seeded_split(samples, ds.effective_val_split, ds.manual_seed)
    return SourceData(train, val, {"records_read": read, "samples": len(samples), "train": len(train),
                                   "val": len(val)})


# ----------------------------------------------------------------------------------------------------------
# The hub

def _hub_rows(ds: DatasetConfig, timeout: float) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every row of every split of the hub dataset (OASST joins oasst1's train and validation, then splits)."""
    name = ds.effective_hub_name
    if not name:
        raise DataError(f"dataset '{ds.name}': no input_file_path and no hub dataset to load")
    import datasets

    try:
        with _hub_timeouts(timeout):
            loaded = datasets.load_dataset(name)
    except Exception as e:  # datasets raises ConnectionError, FileNotFoundError, httpx errors, ValueError...
        offline = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("HF_DATASETS_OFFLINE")
        reason = "the hub is offline (HF_HUB_OFFLINE/HF_DATASETS_OFFLINE is set)" if offline else \
            "the hub could not be reached or the dataset could not be loaded"
        raise DataError(
            f"dataset '{ds.name}': cannot load hub dataset '{name}': {reason}: {str(e).splitlines()[0]}\n"
            f"  point at a local file instead, e.g. in the datasets list:\n"
            f"    - {ds.name}: {{input_file_path: {_EXAMPLE_FILES[ds.name]}}}") from e
    return ((f"{name} {split} row {i}", row) for split in loaded for i, row in enumerate(loaded[split]))


_EXAMPLE_FILES = {
    "oasst_export": "path/to/2023-04-12_oasst_ready.trees.jsonl.gz",
    "alpaca": "path/to/alpaca_data.json",
    "airoboros": "path/to/instructions.jsonl",
}


@contextmanager
def _hub_timeouts(seconds: float) -> Iterator[None]:
    """Bound the hub's network waits to `seconds`.

    huggingface_hub reads HF_HUB_ETAG_TIMEOUT / HF_HUB_DOWNLOAD_TIMEOUT into module constants at import (and
    transformers has usually imported it already), so the constants are set for the duration of the load; a
    value the user set in the environment wins.
    """
    from huggingface_hub import constants

    saved = {name: getattr(constants, name) for name in HUB_TIMEOUT_VARIABLES if name not in os.environ}
    for name in saved:
        setattr(constants, name, seconds)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(constants, name, value)
