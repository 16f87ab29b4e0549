"""Tiny real-architecture models (random weights) and a locally trained tokenizer, for the demo, tests and
benchmarks: no hub needed, and they load through the same `from_pretrained` path as real checkpoints."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from trainer.architectures import ARCHITECTURES
from trainer.tokens import PADDING_TOKEN, add_chat_tokens, padded_vocab_size


def train_tokenizer(texts: Iterable[str], vocab_size: int = 1000):
    """A byte-level BPE like GPT-NeoX's: `<|endoftext|>` = 0, `<|padding|>` = 1, then the chat tokens."""
    from transformers import PreTrainedTokenizerFast

    bpe = _bpe(texts, vocab_size, ["<|endoftext|>", PADDING_TOKEN])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>", bos_token="<|endoftext|>",
                                        unk_token="<|endoftext|>", pad_token=PADDING_TOKEN)
    add_chat_tokens(tokenizer)
    tokenizer.model_max_length = 2048
    return tokenizer


@dataclass(frozen=True)
class TinyChat:
    """What a family's instruct tokenizer adds to a plain BPE: its special tokens and its chat template."""

    bos: str | None
    eos: str
    pad: str | None
    turn_tokens: tuple[str, ...]  # the template's own special tokens (turn markers, end of turn)
    template: str  # file in trainer/tiny_templates/ (its README says where each text comes from)


TEMPLATES = Path(__file__).resolve().parent / "tiny_templates"
# Families whose real tokenizer is not in the reference data; the ids differ from the real ones, the texts do not.
TINY_CHATS = {
    "gemma2": TinyChat("<bos>", "<eos>", "<pad>", ("<start_of_turn>", "<end_of_turn>"), "gemma2.jinja"),
    "gemma3_text": TinyChat("<bos>", "<eos>", "<pad>", ("<start_of_turn>", "<end_of_turn>"), "gemma3_text.jinja"),
    # Phi-3-mini pads with its eos, as published.
    "phi3": TinyChat("<s>", "<|endoftext|>", "<|endoftext|>", ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>"),
                     "phi3.jinja"),
}


def train_chat_tokenizer(texts: Iterable[str], model_type: str, vocab_size: int = 1000):
    """A byte-level BPE with the special tokens and the chat template of `model_type`'s instruct checkpoint
    (`TINY_CHATS`): for tests of chat-template training that must run without the reference data."""
    from transformers import PreTrainedTokenizerFast

    chat = TINY_CHATS[model_type]
    specials = list(dict.fromkeys(t for t in (chat.pad, chat.eos, chat.bos, *chat.turn_tokens) if t))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=_bpe(texts, vocab_size, specials), bos_token=chat.bos,
                                        eos_token=chat.eos, pad_token=chat.pad,
                                        additional_special_tokens=list(chat.turn_tokens))
    tokenizer.chat_template = (TEMPLATES / chat.template).read_text(encoding="utf-8")
    tokenizer.model_max_length = 2048
    return tokenizer


def _bpe(texts: Iterable[str], vocab_size: int, special_tokens: list[str]):
    """A byte-level BPE trained on `texts`, the special tokens first (ids 0, 1, ...)."""
    from tokenizers import ByteLevelBPETokenizer, Tokenizer

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=vocab_size, min_frequency=2, special_tokens=special_tokens)
    return Tokenizer.from_str(bpe.to_str())


def model_config(architecture: str, vocab_size: int, hidden: int = 64, layers: int = 2, heads: int = 4,
                 max_positions: int = 2048):
    if architecture not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {architecture!r}; expected one of {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[architecture].tiny_config(vocab_size, hidden, layers, heads, max_positions)


def save_tiny_model(directory: Path | str, architecture: str, tokenizer, seed: int = 0, **shape) -> Path:
    """Random weights, embedding rows = the tokenizer padded to x16, begin and end ids the tokenizer's, saved with
    the tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM

    directory = Path(directory)
    torch.manual_seed(seed)
    config = model_config(architecture, padded_vocab_size(tokenizer), **shape)
    config.bos_token_id, config.eos_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
