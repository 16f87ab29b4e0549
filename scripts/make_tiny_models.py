"""Builds the demo's tiny models into .cache/tiny/<architecture>: random weights, every registered architecture
(GPT-NeoX, MPT, Falcon, Llama, Qwen2, Qwen3, Mistral, Gemma 2, Gemma 3, Phi-3), and a byte-level BPE tokenizer
trained on the bundled data with the real special tokens (Gemma 2, Gemma 3 and Phi-3: their instruct checkpoints'
special tokens and chat template, `trainer.tiny.TINY_CHATS`).
A user with a hub passes a hub name as `--model_name` instead and never needs this."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from trainer.architectures import ARCHITECTURES  # noqa: E402
from trainer.paths import CHECKOUT as REPO_ROOT  # noqa: E402
from trainer.tiny import TINY_CHATS, save_tiny_model, train_chat_tokenizer, train_tokenizer  # noqa: E402


def main() -> None:
    out = REPO_ROOT / ".cache" / "tiny"
    if all((out / a / "config.json").is_file() for a in ARCHITECTURES):
        print(f"tiny models already in {out}")
        return
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # one line per model below says what was written
    texts = [line for p in sorted((REPO_ROOT / "data").rglob("*")) if p.is_file()
             for line in p.read_text(encoding="utf-8").splitlines()]
    tokenizer = train_tokenizer(texts)
    for architecture in ARCHITECTURES:
        chosen = train_chat_tokenizer(texts, architecture) if architecture in TINY_CHATS else tokenizer
        save_tiny_model(out / architecture, architecture, chosen)
        print(f"{architecture}: {out / architecture} ({len(chosen)} tokens)")


if __name__ == "__main__":
    main()
