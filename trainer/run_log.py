"""Where metrics go: `metrics.jsonl` always, wandb as well when the config asks for it.

One object with the same methods whether or not wandb is on (a null-object logger), so the training code has no
`if wandb:` branches. Only the main process writes.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from transformers import TrainerCallback
from transformers.trainer_callback import ProgressCallback

from trainer.config import LoggingConfig
from trainer.errors import ConfigError


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The rows a RunLog wrote (none if the file is missing), for reports and model cards. A last line without
    its newline was cut by a kill mid-write and is left out; any other bad line is an error naming it."""
    if not path.is_file():
        return []
    text = path.read_text(encoding="utf-8", errors="replace")
    lines = text.split("\n")
    rows = []
    for number, line in enumerate(lines[:-1], 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except ValueError:
            raise ConfigError(f"{path}:{number}: not a metrics row (expected one JSON object per line)") from None
    return rows


class RunLog:
    """Appends `{"step": n, ...metrics}` lines to `<output_dir>/metrics.jsonl` and mirrors them to a wandb run."""

    def __init__(self, path: Path, wandb_run: Any = None):
        self.path = path
        self.wandb_run = wandb_run
        path.parent.mkdir(parents=True, exist_ok=True)

    @classmethod
    def start(cls, logging: LoggingConfig, output_dir: Path, run_config: dict[str, Any]) -> "RunLog":
        """Opens the wandb run (offline with WANDB_MODE=offline) named and tagged from the logging config, with
        the run's whole (flat) config attached."""
        run = None
        if logging.wants_wandb:
            import wandb

            run = wandb.init(project=logging.wandb_project, entity=logging.wandb_entity, name=logging.wandb_run_name,
                             group=logging.wandb_group, tags=logging.tags or None, config=run_config)
        return cls(output_dir / "metrics.jsonl", run)

    @staticmethod
    def cut_after(path: Path, step: int) -> None:
        """Before a run (re)starts at `step`: drop the rows of later steps (the resumed run logs them again) and
        the one-off summary rows (it writes its own), so that each step is in the file once after any number of
        resumes."""
        if not path.is_file():
            return
        kept = [row for row in read_metrics(path) if row.get("step") is not None and row["step"] <= step]
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text("".join(json.dumps(row) + "\n" for row in kept), encoding="utf-8")
        tmp.replace(path)

    def log(self, metrics: dict[str, Any], step: int) -> None:
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps({"step": step, **metrics}) + "\n")
        if self.wandb_run is not None:
            self.wandb_run.log(metrics, step=step)

    def summary(self, figures: dict[str, Any]) -> None:
        """One-off figures (the data report, the closing report): a jsonl line and the wandb run summary."""
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps({"step": None, **figures}) + "\n")
        if self.wandb_run is not None:
            self.wandb_run.summary.update(figures)

    def finish(self) -> None:
        if self.wandb_run is not None:
            import wandb

            self.wandb_run.finish()
            wandb.teardown()  # waits for wandb's service to write everything out (the offline run file included)


class RunLogCallback(TrainerCallback):
    """Every `Trainer.log` call (training, evaluation) goes to the run log; the Trainer's end-of-training figures
    (runtime, mean loss of this start) are kept for the closing summary row instead of a step row, since a resumed
    run ends again at the same step.

    The Trainer evaluates and logs each validation set on its own (`eval_<name>_loss`); once all of a step's are
    in, their mean is logged as `eval_loss`, the one overall figure a sweep (or a wandb agent) can rank runs by.
    """

    def __init__(self, run_log: RunLog, eval_names: Sequence[str] = ()):
        self.run_log = run_log
        self.eval_keys = [f"eval_{name}_loss" for name in eval_names]
        self.pending: dict[str, float] = {}
        self.end: dict[str, float] = {}

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not (state.is_world_process_zero and logs):
            return
        if "train_runtime" in logs:
            self.end = dict(logs)
            return
        self.run_log.log(dict(logs), state.global_step)
        self.pending.update({k: logs[k] for k in self.eval_keys if k in logs})
        if self.eval_keys and len(self.pending) == len(self.eval_keys):
            self.run_log.log({"eval_loss": sum(self.pending.values()) / len(self.pending)}, state.global_step)
            self.pending = {}


class TokenProgressCallback(ProgressCallback):
    """The Trainer's progress bar (steps, ETA) with the trained tokens/s of the latest log beside it."""

    def close(self) -> None:
        """Ends the bar's line when training stops with an error, so that the error is a line of its own."""
        if self.training_bar is not None:
            self.training_bar.close()
            self.training_bar = None

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not (logs and "trained_tokens_per_second" in logs):
            return super().on_log(args, state, control, logs=logs, **kwargs)  # evaluation: printed as a line
        if state.is_world_process_zero and self.training_bar is not None:
            self.training_bar.set_postfix(loss=f"{logs['loss']:.4f}",
                                          tok_s=f"{logs['trained_tokens_per_second']:,.0f}", refresh=False)
