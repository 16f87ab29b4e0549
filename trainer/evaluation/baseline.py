"""The untouched model as the baseline: its loss on every validation set, measured once before the first step,
recorded in `baseline.json` and read again on every resume, so that each evaluation is shown and logged as a change
against it (`oasst_export 5.040 (-0.55)`). A validation set that is not trained on (an `eval_only` entry) shows
forgetting the same way: its change goes up."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from trainer.errors import ConfigError

BASELINE_FILE = "baseline.json"


@dataclass(frozen=True)
class Baseline:
    losses: dict[str, float]  # validation set -> the base model's loss

    @classmethod
    def read(cls, output_dir: Path) -> Baseline | None:
        path = output_dir / BASELINE_FILE
        if not path.is_file():
            return None
        try:
            losses = json.loads(path.read_text(encoding="utf-8"))["losses"]
            return cls({str(k): float(v) for k, v in losses.items()})
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise ConfigError(f"{path}: not a baseline record ({e}); delete it to measure the base model again "
                              f"with a new output_dir") from None

    def write(self, output_dir: Path) -> Path:
        """Whole or absent (written beside, then renamed)."""
        path = output_dir / BASELINE_FILE
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps({"losses": self.losses, "eval_loss": self.mean}, indent=1), encoding="utf-8")
        tmp.replace(path)
        return path

    @property
    def mean(self) -> float:
        return sum(self.losses.values()) / len(self.losses) if self.losses else math.nan

    def deltas(self, losses: Mapping[str, float]) -> dict[str, float]:
        """loss - base loss for every set the baseline measured (negative: better than the base)."""
        return {name: loss - self.losses[name] for name, loss in losses.items() if name in self.losses}


def with_delta(loss: float, delta: float | None) -> str:
    return f"{loss:.3f}" if delta is None else f"{loss:.3f} ({delta:+.2f})"
