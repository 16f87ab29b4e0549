"""Prompt/completion pairs, `{"prompt": "...", "completion": "..."}`, trained without a template: the sample is the
prompt's tokens, then the completion's and eos, and only the completion and eos are trained (all of it with
`label_masking: false`). The configured prompt format is not used: the texts already are what the model sees."""
from __future__ import annotations

from typing import Any

from trainer.data.conversation import ASSISTANT, PROMPTER, Conversation, Turn
from trainer.data.jsonl import string_field
from trainer.data.kinds.base import DatasetKind, record_reader
from trainer.formats.base import PromptFormat, Segment


class CompletionFormat(PromptFormat):
    """Prompt text, completion text, eos: nothing added, no bos (the texts are the model's input as they are)."""

    name = "completion"
    assistant_cue = ""

    def __init__(self, eos: str, bos: str | None, system: str | None = None):
        super().__init__(eos, bos, None)
        self.end_key = eos

    def header(self, first: Turn, system: str | None) -> list[Segment]:
        return []

    def prompt(self, turn: Turn, index: int) -> list[Segment]:
        return [Segment(turn.text, False)]

    def reply(self, turn: Turn) -> list[Segment]:
        return [Segment(turn.text, True), Segment(self.eos, True)]


def completion_conversation(record: dict[str, Any], where: str, source: str = "completion") -> Conversation:
    """The prompt may be empty (plain continuation); the completion may not."""
    prompt = string_field(record, "prompt", where, blank=True)
    completion = string_field(record, "completion", where)
    return Conversation((Turn(PROMPTER, prompt), Turn(ASSISTANT, completion)), source, where)


def template_free(fmt: PromptFormat) -> CompletionFormat:
    return CompletionFormat(fmt.eos, fmt.bos)


KIND = DatasetKind("completion", None, 0.2, "path/to/pairs.jsonl", record_reader(completion_conversation),
                   columns=(("prompt", "completion"),), render_with=template_free)
