"""The prompt formats, one module each; `FORMATS` is the registry every other part of Delphi reads.

Adding a format is one module with a `PromptFormat` subclass (renderer, required tokens, option keys, detection)
and one line below; the config's `prompt_format` choices, the dataset cache key, the chat, the export check and
the format detection for directories without a resolved config all follow from the entry.
"""
from __future__ import annotations

from typing import Any

from trainer.errors import ConfigError
from trainer.formats.airoboros import AiroborosFormat
from trainer.formats.alpaca import AlpacaFormat
from trainer.formats.base import ConversationFormat, PromptFormat, Segment
from trainer.formats.oasst import OasstFormat
from trainer.formats.own_template import ChatTemplateFormat
from trainer.formats.plain import PlainFormat

# Detection tries them in this order: a chat template that is not Delphi's own comes after the oasst tokens.
FORMATS: dict[str, type[ConversationFormat]] = {f.name: f for f in (OasstFormat, AiroborosFormat, AlpacaFormat,
                                                                     ChatTemplateFormat, PlainFormat)}
FALLBACK_FORMAT = "plain"  # for a model whose tokenizer shows no format's tell-tale token

__all__ = ["FORMATS", "ConversationFormat", "PromptFormat", "Segment", "build_format", "detect_format",
           "format_for"]


def build_format(name: str, tokenizer, system: str | None = None, **options: Any) -> ConversationFormat:
    """The format `name` for this tokenizer (its eos/bos), with a system prefix (None: none) and the format's own
    options (`option_keys`)."""
    if name not in FORMATS:
        raise ConfigError(f"prompt_format: unknown format {name!r}; expected one of {', '.join(FORMATS)}")
    cls = FORMATS[name]
    eos = tokenizer.eos_token
    if eos is None:
        raise ConfigError(f"tokenizer '{tokenizer.name_or_path}' has no eos token, which ends every reply")
    missing = [t for t in cls.required_tokens if t not in tokenizer.get_vocab()]
    if missing:
        raise ConfigError(f"prompt_format {name}: tokenizer '{tokenizer.name_or_path}' lacks {', '.join(missing)}; "
                          f"load it with trainer.tokens.load_tokenizer, which adds the chat tokens")
    return cls.for_tokenizer(tokenizer, system, **options)


def format_for(data, tokenizer) -> ConversationFormat:
    """The format a data config names (`prompt_format`), with its system prefix and the format's own options."""
    cls = FORMATS.get(data.prompt_format)
    options = {key: getattr(data, key) for key in (cls.option_keys if cls else ())}
    return build_format(data.prompt_format, tokenizer, data.system, **options)


def detect_format(tokenizer) -> tuple[str, str]:
    """For a model without a resolved config: the first format whose tell-tale tokens the tokenizer holds, else
    the fallback; and why, for the user."""
    for name, cls in FORMATS.items():
        if cls.detect(tokenizer):
            return name, (f"the tokenizer holds {', '.join(cls.required_tokens)}" if cls.required_tokens else
                          "the tokenizer carries a chat template of its own")
    return FALLBACK_FORMAT, "the tokenizer holds no format's special tokens"
