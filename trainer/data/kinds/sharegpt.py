"""ShareGPT records, `{"conversations": [{"from": "system"|"human"|"gpt", "value": "..."}]}`: what FastChat and
axolotl's `sharegpt` type read (`user` and `assistant` are accepted for `human` and `gpt`, as axolotl does)."""
from __future__ import annotations

from typing import Any

from trainer.data.conversation import ASSISTANT, PROMPTER, SYSTEM, Conversation
from trainer.data.kinds.base import DatasetKind, chat_record, record_reader

SPEAKERS = {"system": SYSTEM, "human": PROMPTER, "user": PROMPTER, "gpt": ASSISTANT, "assistant": ASSISTANT}


def sharegpt_conversation(record: dict[str, Any], where: str, source: str = "sharegpt") -> Conversation:
    """Every turn's `value` must be a string (other keys, `id`, `weight`..., are ignored); the `tool`,
    `function_call` and `observation` turns of tool-use dumps are refused."""
    return chat_record(record, where, source, key="conversations", role_key="from", text_key="value",
                       roles=SPEAKERS, tool_roles=("tool", "function_call", "observation"))


# No default hub dataset: ShareGPT dumps on the hub are JSON files rather than loadable datasets.
KIND = DatasetKind("sharegpt", None, 0.2, "path/to/sharegpt.json", record_reader(sharegpt_conversation),
                   columns=(("conversations",),))
