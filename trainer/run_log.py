"""Where metrics go: `metrics.jsonl` always, and the trackers `report_to` names (wandb, tensorboard, mlflow).

One object with the same methods whatever the trackers are, so the training code has no `if wandb:` branches.
Only the main process writes.
"""
from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from transformers import TrainerCallback
from transformers.trainer_callback import ProgressCallback

from trainer.config import LoggingConfig
from trainer.errors import ConfigError
from trainer.evaluation.rounds import EvaluationRounds
from trainer.tracking import Tracker, open_trackers


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
    """Appends `{"step": n, ...metrics}` lines to `<output_dir>/metrics.jsonl` and mirrors them to the trackers."""

    def __init__(self, path: Path, trackers: Sequence[Tracker] = ()):
        self.path = path
        self.trackers = list(trackers)
        self.step = 0  # the latest step logged, for one-off figures
        path.parent.mkdir(parents=True, exist_ok=True)

    @classmethod
    def start(cls, logging: LoggingConfig, output_dir: Path, run_config: dict[str, Any]) -> "RunLog":
        """Opens the trackers of `report_to`, each with the run's whole (flat) config attached."""
        return cls(output_dir / "metrics.jsonl", open_trackers(logging, output_dir, run_config))

    @staticmethod
    def cut_after(path: Path, step: int) -> None:
        """Before a run (re)starts at `step`: drop the rows of later steps (the resumed run logs them again) and
        the one-off summary rows (it writes its own), so that each step is in the file once after any number of
        resumes. Also used for samples.jsonl."""
        if not path.is_file():
            return
        kept = [row for row in read_metrics(path) if row.get("step") is not None and row["step"] <= step]
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in kept), encoding="utf-8")
        tmp.replace(path)

    def log(self, metrics: Mapping[str, Any], step: int) -> None:
        self.step = step
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps({"step": step, **metrics}) + "\n")
        for tracker in self.trackers:
            tracker.log(metrics, step)

    def summary(self, figures: Mapping[str, Any]) -> None:
        """One-off figures (the data report, the closing report): a jsonl line and each tracker's summary."""
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps({"step": None, **figures}) + "\n")
        for tracker in self.trackers:
            tracker.summary(figures, self.step)

    def samples(self, rows: Sequence[Mapping[str, Any]], step: int) -> None:
        """An evaluation's sample generations (samples.jsonl has them already) to each tracker."""
        if rows:
            for tracker in self.trackers:
                tracker.samples(rows, step)

    def finish(self) -> None:
        for tracker in self.trackers:
            tracker.finish()


class RunLogCallback(TrainerCallback):
    """Every `Trainer.log` call (training, evaluation) goes to the run log. An evaluation's validation sets come
    one log each; once all are in, `EvaluationRounds` records the round: the untouched model's first (logged
    under `base/`), then each with its mean (`eval_loss`, the one overall figure a sweep or a wandb agent ranks
    runs by), its changes against the base model and its sample generations. The Trainer's end-of-training figures
    (runtime, mean loss of this start) are kept for the closing summary row instead of a step row, since a
    resumed run ends again at the same step."""

    def __init__(self, run_log: RunLog, rounds: EvaluationRounds):
        self.run_log = run_log
        self.rounds = rounds
        self.end: dict[str, float] = {}

    def on_log(self, args, state, control, logs=None, model=None, **kwargs):
        if not (state.is_world_process_zero and logs):
            return
        if "train_runtime" in logs:
            self.end = dict(logs)
            return
        losses = self.rounds.add(logs)
        self.run_log.log(self.rounds.rename_baseline(dict(logs)), state.global_step)
        if losses:
            figures, rows = self.rounds.complete(state.global_step, losses, model)
            self.run_log.log(figures, state.global_step)
            self.run_log.samples(rows, state.global_step)


class TokenProgressCallback(ProgressCallback):
    """The Trainer's progress bar (steps, ETA) with the loss and trained tokens/s of the latest log beside it. An
    evaluation is the lines `EvaluationRounds` made once every validation set was in (`eval step 27: oasst_export
    5.586 (-0.55) · alpaca 5.670 (-0.31)` and the first sample), the end of training one line; no bar per
    validation set (three bars and three dicts per evaluation before)."""

    def __init__(self, rounds: EvaluationRounds | None = None):
        super().__init__()
        self.rounds = rounds

    def on_prediction_step(self, args, state, control, eval_dataloader=None, **kwargs):
        return None

    def close(self) -> None:
        """Ends the bar's line when training stops with an error, so that the error is a line of its own."""
        if self.training_bar is not None:
            self.training_bar.close()
            self.training_bar = None

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not (logs and state.is_world_process_zero and self.training_bar is not None):
            return
        if "trained_tokens_per_second" in logs:
            self.training_bar.set_postfix(loss=f"{logs['loss']:.4f}",
                                          tok_s=f"{logs['trained_tokens_per_second']:,.0f}", refresh=False)
        elif "train_runtime" in logs:
            self.training_bar.write(runtime_line(logs))
        for line in self.rounds.take_lines() if self.rounds else ():
            self.training_bar.write(line)


def runtime_line(logs: dict[str, Any]) -> str:
    """The Trainer's end-of-training figures (`train_runtime`, ...) in words."""
    minutes, seconds = divmod(logs["train_runtime"], 60)
    took = f"{int(minutes)} min {seconds:.0f} s" if minutes else f"{seconds:.1f} s"
    epochs = logs.get("epoch", 0)
    return (f"trained for {epochs:g} epoch{'' if epochs == 1 else 's'} in {took}: "
            f"{logs['train_samples_per_second']:.1f} samples/s, {logs['train_steps_per_second']:.2f} optimizer "
            f"steps/s, mean training loss {logs['train_loss']:.3f}")


@contextmanager
def quiet_weight_bars() -> Iterator[None]:
    """transformers' own bars ("Writing model shards" at each checkpoint, "Loading weights" on resume) would cut
    through the training bar; off while training runs, restored after (the hub's download bars go with them)."""
    from transformers.utils import logging as hf_logging

    was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_on:
            hf_logging.enable_progress_bar()
