"""From a TrainConfig to tokenized train/val datasets, one per `datasets:` entry, cached on disk.

The cache key covers everything that changes the tokens: the entry's options, the prompt format and its
settings, max lengths, label masking, the tokenizer itself and the content of every file read. A second run with
the same key memory-maps the saved Arrow files instead of reading and tokenizing again. With a model's own chat
template (`prompt_format: chat_template`) the build runs the parity check (`trainer.data.parity`) and keeps its
record, `parity.json`, beside the Arrow files.
"""
from __future__ import annotations

import dataclasses
import gc
import hashlib
import json
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from trainer.config import DataConfig, DatasetConfig
from trainer.data.parity import PARITY_FILE, DataParity, checked_conversations
from trainer.data.sources import load_source, resolve_input_path
from trainer.data.tokenize import EncodeStats, SegmentEncoder, encode_all
from trainer.errors import DataError
from trainer.files import check_writable_dir
from trainer.formats import ConversationFormat, format_for
from trainer.formats.own_template import ChatTemplateFormat

if TYPE_CHECKING:
    import datasets

CACHE_VERSION = 2  # bump when the tokenized layout or the rendering rules change
SPLITS = ("train", "validation")
CHUNK = 8192  # conversations tokenized and written at a time
SCHEMA = pa.schema([("input_ids", pa.large_list(pa.int32())), ("labels", pa.large_list(pa.int32())),
                    ("length", pa.int32()), ("trained", pa.int32())])


@dataclass
class BuiltDataset:
    name: str  # unique per entry: "alpaca", or "alpaca#2" for a second alpaca entry
    train: "datasets.Dataset"  # columns input_ids, labels (int32 lists), length, trained
    val: "datasets.Dataset"
    counts: dict[str, int]  # per filter and per encoding step, in order
    cache_path: Path
    from_cache: bool = False
    seconds: float = 0.0
    skipped: list[str] = field(default_factory=list)  # locations of skipped bad lines
    parity: dict | None = None  # parity.json, for a model's own chat template


def entry_names(data: DataConfig) -> list[str]:
    seen: dict[str, int] = {}
    names = []
    for ds in data.datasets:
        seen[ds.name] = seen.get(ds.name, 0) + 1
        names.append(ds.name if seen[ds.name] == 1 else f"{ds.name}#{seen[ds.name]}")
    return names


def build_datasets(data: DataConfig, tokenizer, rebuild: bool = False) -> list[BuiltDataset]:
    check_writable_dir(data.cache_dir, "cache_dir")
    fmt = format_for(data, tokenizer)
    encoder = SegmentEncoder(tokenizer)
    return [_build_one(name, ds, data, tokenizer, fmt, encoder, rebuild)
            for name, ds in zip(entry_names(data), data.datasets)]


def _build_one(name: str, ds: DatasetConfig, data: DataConfig, tokenizer, fmt: ConversationFormat,
               encoder: SegmentEncoder, rebuild: bool) -> BuiltDataset:
    import datasets

    start = time.perf_counter()
    files = [resolve_input_path(ds.input_file_path, data.cache_dir)] if ds.input_file_path else []
    key = cache_key(ds, data, fmt, tokenizer, files)
    path = Path(data.cache_dir) / "tokenized" / f"{name.replace('#', '-')}-{key[:20]}"
    from_cache = not rebuild and (path / "counts.json").is_file()
    if not from_cache:
        if rebuild:
            shutil.rmtree(path, ignore_errors=True)
        with _collector_paused():
            _write_atomically(path, lambda tmp: _tokenize_source(ds, data, fmt, encoder, tmp, key))
    meta = json.loads((path / "counts.json").read_text())
    train, val = (datasets.Dataset.from_file(str(path / f"{split}.arrow")) for split in SPLITS)
    parity = json.loads((path / PARITY_FILE).read_text()) if (path / PARITY_FILE).is_file() else None
    return BuiltDataset(name, train, val, meta["counts"], path, from_cache, time.perf_counter() - start,
                        meta["skipped"], parity)


def _tokenize_source(ds: DatasetConfig, data: DataConfig, fmt: ConversationFormat, encoder: SegmentEncoder,
                     directory: Path, key: str) -> None:
    """Read the source, then tokenize and write it chunk by chunk, so that peak memory holds the conversations,
    the per-text id cache and one chunk of samples, never every sample twice."""
    from datasets.arrow_writer import ArrowWriter

    source = load_source(ds, data.cache_dir)
    counts = dict(source.counts)
    parity = DataParity(fmt, data.label_masking, ds.manual_seed) if isinstance(fmt, ChatTemplateFormat) else None
    for split, convs, max_length in (("train", source.train, data.max_length),
                                     ("validation", source.val, data.val_max_length or data.max_length)):
        totals = EncodeStats()
        chosen = checked_conversations(convs, ds.manual_seed) if parity else set()
        writer = ArrowWriter(path=str(directory / f"{split}.arrow"), schema=SCHEMA)
        for i in range(0, max(len(convs), 1), CHUNK):
            samples, stats = encode_all(convs[i:i + CHUNK], fmt, encoder, max_length, data.label_masking)
            if parity:
                parity.check(split, samples, chosen, len(convs))
            writer.write_table(_to_table(samples))
            totals += stats
        writer.finalize()
        counts.update({f"{split}_{k}": v for k, v in dataclasses.asdict(totals).items()})
    if parity:
        (directory / PARITY_FILE).write_text(json.dumps(parity.record(), indent=1))
    meta = {"counts": counts, "skipped": source.skipped, "key": key}
    (directory / "counts.json").write_text(json.dumps(meta, indent=1))


def cache_key(ds: DatasetConfig, data: DataConfig, fmt: ConversationFormat, tokenizer, files: list[Path]) -> str:
    h = hashlib.sha256()
    settings = {
        "version": CACHE_VERSION,
        "dataset": ds.option_items(),
        "prompt_format": fmt.settings(),
        "max_length": data.max_length,
        "val_max_length": data.val_max_length,
        "label_masking": data.label_masking,
        "tokenizer": tokenizer.backend_tokenizer.to_str(),
        "specials": [tokenizer.eos_token, tokenizer.bos_token, tokenizer.pad_token],
    }
    h.update(json.dumps(settings, sort_keys=True, default=str).encode())
    for path in files:
        h.update(str(path).encode())
        try:
            with open(path, "rb") as f:
                while chunk := f.read(1 << 22):
                    h.update(chunk)
        except OSError as e:
            raise DataError(f"{path}: cannot read: {e.strerror or e}") from None
    return h.hexdigest()


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Reading and tokenizing allocate millions of small acyclic objects (messages, turns, segments); with the
    cyclic collector on, each allocation burst rescans everything built so far, which costs more than the work
    itself (measured: about half the build time of an OASST1-sized export)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _to_table(samples) -> pa.Table:
    """Columnar straight from numpy: no per-token Python objects."""
    lengths = np.fromiter((len(s.input_ids) for s in samples), dtype=np.int64, count=len(samples))
    offsets = pa.array(np.concatenate([[0], np.cumsum(lengths)]), type=pa.int64())
    columns = {}
    for column in ("input_ids", "labels"):
        flat = np.concatenate([getattr(s, column) for s in samples]) if samples else np.zeros(0, np.int32)
        columns[column] = pa.LargeListArray.from_arrays(offsets, pa.array(flat.astype(np.int32, copy=False)))
    columns["length"] = pa.array(lengths.astype(np.int32))
    columns["trained"] = pa.array(np.fromiter((s.trained_tokens for s in samples), dtype=np.int32,
                                              count=len(samples)))
    return pa.table(columns, schema=SCHEMA)


def _write_atomically(path: Path, write) -> None:
    """Write beside the target and rename, so a killed run never leaves a half-written cache behind; ranks that
    build the same dataset at once each write their own copy and the first rename wins."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f"{path.name}.tmp"))
    write(tmp)
    try:
        tmp.rename(path)
    except OSError:  # another rank renamed its identical copy first
        shutil.rmtree(tmp, ignore_errors=True)
