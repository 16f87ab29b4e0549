"""OpenAI-style chat records, `{"messages": [{"role": "system"|"user"|"assistant", "content": "..."}]}`: what TRL's
SFTTrainer and the hub's chat datasets (e.g. HuggingFaceH4/ultrachat_200k) use."""
from __future__ import annotations

from typing import Any

from trainer.data.conversation import ASSISTANT, PROMPTER, SYSTEM, Conversation, chat_conversation
from trainer.data.jsonl import string_field
from trainer.data.kinds.base import DatasetKind, record_reader, turn_list
from trainer.errors import DataError

ROLES = {"system": SYSTEM, "user": PROMPTER, "assistant": ASSISTANT}


def messages_conversation(record: dict[str, Any], where: str, source: str = "messages") -> Conversation:
    """Every message's `content` must be a string; other keys (`name`, `weight`...) are ignored. Tool calls and
    tool results (`tool`, `function`, `ipython` roles) are refused: Delphi's formats have no place for them."""
    turns = []
    for i, message in enumerate(turn_list(record, "messages", where)):
        label = f"messages[{i}]"
        role = message.get("role")
        if role not in ROLES:
            raise DataError(f"{where}: {label}: role {role!r} is not one of {', '.join(ROLES)}"
                            + (" (tool calls are not trained by Delphi)" if role in ("tool", "function", "ipython")
                               else ""))
        turns.append((ROLES[role], string_field(message, "content", f"{where}: {label}"), f"{label} (role {role!r})"))
    return chat_conversation(turns, where, source)


# No default hub dataset: chat datasets differ in their splits (ultrachat_200k has train_sft, test_sft, ...), so
# `hub_name` is always given.
KIND = DatasetKind("messages", None, 0.2, "path/to/chat.jsonl", record_reader(messages_conversation))
