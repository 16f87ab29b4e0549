"""One training run per output_dir at a time.

Two runs in one directory would both save, rotate and tidy the same checkpoints, and each set aside what the
other was writing. The main process of a run holds `<output_dir>/.delphi.lock` (its pid, host, process start time
and when the run began) from before it changes anything there until it ends. A second run finds the lock and is
refused in one line naming the holder. A lock whose process is gone (same host, pid dead or reused by another
process) was left by a run that was killed, and is taken over; one from another host cannot be checked from here,
so it is refused with the way out (delete the lock file once that run is known to be gone).
"""
from __future__ import annotations

import json
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from trainer.errors import ConfigError

LOCK = ".delphi.lock"


def _process_start(pid: int) -> str | None:
    """The kernel's start time of `pid` (Linux: /proc/PID/stat field 22), which tells a reused pid from the
    locking process; None where /proc is not there."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _alive(record: dict) -> bool:
    """Whether the process that wrote `record` (on this host) still runs."""
    pid = record.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: it exists
    started = _process_start(pid)
    return started is None or record.get("process_start") in (None, started)


def _record() -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(), "process_start": _process_start(os.getpid()),
            "started": time.strftime("%Y-%m-%d %H:%M:%S %Z")}


def _read(path: Path) -> dict | None:
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}  # torn by a kill while it was written: no process can be named, so it is stale
    return record if isinstance(record, dict) else {}


def holder(output_dir: Path) -> dict | None:
    """The live run holding `output_dir` other than this process, or None (read only)."""
    record = _read(Path(output_dir) / LOCK)
    if not record or record.get("pid") == os.getpid() and record.get("host") == socket.gethostname():
        return None
    if record.get("host") == socket.gethostname() and not _alive(record):
        return None
    return record


def _refusal(output_dir: Path, record: dict) -> ConfigError:
    where = f"pid {record.get('pid')} on host {record.get('host')}, started {record.get('started')}"
    same_host = record.get("host") == socket.gethostname()
    way = ("wait for it to finish or stop it, or give this run another output_dir" if same_host else
           f"wait for it, give this run another output_dir, or delete {Path(output_dir) / LOCK} if that run is "
           f"known to be gone")
    return ConfigError(f"output_dir '{output_dir}' is in use by another training run ({where}); {way}")


def check_free(output_dir: Path) -> None:
    """Refuses early, before any long work, an output_dir another live run holds."""
    record = holder(output_dir)
    if record is not None:
        raise _refusal(output_dir, record)


@contextmanager
def locked(output_dir: Path, say: Callable[[str], None] = print) -> Iterator[None]:
    """Holds the lock for the block (created atomically: of two runs starting at once, one gets it). A stale lock
    is replaced, saying so."""
    path = Path(output_dir) / LOCK
    path.parent.mkdir(parents=True, exist_ok=True)
    record = _record()
    while True:
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            break
        except FileExistsError:
            found = _read(path)
            if found is None:
                continue  # released in between
            if found.get("pid") == record["pid"] and found.get("host") == record["host"]:
                yield  # this process holds it already
                return
            if holder(output_dir) is not None:
                raise _refusal(output_dir, found) from None
            path.unlink(missing_ok=True)
            say(f"{path}: left by a run that is no longer running (pid {found.get('pid')} on this host); taken "
                f"over")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(record, f)
    try:
        yield
    finally:
        if _read(path) == record:
            path.unlink(missing_ok=True)


def keep_in(output_dir: Path, moved_to: Path) -> None:
    """After `--overwrite_output_dir` moved the old run aside (the lock inside it), the lock comes back."""
    if (moved_to / LOCK).exists():
        output_dir.mkdir(parents=True, exist_ok=True)
        (moved_to / LOCK).rename(output_dir / LOCK)
