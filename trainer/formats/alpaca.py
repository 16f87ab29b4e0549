"""The Stanford Alpaca instruction format."""
from __future__ import annotations

from trainer.data.conversation import Turn
from trainer.formats.base import PromptFormat, Segment

ALPACA_PREAMBLE = ("Below is an instruction that describes a task. Write a response that appropriately completes "
                   "the request.")
ALPACA_PREAMBLE_WITH_INPUT = ("Below is an instruction that describes a task, paired with an input that provides "
                              "further context. Write a response that appropriately completes the request.")


class AlpacaFormat(PromptFormat):
    """The Stanford `PROMPT_DICT` templates word for word (ending at `### Response:`), then `output + eos`.

    The first turn's input picks the preamble, as Stanford picks the template per record. Multi-turn: each
    further exchange repeats the instruction block after the previous reply's eos:
    `{output}{eos}\\n\\n### Instruction:\\n{q}\\n\\n### Response:`. The system prefix, when on, replaces the
    preamble (the sentence(s) before the first `### Instruction:`).
    """

    name = "alpaca"
    assistant_cue = "\n\n### Response:"

    def __init__(self, eos: str, bos: str | None, system: str | None):
        super().__init__(eos, bos, system)
        self.end_key = eos
        self._eos = Segment(eos, True)

    def header(self, first: Turn, system: str | None) -> list[Segment]:
        if system is not None:
            return [Segment(system, False)]
        return [Segment(ALPACA_PREAMBLE_WITH_INPUT if first.context else ALPACA_PREAMBLE, False)]

    def prompt(self, turn: Turn, index: int) -> list[Segment]:
        block = f"\n\n### Instruction:\n{turn.text}"
        if turn.context:
            block += f"\n\n### Input:\n{turn.context}"
        return [Segment(block + self.assistant_cue, False)]

    def reply(self, turn: Turn) -> list[Segment]:
        return [Segment(turn.text, True), self._eos]
