"""Checkpoints that are either complete or invisible.

The Trainer writes a checkpoint file by file (weights, optimizer, scheduler, each rank's RNG state, trainer_state.json,
DeepSpeed's `global_stepN/` and `latest`) and nothing marks the end, so a kill mid-save leaves a `checkpoint-N` that
looks like the newest and cannot be loaded. Here a save goes under `.staging/`; once every rank has written its
part, the main process lists every file with its size in a completion marker (files fsynced first) and renames the
directory to `checkpoint-N`. Resuming takes the newest checkpoint whose marker matches its files. Anything else
under a checkpoint name is set aside with one printed line, never deleted; rotation deletes only complete
checkpoints older than the newest `save_total_limit`, so the newest complete one always stays.

    <output_dir>/checkpoint-N/delphi_complete.json    complete: every file of the save with its size
    <output_dir>/.staging/checkpoint-N/               a save in progress (or torn by a kill)
    <output_dir>/.rotating/checkpoint-N/              rotated out, being deleted
    <output_dir>/incomplete/checkpoint-N-<time>/      set aside: torn, damaged, or not written by Delphi

The final model gets the same marker in `output_dir` itself (listing only its own files), which is how a finished
run is told from one killed during its final save.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from trainer.errors import ConfigError

MARKER = "delphi_complete.json"
STAGING = ".staging"
ROTATING = ".rotating"
SET_ASIDE = "incomplete"
FINAL = "final"  # the final model's staging name
RUN_FILES = ("resolved_config.yaml", "metrics.jsonl", MARKER)  # what makes a directory a training output

Say = Callable[[str], None]


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    step: int
    world_size: int  # the ranks that wrote it: a resume must have as many


def checkpoint_step(path: Path) -> int | None:
    """12 for `checkpoint-12`; None for any other name."""
    match = re.fullmatch(r"checkpoint-(\d+)", path.name)
    return int(match.group(1)) if match else None


def listing(directory: Path) -> dict[str, int]:
    """Every file below `directory` (relative POSIX path -> size in bytes), the marker excepted."""
    return {p.relative_to(directory).as_posix(): p.lstat().st_size for p in sorted(directory.rglob("*"))
            if (p.is_file() or p.is_symlink()) and p.name != MARKER}


def _fsync(path: Path, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_marker(directory: Path, kind: str, step: int, world_size: int, files: dict[str, int] | None = None,
                 tokens: dict[str, float] | None = None) -> None:
    """Marks `directory` complete: its files are flushed to disk first, then the marker is written beside them
    under a temporary name and renamed, so that it is itself either whole or absent. `tokens`: the run's token
    counts up to this save, which a resume continues from."""
    files = listing(directory) if files is None else files
    for name in files:
        _fsync(directory / name)
    record = {"format": 1, "kind": kind, "step": step, "world_size": world_size, "files": files}
    if tokens is not None:
        record["tokens"] = tokens
    tmp = directory / f".{MARKER}.tmp"
    with tmp.open("w", encoding="utf-8") as f:
        json.dump(record, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, directory / MARKER)
    _fsync(directory, directory=True)


def read_marker(directory: Path) -> dict | None:
    try:
        record = json.loads((directory / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not (isinstance(record, dict) and isinstance(record.get("files"), dict) and isinstance(record.get("step"), int)):
        return None
    return record


def marker_problem(directory: Path, exact: bool = True) -> str | None:
    """Why `directory` is not a complete save, or None. `exact`: a file the marker does not list is a problem too
    (in a checkpoint, anything Delphi did not write could be a planted pickle)."""
    if not (directory / MARKER).is_file():
        return f"no {MARKER}: the save did not finish"
    record = read_marker(directory)
    if record is None:
        return f"{MARKER} is damaged"
    for name, size in record["files"].items():
        path = directory / name
        if ".." in Path(name).parts or not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != size:
            return f"{name} has {path.stat().st_size:,} bytes, the save wrote {size:,}"
    if exact:
        extra = sorted(set(listing(directory)) - set(record["files"]))
        if extra:
            more = f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""
            return f"{extra[0]}{more} was not written by the save"
    return None


def complete_checkpoints(output_dir: Path) -> list[Checkpoint]:
    """The complete checkpoints in `output_dir`, oldest first."""
    found = []
    for path in output_dir.glob("checkpoint-*"):
        step = checkpoint_step(path)
        if step is None or not path.is_dir() or marker_problem(path):
            continue
        record = read_marker(path)
        if record["step"] == step:
            found.append(Checkpoint(path, step, int(record.get("world_size", 1))))
    return sorted(found, key=lambda c: c.step)


def newest_complete(output_dir: Path, staged: bool = False) -> Checkpoint | None:
    """The checkpoint a run resumes from; `staged` also counts a save that finished but was not yet renamed (what
    `tidy` will publish), for checks made before tidying."""
    found = complete_checkpoints(output_dir)
    if staged:
        found += complete_checkpoints(output_dir / STAGING)
    return max(found, key=lambda c: c.step, default=None)


def finished_step(output_dir: Path) -> int | None:
    """The step of the final model in `output_dir` if its save completed, else None."""
    record = read_marker(output_dir)
    if record is None or record.get("kind") != FINAL or marker_problem(output_dir, exact=False):
        return None
    return record["step"]


def set_aside(path: Path, output_dir: Path, why: str, say: Say) -> Path:
    """Moves `path` into `<output_dir>/incomplete/` under a timestamped name, saying so in one line."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = output_dir / SET_ASIDE / f"{path.name}-{stamp}"
    n = 1
    while target.exists():
        n += 1
        target = output_dir / SET_ASIDE / f"{path.name}-{stamp}-{n}"
    target.parent.mkdir(parents=True, exist_ok=True)
    path.rename(target)
    say(f"{path}: incomplete ({why}); set aside as {target}")
    return target


def tidy(output_dir: Path, say: Say = print, keep: Path | None = None) -> None:
    """Main process, before a run starts: finish what a kill interrupted. A rotation is completed; a save that
    finished but was not renamed is published; torn saves and checkpoint directories without a valid marker are
    set aside, except `keep` (a checkpoint the user named to resume from)."""
    shutil.rmtree(output_dir / ROTATING, ignore_errors=True)
    staging = output_dir / STAGING
    if staging.is_dir():
        for path in sorted(staging.iterdir()):
            if checkpoint_step(path) is not None and path.is_dir() and not marker_problem(path) \
                    and not (output_dir / path.name).exists():
                path.rename(output_dir / path.name)
                say(f"{output_dir / path.name}: its save had finished before the run stopped; published")
            else:
                set_aside(path, output_dir, "an unfinished save", say)
        staging.rmdir()
    for path in sorted(output_dir.glob("checkpoint-*")):
        if checkpoint_step(path) is None or (keep is not None and path.resolve() == keep.resolve()):
            continue
        problem = marker_problem(path) if path.is_dir() else "not a directory"
        if problem:
            set_aside(path, output_dir, problem, say)


def check_not_linked(output_dir: Path) -> None:
    """Refuses an output_dir where a name Delphi saves, renames or deletes under is a symbolic link: rotation would
    delete through it (or fail on it) and a save would land wherever it points."""
    if not output_dir.is_dir():
        return
    for path in sorted(output_dir.iterdir()):
        if path.is_symlink() and (path.name in (STAGING, ROTATING, SET_ASIDE) or checkpoint_step(path) is not None):
            raise ConfigError(f"output_dir '{output_dir}': {path.name} is a symbolic link (to '{os.readlink(path)}'); "
                              f"Delphi saves, rotates and deletes there, so it must be a real directory: remove the "
                              f"link (to resume from a checkpoint elsewhere, name it with --resume_from_checkpoint)")


def staging_dir(output_dir: Path) -> Path:
    return output_dir / STAGING


def publish(staged: Path, output_dir: Path, step: int, world_size: int, say: Say = print,
            tokens: dict[str, float] | None = None) -> Path:
    """Marks the staged checkpoint complete and renames it into `output_dir`; an older directory of the same
    name (a resume from an earlier checkpoint saves the same steps again) is set aside first."""
    write_marker(staged, "checkpoint", step, world_size, tokens=tokens)
    target = output_dir / staged.name
    if target.exists():
        set_aside(target, output_dir, "replaced by a new save of the same step", say)
    staged.rename(target)
    _fsync(output_dir, directory=True)
    _remove_if_empty(staged.parent)
    return target


def tokens_at(checkpoint: Path) -> list[float]:
    """The run's trained, real and processed token counts when `checkpoint` was saved (0 where its marker, from
    an older Delphi, has none)."""
    tokens = (read_marker(checkpoint) or {}).get("tokens") or {}
    return [float(tokens.get(key, 0)) for key in ("trained", "real", "processed")]


def rotate(output_dir: Path, keep: int) -> list[Path]:
    """Deletes complete checkpoints older than the newest `keep` (at least 1 stays). Each is renamed out of the
    checkpoint names first, so a kill mid-delete leaves nothing that looks like a checkpoint."""
    removed = []
    for old in complete_checkpoints(output_dir)[:-max(keep, 1)]:
        doomed = output_dir / ROTATING / old.path.name
        doomed.parent.mkdir(exist_ok=True)
        old.path.rename(doomed)
        shutil.rmtree(doomed)
        removed.append(old.path)
    shutil.rmtree(output_dir / ROTATING, ignore_errors=True)
    return removed


def publish_final(staged: Path, output_dir: Path, step: int, world_size: int) -> None:
    """Moves the final model's files from `staged` into `output_dir` and writes the marker last, so that a kill
    part-way leaves a run without a final marker: not finished, resumed on the next start."""
    (output_dir / MARKER).unlink(missing_ok=True)
    files = listing(staged)
    for name in files:
        (output_dir / name).parent.mkdir(parents=True, exist_ok=True)
        os.replace(staged / name, output_dir / name)
    write_marker(output_dir, FINAL, step, world_size, files)
    shutil.rmtree(staged)
    _remove_if_empty(staged.parent)


def discard(staged: Path) -> None:
    """Removes a save that could not be finished (a full disk), and `.staging` with it once empty."""
    shutil.rmtree(staged, ignore_errors=True)
    _remove_if_empty(staged.parent)


def _remove_if_empty(directory: Path) -> None:
    try:
        directory.rmdir()
    except OSError:
        pass  # not empty: another save is staged there


def check_complete(path: Path) -> None:
    """Refuses (one line) to load a training output whose final save did not complete, or a checkpoint without
    its marker: a kill during a save leaves a mix of files that would load "fine" and be wrong. A directory with
    no run files (a plain model directory) is not a run and passes."""
    if checkpoint_step(path) is not None:
        problem = marker_problem(path)
        if problem:
            raise ConfigError(f"{path}: not a complete checkpoint ({problem}); use the run's final model or "
                              f"another checkpoint")
        return
    if any((path / name).is_file() for name in RUN_FILES) and finished_step(path) is None:
        why = marker_problem(path, exact=False) or "its marker is a checkpoint's"
        raise ConfigError(f"{path}: the training run did not finish saving its final model ({why}); rerun the "
                          f"training command to resume and finish it, or use one of its checkpoint-N")


def unmark_final(output_dir: Path) -> None:
    """A run that trains again is not finished until its new final save completes."""
    (output_dir / MARKER).unlink(missing_ok=True)
