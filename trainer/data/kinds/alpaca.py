"""Alpaca records (`{instruction, input, output}`) as one-exchange conversations."""
from __future__ import annotations

from typing import Any

from trainer.data.conversation import ASSISTANT, PROMPTER, Conversation, Turn
from trainer.data.jsonl import string_field
from trainer.data.kinds.base import DatasetKind, record_reader


def alpaca_conversation(record: dict[str, Any], where: str, source: str = "alpaca") -> Conversation:
    """The instruction as the prompter turn with `input` kept apart in `Turn.context`, since the Alpaca template
    gives it its own block while chat formats append it. A missing or empty `input` means none (Stanford)."""
    instruction = string_field(record, "instruction", where)
    context = string_field(record, "input", where, default="", blank=True)
    output = string_field(record, "output", where)
    return Conversation((Turn(PROMPTER, instruction, context), Turn(ASSISTANT, output)), source, where)


# OASST's `alpaca` entry means yahma/alpaca-cleaned, split 80/20.
KIND = DatasetKind("alpaca", "yahma/alpaca-cleaned", 0.2, "path/to/alpaca_data.json",
                   record_reader(alpaca_conversation), columns=(("instruction", "output"),))
