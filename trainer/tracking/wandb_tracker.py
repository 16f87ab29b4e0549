"""wandb (offline with WANDB_MODE=offline): the run named and tagged from the logging config with the flat run
config attached; every chart can use trained tokens or the optimizer step as its x axis (`define_metric`); the
samples as a table; the one-off figures, the best checkpoint among them, in the run summary."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

TOKENS_AXIS = "trained_tokens"


class WandbTracker:
    name = "wandb"

    def __init__(self, run):
        self.run = run
        self.run_id = run.id

    @classmethod
    def open(cls, logging, output_dir: Path, run_config: dict[str, Any], run_id: str | None) -> WandbTracker:
        import wandb

        # Under a wandb agent the controller names each run; OASST's name would give every trial the same one.
        name = logging.wandb_run_name or (None if os.environ.get("WANDB_SWEEP_ID")
                                          else logging.oasst_run_name(run_config.get("model_name")))
        # Delphi prints its own closing report: wandb's history and summary tables would repeat it (WANDB_QUIET or
        # WANDB_SILENT in the environment decide instead).
        quiet = not {"WANDB_QUIET", "WANDB_SILENT"} & set(os.environ)
        run = wandb.init(project=logging.wandb_project, entity=logging.wandb_entity, name=name,
                         group=logging.wandb_group, tags=logging.tags or None, config=run_config,
                         settings=wandb.Settings(quiet=True) if quiet else None,
                         id=run_id, resume="allow" if run_id else None)
        # The step is wandb's own axis; trained tokens are the default one, filled into rows that lack them.
        run.define_metric(TOKENS_AXIS)
        run.define_metric("*", step_metric=TOKENS_AXIS, step_sync=True)
        run.define_metric("eval_loss", step_metric=TOKENS_AXIS, summary="min")
        return cls(run)

    def log(self, metrics: Mapping[str, Any], step: int) -> None:
        self.run.log(dict(metrics), step=step)

    def summary(self, figures: Mapping[str, Any], step: int) -> None:
        self.run.summary.update(dict(figures))

    def samples(self, rows: Sequence[Mapping[str, Any]], step: int) -> None:
        import wandb

        columns = list(rows[0]) if rows else []
        self.run.log({"samples": wandb.Table(columns=columns, data=[[row.get(c) for c in columns] for row in rows])},
                     step=step)

    def finish(self) -> None:
        import wandb

        self.run.finish()
        wandb.teardown()  # waits for wandb's service to write everything out (the offline run file included)
