"""What an export target is: one entry holding everything about one consumer of exported models."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable


@dataclass(frozen=True)
class WriteOptions:
    max_shard_size: str  # weights are split into files of at most this size
    sequence_length: int | None  # a consumer's compiled input length, where it has one (None: from the run)
    max_length: int | None  # the run's training max_length (None: not recorded)


@dataclass(frozen=True)
class ExportTarget:
    name: str  # `--target NAME`
    loaded_by: str  # who reads the export (help, model card)
    dtypes: tuple[str, ...]  # the weight dtypes its consumer can read
    # (model, tokenizer, prompt format, out dir, options) -> what the export record adds (e.g. pipeline settings)
    write: Callable[[Any, Any, Any, Path, WriteOptions], dict[str, Any]]
    usage: Callable[[dict[str, Any]], list[str]]  # the model card's usage section, from the export record
    # (transformers config, where) -> raises before any weights load when the consumer cannot run the model
    check_model: Callable[[Any, str], None] | None = None
    # (out, prompt texts, prompt ids, exported outputs, end key) -> a Comparison: loads the export with the
    # consumer's own libraries (`--verify`)
    verify: Callable[..., Any] | None = None
