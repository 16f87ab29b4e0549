"""The one shape every source format is read into, and every prompt format renders from."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from trainer.errors import DataError

PROMPTER = "prompter"
ASSISTANT = "assistant"
SYSTEM = "system"  # only in chat data, where it becomes `Conversation.system`


@dataclass(frozen=True)
class Turn:
    role: str  # PROMPTER or ASSISTANT
    text: str
    # Alpaca's optional `input`: the Alpaca template gives it its own block; other formats append it to `text`.
    context: str = ""


@dataclass(frozen=True)
class Conversation:
    """Alternating turns that start with a prompter turn and end with an assistant turn, and the conversation's
    own system prompt (chat data's system turn), which the format's header uses instead of the configured one."""

    turns: tuple[Turn, ...]
    source: str  # the dataset entry's name, e.g. "oasst_export"
    # Where the sample came from, for error messages and the dump: "file.jsonl:12" or a tree/message id.
    origin: str = ""
    meta: dict = field(default_factory=dict, compare=False, hash=False)
    system: str | None = None


_SPOKEN = {PROMPTER: "user", ASSISTANT: "assistant"}


def chat_conversation(messages: Sequence[tuple[str, str, str]], where: str, source: str) -> Conversation:
    """Chat data (`messages`, `sharegpt`) as a Conversation. `messages` are (role, text, label) triples: the role
    already read as SYSTEM, PROMPTER or ASSISTANT, and a label naming the message as the file has it
    ("messages[3] (role 'user')"); `where` names the record ("file.jsonl:12").

    A leading system turn becomes the conversation's system prompt. Trailing prompter turns are dropped, as OASST
    drops a thread's trailing prompter, so every sample ends on a trained reply. Anything else that does not
    alternate user/assistant from the start is refused, naming the message: guessing which turn to drop would
    train the model on a conversation nobody had."""
    turns = list(messages)
    system = turns.pop(0)[1] if turns and turns[0][0] == SYSTEM else None
    while turns and turns[-1][0] == PROMPTER:
        turns.pop()
    for i, (role, _, label) in enumerate(turns):
        expected = PROMPTER if i % 2 == 0 else ASSISTANT
        if role == SYSTEM:
            raise DataError(f"{where}: {label}: a system message can only come first")
        if role != expected:
            after = f"after a{'n' if role == ASSISTANT else ''} {_SPOKEN[role]} message" if i else "first"
            raise DataError(f"{where}: {label}: {_SPOKEN[role]} message {after}; messages alternate user/assistant, "
                            f"starting with user (after an optional system message)")
    if not turns:
        raise DataError(f"{where}: no assistant reply to train on (a conversation needs a user message and a "
                        f"reply)")
    return Conversation(tuple(Turn(role, text) for role, text, _ in turns), source, where, system=system)
