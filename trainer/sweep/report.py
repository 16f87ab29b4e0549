"""A sweep's results, read back from what its trials wrote: `trial.json` (status, wall time, the end of the log of
a failed trial) and the trainer's own `metrics.jsonl`, so the table holds exactly what the runs logged.

Writes `results.csv`, `results.md`, `loss_curves.png` (training loss of every trial) and
`metric_by_parameter.png` (the sweep's metric against each varied parameter) into the sweep directory.
"""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainer.errors import ConfigError
from trainer.run_log import read_metrics
from trainer.sweep.spec import Metric
from trainer.sweep.trials import read_state


@dataclass
class TrialResult:
    name: str
    params: dict[str, Any]
    status: str
    wall_seconds: float
    error: str
    rows: list[dict[str, Any]] = field(default_factory=list)  # metrics.jsonl, in order

    def series(self, key: str) -> list[tuple[int, float]]:
        """(step, value) of a logged key; a resumed run logs some steps twice, the later line wins."""
        by_step = {r["step"]: r[key] for r in self.rows if r.get("step") is not None and key in r}
        return sorted(by_step.items())

    def summary(self, key: str) -> Any:
        return next((r[key] for r in reversed(self.rows) if r.get("step") is None and key in r), None)

    def value(self, metric: Metric) -> float | None:
        values = [v for _, v in self.series(metric.name)]
        if not values:
            return None
        return metric.better(values) if metric.summary == "best" else values[-1]


def read_results(sweep_dir: Path) -> tuple[dict[str, Any], list[TrialResult]]:
    manifest_path = sweep_dir / "sweep.json"
    if not manifest_path.is_file():
        raise ConfigError(f"{sweep_dir}: no sweep.json; is this the output_dir of `delphi sweep run`?")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        names = [str(name) for name in manifest["trials"]]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"{manifest_path}: not a readable sweep manifest ({e!r:.80}); run `delphi sweep run` "
                          f"again to rewrite it") from None
    results = []
    for name in names:
        directory = sweep_dir / name
        state = read_state(directory)
        rows = read_metrics(directory / "metrics.jsonl")
        error = state.get("error", "").strip().splitlines()
        results.append(TrialResult(name, state.get("params", {}), state.get("status", "not started"),
                                   state.get("wall_seconds", 0.0), error[-1] if error else "", rows))
    return manifest, results


def table(manifest: dict[str, Any], results: list[TrialResult]) -> list[dict[str, Any]]:
    """One row per trial, finished ones first and best first by the sweep's metric."""
    metric = Metric(**manifest["metric"])
    rows = []
    for r in results:
        eval_losses = [v for _, v in r.series("eval_loss")]
        losses = r.series("loss")
        peaks = [v for _, v in r.series("peak_memory_gib")] + [r.summary("final/peak_memory_gib") or 0.0]
        rows.append({  # with metric `eval_loss`, its column is also the "best" or "final eval_loss" one
            "trial": r.name, **{k: r.params.get(k) for k in manifest["parameters"]}, "status": r.status,
            f"{metric.summary} {metric.name}": r.value(metric),
            "best eval_loss": min(eval_losses) if eval_losses else None,
            "final eval_loss": eval_losses[-1] if eval_losses else None,
            "final train loss": losses[-1][1] if losses else None,
            "trained tokens/s": r.summary("final/trained_tokens_per_second"),
            "peak memory GiB": max(peaks) or None,
            "wall s": round(r.wall_seconds, 1),
            "error": r.error,
        })
    key = f"{metric.summary} {metric.name}"
    sign = 1 if metric.goal == "minimize" else -1
    return sorted(rows, key=lambda row: (row[key] is None, sign * (row[key] or 0.0), row["trial"]))


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|")


def write_tables(rows: list[dict[str, Any]], sweep_dir: Path) -> tuple[Path, Path]:
    columns = list(rows[0]) if rows else ["trial"]
    csv_path, md_path = sweep_dir / "results.csv", sweep_dir / "results.md"
    with csv_path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        writer.writerows(rows)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(row[c]) for c in columns) + " |" for row in rows]
    md_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return csv_path, md_path


def _pyplot():
    """pyplot without a display: the report is written on servers and in CI."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def loss_figure(results: list[TrialResult]):
    """Training loss against optimizer step, one line per trial that logged any."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 5))
    for r in results:
        points = r.series("loss")
        if points:
            ax.plot(*zip(*points), label=r.name)
    ax.set(xlabel="optimizer step", ylabel="training loss", title="training loss")
    if ax.lines:
        ax.legend(fontsize="small")
    return fig


def metric_figure(manifest: dict[str, Any], results: list[TrialResult]):
    """The metric against each varied parameter, one panel each; wide numeric ranges on a log axis."""
    plt = _pyplot()
    metric = Metric(**manifest["metric"])
    keys = manifest["parameters"]
    fig, axes = plt.subplots(1, len(keys), figsize=(4.5 * len(keys), 4), squeeze=False)
    scored = [(r, r.value(metric)) for r in results]
    scored = [(r, v) for r, v in scored if v is not None]
    for ax, key in zip(axes[0], keys):
        xs = [r.params[key] for r, _ in scored]
        numeric = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in xs)
        ax.scatter(xs if numeric else [str(x) for x in xs], [v for _, v in scored])
        if numeric and xs and min(xs) > 0 and max(xs) / min(xs) >= 10:
            ax.set_xscale("log")
        ax.set(xlabel=key, ylabel=f"{metric.summary} {metric.name}")
    return fig


def write_report(sweep_dir: Path | str) -> list[Path]:
    """Table (CSV, Markdown) and plots (PNG) of a sweep directory; returns the files written."""
    sweep_dir = Path(sweep_dir)
    manifest, results = read_results(sweep_dir)
    paths = list(write_tables(table(manifest, results), sweep_dir))
    for name, fig in (("loss_curves.png", loss_figure(results)),
                      ("metric_by_parameter.png", metric_figure(manifest, results))):
        fig.tight_layout()
        fig.savefig(sweep_dir / name, dpi=100)
        _pyplot().close(fig)
        paths.append(sweep_dir / name)
    return paths
