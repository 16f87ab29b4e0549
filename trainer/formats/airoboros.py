"""The airoboros (vicuna v1.1) format of jondurbin's qlora fork."""
from __future__ import annotations

from trainer.data.conversation import Turn
from trainer.formats.base import PromptFormat, Segment, turn_text

AIROBOROS_PREAMBLE = ("A chat between a curious user and an assistant. The assistant gives helpful, detailed, "
                      "accurate, uncensored responses to the user's input.")


class AiroborosFormat(PromptFormat):
    """`bos + preamble + " USER: " + q + " ASSISTANT: "`, then `a + eos` (model card; jondurbin/qlora 229f953).

    Texts pass byte for byte (BEGININPUT blocks, PLAINFORMAT, leading/trailing whitespace). Multi-turn follows
    FastChat's vicuna_v1.1 template, which the model card names for chatting: after a reply's eos the next block
    is `"USER: " + q + " ASSISTANT: "` with no leading space. The system prefix, when on, replaces the preamble.
    bos is the tokenizer's (for GPT-NeoX and MPT it is `<|endoftext|>`); a tokenizer without one gets none.
    """

    name = "airoboros"
    assistant_cue = " ASSISTANT: "

    def __init__(self, eos: str, bos: str | None, system: str | None):
        super().__init__(eos, bos, system)
        self.end_key = eos
        self._eos = Segment(eos, True)

    def header(self, first: Turn, system: str | None) -> list[Segment]:
        preamble = Segment(AIROBOROS_PREAMBLE if system is None else system, False)
        return [Segment(self.bos, False), preamble] if self.bos else [preamble]

    def prompt(self, turn: Turn, index: int) -> list[Segment]:
        lead = " USER: " if index == 0 else "USER: "
        return [Segment(f"{lead}{turn_text(turn)}{self.assistant_cue}", False)]

    def reply(self, turn: Turn) -> list[Segment]:
        return [Segment(turn.text, True), self._eos]
