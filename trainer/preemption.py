"""SIGTERM and SIGINT while training: the step in progress finishes, a complete checkpoint is written, the run stops
with one line and a non-zero exit code, and the same command resumes from that checkpoint.

Cluster schedulers (SLURM, Kubernetes, spot instances) send SIGTERM some seconds before they kill, and Ctrl-C sends
SIGINT. While `Trainer.train` runs, the handler only records the signal; this callback sees it at the end of the
next optimizer step and asks the Trainer, through its own `TrainerControl`, to save and stop there (no thread is
killed, nothing is written from a signal handler). With several ranks the signal may reach them at different steps
(or only one of them), so the ranks agree on it with one tiny all-reduce per step, on a gloo group of its own (a CPU
tensor: no device sync). A second signal stops at once, without a save; that is still safe, because a save is
complete or invisible (`trainer.checkpoints`).
"""
from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Iterator

import torch
from transformers import TrainerCallback

from trainer.errors import DelphiError

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Interrupted(DelphiError):
    """The run stopped on a signal; the exit code is the shell's for that signal (143 for SIGTERM, 130 for
    SIGINT), which schedulers read as "stopped", not as a bad input."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum  # the instance's, over DelphiError's 2


class Preemption(TrainerCallback):
    def __init__(self, world_size: int = 1):
        self.world_size = world_size
        self.received: int | None = None  # the first signal, as the handler recorded it
        self.stopped_at: int | None = None  # the step the ranks agreed to stop after
        self.group = None  # the gloo group of the agreement

    @contextmanager
    def watching(self) -> Iterator[None]:
        """Records SIGTERM/SIGINT instead of dying while the block runs (the main thread only: Python delivers
        signals there); the previous handlers come back afterwards."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {s: signal.signal(s, self._handle) for s in SIGNALS}
        try:
            yield
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    def _handle(self, signum, frame) -> None:
        if self.received is None:
            self.received = signum
            return
        signal.signal(signum, signal.SIG_DFL)  # a second signal: stop now, as the user asks twice
        signal.raise_signal(signum)

    def on_train_begin(self, args, state, control, **kwargs):
        if self.world_size > 1 and self.group is None:
            self.group = torch.distributed.new_group(backend="gloo")

    def on_step_end(self, args, state, control, **kwargs):
        if self.stopped_at is not None or not self._agreed():
            return
        self.stopped_at = state.global_step
        control.should_save = True
        control.should_training_stop = True

    def _agreed(self) -> bool:
        """Whether any rank has received a signal (every rank calls this once per step)."""
        if self.group is None:
            return self.received is not None
        flag = torch.tensor([self.received or 0], dtype=torch.long)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX, group=self.group)
        if self.received is None and int(flag):
            self.received = int(flag)
        return bool(int(flag))

    def stopped(self, checkpoint: str | None) -> Interrupted:
        """The run's closing line once the Trainer stopped on a signal."""
        name = signal.Signals(self.received).name
        saved = (f"{checkpoint} is complete; run the same command again to resume from it" if checkpoint else
                 "no checkpoint could be saved")
        return Interrupted(f"stopped by {name} after step {self.stopped_at}: {saved}", self.received)
