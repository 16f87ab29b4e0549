"""OpenAssistant's chat format: `<|prompter|>{q}<eos><|assistant|>{a}<eos>...` (OASST `format_pairs`)."""
from __future__ import annotations

from trainer.data.conversation import Turn
from trainer.formats.base import PromptFormat, Segment, turn_text
from trainer.tokens import ASSISTANT_TOKEN, PROMPTER_TOKEN, SYSTEM_TOKEN


class OasstFormat(PromptFormat):
    """Nothing between pieces. Trained: each reply and its eos. Not trained: `<|assistant|>` itself, and the
    `<|prompter|>` that follows a non-final reply (OASST's collator trains that one target; Delphi trains only
    assistant text + end token). System prefix: `<|system|>{prefix}<eos>` first, masked.
    """

    name = "oasst"
    required_tokens = (PROMPTER_TOKEN, ASSISTANT_TOKEN, SYSTEM_TOKEN)
    assistant_cue = ASSISTANT_TOKEN

    def __init__(self, eos: str, bos: str | None, system: str | None):
        super().__init__(eos, bos, system)
        self.end_key = eos
        self._prompter = Segment(PROMPTER_TOKEN, False)
        self._assistant = Segment(ASSISTANT_TOKEN, False)
        self._eos_masked = Segment(eos, False)
        self._eos_trained = Segment(eos, True)

    @classmethod
    def detect(cls, tokenizer) -> bool:
        return PROMPTER_TOKEN in tokenizer.get_vocab()

    def header(self, first: Turn, system: str | None) -> list[Segment]:
        if system is None:
            return []
        return [Segment(SYSTEM_TOKEN, False), Segment(system, False), self._eos_masked]

    def prompt(self, turn: Turn, index: int) -> list[Segment]:
        return [self._prompter, Segment(turn_text(turn), False), self._eos_masked, self._assistant]

    def reply(self, turn: Turn) -> list[Segment]:
        return [Segment(turn.text, True), self._eos_trained]
