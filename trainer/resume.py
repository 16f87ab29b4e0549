"""Whether a run may start in its output_dir, and from where.

A rerun resumes from the newest complete checkpoint (`trainer.checkpoints`) only if it would train the same thing:
the config stored in that checkpoint is compared with the new one on every key that changes the training (model,
data, mode and adapters, optimiser, schedule, batch arithmetic and the number of ranks); any difference is refused
in one line that names the keys and the ways forward. `--resume_with_changes` continues with new values of the
keys where that is meaningful (declared `resume=CHANGEABLE`): the schedule is then the one the new values plan (more epochs
stretch the decay; a new learning rate scales it from the resumed step on), as if they had been set from the start.
`--overwrite_output_dir` starts over after moving the earlier run aside. A finished run rerun unchanged has nothing
to train: that is said, and its final model is left alone.

`check_run` only reads (every rank runs it, before any long work); `begin_run` makes the changes, on the main
process: the old run moved aside, torn saves set aside, the resolved config written, metrics.jsonl cut back to the
resumed step so that each step stays in it once.
"""
from __future__ import annotations

import json
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from trainer import schema
from trainer.checkpoints import (MARKER, STAGING, Checkpoint, check_not_linked, finished_step, marker_problem,
                                 newest_complete, read_marker, tidy, unmark_final)
from trainer.config import (RESOLVED_CONFIG, RESUME_LAST, RESUME_POLICY, OutputConfig, TrainConfig, load_config,
                            write_resolved)
from trainer.data.sources import resolve_input_path
from trainer.errors import ConfigError, DataError, RunError, first_line
from trainer.evaluation.samples import SAMPLES_FILE
from trainer.files import check_safetensors, check_writable_dir, refused_pickles
from trainer.paths import bundled
from trainer.run_lock import keep_in
from trainer.run_log import RunLog

# Which keys may differ on resume is declared with each key (`option(resume=...)`, trainer.config.groups).
CHANGEABLE = tuple(key for key, policy in RESUME_POLICY.items() if policy == schema.CHANGEABLE)
RANKS = "ranks (WORLD_SIZE)"
TRAINER_STATE = "trainer_state.json"


@dataclass(frozen=True)
class RunStart:
    output_dir: Path
    resume: Checkpoint | None = None  # where training continues from; None: from the start
    finished_step: int | None = None  # the run is finished and unchanged: nothing to train
    changes: dict[str, tuple[Any, Any]] = field(default_factory=dict)  # continued with new values

    @property
    def resume_step(self) -> int:
        return self.resume.step if self.resume else 0

    def finished_line(self) -> str:
        return (f"{self.output_dir} holds a finished run (step {self.finished_step}) with this config: nothing to "
                f"train, its final model is left as it is; to train longer, raise num_train_epochs and add "
                f"--resume_with_changes; to start over, --overwrite_output_dir")


def training_differences(old: TrainConfig, new: TrainConfig) -> dict[str, tuple[Any, Any]]:
    """The keys that change the training, with their old and new values."""
    a, b = old.flat(), new.flat()
    return {key: (a[key], b[key]) for key in a if a[key] != b[key] and RESUME_POLICY[key] != schema.FREE}


def stored_config(directory: Path) -> TrainConfig | None:
    path = directory / RESOLVED_CONFIG
    if not path.is_file():
        return None
    try:
        return load_config(["--config_file", str(path), "--configs", "resolved"], config_files=[])
    except ConfigError as e:
        raise ConfigError(f"{path}: the config stored with the run cannot be read ({str(e).splitlines()[-1]}); "
                          f"use a new output_dir or --overwrite_output_dir") from None


def holds_a_run(output_dir: Path) -> bool:
    """Whether training ran here (a resolved config alone is what `delphi data` or a sweep writes first)."""
    return output_dir.is_dir() and (any((output_dir / name).exists() for name in ("metrics.jsonl", MARKER, STAGING))
                                    or any(output_dir.glob("checkpoint-*")))


def check_output_dir(config: TrainConfig) -> None:
    """output_dir is a directory Delphi can write, and no model, tokenizer or data the run reads lies where it
    writes (saving and rotating there would overwrite or delete them)."""
    out_key = "output_dir"
    check_writable_dir(config.outputs.output_dir, out_key)
    check_not_linked(Path(config.outputs.output_dir))
    out = Path(config.outputs.output_dir).resolve()
    for key, name in (("model_name", config.model.model_name), ("tokenizer_name", config.model.tokenizer_name)):
        if not name or not Path(bundled(name)).exists():
            continue
        source = Path(bundled(name)).resolve()
        if out == source or source in out.parents or out in source.parents:
            where = "is" if out == source else "lies inside" if source in out.parents else "holds"
            raise ConfigError(f"{out_key} '{config.outputs.output_dir}' {where} {key} '{name}': training would "
                              f"write its files over it; give output_dir a directory of its own")
    for i, ds in enumerate(config.data.datasets):
        if not ds.input_file_path:
            continue
        try:
            data = resolve_input_path(ds.input_file_path, config.data.cache_dir).resolve()
        except DataError:
            continue  # reported with every place tried when the data is read
        if out == data or out in data.parents:
            raise ConfigError(f"{out_key} '{config.outputs.output_dir}' holds datasets[{i}] ({ds.name}) "
                              f"input_file_path '{ds.input_file_path}': training writes and rotates files there; "
                              f"give output_dir a directory of its own")


def named_checkpoint(path: Path) -> Checkpoint:
    """`resume_from_checkpoint` as the user named it: it must be a checkpoint, whole where Delphi marked it so."""
    key = "resume_from_checkpoint"
    if not path.is_dir():
        raise ConfigError(f"{key}: no checkpoint directory at '{path}'")
    state = path / TRAINER_STATE
    if not state.is_file():
        raise ConfigError(f"{key}: '{path}' is not a checkpoint (no {TRAINER_STATE}); expected a checkpoint-N "
                          f"directory written by training")
    marker = read_marker(path)
    if (path / MARKER).exists() and (problem := marker_problem(path)):
        raise ConfigError(f"{key}: '{path}' is damaged: {problem}")
    try:
        step = int(json.loads(state.read_text(encoding="utf-8"))["global_step"])
    except (OSError, ValueError, KeyError, TypeError):
        raise ConfigError(f"{key}: '{state}' is not a readable trainer state (cut short by a kill?)") from None
    check_safetensors(path, key)
    return Checkpoint(path, step, marker.get("world_size", 0) if marker else 0)


def user_checkpoint(outputs: OutputConfig) -> Checkpoint | None:
    """The checkpoint `resume_from_checkpoint` names: a path, or `last` (OASST's bare flag), the newest complete
    checkpoint in output_dir, which must then exist."""
    if not outputs.resume_from_checkpoint:
        return None
    if outputs.resume_from_checkpoint != RESUME_LAST:
        return named_checkpoint(Path(outputs.resume_from_checkpoint))
    out = Path(outputs.output_dir)
    found = newest_complete(out, staged=True) if out.is_dir() else None
    if found is None:
        raise ConfigError(f"resume_from_checkpoint: {RESUME_LAST}, but output_dir '{out}' holds no complete "
                          f"checkpoint to resume from")
    return found


def _shown(value: Any) -> str:
    text = json.dumps(value, default=str) if isinstance(value, (list, dict)) else str(value)
    return text if len(text) <= 60 else text[:57] + "..."


def refusal(output_dir: Path, source: str, differences: dict[str, tuple[Any, Any]]) -> ConfigError:
    changed = ", ".join(f"{key} {_shown(a)} -> {_shown(b)}" for key, (a, b) in differences.items())
    ways = "give a new output_dir, or --overwrite_output_dir to start over (the old run is moved aside, not deleted)"
    if all(key in CHANGEABLE for key in differences):
        ways += ", or --resume_with_changes to continue it with the new values"
    return ConfigError(f"output_dir '{output_dir}' holds a run ({source}) trained with other values: {changed}; "
                       f"{ways}")


def check_run(config: TrainConfig, world_size: int = 1, total_steps: int | None = None) -> RunStart:
    """What this run will do in its output_dir (read-only; every rank). Refuses, with the ways forward, a rerun
    that would continue a different training; `total_steps` (when known) must leave something to train after a
    changed schedule."""
    check_output_dir(config)
    out = Path(config.outputs.output_dir)
    outputs = config.outputs
    if outputs.overwrite_output_dir:
        return RunStart(out, user_checkpoint(outputs))
    if outputs.resume_from_checkpoint:
        resume = user_checkpoint(outputs)
    else:
        resume = newest_complete(out, staged=True) if out.is_dir() else None
    finished = finished_step(out) if out.is_dir() else None
    before = stored_config(resume.path) if resume else stored_config(out) if finished is not None else None
    if before is None:
        return RunStart(out, resume)
    differences = training_differences(before, config)
    if resume and resume.world_size and resume.world_size != world_size:
        differences[RANKS] = (resume.world_size, world_size)
    source = resume.path.name if resume else "its final model"
    if differences and resume is None:
        raise ConfigError(f"output_dir '{out}' holds a finished run trained with other values "
                          f"({', '.join(differences)}) and none of its checkpoints is left to continue from; give a "
                          f"new output_dir, or --overwrite_output_dir to start over (the old run is moved aside)")
    if differences and not (outputs.resume_with_changes and all(k in CHANGEABLE for k in differences)):
        raise refusal(out, source, differences)
    if finished is not None and not differences and outputs.resume_from_checkpoint in (None, RESUME_LAST):
        return RunStart(out, resume, finished_step=finished)  # the bare flag resumes; a finished run has no more
    if differences and total_steps is not None and resume and resume.step >= total_steps:
        raise ConfigError(f"--resume_with_changes: with {', '.join(differences)} as given the run has "
                          f"{total_steps} steps, but {resume.path} is already at step {resume.step}: nothing left "
                          f"to train; raise num_train_epochs")
    return RunStart(out, resume, changes=differences)


def begin_run(config: TrainConfig, start: RunStart, say=print) -> None:
    """Main process, after `check_run`: the earlier run moved aside (`--overwrite_output_dir`), interrupted saves
    finished or set aside, the run marked unfinished, the resolved config written, and metrics.jsonl (and
    samples.jsonl) cut back to the resumed step."""
    out = start.output_dir
    if config.outputs.overwrite_output_dir and holds_a_run(out):
        aside = out.with_name(f"{out.name}.previous-{time.strftime('%Y%m%d-%H%M%S')}")
        out.rename(aside)
        keep_in(out, aside)  # this run's lock
        say(f"--overwrite_output_dir: the earlier run in {out} moved to {aside} (delete it when you no longer "
            f"need it); starting over")
    out.mkdir(parents=True, exist_ok=True)
    tidy(out, say, keep=start.resume.path if start.resume else None)
    unmark_final(out)
    write_resolved(config, out)
    RunLog.cut_after(out / "metrics.jsonl", start.resume_step)
    RunLog.cut_after(out / SAMPLES_FILE, start.resume_step)
    if start.changes:
        changed = ", ".join(f"{k} {_shown(a)} -> {_shown(b)}" for k, (a, b) in start.changes.items())
        say(f"--resume_with_changes: continuing from step {start.resume_step} with {changed}")


def resume_path(config: TrainConfig, start: RunStart) -> Path | None:
    """The checkpoint to load, looked up again after `begin_run` (which may have published a finished save)."""
    if start.resume is None:
        return None
    if config.outputs.resume_from_checkpoint:
        return user_checkpoint(config.outputs).path
    found = newest_complete(start.output_dir)
    return found.path if found else None


@contextmanager
def loading(resume: Path | None, resumed_step: int, step: Callable[[], int]) -> Iterator[None]:
    """Around `Trainer.train`: a checkpoint that fails to load (a pickle torch refuses, a file cut short in a
    directory the user named, which no marker vouched for) is one line naming it. Errors after the first trained
    step (`step()` past `resumed_step`) are the run's own and pass through."""
    import torch

    with refused_pickles(f"resume_from_checkpoint '{resume}'"):
        try:
            yield
        except (OSError, RuntimeError, ValueError) as e:
            if resume is None or step() > resumed_step or isinstance(e, torch.OutOfMemoryError):
                raise
            raise RunError(f"resume_from_checkpoint '{resume}': cannot load it ({first_line(e)}); resume from "
                           f"another checkpoint or start over with --overwrite_output_dir") from None
