"""`--target hf`: today's layout (safetensors, `chat_template.jinja`) for transformers, vLLM and TGI, with a
`tokenizer_config.json` that transformers 4.x (what vLLM and TGI run) reads too."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from trainer import compat
from trainer.export.target import ExportTarget, WriteOptions


def write_hf(model, tokenizer, fmt, out: Path, options: WriteOptions) -> dict[str, Any]:
    model.save_pretrained(out, max_shard_size=options.max_shard_size)
    tokenizer.save_pretrained(out)
    compat.tokenizer_config_for_4x(out)
    return {}


def usage(record: dict[str, Any]) -> list[str]:
    return ["## Use",
            f"The tokenizer's chat template renders the `{record['prompt_format']}` prompt format the model was "
            f"trained on (a leading system message replaces the trained system prompt); generation stops at the "
            f"eos ids of `generation_config.json`.",
            "```python", "from transformers import AutoModelForCausalLM, AutoTokenizer",
            "model = AutoModelForCausalLM.from_pretrained(PATH); tokenizer = AutoTokenizer.from_pretrained(PATH)",
            "ids = tokenizer.apply_chat_template([{\"role\": \"user\", \"content\": \"What is a meme?\"}],",
            "    add_generation_prompt=True, return_dict=True, return_tensors=\"pt\")[\"input_ids\"]",
            "reply = model.generate(ids, max_new_tokens=64)[0, ids.shape[1]:]",
            "print(tokenizer.decode(reply, skip_special_tokens=True))",
            "```", "vLLM: `vllm serve PATH` (its OpenAI-compatible chat endpoint applies the template)."]


TARGET = ExportTarget("hf", "transformers, vLLM and TGI (every family)", ("fp16", "bf16", "fp32"),
                      write_hf, usage)
