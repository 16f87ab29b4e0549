"""The one shape every source format is read into, and every prompt format renders from."""
from __future__ import annotations

from dataclasses import dataclass, field

PROMPTER = "prompter"
ASSISTANT = "assistant"


@dataclass(frozen=True)
class Turn:
    role: str  # PROMPTER or ASSISTANT
    text: str
    # Alpaca's optional `input`: the Alpaca template gives it its own block; other formats append it to `text`.
    context: str = ""


@dataclass(frozen=True)
class Conversation:
    """Alternating turns that start with a prompter turn and end with an assistant turn."""

    turns: tuple[Turn, ...]
    source: str  # the dataset entry's name, e.g. "oasst_export"
    # Where the sample came from, for error messages and the dump: "file.jsonl:12" or a tree/message id.
    origin: str = ""
    meta: dict = field(default_factory=dict, compare=False, hash=False)
