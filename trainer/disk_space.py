"""A full disk while a run writes its checkpoints, final model or a dump: one line saying what was being written and
how much space is left, the partial write removed, and everything written before it left as it was.

Before a large write the free space is compared with what it will take (the newest checkpoint's size, or the
model's and optimizer's bytes before the first one), so that the run stops before it starts a write that cannot
finish. A write that still runs out of space (another process filled the disk meanwhile) surfaces from torch as a
`RuntimeError` of its zip writer, from safetensors as its own error, and from Python as `OSError` ENOSPC; each is
recognised here and turned into the same line.
"""
from __future__ import annotations

import errno
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from trainer.errors import RunError

FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
FULL_TEXTS = ("No space left", "StorageFull", "file write failed", "unexpected pos", "Disk quota exceeded")


def free_bytes(path: Path) -> int:
    """Free bytes on the file system that holds `path` (or would: its nearest existing parent)."""
    path = Path(path).absolute()
    while not path.exists():
        path = path.parent
    return shutil.disk_usage(path).free


def size_text(count: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:,.0f} {unit}" if unit == "bytes" else f"{count:,.1f} {unit}"
        count /= 1024
    return ""


def directory_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file() and not p.is_symlink())


def model_bytes(model, optimizer_states: int = 2) -> int:
    """What saving `model` and its optimizer takes at most: every weight (a full model) or the trainable ones
    (adapters), plus `optimizer_states` fp32 tensors per trainable weight (Adam's two moments)."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    adapters = hasattr(model, "peft_config")
    weights = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad or not adapters)
    return weights + optimizer_states * 4 * trainable


def check_room(directory: Path, needed: int, what: str, after: str) -> None:
    """Refuses a write of about `needed` bytes into `directory` that the disk cannot take."""
    free = free_bytes(directory)
    if free < needed:
        raise RunError(f"not enough space to write {what} in {directory}: about {size_text(needed)} needed, "
                       f"{size_text(free)} free; {after}")


def is_disk_full(error: BaseException) -> bool:
    if isinstance(error, OSError) and error.errno in FULL_ERRNOS:
        return True
    return any(text in str(error) for text in FULL_TEXTS)


@contextmanager
def writing(what: str, directory: Path, after: str, partial: Callable[[], None] = lambda: None) -> Iterator[None]:
    """Around a large write: running out of space is one line (what, where, the space left, `after`: what is
    intact and how to go on); `partial` removes what was half written first."""
    try:
        yield
    except Exception as e:  # safetensors' own error type is not an OSError
        if not is_disk_full(e):
            raise
        partial()
        raise RunError(f"the disk is full: writing {what} in {directory} failed with {size_text(free_bytes(directory))} "
                       f"left; the partial write was removed; {after}") from None
