"""Tokenizing in worker processes: chunks of split units go out in order and come back in order, each encoded on
its own, so that the cache bytes are the same whatever the number of workers (the chunks are cut by the reader,
never by the pool).

The reading (JSON, Parquet, OASST trees) stays in the main process, which streams; the workers render, encode
and join, each single-threaded (`TOKENIZERS_PARALLELISM=false`), so that N workers use N cores and not N times
the tokenizer's own thread pool. With one worker the job runs in the main process, as it always did.
"""
from __future__ import annotations

import multiprocessing
import os
from collections import deque
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from trainer.data.tokenize import EncodedSample, SegmentEncoder, encode_each

SCHEMA = pa.schema([("input_ids", pa.large_list(pa.int32())), ("labels", pa.large_list(pa.int32())),
                    ("length", pa.int32()), ("trained", pa.int32())])
MAX_DEFAULT_WORKERS = 8  # beyond this the single reading process is the bottleneck


def default_workers() -> int:
    """One per CPU this process may use, shared between the ranks of a node, at most MAX_DEFAULT_WORKERS."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(MAX_DEFAULT_WORKERS, cpus // int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))


@dataclass
class RowBlock:
    """One chunk's samples at one max_length, in unit order, and what the split needs to know about them."""

    table: pa.Table  # SCHEMA
    truncated: np.ndarray  # bool per row
    unit_rows: np.ndarray  # int64 per unit: rows it has
    unit_dropped: np.ndarray  # int64 per unit: samples left with no trained token, not written


def row_table(input_ids: list[np.ndarray], labels: list[np.ndarray], trained: np.ndarray) -> pa.Table:
    """Columnar straight from numpy: no per-token Python objects."""
    lengths = np.fromiter(map(len, input_ids), dtype=np.int64, count=len(input_ids))
    offsets = pa.array(np.concatenate([[0], np.cumsum(lengths)]), type=pa.int64())
    columns = {}
    for name, arrays in (("input_ids", input_ids), ("labels", labels)):
        flat = np.concatenate(arrays).astype(np.int32, copy=False) if arrays else np.zeros(0, np.int32)
        columns[name] = pa.LargeListArray.from_arrays(offsets, pa.array(flat))
    columns["length"] = pa.array(lengths.astype(np.int32))
    columns["trained"] = pa.array(trained.astype(np.int32, copy=False))
    return pa.table(columns, schema=SCHEMA)


def sample_block(samples: list[EncodedSample | None], per_unit: list[int]) -> RowBlock:
    kept = [s for s in samples if s is not None]
    missing = np.fromiter((s is None for s in samples), dtype=bool, count=len(samples))
    bounds = np.cumsum([0] + per_unit)
    dropped = np.add.reduceat(missing.astype(np.int64), bounds[:-1]) if len(samples) else np.zeros(0, np.int64)
    dropped[np.diff(bounds) == 0] = 0  # reduceat gives an empty unit its next element
    table = row_table([s.input_ids for s in kept], [s.labels for s in kept],
                      np.fromiter((s.trained_tokens for s in kept), dtype=np.int64, count=len(kept)))
    truncated = np.fromiter((s.truncated for s in kept), dtype=bool, count=len(kept))
    return RowBlock(table, truncated, np.asarray(per_unit, np.int64) - dropped, dropped)


class EncodeJob:
    """What a worker does with a chunk: conversations to one RowBlock per max_length (train's, then validation's
    when it differs), or documents to their ids, each followed by eos, as one flat array."""

    def __init__(self, tokenizer, fmt, lengths: tuple[int, ...], label_masking: bool, documents: bool):
        self.tokenizer = tokenizer
        self.fmt = fmt
        self.lengths = lengths
        self.label_masking = label_masking
        self.documents = documents
        self._encoder: SegmentEncoder | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_encoder": None}

    def __call__(self, units: list[list[Any]]) -> list[RowBlock] | np.ndarray:
        if self._encoder is None:
            self._encoder = SegmentEncoder(self.tokenizer)
        if self.documents:
            return self._documents([text for unit in units for text in unit])
        convs = [conv for unit in units for conv in unit]
        per_unit = [len(unit) for unit in units]
        try:
            return [sample_block(encode_each(convs, self.fmt, self._encoder, max_length, self.label_masking),
                                 per_unit) for max_length in self.lengths]
        finally:
            self._encoder.clear()

    def _documents(self, texts: list[str]) -> np.ndarray:
        eos = np.array([self.tokenizer.eos_token_id], dtype=np.int32)
        self._encoder.prime(texts)
        try:
            return np.concatenate([piece for text in texts for piece in (self._encoder.ids(text), eos)])
        finally:
            self._encoder.clear()


_JOB: EncodeJob | None = None  # the worker process's job, installed once


def _install(job: EncodeJob) -> None:
    global _JOB
    _JOB = job


def _run(chunk: list[list[Any]]):
    return _JOB(chunk)


@contextmanager
def _serial_tokenizers() -> Iterator[None]:
    """Workers are forked with TOKENIZERS_PARALLELISM=false: one thread each, and no warning from `tokenizers`
    about a fork after its thread pool was used."""
    before = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    try:
        yield
    finally:
        if before is None:
            del os.environ["TOKENIZERS_PARALLELISM"]
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = before


def encoded(job: EncodeJob, chunks: Iterable[list[list[Any]]], workers: int) -> Iterator[Any]:
    """`job(chunk)` for every chunk, in order; at most two chunks per worker are in flight, so memory stays
    bounded however far the reader could run ahead."""
    if workers <= 1:
        yield from map(job, chunks)
        return
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else None)
    with _serial_tokenizers():
        pool = context.Pool(workers, initializer=_install, initargs=(job,))
    try:
        pending: deque = deque()
        for chunk in chunks:
            pending.append(pool.apply_async(_run, (chunk,)))
            if len(pending) >= 2 * workers:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()
    finally:
        pool.terminate()
        pool.join()
