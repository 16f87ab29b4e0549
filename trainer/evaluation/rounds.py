"""One evaluation round at a time, on the main process: the Trainer logs each validation set on its own
(`eval_<name>_loss`); once the last one is in, the round is complete and this records it.

The first round of a new run is the untouched model's (the Trainer's `eval_on_start`): its losses become the
baseline (`base/eval_<name>_loss`), never an `eval_*` figure a sweep would rank. Every later round logs the mean
(`eval_loss`) and the changes against the baseline (`delta/eval_<name>_loss`, `delta/eval_loss`), generates the
samples, and is remembered for the checkpoint saved at its step (`best_checkpoint`). The console gets one line of
losses with their changes and one sample line per round.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from trainer.data.build import entry_names
from trainer.evaluation.baseline import Baseline, with_delta
from trainer.evaluation.best_checkpoint import BestCheckpoint
from trainer.evaluation.samples import (SamplePrompt, SampleSettings, append_samples, configured_prompts,
                                        generate_samples, picked_prompts, sample_line)
from trainer.formats import format_for


@dataclass
class SampleSource:
    """What generating the samples needs besides the model."""

    prompts: Sequence[SamplePrompt]
    tokenizer: Any
    end_key: str
    settings: SampleSettings


@dataclass
class EvaluationRounds:
    output_dir: Path
    eval_names: Sequence[str]
    baseline: Baseline | None
    best: BestCheckpoint
    samples: SampleSource | None = None
    measure_baseline: bool = False  # the next complete round is the untouched model's
    pending: dict[str, float] = field(default_factory=dict)
    last: tuple[int, dict[str, float]] | None = None  # the latest trained round: (step, losses)
    lines: list[str] = field(default_factory=list)  # for the console, taken by the progress bar
    # What they cost: every generation (the base model's samples included), and the baseline round's evaluation.
    seconds: dict[str, float] = field(default_factory=lambda: {"samples_seconds": 0.0, "baseline_seconds": 0.0})

    @property
    def keys(self) -> dict[str, str]:
        return {f"eval_{name}_loss": name for name in self.eval_names}

    def rename_baseline(self, logs: dict[str, Any]) -> dict[str, Any]:
        """The Trainer's logs of the baseline round, under `base/`."""
        if not self.measure_baseline:
            return logs
        self.seconds["baseline_seconds"] += sum(v for k, v in logs.items() if k.endswith("_runtime"))
        return {(f"base/{k}" if k.startswith("eval_") else k): v for k, v in logs.items()}

    def add(self, logs: dict[str, Any]) -> dict[str, float] | None:
        """Collects one validation set's log; the round's losses by set once all are in."""
        self.pending.update({name: logs[key] for key, name in self.keys.items() if key in logs})
        if not self.keys or len(self.pending) < len(self.keys):
            return None
        done, self.pending = self.pending, {}
        return done

    def complete(self, step: int, losses: dict[str, float], model) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """Records a complete round; returns the figures to log at `step` and the sample rows generated."""
        if self.measure_baseline:
            self.measure_baseline = False
            self.baseline = Baseline(dict(losses))
            self.baseline.write(self.output_dir)
            self.lines.append("base model: " + " · ".join(f"{n} {v:.3f}" for n, v in losses.items())
                              + (f" · mean {self.baseline.mean:.3f}" if len(losses) > 1 else ""))
            return {"base/eval_loss": self.baseline.mean}, self._generate(step, model)
        self.last = (step, dict(losses))
        mean = sum(losses.values()) / len(losses)
        figures: dict[str, Any] = {"eval_loss": mean}
        deltas = self.baseline.deltas(losses) if self.baseline else {}
        mean_delta = mean - self.baseline.mean if self.baseline and len(deltas) == len(losses) else None
        figures |= {f"delta/eval_{name}_loss": d for name, d in deltas.items()}
        if mean_delta is not None:
            figures["delta/eval_loss"] = mean_delta
        line = f"eval step {step}: " + " · ".join(f"{n} {with_delta(v, deltas.get(n))}" for n, v in losses.items())
        self.lines.append(line + (f" · mean {with_delta(mean, mean_delta)}" if len(losses) > 1 else ""))
        return figures, self._generate(step, model)

    def _generate(self, step: int, model) -> list[dict[str, Any]]:
        if self.samples is None or not self.samples.prompts or model is None:
            return []
        source, started = self.samples, time.perf_counter()
        rows = generate_samples(model, source.tokenizer, source.prompts, source.end_key, source.settings, step)
        append_samples(self.output_dir, rows)
        self.seconds["samples_seconds"] += time.perf_counter() - started
        line = sample_line(rows)
        if line:
            self.lines.append(line)
        return rows

    def checkpoint_saved(self, step: int) -> Path | None:
        """A checkpoint of `step` was published: a candidate if this step was evaluated. The best checkpoint's
        path, for rotation to keep."""
        if self.last is not None and self.last[0] == step:
            self.best.add(step, self.last[1], self.baseline.losses if self.baseline else None)
            self.best.write(self.output_dir)
        best = self.best.best()
        return self.output_dir / best.name if best else None

    def take_lines(self) -> list[str]:
        lines, self.lines = self.lines, []
        return lines


def start_rounds(config, output_dir: Path, tokenizer, val_sets: dict[str, Any], resume_step: int,
                 resuming: bool, main: bool, say=print) -> EvaluationRounds:
    """The run's evaluation record as a (re)start finds it: the baseline recorded (or to be measured: a new run
    without one), the best-checkpoint candidates up to the resumed step, and, on the main process, the sample
    prompts of every validation set."""
    evaluation = config.evaluation
    baseline = Baseline.read(output_dir)
    best = BestCheckpoint.read(output_dir, evaluation.best_checkpoint_margin)
    best.cut_after(resume_step)
    measure = evaluation.eval_baseline and baseline is None and not resuming and bool(val_sets)
    rounds = EvaluationRounds(output_dir, tuple(val_sets), baseline, best, measure_baseline=measure)
    if not main:
        return rounds
    if resuming and baseline is None and evaluation.eval_baseline:
        say("no baseline recorded in this run (it started without one): evaluations are not compared with the "
            "base model")
    fmt = format_for(config.data, tokenizer)
    configured = {name: ds.eval_prompts for name, ds in zip(entry_names(config.data), config.data.datasets)}
    prompts: list[SamplePrompt] = []
    # A prompt and its reply stay within max_length where they can; short runs still get half of it for prompts.
    room = max(config.data.max_length - evaluation.eval_sample_tokens, config.data.max_length // 2)
    for name, samples in val_sets.items():
        if configured.get(name):
            prompts += configured_prompts(name, configured[name], fmt, tokenizer)
        elif evaluation.eval_samples:
            picked = picked_prompts(name, samples, evaluation.eval_samples, config.optim.rng_seed, tokenizer,
                                    fmt.end_key, room)
            if not picked:
                say(f"samples: no prompt of '{name}' could be picked (with label_masking off a prompt cannot be "
                    f"told from its reply); give the dataset eval_prompts")
            prompts += picked
    settings = SampleSettings(evaluation.eval_sample_tokens, evaluation.eval_sample_temperature,
                              config.optim.rng_seed)
    rounds.samples = SampleSource(prompts, tokenizer, fmt.end_key, settings) if prompts else None
    return rounds
