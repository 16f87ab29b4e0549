"""`delphi export RUN_DIR EXPORT_DIR`: load (merging adapters), cast, write the target, check the
written files against the model they came from, record, and (`--verify`) load them with the IPU pipeline's
libraries. Bad input prints one message and exits with code 2.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainer.errors import ConfigError, RunError
from trainer.files import check_writable_dir, refused_pickles
from trainer.export.target import WriteOptions
from trainer.export.targets import TARGETS


@dataclass(frozen=True)
class ExportResult:
    out: Path
    record: dict[str, Any]


def export(source: Path | str, out: Path | str, target: str = "hf", dtype: str = "fp16",
           base_model: str | None = None, max_shard_size: str = "10GB", sequence_length: int | None = None,
           verify: bool = False, trust_remote_code: bool = False) -> ExportResult:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from trainer.export import check, merge
    from trainer.export.card import eval_losses, write_card, write_record
    from trainer.export.parity import add_stops, check_export, eos_ids, parity_export_line, stop_ids
    from trainer.export.source import RESOLVED_CONFIG, read_run
    from trainer.formats import FORMATS
    from trainer.inference import check_base_present
    from trainer.models import TORCH_DTYPES, set_token_ids
    from trainer.tokens import load_tokenizer

    out = Path(out)
    if target not in TARGETS:
        raise ConfigError(f"--target: {target!r}; expected one of {', '.join(TARGETS)}")
    writer = TARGETS[target]
    if dtype not in writer.dtypes:
        raise ConfigError(f"--dtype {dtype} with --target {target}: {writer.loaded_by} reads "
                          f"{' or '.join(writer.dtypes)} weights")
    if verify and writer.verify is None:
        raise ConfigError(f"--verify: --target {target} has no verification; it is offered for "
                          f"{', '.join(n for n, t in TARGETS.items() if t.verify)}")
    check_writable_dir(out, "export directory")
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"{out}: exists and is not empty; export writes a fresh directory")
    run = read_run(source, base_model, trust_remote_code)
    if run.is_adapter and run.export_record:
        raise ConfigError(f"{run.path}: an export directory holding an adapter; export from the training output")
    model_dir = run.base_model if run.is_adapter else run.path
    if run.is_adapter:
        check_base_present(run.path, run.base_model)
    if writer.check_model:
        writer.check_model(AutoConfig.from_pretrained(model_dir, trust_remote_code=run.trust_remote_code),
                           str(model_dir))
    chat_tokens = run.config is None or FORMATS[run.config.data.prompt_format].adds_chat_tokens
    tokenizer = load_tokenizer(str(run.path), trust_remote_code=trust_remote_code, chat_tokens=chat_tokens)
    fmt = run.prompt_format(tokenizer)
    texts = check.check_prompts(fmt)
    ids = check.prompt_ids(tokenizer, texts)
    problem = check.tokenizer_problem(tokenizer, texts, ids)
    if problem:
        raise RunError(f"{run.path}: its tokenizer fails the check prompts: {problem}; is the run complete?")
    with refused_pickles(f"export source '{run.path}'"):
        if run.is_adapter:
            adapted = merge.load_adapter_model(run, tokenizer)
            reference = check.run_prompts(adapted, ids)
            model = adapted.merge_and_unload()
        else:
            model = merge.load_full_model(run)
            reference = check.run_prompts(model, ids)
    merge.cast_parameters(model, TORCH_DTYPES[dtype])
    base_name = run.base_model or (run.config.model.model_name if run.config else str(run.path))
    base_stops = stop_ids(base_name) + eos_ids(model.generation_config.to_dict())
    set_token_ids(model, tokenizer, fmt.end_key)
    if not fmt.adds_chat_tokens:
        add_stops(model, tokenizer, fmt, base_stops)
    tokenizer.chat_template = fmt.chat_template()
    record: dict[str, Any] = {
        "target": target, "dtype": dtype, "source": str(run.path.resolve()), "kind": run.kind,
        "base_model": base_name,
        "adapter_sha256": run.adapter_sha256, "merged": run.is_adapter,
        "vocab_rows": model.get_input_embeddings().num_embeddings,
        "prompt_format": fmt.name, "end_key": fmt.end_key, "eval_loss": eval_losses(run.path),
    }
    out.mkdir(parents=True, exist_ok=True)
    options = WriteOptions(max_shard_size, sequence_length, run.config.data.max_length if run.config else None)
    record |= writer.write(model, tokenizer, fmt, out, options)
    del model
    written = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32, trust_remote_code=trust_remote_code)
    exported = check.run_prompts(written, ids)
    against = "adapter model (base unquantized, original precision)" if run.is_adapter else "source model"
    comparison = check.compare(f"export ({dtype}) vs {against}", reference, exported, dtype)
    print(comparison.line(), flush=True)
    written_tokenizer = AutoTokenizer.from_pretrained(out, trust_remote_code=trust_remote_code)
    problem = check.tokenizer_problem(written_tokenizer, texts, ids)
    tokenizer_line = f"exported tokenizer: {problem or f'the {len(texts)} check prompts round-trip: ok'}"
    print(tokenizer_line, flush=True)
    if not comparison.ok or problem:
        shutil.rmtree(out)
        raise RunError(f"export check failed, {out} removed: {problem or comparison.line()}")
    try:
        parity = check_export(out, fmt, tokenizer, trust_remote_code)
    except RunError as e:
        shutil.rmtree(out)
        raise RunError(f"{e}; {out} removed") from None
    print(parity_export_line(parity), flush=True)
    record["parity"] = parity_export_line(parity)
    record["check"] = comparison.line()
    record["tokenizer_check"] = tokenizer_line
    record["max_logit_diff"] = comparison.max_diff
    if (run.path / RESOLVED_CONFIG).is_file():
        shutil.copy(run.path / RESOLVED_CONFIG, out / RESOLVED_CONFIG)
    if verify:
        verified = writer.verify(out, texts, ids, exported, fmt.end_key)
        print(verified.line(), flush=True)
        record["verify"] = verified.line()
    write_record(out, record)
    write_card(out, run, record, writer.usage(record))
    return ExportResult(out, record)


def parse_args(argv: list[str]):
    from trainer.cli import ArgumentParser

    p = ArgumentParser(prog="delphi export", description=__doc__)
    p.add_argument("source", help="a training output_dir (full model, LoRA or QLoRA adapter) or an export")
    p.add_argument("out", help="the export directory to create (must not exist or be empty)")
    p.add_argument("--target", choices=tuple(TARGETS), default="hf",
                   help="; ".join(f"{name}: {t.loaded_by}" for name, t in TARGETS.items()))
    p.add_argument("--dtype", choices=("fp16", "bf16", "fp32"), default="fp16", help="the exported weights' dtype")
    p.add_argument("--base_model", help="the adapter's base, when resolved_config.yaml's model_name is not found")
    p.add_argument("--max_shard_size", default="10GB", help="weights are split into files of at most this size")
    p.add_argument("--sequence_length", type=int, help="ipu: the pipeline's compiled length; none: the run's "
                   "max_length, at most 2048")
    p.add_argument("--verify", action="store_true",
                   help="ipu: load the export with transformers 4.25.1 (scripts/setup_ipu_env.sh) and compare")
    p.add_argument("--trust_remote_code", action="store_true",
                   help="run code shipped in the model directories (never taken from the run's own config)")
    p.add_argument("--checkpoint", help="export one of the run's checkpoints instead of its final model: best (the "
                   "run's best checkpoint) or a step N (checkpoint-N)")
    return p.parse_args(argv)


def checkpoint_source(run: Path, which: str) -> Path:
    """`--checkpoint best|N`: the run's checkpoint directory, complete, or one line saying why not."""
    from trainer.checkpoints import check_complete, complete_checkpoints
    from trainer.evaluation.best_checkpoint import BEST_FILE, best_step

    if which == "best":
        step = best_step(run)
        if step is None:
            why = "none qualified" if (run / BEST_FILE).is_file() else f"no {BEST_FILE}"
            raise ConfigError(f"--checkpoint best: {run} records no best checkpoint ({why}); pass a step with "
                              f"--checkpoint N")
    elif which.isdigit():
        step = int(which)
    else:
        raise ConfigError(f"--checkpoint: expected best or a step number, got {which!r}")
    path = run / f"checkpoint-{step}"
    if not path.is_dir():
        kept = ", ".join(c.path.name for c in complete_checkpoints(run)) or "none"
        raise ConfigError(f"--checkpoint {which}: {path} does not exist (complete checkpoints in {run}: {kept})")
    check_complete(path)
    return path


def main(argv: list[str]) -> int:
    """`delphi export`; bad input raises DelphiError (the `delphi` wrapper prints it and exits with 2)."""
    args = parse_args(argv)
    if args.sequence_length is not None and args.sequence_length < 1:
        raise ConfigError(f"--sequence_length: {args.sequence_length}; expected a length of at least 1 (none: the "
                          f"run's max_length)")
    from trainer.export.source import EXPORT_RECORD

    source = checkpoint_source(Path(args.source), args.checkpoint) if args.checkpoint else args.source
    result = export(source, args.out, args.target, args.dtype, args.base_model, args.max_shard_size,
                    args.sequence_length, args.verify, args.trust_remote_code)
    print(f"exported to {result.out} ({EXPORT_RECORD}, README.md)")
    return 0
