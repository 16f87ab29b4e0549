"""The `text` kind's rows: documents' ids back to back (each already ending in eos), cut into rows of max_length
tokens, every token trained but the first of a row (nothing precedes it)."""
from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np

from trainer.data.parallel import RowBlock, row_table
from trainer.tokens import IGNORE_INDEX


def pack_rows(documents: Iterable[np.ndarray], lengths: tuple[int, ...]) -> Iterator[list[RowBlock]]:
    """Each chunk's full rows as one RowBlock per length, each row its own split unit; the rest of the last chunk
    is the last row. Validation's block (when val_max_length differs) cuts every row again at val_max_length."""
    row_length = lengths[0]
    carry = np.zeros(0, np.int32)
    for ids in documents:
        tokens = np.concatenate([carry, ids])
        full = len(tokens) // row_length * row_length
        carry = tokens[full:]
        if full:
            rows = np.split(tokens[:full], full // row_length)
            yield [_block(rows, length) for length in lengths]
    if len(carry):
        yield [_block([carry], length) for length in lengths]


def _block(rows: list[np.ndarray], piece_length: int) -> RowBlock:
    pieces, per_row, dropped = [], [], []
    for row in rows:
        cut = [row[i:i + piece_length] for i in range(0, len(row), piece_length)]
        kept = [piece for piece in cut if len(piece) > 1]  # a lone token has nothing to predict
        pieces += kept
        per_row.append(len(kept))
        dropped.append(len(cut) - len(kept))
    labels = []
    for piece in pieces:
        label = piece.copy()
        label[0] = IGNORE_INDEX
        labels.append(label)
    trained = np.fromiter((len(p) - 1 for p in pieces), dtype=np.int64, count=len(pieces))
    return RowBlock(row_table(pieces, labels, trained), np.zeros(len(pieces), bool), np.asarray(per_row, np.int64),
                    np.asarray(dropped, np.int64))
