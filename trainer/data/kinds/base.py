"""What a dataset kind is: where its data lives by default, its own options, and how records become
conversations grouped into the units a train/validation split keeps together."""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from trainer.data.conversation import Conversation
from trainer.data.jsonl import BadRecords
from trainer.errors import DataError

Rows = Iterable[tuple[str, dict[str, Any]]]  # (where: "file:line" or hub row, record)
# Conversations in split units (one tree's threads, or one record's conversation) and the per-step counts.
Read = Callable[[Rows, Any, BadRecords, str], tuple[list[list[Conversation]], dict[str, int]]]


@dataclass(frozen=True)
class DatasetKind:
    name: str  # the `datasets:` entry name
    hub_name: str | None  # loaded with `datasets.load_dataset` when no input_file_path is given
    val_split: float  # the upstream default held-out share
    example_file: str  # shown when the hub cannot be reached: how to point at a local file instead
    read: Read  # (rows, options, bad records, entry name) -> split units, counts
    options: type | None = None  # frozen dataclass of the kind's own options (`trainer.schema.option` fields)
    unit: str = "sample"  # what the split keeps on one side: "tree" for OASST


def record_reader(convert: Callable[[dict[str, Any], str, str], Conversation]) -> Read:
    """A `read` for kinds whose records are independent samples: one conversation per record, each its own unit;
    a bad record goes to `bad` (raised, or skipped and counted)."""

    def read(rows: Rows, options: Any, bad: BadRecords, source: str):
        units, count = [], 0
        for where, record in rows:
            count += 1
            try:
                units.append([convert(record, where, source)])
            except DataError as e:
                bad.handle(e)
        return units, {"records_read": count, "samples": len(units)}

    return read


def turn_list(record: dict[str, Any], key: str, where: str) -> list[dict[str, Any]]:
    """`record[key]` of a chat record: a list of message objects, or a DataError naming the field."""
    value = record.get(key)
    if not isinstance(value, list) or not all(isinstance(m, dict) for m in value):
        got = "nothing" if value is None else f"{type(value).__name__} {value!r:.60}"
        raise DataError(f"{where}: field '{key}' must be a list of message objects, got {got}")
    return value
