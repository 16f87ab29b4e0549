"""MLflow: a run in a local file store (`<output_dir>/mlruns`, unless MLFLOW_TRACKING_URI names another store),
the experiment named by `wandb_project`; the flat config as parameters, samples as JSON artifacts."""
from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from trainer.tracking.base import numbers

DIRECTORY = "mlruns"
MAX_PARAM = 6000  # MLflow's longest parameter value


def metric_key(key: str) -> str:
    """MLflow keys take letters, digits, `_ - . / ` and space: `alpaca#2` becomes `alpaca_2`."""
    return re.sub(r"[^\w\-./ ]", "_", key)


class MlflowTracker:
    name = "mlflow"

    def __init__(self, client, run_id: str):
        self.client = client
        self.run_id = run_id

    @classmethod
    def open(cls, logging, output_dir: Path, run_config: dict[str, Any], run_id: str | None) -> MlflowTracker:
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        uri = os.environ.get("MLFLOW_TRACKING_URI")
        if not uri:
            uri = (output_dir / DIRECTORY).resolve().as_uri()
            # MLflow 3.x refuses a file store unless asked for by this, its documented opt-in.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        client = MlflowClient(tracking_uri=uri)
        if run_id is not None:
            return cls(client, run_id)
        experiment = client.get_experiment_by_name(logging.wandb_project)
        experiment_id = experiment.experiment_id if experiment else client.create_experiment(logging.wandb_project)
        tags = {"group": logging.wandb_group} if logging.wandb_group else {}
        tags |= {f"tag.{t}": "1" for t in logging.tags}
        run = client.create_run(experiment_id, run_name=logging.wandb_run_name, tags=tags)
        params = [Param(metric_key(k), str(v)[:MAX_PARAM]) for k, v in run_config.items()]
        for start in range(0, len(params), 100):
            client.log_batch(run.info.run_id, params=params[start:start + 100])
        return cls(client, run.info.run_id)

    def log(self, metrics: Mapping[str, Any], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(metric_key(k), v, now, step) for k, v in numbers(metrics).items()]
        for start in range(0, len(batch), 1000):
            self.client.log_batch(self.run_id, metrics=batch[start:start + 1000])

    def summary(self, figures: Mapping[str, Any], step: int) -> None:
        self.log(figures, step)
        for key, value in figures.items():
            if isinstance(value, str):
                self.client.set_tag(self.run_id, metric_key(key), value[:MAX_PARAM])

    def samples(self, rows: Sequence[Mapping[str, Any]], step: int) -> None:
        self.client.log_dict(self.run_id, list(rows), f"samples/step-{step:07d}.json")

    def finish(self) -> None:
        self.client.set_terminated(self.run_id)
