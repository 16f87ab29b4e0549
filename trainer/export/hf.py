"""`--target hf`: today's layout (safetensors, current tokenizer files) for transformers, vLLM and TGI."""
from __future__ import annotations

from pathlib import Path


def write_hf(model, tokenizer, out: Path, max_shard_size: str) -> None:
    model.save_pretrained(out, max_shard_size=max_shard_size)
    tokenizer.save_pretrained(out)
