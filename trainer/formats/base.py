"""What every prompt format is: a renderer of conversations into trained and untrained text segments.

A format renders a conversation as a list of `Segment`s: pieces of text, each either trained (an assistant reply
and its end token) or not (everything the model is given). Message texts and special tokens are segments of
their own, so `trainer.data.tokenize` can encode each distinct text once and reuse it across the OASST threads
that share a prefix. The prompter side of an exchange is one segment in the template formats (airoboros, alpaca,
plain) because there the template text runs into the message text and must be tokenized with it, exactly as the
prompt is tokenized at inference; the reply is always a segment of its own (source and target are tokenized
separately, as the qlora fork does, and inference also stops the prompt right before the reply).

Rendering is a header (bos, system prompt or preamble) followed by one block per prompter/assistant exchange.
The system prompt is the conversation's own (a system turn in chat data) when it has one, else the configured
prefix. `generation_prompt` uses the same pieces and stops right after the last prompter block, so the string a
chat sends is byte for byte the prefix the model was trained on; `chat_template` is the same rendering as a Jinja
chat template, built from these pieces (`trainer.formats.chat_template`), for tokenizers and servers.

A format class is one registry entry (`trainer.formats.FORMATS`): besides rendering it says which tokens the
tokenizer must hold, which data-config keys it reads (`option_keys`, also part of the dataset cache key) and
whether a tokenizer betrays that a model was trained with it (`detect`).

Every format is a `ConversationFormat`: it renders a conversation into segments (`render`) and a chat's history
into the prompt to answer (`generation_segments`), and gives the chat template a server renders it with. The four
Delphi formats are `PromptFormat`s, built from a header, a prompter block and a reply; `chat_template`
(`trainer.formats.own_template`) renders with the model's own template instead and is tokenized as one text
(`tokenize_segments` false).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar, NamedTuple, Sequence

from trainer.data.conversation import ASSISTANT, PROMPTER, Conversation, Turn
from trainer.errors import DataError
from trainer.formats.chat_template import build_chat_template


class Segment(NamedTuple):
    text: str
    trained: bool  # True for the assistant reply and its end token (the only tokens with labels when masking)


def turn_text(turn: Turn) -> str:
    """OASST's alpaca rule for formats without an input block: the input goes on a new line after the text."""
    return f"{turn.text}\n{turn.context}" if turn.context else turn.text


def check_alternation(turns: Sequence[Turn], where: str, *, ends_with: str, name: str) -> None:
    """Formats render prompter/assistant pairs; anything else is a reader bug or bad data, named by origin. Tool
    calls and results are refused as such: only a model's own chat template has a place for them."""
    if not turns:
        raise DataError(f"{where}: conversation has no turns")
    for i, turn in enumerate(turns):
        if turn.role not in (PROMPTER, ASSISTANT) or turn.extra:
            what = f"role {turn.role!r}" if turn.role not in (PROMPTER, ASSISTANT) else ", ".join(turn.extra)
            raise DataError(f"{where}: turn {i} has {what}: tool calls are not trained by the {name} format "
                            f"(prompt_format chat_template trains them where the model's own template renders "
                            f"tools)")
        expected = PROMPTER if i % 2 == 0 else ASSISTANT
        if turn.role != expected:
            raise DataError(f"{where}: turn {i} has role {turn.role!r}, expected {expected!r} "
                            f"(turns alternate, starting with a prompter turn)")
    if turns[-1].role != ends_with:
        raise DataError(f"{where}: the last turn must have role {ends_with!r}, got {turns[-1].role!r}")


class ConversationFormat(ABC):
    """What every format is, whatever renders it. `system` is the configured system prefix (None when
    `use_system_prefix` is off)."""

    name: ClassVar[str]
    required_tokens: ClassVar[tuple[str, ...]] = ()  # the tokenizer must hold these (as special tokens)
    option_keys: ClassVar[tuple[str, ...]] = ()  # data-config keys read besides the system prefix
    # False: the rendered text of a sample is tokenized in one piece (labels from character offsets) instead of
    # segment by segment.
    tokenize_segments: ClassVar[bool] = True
    # Whether the tokenizer gets Delphi's five chat tokens (`trainer.tokens.CHAT_SPECIAL_TOKENS`) added.
    adds_chat_tokens: ClassVar[bool] = True
    end_key: str  # the stop string a chat watches for: what ends every trained reply
    system: str | None

    @classmethod
    @abstractmethod
    def for_tokenizer(cls, tokenizer, system: str | None, **options: Any) -> ConversationFormat:
        """This format for a tokenizer, with a system prefix and the format's own options."""

    @classmethod
    def detect(cls, tokenizer) -> bool:
        """True when a tokenizer shows that a model was trained in this format (for directories without a
        resolved config); formats without a tell-tale token never claim one."""
        return False

    @abstractmethod
    def settings(self) -> dict[str, Any]:
        """Everything that changes the rendered text, for cache keys."""

    @abstractmethod
    def render(self, conv: Conversation) -> list[Segment]:
        """The training sample as trained and untrained text segments."""

    @abstractmethod
    def generation_segments(self, turns: Sequence[Turn], system: str | None) -> list[Segment]:
        """The segments to generate the next reply from: `turns` is the history, ending with a prompter turn.

        `system` is the system prefix to use, None for none (pass `self.system` for the one trained with).
        """

    def generation_prompt(self, turns: Sequence[Turn], system: str | None) -> str:
        """`generation_segments` as one string. With earlier replies in the history, encode the segments
        instead (`trainer.data.tokenize.encode_prompt`): a reply was trained tokenized apart from its prompt."""
        return "".join(s.text for s in self.generation_segments(turns, system))

    @abstractmethod
    def chat_template(self) -> str:
        """The Jinja chat template (`tokenizer.chat_template`) that renders what this format trains."""


class PromptFormat(ConversationFormat):
    """One of Delphi's own formats: a header, then a prompter block and a reply per exchange."""

    # What ends every prompter block and starts the reply (`<|assistant|>`, " ASSISTANT: "...): the part a chat
    # template adds for `add_generation_prompt`.
    assistant_cue: str

    def __init__(self, eos: str, bos: str | None, system: str | None, **options: Any):
        unknown = set(options) - set(self.option_keys)
        if unknown:
            raise TypeError(f"prompt format {self.name!r} takes no options {sorted(unknown)}")
        self.eos = eos
        self.bos = bos
        self.system = system
        self.options = options

    @classmethod
    def for_tokenizer(cls, tokenizer, system: str | None, **options: Any) -> PromptFormat:
        """The format with the tokenizer's eos and bos."""
        return cls(tokenizer.eos_token, tokenizer.bos_token, system, **options)

    def settings(self) -> dict[str, Any]:
        return {"name": self.name, "system": self.system, "eos": self.eos, "bos": self.bos, **self.options}

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
        check_alternation(turns, conv.origin or conv.source, ends_with=ASSISTANT, name=self.name)
        segments = self.header(turns[0], self.system if conv.system is None else conv.system)
        for i in range(0, len(turns), 2):
            segments += self.prompt(turns[i], i // 2)
            segments += self.reply(turns[i + 1])
        return segments

    def generation_segments(self, turns: Sequence[Turn], system: str | None) -> list[Segment]:
        check_alternation(turns, "chat history", ends_with=PROMPTER, name=self.name)
        segments = self.header(turns[0], system)
        for i in range(0, len(turns) - 1, 2):
            segments += self.prompt(turns[i], i // 2)
            segments += self.reply(turns[i + 1])
        segments += self.prompt(turns[-1], len(turns) // 2)
        return segments

    def chat_template(self) -> str:
        """This format as a Jinja chat template: `apply_chat_template` renders exactly what `render` and
        `generation_prompt` render, a leading system message replacing the configured prefix."""
        return build_chat_template(self)
