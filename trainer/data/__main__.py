"""`python -m trainer.data --configs ... [--key value] [--examples N] [--dump FILE] [--rebuild]`

Builds (or loads from cache) every dataset of the config, prints the data report, writes it as JSON with the
resolved config into `output_dir`, and optionally dumps every processed sample as JSONL.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from trainer.config import resolve, split_argv, write_resolved
from trainer.errors import DelphiError

OPTIONS = {"examples": True, "dump": True, "rebuild": False}


def main(argv: list[str]) -> int:
    import datasets

    from trainer.data.build import build_datasets
    from trainer.data.report import dataset_figures, format_report, write_dump
    from trainer.tokens import load_tokenizer

    datasets.disable_progress_bars()
    args = split_argv(argv, OPTIONS)
    examples = args.extra.get("examples", "2")
    if not str(examples).isdigit():
        raise DelphiError(f"--examples must be a number of samples (0 or more), got {examples!r}")
    dump = Path(args.extra["dump"]) if "dump" in args.extra else None
    if dump is not None and not dump.parent.is_dir():
        raise DelphiError(f"--dump {dump}: the directory {dump.parent} does not exist")
    config = resolve(args)
    if not config.datasets:
        raise DelphiError("the config names no datasets: add a section with a `datasets:` list to --configs")
    tokenizer = load_tokenizer(config.effective_tokenizer_name)
    built = build_datasets(config, tokenizer, rebuild=args.extra.get("rebuild", False))
    figures = [dataset_figures(b, config) for b in built]
    print(format_report(built, figures, tokenizer, int(examples)))
    out = Path(config.output_dir)
    write_resolved(config, out)
    (out / "data_report.json").write_text(json.dumps(dict(zip((b.name for b in built), figures)), indent=1))
    print(f"report and resolved config written to {out}/")
    if dump is not None:
        print(f"{write_dump(dump, built, tokenizer):,} samples dumped to {dump}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except DelphiError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
