"""The checkpoint to ship: the lowest mean eval loss among the checkpoints on which no validation set is worse than
the base model by more than `best_checkpoint_margin`.

A checkpoint is a candidate when an evaluation ran at its step (the Trainer evaluates before it saves, so
`save_steps` a multiple of `eval_steps` makes every checkpoint one). The candidates live in
`best_checkpoint.json`; a resume drops those after its step, as it does with metrics.jsonl. Rotation keeps the best
in addition to the newest `save_total_limit` (`trainer.checkpoints.rotate`).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Mapping

from trainer.errors import ConfigError

BEST_FILE = "best_checkpoint.json"


@dataclass(frozen=True)
class Candidate:
    step: int
    eval_loss: float  # the mean over validation sets
    losses: dict[str, float]
    deltas: dict[str, float]  # loss - the base model's loss, per set the baseline measured

    @property
    def name(self) -> str:
        return f"checkpoint-{self.step}"


@dataclass
class BestCheckpoint:
    margin: float
    candidates: list[Candidate] = field(default_factory=list)

    def add(self, step: int, losses: Mapping[str, float], base: Mapping[str, float] | None) -> Candidate:
        """Records the checkpoint of `step` with its evaluation; `base` None (a run without a baseline): every
        checkpoint is eligible."""
        deltas = {name: loss - base[name] for name, loss in losses.items() if base and name in base}
        candidate = Candidate(step, sum(losses.values()) / len(losses), dict(losses), deltas)
        self.candidates = [c for c in self.candidates if c.step != step] + [candidate]
        return candidate

    def eligible(self, candidate: Candidate) -> bool:
        return all(delta <= self.margin for delta in candidate.deltas.values())

    def best(self) -> Candidate | None:
        return min(filter(self.eligible, self.candidates), key=lambda c: (c.eval_loss, c.step), default=None)

    def cut_after(self, step: int) -> None:
        self.candidates = [c for c in self.candidates if c.step <= step]

    def describe(self) -> str:
        best = self.best()
        if best is not None and not best.deltas:
            return f"{best.name} (mean eval loss {best.eval_loss:.3f}; no baseline to compare with)"
        if best is not None:
            return f"{best.name} (mean eval loss {best.eval_loss:.3f}; no set worse than the base by > {self.margin:g})"
        if not self.candidates:
            return "none (no checkpoint was saved at an evaluation step)"
        return f"none (every checkpoint is worse than the base by > {self.margin:g} on some validation set)"

    def figures(self) -> dict[str, float | int | str]:
        best = self.best()
        return {} if best is None else {"best/step": best.step, "best/eval_loss": best.eval_loss,
                                        "best/checkpoint": best.name}

    @classmethod
    def read(cls, output_dir: Path, margin: float) -> BestCheckpoint:
        """The record in `output_dir` (none yet: empty), judged again with `margin`."""
        path = output_dir / BEST_FILE
        record = cls(margin)
        if not path.is_file():
            return record
        try:
            rows = json.loads(path.read_text(encoding="utf-8"))["candidates"]
            for row in rows:
                record.candidates.append(Candidate(int(row["step"]), float(row["eval_loss"]),
                                                   {str(k): float(v) for k, v in row["losses"].items()},
                                                   {str(k): float(v) for k, v in row["deltas"].items()}))
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise ConfigError(f"{path}: not a best-checkpoint record ({e})") from None
        return record

    def write(self, output_dir: Path) -> Path:
        path = output_dir / BEST_FILE
        best = self.best()
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps({"best": best.name if best else None, "step": best.step if best else None,
                                   "margin": self.margin, "candidates": [asdict(c) for c in self.candidates]},
                                  indent=1), encoding="utf-8")
        tmp.replace(path)
        return path


def best_step(output_dir: Path) -> int | None:
    """The best checkpoint's step as recorded in `output_dir` (what export's `--checkpoint best` reads)."""
    path = output_dir / BEST_FILE
    if not path.is_file():
        return None
    try:
        step = json.loads(path.read_text(encoding="utf-8")).get("step")
    except (ValueError, AttributeError) as e:
        raise ConfigError(f"{path}: not a best-checkpoint record ({e})") from None
    return step if isinstance(step, int) else None
