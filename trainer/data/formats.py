"""Prompt formats: how a Conversation becomes the text a model is trained on, and the prompt it is asked with.

A format renders a conversation as a list of `Segment`s: pieces of text, each either trained (an assistant reply
and its end token) or not (everything the model is given). Message texts and special tokens are segments of
their own, so `trainer.data.tokenize` can encode each distinct text once and reuse it across the OASST threads
that share a prefix. The prompter side of an exchange is one segment in the template formats (airoboros, alpaca,
plain) because there the template text runs into the message text and must be tokenized with it, exactly as the
prompt is tokenized at inference; the reply is always a segment of its own (source and target are tokenized
separately, as the qlora fork does, and inference also stops the prompt right before the reply).

Rendering is a header (bos, system prefix or preamble) followed by one block per prompter/assistant exchange.
`generation_prompt` uses the same pieces and stops right after the last prompter block, so the string a chat
sends is byte for byte the prefix the model was trained on.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import NamedTuple, Sequence

from trainer.config import PROMPT_FORMATS, TrainConfig
from trainer.data.conversation import ASSISTANT, PROMPTER, Conversation, Turn
from trainer.errors import ConfigError, DataError


class Segment(NamedTuple):
    text: str
    trained: bool  # True for the assistant reply and its end token (the only tokens with labels when masking)


def turn_text(turn: Turn) -> str:
    """OASST's alpaca rule for formats without an input block: the input goes on a new line after the text."""
    return f"{turn.text}\n{turn.context}" if turn.context else turn.text


def check_alternation(turns: Sequence[Turn], where: str, *, ends_with: str) -> None:
    """Formats render prompter/assistant pairs; anything else is a reader bug or bad data, named by origin."""
    if not turns:
        raise DataError(f"{where}: conversation has no turns")
    for i, turn in enumerate(turns):
        expected = PROMPTER if i % 2 == 0 else ASSISTANT
        if turn.role != expected:
            raise DataError(f"{where}: turn {i} has role {turn.role!r}, expected {expected!r} "
                            f"(turns alternate, starting with a prompter turn)")
    if turns[-1].role != ends_with:
        raise DataError(f"{where}: the last turn must have role {ends_with!r}, got {turns[-1].role!r}")


class PromptFormat(ABC):
    """One prompt format. `system` is the configured system prefix (None when `use_system_prefix` is off)."""

    name: str
    end_key: str  # the stop string a chat watches for: what ends every trained reply

    def __init__(self, eos: str, bos: str | None, system: str | None):
        self.eos = eos
        self.bos = bos
        self.system = system

    @abstractmethod
    def header(self, first: Turn, system: str | None) -> list[Segment]:
        """What comes before the first exchange (never trained); `first` is the first prompter turn."""

    @abstractmethod
    def prompt(self, turn: Turn, index: int) -> list[Segment]:
        """The prompter block of exchange `index` (0 = first), ending where the model starts to answer."""

    @abstractmethod
    def reply(self, turn: Turn) -> list[Segment]:
        """The assistant reply and its end token (both trained)."""

    def render(self, conv: Conversation) -> list[Segment]:
        """The training sample: header, then prompt + reply for every exchange."""
        turns = conv.turns
        check_alternation(turns, conv.origin or conv.source, ends_with=ASSISTANT)
        segments = self.header(turns[0], self.system)
        for i in range(0, len(turns), 2):
            segments += self.prompt(turns[i], i // 2)
            segments += self.reply(turns[i + 1])
        return segments

    def generation_segments(self, turns: Sequence[Turn], system: str | None) -> list[Segment]:
        """The segments to generate the next reply from: `turns` is the history, ending with a prompter turn.

        `system` is the system prefix to use, None for none (pass `self.system` for the one trained with).
        """
        check_alternation(turns, "chat history", ends_with=PROMPTER)
        segments = self.header(turns[0], system)
        for i in range(0, len(turns) - 1, 2):
            segments += self.prompt(turns[i], i // 2)
            segments += self.reply(turns[i + 1])
        segments += self.prompt(turns[-1], len(turns) // 2)
        return segments

    def generation_prompt(self, turns: Sequence[Turn], system: str | None) -> str:
        """`generation_segments` as one string. With earlier replies in the history, encode the segments
        instead (`trainer.data.tokenize.encode_prompt`): a reply was trained tokenized apart from its prompt."""
        return "".join(s.text for s in self.generation_segments(turns, system))


class OasstFormat(PromptFormat):
    """`<|prompter|>{q}<eos><|assistant|>{a}<eos>...`, nothing between pieces (OASST `format_pairs`).

    Trained: each reply and its eos. Not trained: `<|assistant|>` itself, and the `<|prompter|>` that follows a
    non-final reply (OASST's collator trains that one target; Delphi trains only assistant text + end token).
    System prefix: `<|system|>{prefix}<eos>` first, masked.
    """

    name = "oasst"

    def __init__(self, eos: str, bos: str | None, system: str | None):
        super().__init__(eos, bos, system)
        self.end_key = eos
        self._prompter = Segment("<|prompter|>", False)
        self._assistant = Segment("<|assistant|>", False)
        self._eos_masked = Segment(eos, False)
        self._eos_trained = Segment(eos, True)

    def header(self, first: Turn, system: str | None) -> list[Segment]:
        if system is None:
            return []
        return [Segment("<|system|>", False), Segment(system, False), self._eos_masked]

    def prompt(self, turn: Turn, index: int) -> list[Segment]:
        return [self._prompter, Segment(turn_text(turn), False), self._eos_masked, self._assistant]

    def reply(self, turn: Turn) -> list[Segment]:
        return [Segment(turn.text, True), self._eos_trained]


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

    def __init__(self, eos: str, bos: str | None, system: str | None):
        super().__init__(eos, bos, system)
        self.end_key = eos
        self._eos = Segment(eos, True)

    def header(self, first: Turn, system: str | None) -> list[Segment]:
        preamble = Segment(AIROBOROS_PREAMBLE if system is None else system, False)
        return [Segment(self.bos, False), preamble] if self.bos else [preamble]

    def prompt(self, turn: Turn, index: int) -> list[Segment]:
        lead = " USER: " if index == 0 else "USER: "
        return [Segment(f"{lead}{turn_text(turn)} ASSISTANT: ", False)]

    def reply(self, turn: Turn) -> list[Segment]:
        return [Segment(turn.text, True), self._eos]


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
        return [Segment(block + "\n\n### Response:", False)]

    def reply(self, turn: Turn) -> list[Segment]:
        return [Segment(turn.text, True), self._eos]


class PlainFormat(PromptFormat):
    """"Name: text" lines joined by newlines, for models without role tokens (the Falcon chatbot tutorial).

    `[persona\\n]User: q\\nAssistant: a\\nUser: q2\\nAssistant: a2\\n`. The prompt block is the user line plus
    `"\\n{bot}: "` (trailing space), so every generation prompt, the first one included, ends that way, as the
    tutorial's `"\\n".join(lines) + f"\\n{bot}: "` does. Trained: the reply text and its terminating newline,
    which is also the chat's stop string (a reply containing a newline is cut there at chat time). The persona
    line is the system prefix.
    """

    name = "plain"
    end_key = "\n"

    def __init__(self, eos: str, bos: str | None, system: str | None, user: str, bot: str):
        super().__init__(eos, bos, system)
        self.user = user
        self.bot = bot
        self._newline = Segment("\n", True)

    def header(self, first: Turn, system: str | None) -> list[Segment]:
        return [] if system is None else [Segment(system + "\n", False)]

    def prompt(self, turn: Turn, index: int) -> list[Segment]:
        return [Segment(f"{self.user}: {turn_text(turn)}\n{self.bot}: ", False)]

    def reply(self, turn: Turn) -> list[Segment]:
        return [Segment(turn.text, True), self._newline]


def prompt_format(config: TrainConfig, tokenizer) -> PromptFormat:
    """The format `config.prompt_format` names, with the tokenizer's eos/bos and the configured system prefix."""
    name = config.prompt_format
    if name not in PROMPT_FORMATS:
        raise ConfigError(f"prompt_format: unknown format {name!r}; expected one of {', '.join(PROMPT_FORMATS)}")
    eos = tokenizer.eos_token
    if eos is None:
        raise ConfigError(f"tokenizer '{tokenizer.name_or_path}' has no eos token, which ends every reply")
    system = config.system_prefix if config.use_system_prefix else None
    if name == "oasst":
        vocab = tokenizer.get_vocab()
        missing = [t for t in ("<|prompter|>", "<|assistant|>", "<|system|>") if t not in vocab]
        if missing:
            raise ConfigError(f"prompt_format oasst: tokenizer '{tokenizer.name_or_path}' lacks {', '.join(missing)}"
                              f"; load it with trainer.tokens.load_tokenizer, which adds the chat tokens")
        return OasstFormat(eos, tokenizer.bos_token, system)
    if name == "airoboros":
        return AiroborosFormat(eos, tokenizer.bos_token, system)
    if name == "alpaca":
        return AlpacaFormat(eos, tokenizer.bos_token, system)
    return PlainFormat(eos, tokenizer.bos_token, system, config.plain_user_name, config.plain_bot_name)
