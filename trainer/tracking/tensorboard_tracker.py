"""TensorBoard: event files under `<output_dir>/tensorboard/`, scalars by step, figures and samples as text."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from trainer.tracking.base import markdown_table, numbers

DIRECTORY = "tensorboard"


class TensorBoardTracker:
    name = "tensorboard"

    def __init__(self, writer, run_id: str):
        self.writer = writer
        self.run_id = run_id

    @classmethod
    def open(cls, logging, output_dir: Path, run_config: dict[str, Any], run_id: str | None) -> TensorBoardTracker:
        from torch.utils.tensorboard import SummaryWriter

        directory = output_dir / DIRECTORY
        writer = SummaryWriter(log_dir=str(directory))
        if run_id is None:
            writer.add_text("config", markdown_table([{"key": k, "value": v} for k, v in run_config.items()]), 0)
        return cls(writer, str(directory))

    def log(self, metrics: Mapping[str, Any], step: int) -> None:
        for key, value in numbers(metrics).items():
            self.writer.add_scalar(key, value, step)

    def summary(self, figures: Mapping[str, Any], step: int) -> None:
        self.log(figures, step)
        self.writer.add_text("summary", markdown_table([{"figure": k, "value": v} for k, v in figures.items()]), step)

    def samples(self, rows: Sequence[Mapping[str, Any]], step: int) -> None:
        self.writer.add_text("samples", markdown_table(rows), step)

    def finish(self) -> None:
        self.writer.close()
