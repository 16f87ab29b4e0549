"""`--target ipu`: a directory Graphcore's IPU inference pipeline (graphcore/examples `nlp/dolly/popxl`,
`api.DollyPipeline`) loads unchanged, with the library versions it pins (transformers 4.25.1, tokenizers 0.13.3).

What that means, and why (graphcore/examples `nlp/dolly/popxl`: `api.DollyPipeline`, `config/inference.yml`, and
the checkpoint loader `utils/setup.py`):
- GPT-NeoX only: the pipeline builds a GPT-NeoX graph and copies weights by GPT-NeoX attribute names.
- `pytorch_model.bin` (shards + `pytorch_model.bin.index.json` past the size limit): 4.25.1 without the
  `safetensors` package cannot read `model.safetensors`. fp16 parameters; no buffers.
- `config.json` with the 4.x keys (`rotary_pct`, `rotary_emb_base`, ...) that today's transformers only writes
  inside `rope_parameters`, which 4.25.1 ignores (it would fall back to its defaults).
- `tokenizer.json` with merges as `"a b"` strings (tokenizers >= 0.20 writes pairs, which 0.13.3 rejects), and
  `tokenizer_config.json` / `special_tokens_map.json` in the 4.x form.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from trainer.data.conversation import PROMPTER, Turn
from trainer.errors import ConfigError
from trainer.export.target import ExportTarget, WriteOptions
from trainer.tokens import ASSISTANT_TOKEN, PROMPTER_TOKEN

MAX_SEQUENCE_LENGTH = 2048  # the pipeline's largest compiled input
ONE_TOKEN = ("<|endoftext|>", PROMPTER_TOKEN, ASSISTANT_TOKEN)
# The shipped `dolly` presets of config/inference.yml (Pythia-12B): another shape needs a preset edited to match.
DOLLY_PRESET = {"layers": 36, "hidden_size": 5120, "heads": 40, "rotary_dim": 32, "sequence_length": 2048}
# The GPT-NeoX variant the pipeline's graph implements: config field -> (required value, what it means).
GRAPH_REQUIREMENTS = {
    "use_parallel_residual": (True, "the graph adds attention and MLP to the residual in parallel"),
    "tie_word_embeddings": (False, "the graph reads a separate embed_out head"),
    "hidden_act": ("gelu", "the graph's MLP uses exact GELU"),
    "attention_bias": (True, "the graph reads the fused query_key_value bias"),
}


def check_ipu_model(hf_config, where: str) -> None:
    """Fails before any weights load when the pipeline could not run this model; names the field and why."""
    if hf_config.model_type != "gpt_neox":
        raise ConfigError(
            f"--target ipu: {where} is a {hf_config.model_type} model (config.json model_type), but the IPU export "
            f"is GPT-NeoX only: Graphcore's pipeline (DollyPipeline) builds the GPT-NeoX/Pythia graph and copies "
            f"weights by GPT-NeoX names; use --target hf (transformers, vLLM, TGI) instead")
    for field, (required, why) in GRAPH_REQUIREMENTS.items():
        value = getattr(hf_config, field, required)
        if value != required:
            raise ConfigError(f"--target ipu: {where}/config.json {field} is {value!r}, the IPU pipeline needs "
                              f"{required!r} ({why}); use --target hf")
    rope = getattr(hf_config, "rope_parameters", None) or {}
    if rope.get("rope_type", "default") != "default":
        raise ConfigError(f"--target ipu: {where}/config.json rope_parameters.rope_type is {rope['rope_type']!r}; "
                          f"the IPU pipeline implements plain rotary embeddings only; use --target hf")


def pipeline_settings(model, tokenizer, prompt_format, sequence_length: int) -> dict[str, Any]:
    """What a user passes to `DollyPipeline` (and sets in the IPU config) for this export."""
    if not 1 <= sequence_length <= MAX_SEQUENCE_LENGTH:
        raise ConfigError(f"--sequence_length: {sequence_length}; the IPU pipeline compiles 1..{MAX_SEQUENCE_LENGTH}")
    cfg = model.config
    if sequence_length > cfg.max_position_embeddings:
        raise ConfigError(f"--sequence_length: {sequence_length} exceeds the model's max_position_embeddings "
                          f"{cfg.max_position_embeddings}")
    rows = model.get_input_embeddings().num_embeddings
    for part, n in (("embed_out", model.get_output_embeddings().weight.shape[0]), ("config.vocab_size", cfg.vocab_size)):
        if n != rows:
            raise ConfigError(f"--target ipu: embed_in has {rows:,} rows but {part} is {n:,}; the pipeline needs "
                              f"both embeddings and config.vocab_size equal")
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    shape = {"layers": cfg.num_hidden_layers, "hidden_size": cfg.hidden_size, "heads": cfg.num_attention_heads,
             "rotary_dim": int(head_dim * cfg.rope_parameters["partial_rotary_factor"]),
             "sequence_length": sequence_length}
    return {
        "vocab_size": rows,
        "sequence_length": sequence_length,
        "end_key": prompt_format.end_key,
        "prompt_format": prompt_template(prompt_format),
        "model_shape": shape,
        "differs_from_dolly_preset": {k: v for k, v in shape.items()
                                      if k != "sequence_length" and DOLLY_PRESET[k] != v},
    }


def describe(settings: dict[str, Any]) -> str:
    """The values a pipeline user must set, and a warning when the graph preset has to be edited to match."""
    shape = settings["model_shape"]
    lines = [f"IPU pipeline: config.model.embedding.vocab_size = {settings['vocab_size']}; "
             f"DollyPipeline(config, sequence_length={settings['sequence_length']}, "
             f"prompt_format={settings['prompt_format']!r}, end_key={settings['end_key']!r})",
             f"  graph shape: layers {shape['layers']}, hidden {shape['hidden_size']}, heads {shape['heads']}, "
             f"rotary dim {shape['rotary_dim']}"]
    preset = {k: DOLLY_PRESET[k] for k in settings["differs_from_dolly_preset"]}
    if preset:
        lines.append(f"  warning: the shipped dolly preset has {preset}; nothing checks the preset against "
                     f"config.json, so edit it to the values above")
    return "\n".join(lines)


def prompt_template(prompt_format) -> str:
    """The pipeline's `prompt_format`: the chat template around `{instruction}` (it calls str.format, so any
    other brace is doubled)."""
    marker = "\x00instruction\x00"
    text = prompt_format.generation_prompt([Turn(PROMPTER, marker)], prompt_format.system)
    return text.replace("{", "{{").replace("}", "}}").replace(marker, "{instruction}")


def check_tokens(tokenizer, end_key: str) -> None:
    """The pipeline asserts `len(encode(end_key)) == 1` and right-pads with `pad_token_id`."""
    if tokenizer.pad_token_id is None:
        raise ConfigError("--target ipu: the tokenizer has no pad token; the pipeline right-pads prompts with it")
    for token in dict.fromkeys((*ONE_TOKEN, end_key)):
        ids = tokenizer.encode(token, add_special_tokens=False)
        if len(ids) != 1:
            raise ConfigError(f"--target ipu: tokenizer encodes {token!r} as {len(ids)} tokens {ids}; the pipeline "
                              f"needs it as exactly one")


def write_ipu(model, tokenizer, fmt, out: Path, options: WriteOptions) -> dict[str, Any]:
    """The pipeline's files, and its settings for the record (printed too: the user passes them on)."""
    check_tokens(tokenizer, fmt.end_key)
    sequence_length = options.sequence_length if options.sequence_length is not None else \
        min(options.max_length or MAX_SEQUENCE_LENGTH, MAX_SEQUENCE_LENGTH)
    settings = pipeline_settings(model, tokenizer, fmt, sequence_length)
    model.save_pretrained(out, max_shard_size=options.max_shard_size)  # today's names (embed_out), then converted
    safetensors_to_bin(out)
    write_legacy_config(model, tokenizer, out)
    write_legacy_tokenizer(tokenizer, out, sequence_length)
    print(describe(settings), flush=True)
    return {"ipu_pipeline": settings}


def safetensors_to_bin(out: Path) -> None:
    """`model*.safetensors` -> `pytorch_model*.bin`, the index renamed and pointing at the new files."""
    import torch
    from safetensors.torch import load_file

    index = out / "model.safetensors.index.json"
    shards = sorted(out.glob("model*.safetensors"))
    renamed = {s.name: "pytorch_model" + s.name[len("model"):-len(".safetensors")] + ".bin" for s in shards}
    for shard in shards:
        torch.save(load_file(shard), out / renamed[shard.name])
        shard.unlink()
    if index.is_file():
        data = json.loads(index.read_text())
        data["weight_map"] = {k: renamed[v] for k, v in data["weight_map"].items()}
        (out / "pytorch_model.bin.index.json").write_text(json.dumps(data, indent=2) + "\n")
        index.unlink()


def write_legacy_config(model, tokenizer, out: Path) -> None:
    """Today's config plus the top-level keys transformers 4.25.1 reads instead of `rope_parameters`."""
    cfg = model.config
    data = json.loads((out / "config.json").read_text())
    data.pop("quantization_config", None)
    data.update({
        "architectures": ["GPTNeoXForCausalLM"], "model_type": "gpt_neox",
        "rotary_pct": cfg.rope_parameters["partial_rotary_factor"],
        "rotary_emb_base": cfg.rope_parameters["rope_theta"],
        "use_parallel_residual": cfg.use_parallel_residual, "intermediate_size": cfg.intermediate_size,
        "hidden_act": cfg.hidden_act, "tie_word_embeddings": False,
        "max_position_embeddings": cfg.max_position_embeddings,
        "vocab_size": model.get_input_embeddings().num_embeddings,
        "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id, "torch_dtype": str(model.dtype).removeprefix("torch."),
        "use_cache": True,
    })
    (out / "config.json").write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def write_legacy_tokenizer(tokenizer, out: Path, sequence_length: int) -> None:
    tokenizer.save_pretrained(out)
    tokenizer_json = out / "tokenizer.json"
    data = json.loads(tokenizer_json.read_text(encoding="utf-8"))
    merges = data["model"].get("merges", [])
    if merges and isinstance(merges[0], list):
        if any(" " in a or " " in b for a, b in merges):
            raise ConfigError("--target ipu: a tokenizer merge contains a space, which the string form of merges "
                              "that tokenizers 0.13.3 reads cannot express")
        data["model"]["merges"] = [f"{a} {b}" for a, b in merges]
    tokenizer_json.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    specials = {"bos_token": tokenizer.bos_token, "eos_token": tokenizer.eos_token,
                "unk_token": tokenizer.unk_token, "pad_token": tokenizer.pad_token,
                "additional_special_tokens": [t for t in tokenizer.all_special_tokens
                                              if t not in (tokenizer.bos_token, tokenizer.eos_token,
                                                           tokenizer.unk_token, tokenizer.pad_token)]}
    (out / "special_tokens_map.json").write_text(json.dumps(specials, indent=2) + "\n")
    config = {"tokenizer_class": "GPTNeoXTokenizer", "add_prefix_space": False,
              "model_max_length": sequence_length, "padding_side": "right", **specials,
              "chat_template": tokenizer.chat_template}  # ignored by 4.25.1; read by transformers >= 4.34
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")



def usage(record: dict[str, Any]) -> list[str]:
    p = record["ipu_pipeline"]
    shape = p["model_shape"]
    return ["## Graphcore IPU pipeline (graphcore/examples nlp/dolly/popxl)",
            f"Set `config.model.embedding.vocab_size = {p['vocab_size']}`; the graph's shape comes from the preset, "
            f"not from config.json: layers {shape['layers']}, hidden {shape['hidden_size']}, heads {shape['heads']}, "
            f"rotary dim {shape['rotary_dim']}"
            + (f" (differs from the dolly preset in {sorted(p['differs_from_dolly_preset'])}: edit the preset)"
               if p["differs_from_dolly_preset"] else " (the shipped dolly preset)") + ".",
            "```python",
            f"pipe = api.DollyPipeline(config, sequence_length={p['sequence_length']}, micro_batch_size=1,",
            f"    hf_dolly_checkpoint=PATH, prompt_format={p['prompt_format']!r}, end_key={p['end_key']!r})",
            "```"]


def verify(out: Path, prompts: list[str], ids: list[list[int]], exported, end_key: str):
    """The export loaded by transformers 4.25.1 / tokenizers 0.13.3 in their own venv (`trainer.export.verify`)."""
    from trainer.export.verify import verify_ipu

    return verify_ipu(out, prompts, ids, exported, end_key)


# bf16: the pipeline converts weights through numpy, which has no bf16.
TARGET = ExportTarget("ipu", "Graphcore's IPU pipeline (DollyPipeline; transformers 4.25.1, GPT-NeoX only)",
                      ("fp16", "fp32"), write_ipu, usage, check_model=check_ipu_model, verify=verify)
