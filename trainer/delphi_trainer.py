"""The HF Trainer with Delphi's loss, its rank-aware sampler and honest token accounting.

What is kept from `transformers.Trainer`: the loop, gradient accumulation, DeepSpeed and DDP, checkpoints and
resume, per-dataset evaluation (`eval_<name>_loss`). What changes:
- `compute_loss`: cross-entropy summed over trained tokens and divided once by the trained-token count of the
  whole optimizer step across accumulation and ranks (`num_items_in_batch`), scoring only trained positions.
- `get_train_dataloader`: the sampler comes from a factory and is already split across ranks (the seams into
  the Trainer's internals that this needs are in `trainer.compat`).
- `log`: adds trained tokens, trained tokens/s, padding fraction and peak memory to every training log.
- checkpoints are staged and published complete (`trainer.checkpoints`), and the divergence guard
  (`trainer.divergence`) watches every step and is asked before every log, evaluation and save.
- every large write checks the free space first and turns a full disk into one line (`trainer.disk_space`).
- the token counts cover the whole run: each checkpoint's marker carries them, and a resume starts from them.
"""
from __future__ import annotations

import resource
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import torch
from torch.utils.data import ConcatDataset, Sampler
from transformers import Trainer, TrainerCallback

from trainer import checkpoints
from trainer.activation_offload import offloaded_activations
from trainer.compat import TrainerSeams
from trainer.data.sampler import TokenBudgetBatchSampler
from trainer.config import TrainConfig, write_resolved
from trainer.disk_space import check_room, directory_bytes, model_bytes, writing
from trainer.divergence import DivergenceGuard, stopped, weights_finite
from trainer.errors import RunError
from trainer.loss import summed_token_loss

# (concatenated train splits, number of ranks, this rank) -> indices into the concatenation for this rank.
SamplerFactory = Callable[[ConcatDataset, int, int], Sampler]


@dataclass
class TokenCounts:
    """Tokens this process has put through training since start (or resume)."""

    trained: int = 0  # label != -100 after the shift: what the loss is computed on
    real: int = 0  # tokens of samples, not padding (the collator's count)
    processed: int = 0  # every position of every row, padding included
    started: float = field(default_factory=time.perf_counter)

    def as_list(self) -> list[int]:
        return [self.trained, self.real, self.processed]

    def add(self, inputs: dict[str, torch.Tensor]) -> None:
        """The collator's counts, made on the CPU: nothing is read back from the device."""
        self.trained += inputs["num_trained_tokens"]
        self.real += inputs["num_real_tokens"]
        self.processed += inputs["labels"].numel()


def peak_memory_gib() -> float:
    """CUDA: peak allocated by torch; CPU: the process's peak resident set."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kib / 2**20 if sys.platform != "darwin" else kib / 2**30


class SamplerEpochCallback(TrainerCallback):
    """Sets the sampler's epoch at each epoch start, also in an epoch resumed mid-way (where accelerate's
    `skip_first_batches` wrapper no longer forwards `set_epoch`)."""

    def __init__(self, sampler: Sampler):
        self.sampler = sampler

    def on_epoch_begin(self, args, state, control, **kwargs):
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(int(state.epoch or 0))


class DelphiTrainer(TrainerSeams, Trainer):
    def __init__(self, *args, sampler_factory: SamplerFactory, run_config: TrainConfig, chunked_loss: bool = True,
                 **kwargs):
        super().__init__(*args, **kwargs)
        self.run_config = run_config
        optim = run_config.optim
        self.guard = DivergenceGuard(optim.divergence_spike_factor, optim.divergence_window,
                                     optim.divergence_patience, self.args.device)
        self.sampler_factory = sampler_factory
        self.chunked_loss = chunked_loss
        self.flops_per_token = 6 * self.model.num_parameters(exclude_embeddings=True)
        self.tokens = TokenCounts()
        self.tokens_before = [0.0, 0.0, 0.0]  # trained, real, processed before a resume (the checkpoint's marker)
        self.eval_totals = torch.zeros(2, dtype=torch.float64)  # summed loss and trained tokens of one split
        self.train_sampler = sampler_factory(self.train_dataset, self.args.world_size, self.args.process_index)
        self.add_callback(SamplerEpochCallback(self.train_sampler))
        self.count_loss_tokens_ourselves()

    def train(self, *args, **kwargs):
        self.tokens = TokenCounts()  # tokens/s counts training only, not model set-up or a resumed run's past
        return super().train(*args, **kwargs)

    def get_train_dataloader(self):
        batches = isinstance(self.train_sampler, TokenBudgetBatchSampler)
        return self.rank_local_dataloader(self.train_dataset, self.train_sampler, batches)

    def floating_point_ops(self, inputs) -> int:
        """The Trainer's estimate (6 x non-embedding parameters x tokens) without walking every parameter on every
        micro-batch."""
        return self.flops_per_token * inputs["num_real_tokens"]

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        unwrapped = self.accelerator.unwrap_model(model)
        with offloaded_activations(model.training and self.run_config.model.activation_offload):
            loss_sum, trained, outputs = summed_token_loss(
                model, unwrapped.get_output_embeddings(), inputs, chunked=self.chunked_loss,
                softcap=getattr(unwrapped.config, "final_logit_softcapping", None))
        if model.training:
            self.tokens.add(inputs)
        else:  # evaluation: summed up over the split in `evaluation_loop`
            self.eval_totals += torch.stack([loss_sum.detach().double(), trained.double()]).to(self.eval_totals)
        if num_items_in_batch is None:  # a lone batch: its own token mean
            loss = loss_sum / trained.clamp(min=1)
        else:
            loss = loss_sum / num_items_in_batch
            if self.args.average_tokens_across_devices:
                # DeepSpeed and DDP average gradients over ranks; the count above is already the global one.
                loss = loss * self.accelerator.num_processes
        return (loss, outputs) if return_outputs else loss

    def evaluation_loop(self, dataloader, description, prediction_loss_only=None, ignore_keys=None,
                        metric_key_prefix="eval"):
        """The split's loss as one token-weighted mean (the Trainer averages per-batch means, so a short answer
        would weigh as much as a long one and the figure would depend on the eval batch size)."""
        self.check_divergence()
        self.eval_totals = torch.zeros(2, dtype=torch.float64, device=self.args.device)
        output = super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys,
                                         metric_key_prefix)
        loss_sum, trained = (self.accelerator.reduce(self.eval_totals, "sum") if self.args.world_size > 1
                             else self.eval_totals).tolist()
        if trained:
            output.metrics[f"{metric_key_prefix}_loss"] = loss_sum / trained
        return output

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:
            logs.update(self.throughput())
        super().log(logs, start_time)
        if "loss" in logs:  # logged as it is (nan stays nan), then judged
            self.guard.observe_log(self.state.global_step, logs["loss"], logs.get("grad_norm"))
            self.check_divergence()

    # ------------------------------------------------------------------------------------------------------
    # The divergence guard and complete checkpoints (the Trainer calls these through trainer.compat)

    def observe_step(self, tr_loss: torch.Tensor, grad_norm, skipped: bool) -> None:
        self.guard.observe_step(self.state.global_step, tr_loss, grad_norm, skipped)

    def check_divergence(self, weights: bool = False) -> None:
        """Raises the run's closing RunError if it diverged; `weights` also checks every trainable weight (before
        anything is saved)."""
        finite = weights_finite(self.model) if weights else None
        found = self.guard.verdict(finite, self.args.world_size, self.state.global_step)
        if found is not None:
            what, first_bad = found
            good = [c for c in checkpoints.complete_checkpoints(Path(self.args.output_dir)) if c.step < first_bad]
            raise stopped(what, self.state.global_step, str(good[-1].path) if good else None, first_bad)

    def before_save(self) -> None:
        self.check_divergence(weights=True)
        newest = checkpoints.newest_complete(Path(self.args.output_dir))
        needed = directory_bytes(newest.path) if newest else model_bytes(self.model)
        self.check_room(f"checkpoint-{self.state.global_step}", needed)

    def check_room(self, what: str, needed: int) -> None:
        """The main process checks the free space; every rank stops with it (they write into one directory)."""
        problem = None
        if self.args.should_save:
            try:
                check_room(Path(self.args.output_dir), needed, what, self.after_disk_full())
            except RunError as e:
                problem = e
        if self.args.world_size > 1:
            flag = self.accelerator.reduce(torch.tensor(float(problem is not None), device=self.args.device), "sum")
            if float(flag) and problem is None:
                problem = RunError(f"not enough space to write {what}: see the main process's line")
        if problem is not None:
            raise problem

    def after_disk_full(self) -> str:
        """What is intact and how to go on, once a save could not be written."""
        last = checkpoints.newest_complete(Path(self.args.output_dir))
        if last is None:
            return "no checkpoint was saved before it; free space and run the same command again"
        return f"{last.path} is intact; free space and run the same command again to resume from it"

    @contextmanager
    def writing_checkpoint(self) -> Iterator[None]:
        """Around a checkpoint's save: a full disk removes the staged part and ends the run in one line."""
        name = f"checkpoint-{self.state.global_step}"
        staged = checkpoints.staging_dir(Path(self.args.output_dir)) / name
        with writing(name, Path(self.args.output_dir), self.after_disk_full(),
                     partial=lambda: checkpoints.discard(staged)):
            yield

    def checkpoint_saved(self, staged: Path) -> None:
        """Every rank has written its part of `staged`: the main process adds the resolved config, marks it
        complete, renames it into output_dir and rotates the old ones out."""
        self.accelerator.wait_for_everyone()
        tokens = self.run_tokens()
        if self.args.should_save:
            output_dir = Path(self.args.output_dir)
            write_resolved(self.run_config, staged)
            checkpoints.publish(staged, output_dir, self.state.global_step, self.args.world_size,
                                tokens=dict(zip(("trained", "real", "processed"), tokens)))
            checkpoints.rotate(output_dir, self.run_config.outputs.save_total_limit)
        self.accelerator.wait_for_everyone()

    def save_final(self, output_dir: Path) -> None:
        """The final model, tokenizer and resolved config, published complete (a kill part-way leaves the run
        unfinished, to be resumed), never from a diverged run."""
        self.check_divergence(weights=True)
        self.check_room("the final model", model_bytes(self.model, optimizer_states=0))
        staged = checkpoints.staging_dir(output_dir) / checkpoints.FINAL
        with writing("the final model", output_dir, self.after_disk_full(),
                     partial=lambda: checkpoints.discard(staged)):
            if self.is_fsdp_enabled:  # its checkpoints are sharded; the final model is gathered whole
                state = self.accelerator.get_state_dict(self.model)
                if self.args.should_save:
                    self._save(str(staged), state_dict=state)
            else:
                self.save_model(str(staged))
            self.accelerator.wait_for_everyone()
            if self.args.should_save:
                write_resolved(self.run_config, staged)
                checkpoints.publish_final(staged, output_dir, self.state.global_step, self.args.world_size)
        self.accelerator.wait_for_everyone()

    def session_tokens(self) -> list[float]:
        """Trained, real and processed tokens since this process started training, summed over ranks (a
        collective: every rank calls it at the same step)."""
        local = torch.tensor(self.tokens.as_list(), dtype=torch.float64, device=self.args.device)
        return (self.accelerator.reduce(local, "sum") if self.args.world_size > 1 else local).tolist()

    def run_tokens(self) -> list[float]:
        """The whole run's token counts: those before the resume plus this session's (a collective)."""
        return [a + b for a, b in zip(self.tokens_before, self.session_tokens())]

    def throughput(self) -> dict[str, float]:
        """Token figures of the whole run; the rate is this session's (a collective)."""
        session = self.session_tokens()
        trained, real, processed = [a + b for a, b in zip(self.tokens_before, session)]
        seconds = max(time.perf_counter() - self.tokens.started, 1e-9)
        return {
            "trained_tokens": trained,
            "real_tokens": real,
            "processed_tokens": processed,
            "trained_tokens_per_second": session[0] / seconds,
            "padding_fraction": 1 - real / processed if processed else 0.0,
            "peak_memory_gib": peak_memory_gib(),
        }
