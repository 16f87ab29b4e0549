"""OpenAI-style chat records, `{"messages": [{"role": "system"|"user"|"assistant", "content": "..."}]}`: what TRL's
SFTTrainer and the hub's chat datasets (e.g. HuggingFaceH4/ultrachat_200k) use."""
from __future__ import annotations

from typing import Any

from trainer.data.conversation import ASSISTANT, PROMPTER, SYSTEM, Conversation
from trainer.data.kinds.base import DatasetKind, chat_record, record_reader

ROLES = {"system": SYSTEM, "user": PROMPTER, "assistant": ASSISTANT}


def messages_conversation(record: dict[str, Any], where: str, source: str = "messages") -> Conversation:
    """Every message's `content` must be a string (other keys, `name`, `weight`..., are ignored); the `tool`,
    `function` and `ipython` roles are refused."""
    return chat_record(record, where, source, key="messages", role_key="role", text_key="content", roles=ROLES,
                       tool_roles=("tool", "function", "ipython"))


# No default hub dataset: chat datasets differ in their splits (ultrachat_200k has train_sft, test_sft, ...), so
# `hub_name` is always given.
KIND = DatasetKind("messages", None, 0.2, "path/to/chat.jsonl", record_reader(messages_conversation),
                   columns=(("messages",),))
