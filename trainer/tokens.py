"""The tokenizer with the chat special tokens, and the embedding size they imply."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

from trainer.errors import ConfigError
from trainer.paths import looks_like_path

PROMPTER_TOKEN, ASSISTANT_TOKEN, SYSTEM_TOKEN = "<|prompter|>", "<|assistant|>", "<|system|>"
# Added in this fixed order, so the new ids never depend on the process (OASST's set() order did).
CHAT_SPECIAL_TOKENS = (PROMPTER_TOKEN, ASSISTANT_TOKEN, SYSTEM_TOKEN, "<|prefix_begin|>", "<|prefix_end|>")
PADDING_TOKEN = "<|padding|>"
IGNORE_INDEX = -100  # the label of a token that is not trained (what torch's cross-entropy skips)


def load_tokenizer(name_or_path: str | None, model_max_length: int | None = None,
                   format_tokens: Sequence[str] = (), trust_remote_code: bool = False, chat_tokens: bool = True):
    """AutoTokenizer plus the chat special tokens, any other special token the prompt format needs
    (`ConversationFormat.required_tokens`), and a pad token (`<|padding|>` where the vocab has it). With `chat_tokens`
    false (a model trained on its own chat template) nothing is added: only a pad token is chosen where the
    tokenizer has none that is not its eos (`choose_pad`).
    `trust_remote_code` is always passed: left out, transformers asks on the terminal when a directory ships code."""
    from transformers import AutoTokenizer

    if not name_or_path:
        raise ConfigError("no tokenizer: set 'model_name' (or 'tokenizer_name') to a hub name or a local directory")
    if looks_like_path(name_or_path) and not Path(name_or_path).exists():
        raise ConfigError(f"tokenizer '{name_or_path}': no such directory (and it is not a hub name)")
    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise ConfigError(f"tokenizer '{name_or_path}' could not be loaded: {str(e).splitlines()[0]}") from None
    if chat_tokens:
        add_chat_tokens(tokenizer, format_tokens)
    else:
        choose_pad(tokenizer)
    if model_max_length:
        tokenizer.model_max_length = model_max_length
    return tokenizer


def add_chat_tokens(tokenizer, format_tokens: Sequence[str] = ()) -> None:
    """The five chat tokens first, always in the same order (so ids match OASST's vocab of 50,288), then the
    format's own."""
    if tokenizer.eos_token is None:
        raise ConfigError(f"tokenizer '{tokenizer.name_or_path}' has no eos token, which ends every turn")
    wanted = dict.fromkeys((*CHAT_SPECIAL_TOKENS, *format_tokens))
    missing = [t for t in wanted if tokenizer.convert_tokens_to_ids(t) in (None, tokenizer.unk_token_id)]
    if missing:
        tokenizer.add_special_tokens({"additional_special_tokens": missing}, replace_extra_special_tokens=False)
    if tokenizer.pad_token is None:
        vocab = tokenizer.get_vocab()
        tokenizer.pad_token = PADDING_TOKEN if PADDING_TOKEN in vocab else tokenizer.eos_token


def choose_pad(tokenizer) -> None:
    """A pad token that is not the eos: the tokenizer's own where it has one, else one of its reserved special
    tokens that its chat template never writes, a "pad" one first (Llama 3.x: `<|finetune_right_pad_id|>`), then a
    reserved / unused / placeholder / control one (Mistral v0.3: `[control_8]`), the lowest id; only a tokenizer
    with none of these gets `<|padding|>` added (one embedding row). Padding with the eos would teach collators
    that mask padding by id to mask the end of every reply."""
    if tokenizer.eos_token is None:
        raise ConfigError(f"tokenizer '{tokenizer.name_or_path}' has no eos token, which ends every turn")
    if tokenizer.pad_token is not None and tokenizer.pad_token != tokenizer.eos_token:
        return
    taken = {tokenizer.eos_token, tokenizer.bos_token, tokenizer.unk_token}
    template = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else ""
    spare = [t.content for _, t in sorted(tokenizer.added_tokens_decoder.items())
             if t.special and t.content not in taken and t.content not in template]
    for words in (("pad",), ("reserved", "unused", "placeholder", "control")):
        pick = next((t for t in spare if any(w in t.lower() for w in words)), None)
        if pick is not None:
            tokenizer.pad_token = pick
            return
    tokenizer.add_special_tokens({"pad_token": PADDING_TOKEN})


def padded_vocab_size(tokenizer, multiple: int = 16) -> int:
    """Embedding rows: len(tokenizer) rounded up (GPT-NeoX-20B + 5 chat tokens: 50,282 -> 50,288)."""
    return math.ceil(len(tokenizer) / multiple) * multiple
