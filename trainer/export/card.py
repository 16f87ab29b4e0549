"""The export's model card (README.md) and its machine-readable record (delphi_export.json)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from trainer.export.source import EXPORT_RECORD, RESOLVED_CONFIG, RunOutput
from trainer.run_log import read_metrics


def eval_losses(run_dir: Path) -> dict[str, float]:
    """The last logged value of every `eval_*loss` metric in the run's metrics.jsonl."""
    losses: dict[str, float] = {}
    for row in read_metrics(run_dir / "metrics.jsonl"):
        losses.update({k: v for k, v in row.items() if k.startswith("eval_") and k.endswith("loss")})
    return losses


def write_record(out: Path, record: dict[str, Any]) -> None:
    (out / EXPORT_RECORD).write_text(json.dumps(record, indent=2) + "\n")


def write_card(out: Path, run: RunOutput, record: dict[str, Any], usage: list[str]) -> None:
    entries = run.config.data.datasets if run.config else ()
    datasets = "\n".join(f"- `{d.name}` {json.dumps({k: v for k, v in d.option_items().items() if k != 'name'})}"
                         for d in entries) or "- (not recorded)"
    losses = "\n".join(f"| {k} | {v:.4f} |" for k, v in record["eval_loss"].items()) or "| (none logged) | |"
    resolved = run.path / RESOLVED_CONFIG
    lines = [
        f"# {out.name}",
        "",
        f"Exported by Delphi (`delphi export --target {record['target']}`) from `{run.path}`.",
        "",
        f"- base model: `{record['base_model']}`",
        f"- fine-tuning: {run.kind}" + (f", adapter merged (sha256 {run.adapter_sha256[:12]}…)" if run.is_adapter
                                        else ""),
        f"- weights: {record['dtype']}, {record['vocab_rows']:,} embedding rows",
        f"- prompt format: `{record['prompt_format']}`, end key `{record['end_key']!r}`",
        f"- export check: {record['check']}",
        "",
        "## Data",
        datasets,
        "",
        "## Evaluation loss (last logged)",
        "| metric | value |", "|---|---|", losses,
        "",
        *usage,
        "",
        "## Resolved training config",
        "```yaml",
        resolved.read_text().rstrip() if resolved.is_file() else "# not recorded",
        "```",
        "",
    ]
    (out / "README.md").write_text("\n".join(lines))
