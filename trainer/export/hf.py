"""`--target hf`: today's layout (safetensors, current tokenizer files) for transformers, vLLM and TGI."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from trainer.export.target import ExportTarget, WriteOptions


def write_hf(model, tokenizer, fmt, out: Path, options: WriteOptions) -> dict[str, Any]:
    model.save_pretrained(out, max_shard_size=options.max_shard_size)
    tokenizer.save_pretrained(out)
    return {}


def usage(record: dict[str, Any]) -> list[str]:
    return ["## Use", "```python", "from transformers import AutoModelForCausalLM, AutoTokenizer",
            "model = AutoModelForCausalLM.from_pretrained(PATH); tokenizer = AutoTokenizer.from_pretrained(PATH)",
            "```"]


TARGET = ExportTarget("hf", "transformers, vLLM and TGI (GPT-NeoX, MPT, Falcon)", ("fp16", "bf16", "fp32"),
                      write_hf, usage)
