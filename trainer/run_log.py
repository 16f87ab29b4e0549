"""Where metrics go: `metrics.jsonl` always, wandb as well when the config asks for it.

One object with the same methods whether or not wandb is on (a null-object logger), so the training code has no
`if wandb:` branches. Only the main process writes.
"""
from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

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

            # Under a wandb agent the controller names each run; OASST's name would give every trial the same one.
            name = logging.wandb_run_name or (None if os.environ.get("WANDB_SWEEP_ID")
                                              else logging.oasst_run_name(run_config.get("model_name")))
            # Delphi prints its own closing report: wandb's history and summary tables would repeat it (WANDB_QUIET
            # or WANDB_SILENT in the environment decide instead).
            quiet = not {"WANDB_QUIET", "WANDB_SILENT"} & set(os.environ)
            run = wandb.init(project=logging.wandb_project, entity=logging.wandb_entity, name=name,
                             group=logging.wandb_group, tags=logging.tags or None, config=run_config,
                             settings=wandb.Settings(quiet=True) if quiet else None)
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


class EvalRound:
    """The Trainer evaluates and logs each validation set on its own (`eval_<name>_loss`); this collects one
    evaluation's losses and hands them over, by dataset name, once the last one is in."""

    def __init__(self, eval_names: Sequence[str]):
        self.keys = {f"eval_{name}_loss": name for name in eval_names}
        self.pending: dict[str, float] = {}

    def add(self, logs: dict[str, Any]) -> dict[str, float] | None:
        self.pending.update({name: logs[key] for key, name in self.keys.items() if key in logs})
        if not self.keys or len(self.pending) < len(self.keys):
            return None
        done, self.pending = self.pending, {}
        return done


class RunLogCallback(TrainerCallback):
    """Every `Trainer.log` call (training, evaluation) goes to the run log; once all of an evaluation's validation
    sets are in, their mean is logged as `eval_loss`, the one overall figure a sweep (or a wandb agent) can rank runs
    by. The Trainer's end-of-training figures (runtime, mean loss of this start) are kept for the closing summary
    row instead of a step row, since a resumed run ends again at the same step."""

    def __init__(self, run_log: RunLog, eval_names: Sequence[str] = ()):
        self.run_log = run_log
        self.round = EvalRound(eval_names)
        self.end: dict[str, float] = {}

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not (state.is_world_process_zero and logs):
            return
        if "train_runtime" in logs:
            self.end = dict(logs)
            return
        self.run_log.log(dict(logs), state.global_step)
        losses = self.round.add(logs)
        if losses:
            self.run_log.log({"eval_loss": sum(losses.values()) / len(losses)}, state.global_step)


class TokenProgressCallback(ProgressCallback):
    """The Trainer's progress bar (steps, ETA) with the loss and trained tokens/s of the latest log beside it. An
    evaluation is one line once every validation set is in (`eval step 27: oasst_export 5.586 · alpaca 5.670`),
    the end of training one line; no bar per validation set (three bars and three dicts per evaluation before)."""

    def __init__(self, eval_names: Sequence[str] = ()):
        super().__init__()
        self.round = EvalRound(eval_names)

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
        elif (losses := self.round.add(logs)) is not None:
            self.training_bar.write(eval_line(state.global_step, losses))
        elif "train_runtime" in logs:
            self.training_bar.write(runtime_line(logs))


def eval_line(step: int, losses: dict[str, float]) -> str:
    line = f"eval step {step}: " + " · ".join(f"{name} {loss:.3f}" for name, loss in losses.items())
    return line + (f" · mean {sum(losses.values()) / len(losses):.3f}" if len(losses) > 1 else "")


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
