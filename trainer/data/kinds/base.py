"""What a dataset kind is: where its data lives by default, its own options, and how records become
conversations grouped into the units a train/validation split keeps together.

Reading streams: `read` returns an iterator of units and a counts dict that fills in as the iterator is consumed,
so that a million-record file is never held in memory (an OASST tree export holds one tree at a time)."""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from trainer.data.conversation import ASSISTANT, TOOL, Conversation, chat_conversation
from trainer.data.jsonl import BadRecords, string_field
from trainer.errors import DataError

Rows = Iterable[tuple[str, dict[str, Any]]]  # (where: "file:line" or hub row, record)
# Split units (one tree's threads, one record's conversation, one document's text) as they are read, and the
# per-step counts, complete once the units are.
Read = Callable[[Rows, Any, BadRecords, str], tuple[Iterator[list[Any]], dict[str, int]]]
CONVERSATIONS, DOCUMENTS = "conversations", "documents"  # what a kind's units hold


@dataclass(frozen=True)
class DatasetKind:
    name: str  # the `datasets:` entry name
    hub_name: str | None  # loaded with `datasets.load_dataset` when no input_file_path is given
    val_split: float  # the upstream default held-out share
    example_file: str  # shown when the hub cannot be reached: how to point at a local file instead
    read: Read  # (rows, options, bad records, entry name) -> split units, counts
    options: type | None = None  # frozen dataclass of the kind's own options (`trainer.schema.option` fields)
    unit: str = "sample"  # what the split keeps on one side: "tree" for OASST
    # The columns a Parquet/Arrow file must have, as alternative sets (OASST: a message table or a tree table).
    columns: tuple[tuple[str, ...], ...] = ()
    holds: str = CONVERSATIONS  # DOCUMENTS: units are plain texts, packed into rows of max_length tokens
    # The renderer used instead of the configured prompt format (`completion` renders no template), given it.
    render_with: Callable[[Any], Any] | None = None


def record_reader(convert: Callable[[dict[str, Any], str, str], Conversation]) -> Read:
    """A `read` for kinds whose records are independent samples: one conversation per record, each its own unit;
    a bad record goes to `bad` (raised, or skipped and counted)."""

    def read(rows: Rows, options: Any, bad: BadRecords, source: str):
        counts = {"records_read": 0, "samples": 0}

        def units() -> Iterator[list[Any]]:
            for where, record in rows:
                counts["records_read"] += 1
                try:
                    unit = [convert(record, where, source)]
                except DataError as e:
                    bad.handle(e)
                    continue
                counts["samples"] += 1
                yield unit

        return units(), counts

    return read


def chat_record(record: dict[str, Any], where: str, source: str, *, key: str, role_key: str, text_key: str,
                roles: dict[str, str], tool_roles: tuple[str, ...]) -> Conversation:
    """A chat record (`messages`, `sharegpt`) as a Conversation: the list of message objects under `key`, each
    with its role under `role_key` (read through `roles` into SYSTEM, PROMPTER, ASSISTANT or TOOL) and its text
    under `text_key`. Other keys are ignored but the ones a model's own chat template reads (`Turn.extra`); an
    unknown role names the message and value, and the kind's `tool_roles` are refused as such."""
    messages = record.get(key)
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        got = "nothing" if messages is None else f"{type(messages).__name__} {messages!r:.60}"
        raise DataError(f"{where}: field '{key}' must be a list of message objects, got {got}")
    tools = tool_definitions(record, where) if TOOL in roles.values() else ()
    turns = []
    for i, message in enumerate(messages):
        label = f"{key}[{i}]"
        role = message.get(role_key)
        if role not in roles:
            hint = (" (tool results: role 'tool')" if TOOL in roles.values() else
                    " (tool calls are not trained by Delphi)") if role in tool_roles else ""
            raise DataError(f"{where}: {label}: {role_key} {role!r} is not one of {', '.join(roles)}{hint}")
        extra = template_keys(message, roles[role], f"{where}: {label}") if TOOL in roles.values() else {}
        calls = bool(extra.get("tool_calls"))  # a message calling tools may say nothing (content missing or null)
        text = "" if calls and message.get(text_key) is None else \
            string_field(message, text_key, f"{where}: {label}", blank=calls)
        turns.append((roles[role], text, f"{label} ({role_key} {role!r})", extra))
    return chat_conversation(turns, where, source, tools)


def tool_definitions(record: dict[str, Any], where: str) -> tuple[dict[str, Any], ...]:
    """The record's `tools` (JSON schemas of the functions offered, as chat templates read them), or none."""
    tools = record.get("tools")
    if tools is None:
        return ()
    if not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools):
        raise DataError(f"{where}: field 'tools' must be a list of tool objects (JSON schemas), got {tools!r:.60}")
    return tuple(tools)


def template_keys(message: dict[str, Any], role: str, where: str) -> dict[str, Any]:
    """The keys of a message that a chat template reads besides role and content: an assistant's `tool_calls`
    (a list of `{"function": {"name", "arguments"}}` objects) and `reasoning_content`, a tool result's `name`
    and `tool_call_id`."""
    allowed = {ASSISTANT: ("tool_calls", "reasoning_content"), TOOL: ("name", "tool_call_id")}.get(role, ())
    extra = {k: message[k] for k in allowed if message.get(k) is not None}
    calls = extra.get("tool_calls")
    if calls is not None:
        if not isinstance(calls, list) or not calls or not all(
                isinstance(c, dict) and isinstance(c.get("function"), dict)
                and isinstance(c["function"].get("name"), str) for c in calls):
            raise DataError(f"{where}: field 'tool_calls' must be a non-empty list of "
                            f"{{\"function\": {{\"name\": ..., \"arguments\": ...}}}} objects, got {calls!r:.80}")
    for key in ("reasoning_content", "name", "tool_call_id"):
        if key in extra and not isinstance(extra[key], str):
            raise DataError(f"{where}: field '{key}' must be a string, got {extra[key]!r:.60}")
    return extra
