"""Tiny real-architecture models (random weights) and a locally trained tokenizer, for the demo, tests and
benchmarks: no hub needed, and they load through the same `from_pretrained` path as real checkpoints."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

from trainer.architectures import ARCHITECTURES
from trainer.tokens import PADDING_TOKEN, add_chat_tokens, padded_vocab_size


def train_tokenizer(texts: Iterable[str], vocab_size: int = 1000):
    """A byte-level BPE like GPT-NeoX's: `<|endoftext|>` = 0, `<|padding|>` = 1, then the chat tokens."""
    from tokenizers import ByteLevelBPETokenizer, Tokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=vocab_size, min_frequency=2,
                            special_tokens=["<|endoftext|>", PADDING_TOKEN])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(bpe.to_str()), eos_token="<|endoftext|>",
                                        bos_token="<|endoftext|>", unk_token="<|endoftext|>",
                                        pad_token=PADDING_TOKEN)
    add_chat_tokens(tokenizer)
    tokenizer.model_max_length = 2048
    return tokenizer


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
