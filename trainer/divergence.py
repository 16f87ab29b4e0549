"""The divergence guard: a run whose loss or gradient norm stops being finite, or whose loss or gradient norm jumps
far above its recent level and stays there, is stopped with one line, and nothing is saved from it. The line names
as the last good checkpoint only one saved before the first step that may have gone bad.

Per optimizer step the guard only records, on the device, the first step whose loss or gradient norm was not finite
(no host sync: the Trainer's own per-step `isnan` check is turned off with `logging_nan_inf_filter`, which also
logged a diverged loss as the running mean). The record is read where the Trainer syncs anyway: at each log, before
each evaluation and each save, and at the end; with several ranks the verdict is reduced across them, so every rank
stops at the same point. A step that the fp16 loss scaler skipped (its gradient overflowed, nothing was applied) is
not divergence. The spike rule reads the logged losses and gradient norms, which are already on the host (a
gradient norm can blow up by orders of magnitude while the loss stays flat, clipped updates hiding it for a while).
"""
from __future__ import annotations

import math
import statistics
from collections import deque

import torch

from trainer import compat
from trainer.errors import RunError

# What went non-finite, as bits of one code (so that one all-reduce carries step and cause).
LOSS_NAN, LOSS_INF, GRAD_NAN, GRAD_INF = 1, 2, 4, 8
CAUSES = ((LOSS_NAN, "the loss is nan"), (LOSS_INF, "the loss is inf"), (GRAD_NAN, "the gradient norm is nan"),
          (GRAD_INF, "the gradient norm is inf"))
NONE = 2**62  # no bad step yet: larger than any encoded step
WEIGHTS_ONLY = NONE - 1  # no bad loss or norm seen, but the weights are not finite


def _bits(value: torch.Tensor, nan_bit: int, inf_bit: int) -> torch.Tensor:
    return torch.isnan(value).long() * nan_bit + torch.isinf(value).long() * inf_bit


class SpikeRule:
    """`patience` logs in a row above `factor` times the median of the `window` logs before them, that median
    taken as at least 1 (a run overfitting towards 0 moves by large factors without diverging)."""

    def __init__(self, what: str, factor: float, window: int, patience: int):
        self.what, self.factor, self.patience = what, factor, patience
        self.recent: deque[float] = deque(maxlen=window)  # logged values below the spike line
        self.streak: list[tuple[int, float]] = []  # consecutive logged values above it
        self.calm_step = 0  # the last logged step below the line: every step after it may have gone bad
        self.spike: str | None = None

    def observe(self, step: int, value: float) -> None:
        if self.factor <= 0 or self.spike or not math.isfinite(value):
            return
        line = self.factor * max(statistics.median(self.recent), 1.0) if self.recent else math.inf
        if value <= line:
            self.streak = []  # a jump that came back down is noise, and stays out of the median
            self.recent.append(value)
            self.calm_step = step
            return
        self.streak.append((step, value))
        if len(self.streak) >= self.patience:
            first_step, first_value = self.streak[0]
            self.spike = (f"the {self.what} jumped to {first_value:.4g} at step {first_step} and stayed above "
                          f"{self.factor:g} x its running median ({line / self.factor:.4g}) for {len(self.streak)} "
                          f"logs (divergence_spike_factor, divergence_patience)")


class DivergenceGuard:
    def __init__(self, spike_factor: float, window: int, patience: int, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.first_bad = torch.full((), NONE, dtype=torch.long, device=self.device)  # step * 32 + cause bits
        self.spikes = (SpikeRule("loss", spike_factor, window, patience),
                       SpikeRule("gradient norm", spike_factor, window, patience))

    def observe_step(self, step: int, loss: torch.Tensor, grad_norm: torch.Tensor | float | None,
                     skipped: bool) -> None:
        """One optimizer step, on the device. `loss` may be the sum since the last log (a non-finite step
        leaves it non-finite); `skipped`: the loss scaler skipped this step, so its gradient norm says nothing."""
        cause = _bits(loss.detach().to(self.device), LOSS_NAN, LOSS_INF)
        if grad_norm is not None and not skipped:
            if isinstance(grad_norm, torch.Tensor):
                norm = compat.whole_tensor(grad_norm.detach())
                cause = cause + _bits(norm.to(self.device), GRAD_NAN, GRAD_INF)
            elif not math.isfinite(grad_norm):  # DeepSpeed hands over a float, already on the host
                cause = cause + (GRAD_NAN if math.isnan(grad_norm) else GRAD_INF)
        code = torch.where(cause > 0, step * 32 + cause, NONE)
        self.first_bad = torch.minimum(self.first_bad, code)

    def observe_log(self, step: int, loss: float, grad_norm: float | None = None) -> None:
        """A logged (host, all-rank mean) loss and gradient norm, for the spike rules."""
        self.spikes[0].observe(step, loss)
        if grad_norm is not None:
            self.spikes[1].observe(step, grad_norm)

    def verdict(self, weights_finite: bool | None = None, world_size: int = 1, step: int = 0
                ) -> tuple[str, int] | None:
        """What diverged, and the first step that may have gone bad (a checkpoint of an earlier step is good), or
        None; `step` is the current one, for bad weights found with no bad step seen. One host sync (and one
        all-reduce with several ranks)."""
        code = self.first_bad.clone()
        if weights_finite is False:
            code = torch.minimum(code, torch.full_like(code, WEIGHTS_ONLY))
        if world_size > 1:
            torch.distributed.all_reduce(code, op=torch.distributed.ReduceOp.MIN)
        value = int(code)
        spiked = [rule for rule in self.spikes if rule.spike]
        since = min((rule.calm_step + 1 for rule in spiked), default=None)
        if value == WEIGHTS_ONLY:
            return "the weights hold nan or inf", min(step, since or step)
        if value != NONE:
            bad, bits = divmod(value, 32)
            return f"{' and '.join(text for bit, text in CAUSES if bits & bit)} at step {bad}", min(bad, since or bad)
        return (spiked[0].spike, since) if spiked else None


def weights_finite(model) -> bool:
    """Whether every trainable parameter this rank holds is finite (one pass over them, made only before a save);
    sharded parameters are checked by their holders, and the verdict is agreed across ranks."""
    checks = [torch.isfinite(compat.local_shard(p)).all() for p in model.parameters() if p.requires_grad]
    return bool(torch.stack(checks).all()) if checks else True


def stopped(what: str, step: int, last_good: str | None, first_bad: int) -> RunError:
    """The one line a diverged run ends with."""
    where = f"last good checkpoint: {last_good}" if last_good else f"no checkpoint from before step {first_bad} is kept"
    return RunError(f"training diverged: {what}; stopped at step {step} without saving a checkpoint or the final "
                    f"model; {where} (resume from it with a lower learning rate: --resume_with_changes "
                    f"--learning_rate ...)")
