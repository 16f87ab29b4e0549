"""The same sweep for wandb's controller: `wandb sweep FILE` + `wandb agent ID`."""
from __future__ import annotations

from typing import Any

from trainer.schema import comma_list
from trainer.sweep.spec import Sweep
from trainer.sweep.trials import launch_args


def wandb_config(sweep: Sweep) -> dict[str, Any]:
    """The same sweep for `wandb sweep FILE` + `wandb agent ID`, from any directory.

    Each agent run starts `python [launcher LAUNCHER_ARGS] -m trainer train --configs ...` as `delphi sweep run`
    starts its trials (the installed package, not a checkout's script; config files and output_dir are absolute
    paths). `program` is only wandb's label for the sweep: the command does not name it. Fixed values become
    single-value parameters, so they show in every run's config. `$WANDB_RUN_ID` in `--output_dir` is expanded by
    the trainer: each agent run writes (and resumes) in its own directory. The agent learns results only through
    wandb, so its runs always report there (besides any other tracker `report_to` names)."""
    trackers = [t for t in comma_list(str(sweep.fixed.get("report_to", "wandb"))) if t not in ("none", "wandb")]
    fixed = {**sweep.fixed, "report_to": ",".join(["wandb", *trackers]), "log_wandb": True}
    parameters = {k: {"value": v} for k, v in fixed.items()}
    parameters.update({p.key: p.wandb() for p in sweep.parameters})
    return {
        "name": sweep.name,
        "program": "trainer",
        "method": sweep.method,
        "metric": {"name": sweep.metric.name, "goal": sweep.metric.goal},
        "parameters": parameters,
        "command": ["${env}", "${interpreter}", *launch_args(sweep), f"--output_dir={sweep.output_dir}/$WANDB_RUN_ID",
                    f"--wandb_group={sweep.name}", "${args}"],
    }
