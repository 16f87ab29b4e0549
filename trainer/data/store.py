"""The cache entry being written: rows in file order (one Arrow file per max_length), the numbers the split and
the report need per row and per unit, and, once the split is known, each split's rows as an index file."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from trainer.data.parallel import SCHEMA, RowBlock

INDEX_SCHEMA = pa.schema([("indices", pa.uint64())])  # what `datasets.Dataset.from_file(indices_filename=)` reads
INDEX_BATCH = 1 << 20


class _Figures:
    """Per-row and per-unit numbers of one variant, gathered chunk by chunk (about 17 bytes per sample)."""

    def __init__(self) -> None:
        self.lengths: list[np.ndarray] = []
        self.trained: list[np.ndarray] = []
        self.truncated: list[np.ndarray] = []
        self.unit_rows: list[np.ndarray] = []
        self.unit_dropped: list[np.ndarray] = []

    def add(self, block: RowBlock) -> None:
        self.lengths.append(block.table.column("length").to_numpy())
        self.trained.append(block.table.column("trained").to_numpy())
        self.truncated.append(block.truncated)
        self.unit_rows.append(block.unit_rows)
        self.unit_dropped.append(block.unit_dropped)

    def joined(self) -> None:
        for name, parts in vars(self).items():
            setattr(self, name, [np.concatenate(parts) if parts else np.zeros(0, np.int64)])


class SampleStore:
    """`samples.arrow` (max_length) and, when val_max_length differs, `val_samples.arrow`: every unit's samples
    in the order read. The train and validation sets are index files over them."""

    def __init__(self, directory: Path, variants: int):
        from datasets.arrow_writer import ArrowWriter

        self.variants = variants
        self.files = ("samples.arrow", "val_samples.arrow")[:variants]
        self._writers = [ArrowWriter(path=str(directory / name), schema=SCHEMA) for name in self.files]
        self._figures = [_Figures() for _ in self.files]
        self._unit_conversations: list[np.ndarray] = []
        self.units = 0
        self._finished = False

    def add(self, blocks: list[RowBlock]) -> None:
        """One chunk: a RowBlock per variant, over the same units."""
        for writer, figures, block in zip(self._writers, self._figures, blocks):
            writer.write_table(block.table)
            figures.add(block)
        first = blocks[0]
        self._unit_conversations.append(first.unit_rows + first.unit_dropped)
        self.units += len(first.unit_rows)

    def _finish(self) -> None:
        if self._finished:
            return
        for writer in self._writers:
            writer.finalize()
        for figures in self._figures:
            figures.joined()
        self._unit_conversations = [np.concatenate(self._unit_conversations or [np.zeros(0, np.int64)])]
        self._finished = True

    def conversations(self, units: np.ndarray) -> int:
        """How many conversations (or rows of documents) the units hold, before encoding dropped any."""
        self._finish()
        return int(self._unit_conversations[0][units].sum())

    def write_split(self, path: Path, variant: int, units: np.ndarray) -> tuple[dict[str, int], list[list[int]]]:
        """Write the rows of `units` (in that order) as an index file; return the split's encoding figures (in
        `EncodeStats` order) and its length histogram as [length, count] pairs."""
        from datasets.arrow_writer import ArrowWriter

        self._finish()
        f = self._figures[variant]
        lengths, trained, truncated = f.lengths[0], f.trained[0], f.truncated[0]
        unit_rows = f.unit_rows[0]
        starts = np.cumsum(unit_rows) - unit_rows
        rows = _ranges(starts[units], unit_rows[units])
        writer = ArrowWriter(path=str(path), schema=INDEX_SCHEMA)
        for i in range(0, max(len(rows), 1), INDEX_BATCH):
            writer.write_table(pa.table({"indices": pa.array(rows[i:i + INDEX_BATCH].astype(np.uint64))},
                                        schema=INDEX_SCHEMA))
        writer.finalize()
        split_lengths = lengths[rows].astype(np.int64)
        counts = np.bincount(split_lengths)
        stats = {"samples": len(rows), "truncated": int(truncated[rows].sum()),
                 "dropped_no_trained_tokens": int(f.unit_dropped[0][units].sum()),
                 "tokens": int(split_lengths.sum()), "trained_tokens": int(trained[rows].astype(np.int64).sum())}
        return stats, [[int(n), int(c)] for n, c in zip(np.flatnonzero(counts), counts[counts > 0])]


def _ranges(starts: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """The concatenation of range(start, start + size) for each pair, without a Python loop."""
    total = int(sizes.sum())
    if total == 0:
        return np.zeros(0, np.int64)
    offsets = np.cumsum(sizes) - sizes
    return np.repeat(starts - offsets, sizes) + np.arange(total)
