"""ShareGPT records, `{"conversations": [{"from": "system"|"human"|"gpt", "value": "..."}]}`: what FastChat and
axolotl's `sharegpt` type read (`user` and `assistant` are accepted for `human` and `gpt`, as axolotl does)."""
from __future__ import annotations

from typing import Any

from trainer.data.conversation import ASSISTANT, PROMPTER, SYSTEM, Conversation, chat_conversation
from trainer.data.jsonl import string_field
from trainer.data.kinds.base import DatasetKind, record_reader, turn_list
from trainer.errors import DataError

SPEAKERS = {"system": SYSTEM, "human": PROMPTER, "user": PROMPTER, "gpt": ASSISTANT, "assistant": ASSISTANT}


def sharegpt_conversation(record: dict[str, Any], where: str, source: str = "sharegpt") -> Conversation:
    """Every turn's `value` must be a string; other keys (`id`, `weight`...) are ignored. Tool turns (`tool`,
    `function_call`, `observation`) are refused: Delphi's formats have no place for them."""
    turns = []
    for i, turn in enumerate(turn_list(record, "conversations", where)):
        label = f"conversations[{i}]"
        speaker = turn.get("from")
        if speaker not in SPEAKERS:
            raise DataError(f"{where}: {label}: from {speaker!r} is not one of {', '.join(SPEAKERS)}"
                            + (" (tool calls are not trained by Delphi)"
                               if speaker in ("tool", "function_call", "observation") else ""))
        turns.append((SPEAKERS[speaker], string_field(turn, "value", f"{where}: {label}"),
                      f"{label} (from {speaker!r})"))
    return chat_conversation(turns, where, source)


# No default hub dataset: ShareGPT dumps on the hub are JSON files rather than loadable datasets.
KIND = DatasetKind("sharegpt", None, 0.2, "path/to/sharegpt.json", record_reader(sharegpt_conversation))
