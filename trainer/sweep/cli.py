"""`delphi sweep run|wandb|report`."""
from __future__ import annotations

from pathlib import Path

import yaml

from trainer.sweep.spec import load_sweep
from trainer.sweep.trials import run_sweep
from trainer.sweep.wandb_sweep import wandb_config


def main(argv: list[str]) -> int:
    """`delphi sweep`; bad input raises DelphiError (the `delphi` wrapper prints it and exits with 2)."""
    from trainer.cli import ArgumentParser

    parser = ArgumentParser(prog="delphi sweep", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run every trial not finished yet, then write the report")
    run.add_argument("sweep_file", type=Path, help="the sweep's YAML file (e.g. configs/sweeps/demo-grid.yaml)")
    run.add_argument("--dry_run", action="store_true", help="list the trials and their overrides, run nothing")
    run.add_argument("--retry_failed", action="store_true", help="run failed trials again (they resume)")
    export = sub.add_parser("wandb", help="write the equivalent wandb sweep configuration")
    export.add_argument("sweep_file", type=Path, help="the sweep's YAML file")
    export.add_argument("--output", type=Path, help="default: <sweep output_dir>/wandb_sweep.yaml")
    report = sub.add_parser("report", help="table and plots of a sweep directory")
    report.add_argument("sweep_dir", type=Path, help="the sweep's output directory (its trials' metrics)")
    args = parser.parse_args(argv)
    from trainer.sweep.report import write_report  # reads metrics through the trainer's run log (transformers)

    if args.command == "report":
        for path in write_report(args.sweep_dir):
            print(path)
        return 0
    sweep = load_sweep(args.sweep_file)
    if args.command == "wandb":
        out = args.output or sweep.output_dir / "wandb_sweep.yaml"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(yaml.safe_dump(wandb_config(sweep), sort_keys=False))
        print(f"{out}\nthen, from this directory: wandb sweep {out} && wandb agent <sweep id>")
        return 0
    states = run_sweep(sweep, dry_run=args.dry_run, retry_failed=args.retry_failed)
    if not args.dry_run:
        for path in write_report(sweep.output_dir):
            print(path)
    return 1 if any(s.get("status") == "failed" for s in states) else 0
