"""airoboros records (`{instruction, response}`) as one-exchange conversations, texts untouched."""
from __future__ import annotations

from typing import Any

from trainer.data.conversation import ASSISTANT, PROMPTER, Conversation, Turn
from trainer.data.jsonl import string_field
from trainer.data.kinds.base import DatasetKind, record_reader


def airoboros_conversation(record: dict[str, Any], where: str, source: str = "airoboros") -> Conversation:
    """Both texts byte for byte: the closed-context BEGININPUT…ENDINSTRUCTION blocks, the ` PLAINFORMAT` suffix
    and any surrounding whitespace are part of what the model is trained on. Other keys are ignored."""
    instruction = string_field(record, "instruction", where)
    response = string_field(record, "response", where)
    return Conversation((Turn(PROMPTER, instruction), Turn(ASSISTANT, response)), source, where)


# The qlora fork holds out 10% of a local file.
KIND = DatasetKind("airoboros", "jondurbin/airoboros-gpt4-1.4", 0.1, "path/to/instructions.jsonl",
                   record_reader(airoboros_conversation), columns=(("instruction", "response"),))
