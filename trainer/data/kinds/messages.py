"""OpenAI-style chat records, `{"messages": [{"role": "system"|"user"|"assistant"|"tool", "content": "..."}],
"tools": [...]}`: what TRL's SFTTrainer and the hub's chat datasets (e.g. HuggingFaceH4/ultrachat_200k) use.
Assistant `tool_calls`, `tool` results and the record's `tools` are trained with `prompt_format: chat_template`
on a template that renders them; every other format refuses them."""
from __future__ import annotations

from typing import Any

from trainer.data.conversation import ASSISTANT, PROMPTER, SYSTEM, TOOL, Conversation
from trainer.data.kinds.base import DatasetKind, chat_record, record_reader

ROLES = {"system": SYSTEM, "user": PROMPTER, "assistant": ASSISTANT, "tool": TOOL}


def messages_conversation(record: dict[str, Any], where: str, source: str = "messages") -> Conversation:
    """Every message's `content` must be a string (an assistant message with `tool_calls` may have none); other
    keys (`weight`...) are ignored; the `function` and `ipython` roles are refused (tool results use `tool`)."""
    return chat_record(record, where, source, key="messages", role_key="role", text_key="content", roles=ROLES,
                       tool_roles=("function", "ipython"))


# No default hub dataset: chat datasets differ in their splits (ultrachat_200k has train_sft, test_sft, ...), so
# `hub_name` is always given.
KIND = DatasetKind("messages", None, 0.2, "path/to/chat.jsonl", record_reader(messages_conversation),
                   columns=(("messages",),))
