"""The tracker interface, the registry of trackers and how a run opens its trackers.

A tracker's run ids are recorded in `<output_dir>/trackers.json`, so that `delphi eval` adds lm-eval results to
the training run's own tracker runs."""
from __future__ import annotations

import importlib.util
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol, Sequence

from trainer.errors import ConfigError
from trainer.schema import comma_list

IDS_FILE = "trackers.json"


class Tracker(Protocol):
    name: str
    run_id: str | None  # what `reopen` needs to add to the same run later

    def log(self, metrics: Mapping[str, Any], step: int) -> None: ...

    def summary(self, figures: Mapping[str, Any], step: int) -> None: ...

    def samples(self, rows: Sequence[Mapping[str, Any]], step: int) -> None: ...

    def finish(self) -> None: ...


@dataclass(frozen=True)
class TrackerKind:
    module: str  # what must be importable
    install: str  # what to install for it
    # (logging config, output_dir, flat run config, run id to reopen or None) -> Tracker
    open: Callable[[Any, Path, dict[str, Any], str | None], Tracker]


def _wandb(logging, output_dir, run_config, run_id):
    from trainer.tracking.wandb_tracker import WandbTracker

    return WandbTracker.open(logging, output_dir, run_config, run_id)


def _tensorboard(logging, output_dir, run_config, run_id):
    from trainer.tracking.tensorboard_tracker import TensorBoardTracker

    return TensorBoardTracker.open(logging, output_dir, run_config, run_id)


def _mlflow(logging, output_dir, run_config, run_id):
    from trainer.tracking.mlflow_tracker import MlflowTracker

    return MlflowTracker.open(logging, output_dir, run_config, run_id)


TRACKERS: dict[str, TrackerKind] = {
    "wandb": TrackerKind("wandb", "wandb", _wandb),
    "tensorboard": TrackerKind("tensorboard", "tensorboard (or delphi-trainer[tensorboard])", _tensorboard),
    "mlflow": TrackerKind("mlflow", "mlflow-skinny (or delphi-trainer[mlflow])", _mlflow),
}


def tracker_names(logging) -> list[str]:
    """The trackers a logging config asks for: `report_to` (a comma list, or none); wandb only with `log_wandb`."""
    names = [n for n in comma_list(logging.report_to) if n != "none"]
    return [n for n in names if n != "wandb" or logging.log_wandb]


def check_installed(names: Sequence[str]) -> None:
    """One line before any work when a named tracker's library is missing."""
    for name in names:
        kind = TRACKERS[name]
        if importlib.util.find_spec(kind.module) is None:
            raise ConfigError(f"report_to: {name} is not installed (pip install {kind.install}), or leave it out "
                              f"of report_to")


def open_trackers(logging, output_dir: Path, run_config: dict[str, Any], reopen: bool = False) -> list[Tracker]:
    """The run's trackers; `reopen`: the same tracker runs as the training run's (`trackers.json`), to add to
    them. A new run's ids are recorded."""
    names = tracker_names(logging)
    check_installed(names)
    ids = read_ids(output_dir) if reopen else {}
    trackers = [TRACKERS[name].open(logging, output_dir, run_config, ids.get(name)) for name in names]
    if not reopen and trackers:
        output_dir.mkdir(parents=True, exist_ok=True)
        path = output_dir / IDS_FILE
        path.write_text(json.dumps({t.name: t.run_id for t in trackers}, indent=1), encoding="utf-8")
    return trackers


def read_ids(output_dir: Path) -> dict[str, str]:
    path = output_dir / IDS_FILE
    if not path.is_file():
        return {}
    try:
        ids = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise ConfigError(f"{path}: not valid JSON ({e})") from None
    return {str(k): str(v) for k, v in ids.items() if v} if isinstance(ids, dict) else {}


def numbers(figures: Mapping[str, Any]) -> dict[str, float]:
    """The finite numeric figures (bools excepted), for trackers that plot only numbers."""
    return {k: float(v) for k, v in figures.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


def markdown_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Sample rows as a markdown table (TensorBoard's text panel renders it)."""
    if not rows:
        return ""
    columns = list(rows[0])
    clean = [[str(row.get(c, "")).replace("|", "\\|").replace("\n", " ") for c in columns] for row in rows]
    return "\n".join(["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns),
                      *("| " + " | ".join(cells) + " |" for cells in clean)])
