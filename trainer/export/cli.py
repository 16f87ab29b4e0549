"""`python -m trainer.export RUN_DIR EXPORT_DIR`: load (merging adapters), cast, write the target, check the
written files against the model they came from, record, and (`--verify`) load them with the IPU pipeline's
libraries. Bad input prints one message and exits with code 2.
"""
from __future__ import annotations

import argparse
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainer.errors import ConfigError, DelphiError
from trainer.export.source import EXPORT_RECORD, RESOLVED_CONFIG, read_run

TARGETS = ("hf", "ipu")


@dataclass(frozen=True)
class ExportResult:
    out: Path
    record: dict[str, Any]


def export(source: Path | str, out: Path | str, target: str = "hf", dtype: str = "fp16",
           base_model: str | None = None, max_shard_size: str = "10GB", sequence_length: int | None = None,
           verify: bool = False) -> ExportResult:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from trainer.data.formats import prompt_format
    from trainer.export import check, hf, ipu, merge
    from trainer.export.card import eval_losses, write_card, write_record
    from trainer.models import TORCH_DTYPES
    from trainer.tokens import load_tokenizer

    out = Path(out)
    if target not in TARGETS:
        raise ConfigError(f"--target: {target!r}; expected one of {', '.join(TARGETS)}")
    if target == "ipu" and dtype == "bf16":
        raise ConfigError("--dtype bf16 with --target ipu: the pipeline converts weights through numpy, which has "
                          "no bf16; use fp16 (or fp32)")
    if verify and target != "ipu":
        raise ConfigError("--verify checks an IPU export against transformers 4.25.1; use it with --target ipu")
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"{out}: exists and is not empty; export writes a fresh directory")
    run = read_run(source, base_model)
    if run.is_adapter and run.export_record:
        raise ConfigError(f"{run.path}: an export directory holding an adapter; export from the training output")
    model_dir = run.base_model if run.is_adapter else run.path
    if target == "ipu":
        ipu.check_ipu_model(AutoConfig.from_pretrained(model_dir, trust_remote_code=run.config.trust_remote_code),
                            str(model_dir))
    tokenizer = load_tokenizer(str(run.path))
    fmt = prompt_format(run.config, tokenizer)
    texts = check.check_prompts(fmt)
    ids = check.prompt_ids(tokenizer, texts)
    if run.is_adapter:
        adapted = merge.load_adapter_model(run, tokenizer)
        reference = check.run_prompts(adapted, ids)
        model = adapted.merge_and_unload()
    else:
        model = merge.load_full_model(run)
        reference = check.run_prompts(model, ids)
    merge.cast_parameters(model, TORCH_DTYPES[dtype])
    record: dict[str, Any] = {
        "target": target, "dtype": dtype, "source": str(run.path.resolve()), "kind": run.kind,
        "base_model": run.base_model or run.config.model_name, "adapter_sha256": run.adapter_sha256,
        "merged": run.is_adapter, "vocab_rows": model.get_input_embeddings().num_embeddings,
        "prompt_format": run.config.prompt_format, "end_key": fmt.end_key,
        "eval_loss": eval_losses(run.path),
    }
    out.mkdir(parents=True, exist_ok=True)
    if target == "ipu":
        ipu.check_tokens(tokenizer, fmt.end_key)
        if sequence_length is None:
            sequence_length = min(run.config.max_length, ipu.MAX_SEQUENCE_LENGTH)
        record["ipu_pipeline"] = ipu.pipeline_settings(model, tokenizer, fmt, sequence_length)
        ipu.write_ipu(model, tokenizer, out, max_shard_size, record["ipu_pipeline"]["sequence_length"])
        print(ipu.describe(record["ipu_pipeline"]), flush=True)
    else:
        hf.write_hf(model, tokenizer, out, max_shard_size)
    del model
    written = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32,
                                                   trust_remote_code=run.config.trust_remote_code)
    exported = check.run_prompts(written, ids)
    against = "adapter model (base unquantized, original precision)" if run.is_adapter else "source model"
    comparison = check.compare(f"export ({dtype}) vs {against}", reference, exported, dtype)
    print(comparison.line(), flush=True)
    if not comparison.ok:
        shutil.rmtree(out)
        raise ConfigError(f"export check failed, {out} removed: {comparison.line()}")
    record["check"] = comparison.line()
    record["max_logit_diff"] = comparison.max_diff
    if (run.path / RESOLVED_CONFIG).is_file():
        shutil.copy(run.path / RESOLVED_CONFIG, out / RESOLVED_CONFIG)
    if verify:
        from trainer.export.verify import verify_ipu

        verified = verify_ipu(out, texts, ids, exported, fmt.end_key)
        print(verified.line(), flush=True)
        record["verify"] = verified.line()
    write_record(out, record)
    write_card(out, run, record)
    return ExportResult(out, record)


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m trainer.export", description=__doc__)
    p.add_argument("source", help="a training output_dir (full model, LoRA or QLoRA adapter) or an export")
    p.add_argument("out", help="the export directory to create (must not exist or be empty)")
    p.add_argument("--target", choices=TARGETS, default="hf",
                   help="hf: safetensors for transformers/vLLM/TGI; ipu: Graphcore's IPU pipeline (GPT-NeoX)")
    p.add_argument("--dtype", choices=("fp16", "bf16", "fp32"), default="fp16")
    p.add_argument("--base_model", help="the adapter's base, when resolved_config.yaml's model_name is not found")
    p.add_argument("--max_shard_size", default="10GB", help="weights are split into files of at most this size")
    p.add_argument("--sequence_length", type=int, help="ipu: the pipeline's compiled length (default: the run's "
                   "max_length, at most 2048)")
    p.add_argument("--verify", action="store_true",
                   help="ipu: load the export with transformers 4.25.1 (scripts/setup_ipu_env.sh) and compare")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        result = export(args.source, args.out, args.target, args.dtype, args.base_model, args.max_shard_size,
                        args.sequence_length, args.verify)
    except DelphiError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"exported to {result.out} ({EXPORT_RECORD}, README.md)")
    return 0
