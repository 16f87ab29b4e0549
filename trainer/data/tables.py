"""Records from Parquet and Arrow files (the hub's and `datasets`' own formats), a record batch at a time.

A row is read as the dict a JSON line would give (nested lists and structs included), so every kind reads
columnar files with the reader it uses for JSON. The file's columns are checked against the kind's before any
row is read: a Parquet file from another dataset fails at once, naming the columns it has.
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa

from trainer.errors import DataError

TABLE_SUFFIXES = (".parquet", ".arrow", ".feather")
BATCH_ROWS = 2048  # rows converted to Python at a time


def check_columns(where: Path | str, found: list[str], needed: tuple[tuple[str, ...], ...], kind: str) -> None:
    """`needed` lists alternative column sets (OASST: a flat message table or a tree table); one must be there."""
    if not needed or any(set(columns) <= set(found) for columns in needed):
        return
    wanted = " or ".join(", ".join(columns) for columns in needed)
    raise DataError(f"{where}: the {kind} kind needs the column(s) {wanted}; the file has {', '.join(found) or 'none'}")


def _batches(path: Path) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
    """The file's schema and its record batches: Parquet, or Arrow IPC as a stream (`datasets`' cache files) or
    as a file (Feather v2)."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        parquet = pq.ParquetFile(path)
        return parquet.schema_arrow, parquet.iter_batches(batch_size=BATCH_ROWS)
    source = pa.OSFile(str(path))  # read, not mapped: a mapped file's pages would count as the build's memory
    try:
        reader = pa.ipc.open_stream(source)
        return reader.schema, iter(reader)
    except pa.ArrowInvalid:
        reader = pa.ipc.open_file(source)
        return reader.schema, (reader.get_batch(i) for i in range(reader.num_record_batches))


def read_table_records(path: Path, needed: tuple[tuple[str, ...], ...],
                       kind: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """`(where, record)` for every row, `where` naming the file and the row (counted from 0)."""
    try:
        schema, batches = _batches(path)
        check_columns(path, schema.names, needed, kind)
        row = 0
        for batch in batches:
            for record in batch.to_pylist():
                yield f"{path} row {row}", record
                row += 1
    except (pa.ArrowInvalid, OSError) as e:
        what = "Parquet" if path.suffix == ".parquet" else "Arrow"
        raise DataError(f"{path}: cannot read the {what} file (cut short, or not {what}?): "
                        f"{str(e).splitlines()[0]}") from None
