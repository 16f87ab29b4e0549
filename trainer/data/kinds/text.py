"""Plain documents, `{"text": "..."}`, for continued pre-training: every token is trained, each document ends with
the tokenizer's eos, and the documents are packed back to back into rows of `max_length` tokens (the split is
over those rows, as a pre-training corpus is cut into blocks; no prompt format applies)."""
from __future__ import annotations

from typing import Any

from trainer.data.jsonl import string_field
from trainer.data.kinds.base import DOCUMENTS, DatasetKind, record_reader


def text_document(record: dict[str, Any], where: str, source: str = "text") -> str:
    """The `text` field, which must be a non-empty string (other keys, `id`, `url`..., are ignored)."""
    return string_field(record, "text", where)


KIND = DatasetKind("text", None, 0.05, "path/to/corpus.jsonl.zst", record_reader(text_document), unit="row",
                   columns=(("text",),), holds=DOCUMENTS)
