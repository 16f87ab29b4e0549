"""From a TrainConfig to tokenized train/val datasets, one per `datasets:` entry, cached on disk.

The cache key covers everything that changes the tokens: the entry's options, the prompt format and its
settings, max lengths, label masking, the tokenizer itself and the content of every file read. A second run with
the same key memory-maps the saved Arrow files instead of reading and tokenizing again.

A build streams: units (an OASST tree's threads, a record's conversation, a packed row of documents) are read,
tokenized by `preprocessing_num_workers` processes a chunk at a time and written to `samples.arrow` in file
order, so that memory holds a few chunks, never the dataset. The split needs only the number of units: once it
is known, the train and validation rows are written as index files (in OASST's split order), and the report's
figures (counts, the length histogram) come from per-row numbers gathered on the way. Everything is written in
a temporary directory renamed into place at the end: an interrupted build leaves nothing a rerun would trust.

With a model's own chat template (`prompt_format: chat_template`) the build also runs the parity check
(`trainer.data.parity`) and keeps its record, `parity.json`, beside the Arrow files; the check reads the split in
memory (at most PARITY_SAMPLES conversations per split are checked).
"""
from __future__ import annotations

import gc
import hashlib
import json
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from trainer.config import DataConfig, DatasetConfig
from trainer.data.digests import content_digest
from trainer.data.kinds.base import DOCUMENTS
from trainer.data.packing import pack_rows
from trainer.data.parallel import EncodeJob, default_workers, encoded
from trainer.data.parity import PARITY_FILE, DataParity, checked_conversations
from trainer.data.sources import SourceStream, data_files, load_source, open_source, resolve_input_path
from trainer.data.split import split_indices
from trainer.data.store import SampleStore
from trainer.data.tokenize import SegmentEncoder, encode_all
from trainer.files import check_writable_dir
from trainer.formats import ConversationFormat, format_for
from trainer.formats.own_template import ChatTemplateFormat

if TYPE_CHECKING:
    import datasets

CACHE_VERSION = 3  # bump when the tokenized layout or the rendering rules change
SPLITS = ("train", "validation")
CHUNK = 2048  # conversations (or documents) tokenized per task: a few of them in flight bound the memory


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
    # Per split, [length, number of samples] pairs: the report's percentiles without reading every row.
    length_histogram: dict[str, list[list[int]]] = field(default_factory=dict)
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
    return [_build_one(name, ds, data, tokenizer, fmt, rebuild) for name, ds in zip(entry_names(data), data.datasets)]


def renderer_for(ds: DatasetConfig, fmt: ConversationFormat) -> ConversationFormat:
    """The configured prompt format, or the kind's own renderer (`completion` renders no template)."""
    return ds.kind.render_with(fmt) if ds.kind.render_with else fmt


def _build_one(name: str, ds: DatasetConfig, data: DataConfig, tokenizer, fmt: ConversationFormat,
               rebuild: bool) -> BuiltDataset:
    import datasets

    start = time.perf_counter()
    fmt = renderer_for(ds, fmt)
    files = data_files(resolve_input_path(ds.input_file_path, data.cache_dir)) if ds.input_file_path else []
    key = cache_key(ds, data, fmt, tokenizer, files)
    path = Path(data.cache_dir) / "tokenized" / f"{name.replace('#', '-')}-{key[:20]}"
    from_cache = not rebuild and (path / "counts.json").is_file()
    if not from_cache:
        if rebuild:
            shutil.rmtree(path, ignore_errors=True)
        with _collector_paused():
            _write_atomically(path, lambda tmp: _tokenize_source(ds, data, fmt, tokenizer, tmp, key))
    meta = json.loads((path / "counts.json").read_text())
    train, val = (datasets.Dataset.from_file(str(path / meta["samples"][split]),
                                             indices_filename=str(path / f"{split}.indices.arrow"))
                  for split in SPLITS)
    parity = json.loads((path / PARITY_FILE).read_text()) if (path / PARITY_FILE).is_file() else None
    return BuiltDataset(name, train, val, meta["counts"], path, from_cache, time.perf_counter() - start,
                        meta["skipped"], meta["length_histogram"], parity)


def _chunks(units: Iterable[list[Any]]) -> Iterator[list[list[Any]]]:
    """Whole units, about CHUNK conversations or documents at a time (an OASST tree is never cut)."""
    chunk: list[list[Any]] = []
    size = 0
    for unit in units:
        chunk.append(unit)
        size += len(unit)
        if size >= CHUNK:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


def _tokenize_source(ds: DatasetConfig, data: DataConfig, fmt: ConversationFormat, tokenizer, directory: Path,
                     key: str) -> None:
    stream = open_source(ds, data.cache_dir)
    lengths = (data.max_length,) if data.val_max_length in (None, data.max_length) else \
        (data.max_length, data.val_max_length)
    documents = ds.kind.holds == DOCUMENTS
    job = EncodeJob(tokenizer, fmt, lengths, data.label_masking, documents)
    workers = data.preprocessing_num_workers or default_workers()
    store = SampleStore(directory, len(lengths))
    with closing(encoded(job, _chunks(stream.units), workers)) as results:
        blocks = pack_rows(results, lengths) if documents else results
        for chunk_blocks in blocks:
            store.add(chunk_blocks)
    # An eval-only entry is all validation: never trained on, it shows what training does to other data.
    train_units, val_units = (np.zeros(0, np.int64), np.arange(store.units)) if ds.eval_only else \
        split_indices(store.units, ds.effective_val_split, ds.manual_seed)
    counts = _write_meta(stream, store, train_units, val_units, directory, key)
    if isinstance(fmt, ChatTemplateFormat):
        _check_parity(ds, data, fmt, tokenizer, counts, directory)


def _check_parity(ds: DatasetConfig, data: DataConfig, fmt: ChatTemplateFormat, tokenizer, counts: dict[str, int],
                  directory: Path) -> None:
    """The chosen conversations of each split encoded again as training encoded them, checked, recorded."""
    source = load_source(ds, data.cache_dir)
    parity = DataParity(fmt, data.label_masking, ds.manual_seed)
    encoder = SegmentEncoder(tokenizer)
    for split, convs, max_length in (("train", source.train, data.max_length),
                                     ("validation", source.val, data.val_max_length or data.max_length)):
        chosen = checked_conversations(convs, ds.manual_seed)
        samples, _ = encode_all([c for c in convs if id(c) in chosen], fmt, encoder, max_length, data.label_masking)
        parity.check(split, samples, chosen, len(convs))
        parity.splits[split].samples = counts[f"{split}_samples"]  # every kept sample, not only the checked
    (directory / PARITY_FILE).write_text(json.dumps(parity.record(), indent=1))


def _write_meta(stream: SourceStream, store: SampleStore, train_units: np.ndarray, val_units: np.ndarray,
                directory: Path, key: str) -> dict[str, int]:
    """The split's index files, then counts.json (kind counts, split counts, per-split encoding figures), last."""
    counts = stream.split_counts(len(train_units), len(val_units), store.conversations(train_units),
                                 store.conversations(val_units))
    histograms = {}
    for split, units in zip(SPLITS, (train_units, val_units)):
        variant = 0 if split == "train" else store.variants - 1
        stats, histograms[split] = store.write_split(directory / f"{split}.indices.arrow", variant, units)
        counts.update({f"{split}_{k}": v for k, v in stats.items()})
    samples = {split: store.files[0 if split == "train" else store.variants - 1] for split in SPLITS}
    meta = {"counts": counts, "skipped": stream.bad.first, "key": key, "samples": samples,
            "length_histogram": histograms}
    (directory / "counts.json").write_text(json.dumps(meta, indent=1))
    return counts


def cache_key(ds: DatasetConfig, data: DataConfig, fmt: ConversationFormat, tokenizer, files: list[Path]) -> str:
    h = hashlib.sha256()
    settings = {
        "version": CACHE_VERSION,
        "dataset": {k: v for k, v in ds.option_items().items() if k != "eval_prompts"},  # prompts: not data
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
        h.update(content_digest(path, Path(data.cache_dir) / "tokenized" / "digests").encode())
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


def _write_atomically(path: Path, write) -> None:
    """Write beside the target and rename, so a killed run never leaves a half-written cache behind; ranks that
    build the same dataset at once each write their own copy and the first rename wins."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f"{path.name}.tmp"))
    try:
        write(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        tmp.rename(path)
    except OSError:  # another rank renamed its identical copy first
        shutil.rmtree(tmp, ignore_errors=True)
