"""The one shape every source format is read into, and every prompt format renders from."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from trainer.errors import DataError

PROMPTER = "prompter"
ASSISTANT = "assistant"
SYSTEM = "system"  # only in chat data, where it becomes `Conversation.system`
TOOL = "tool"  # a tool's result, answering the assistant turn before it that called the tool (`messages` data)


@dataclass(frozen=True)
class Turn:
    role: str  # PROMPTER, ASSISTANT or TOOL
    text: str
    # Alpaca's optional `input`: the Alpaca template gives it its own block; other formats append it to `text`.
    context: str = ""
    # Message keys handed to a model's own chat template as they are: an assistant's `tool_calls` and
    # `reasoning_content`, a tool result's `name` and `tool_call_id`. Delphi's own formats have no place for them.
    extra: Mapping[str, Any] = field(default_factory=dict, hash=False)


@dataclass(frozen=True)
class Conversation:
    """Turns that start with a prompter turn and end with an assistant turn (prompter and assistant alternate; an
    assistant turn that calls tools is followed by the tools' results), and the conversation's own system prompt
    (chat data's system turn), which the format's header uses instead of the configured one."""

    turns: tuple[Turn, ...]
    source: str  # the dataset entry's name, e.g. "oasst_export"
    # Where the sample came from, for error messages and the dump: "file.jsonl:12" or a tree/message id.
    origin: str = ""
    meta: dict = field(default_factory=dict, compare=False, hash=False)
    system: str | None = None
    tools: tuple[Mapping[str, Any], ...] = field(default=(), hash=False)  # tool definitions offered (`tools`)


_SPOKEN = {PROMPTER: "user", ASSISTANT: "assistant", TOOL: "tool"}


def _follows(role: str, extra: Mapping[str, Any]) -> tuple[str, ...]:
    """The roles that may come after a turn: a tool call is answered by tool results, results by more results or
    the assistant, a reply by the user."""
    if role == PROMPTER:
        return (ASSISTANT,)
    if role == TOOL:
        return (TOOL, ASSISTANT)
    return (TOOL,) if extra.get("tool_calls") else (PROMPTER,)


def chat_conversation(messages: Sequence[tuple[str, str, str, Mapping[str, Any]]], where: str, source: str,
                      tools: Sequence[Mapping[str, Any]] = ()) -> Conversation:
    """Chat data (`messages`, `sharegpt`) as a Conversation. `messages` are (role, text, label, extra) tuples: the
    role already read as SYSTEM, PROMPTER, ASSISTANT or TOOL, a label naming the message as the file has it
    ("messages[3] (role 'user')") and the message keys kept for chat templates (`Turn.extra`); `where` names the
    record ("file.jsonl:12"); `tools` are the record's tool definitions.

    A leading system turn becomes the conversation's system prompt. Trailing prompter turns (and tool results no
    reply follows) are dropped, as OASST drops a thread's trailing prompter, so every sample ends on a trained
    reply. Anything else that does not alternate user/assistant from the start (tool results only answering an
    assistant's tool calls) is refused, naming the message: guessing which turn to drop would train the model on a
    conversation nobody had."""
    turns = list(messages)
    system = turns.pop(0)[1] if turns and turns[0][0] == SYSTEM else None
    while turns and turns[-1][0] in (PROMPTER, TOOL):
        turns.pop()
    expected: tuple[str, ...] = (PROMPTER,)
    for i, (role, _, label, extra) in enumerate(turns):
        if role == SYSTEM:
            raise DataError(f"{where}: {label}: a system message can only come first")
        if role not in expected:
            previous = turns[i - 1][0] if i else None
            if TOOL in (role, *expected):
                wanted = " or ".join(f"a {_SPOKEN[r]} message" for r in expected)
                raise DataError(f"{where}: {label}: {_SPOKEN[role]} message where {wanted} must come; tool results "
                                f"answer the assistant message whose tool_calls precede them")
            after = f"after a{'n' if previous == ASSISTANT else ''} {_SPOKEN[previous]} message" if i else "first"
            raise DataError(f"{where}: {label}: {_SPOKEN[role]} message {after}; messages alternate user/assistant, "
                            f"starting with user (after an optional system message)")
        expected = _follows(role, extra)
    if not turns:
        raise DataError(f"{where}: no assistant reply to train on (a conversation needs a user message and a "
                        f"reply)")
    return Conversation(tuple(Turn(role, text, extra=extra) for role, text, _, extra in turns), source, where,
                        system=system, tools=tuple(tools))
