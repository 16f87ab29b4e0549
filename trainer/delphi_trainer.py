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
"""
from __future__ import annotations

import resource
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch.utils.data import ConcatDataset, Sampler
from transformers import Trainer, TrainerCallback

from trainer import checkpoints
from trainer.activation_offload import offloaded_activations
from trainer.compat import TrainerSeams
from trainer.data.sampler import TokenBudgetBatchSampler
from trainer.config import TrainConfig, write_resolved
from trainer.divergence import DivergenceGuard, stopped, weights_finite
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
        output_layer = self.accelerator.unwrap_model(model).get_output_embeddings()
        with offloaded_activations(model.training and self.run_config.model.activation_offload):
            loss_sum, trained, outputs = summed_token_loss(model, output_layer, inputs, chunked=self.chunked_loss)
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
            self.guard.observe_log(self.state.global_step, logs["loss"])
            self.check_divergence()

    # ------------------------------------------------------------------------------------------------------
    # The divergence guard and complete checkpoints (the Trainer calls these through trainer.compat)

    def observe_step(self, tr_loss: torch.Tensor, grad_norm, skipped: bool) -> None:
        self.guard.observe_step(self.state.global_step, tr_loss, grad_norm, skipped)

    def check_divergence(self, weights: bool = False) -> None:
        """Raises the run's closing RunError if it diverged; `weights` also checks every trainable weight (before
        anything is saved)."""
        finite = weights_finite(self.model) if weights else None
        what = self.guard.verdict(finite, self.args.world_size)
        if what is not None:
            last = checkpoints.newest_complete(Path(self.args.output_dir))
            raise stopped(what, self.state.global_step, str(last.path) if last else None)

    def before_save(self) -> None:
        self.check_divergence(weights=True)

    def checkpoint_saved(self, staged: Path) -> None:
        """Every rank has written its part of `staged`: the main process adds the resolved config, marks it
        complete, renames it into output_dir and rotates the old ones out."""
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            output_dir = Path(self.args.output_dir)
            write_resolved(self.run_config, staged)
            checkpoints.publish(staged, output_dir, self.state.global_step, self.args.world_size)
            checkpoints.rotate(output_dir, self.run_config.outputs.save_total_limit)
        self.accelerator.wait_for_everyone()

    def save_final(self, output_dir: Path) -> None:
        """The final model, tokenizer and resolved config, published complete (a kill part-way leaves the run
        unfinished, to be resumed), never from a diverged run."""
        self.check_divergence(weights=True)
        staged = checkpoints.staging_dir(output_dir) / checkpoints.FINAL
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

    def throughput(self) -> dict[str, float]:
        """Token figures summed over ranks (a collective: every rank logs training metrics at the same step)."""
        local = torch.tensor([self.tokens.trained, self.tokens.real, self.tokens.processed], dtype=torch.float64,
                             device=self.args.device)
        trained, real, processed = (self.accelerator.reduce(local, "sum") if self.args.world_size > 1
                                    else local).tolist()
        seconds = max(time.perf_counter() - self.tokens.started, 1e-9)
        return {
            "trained_tokens": trained,
            "real_tokens": real,
            "processed_tokens": processed,
            "trained_tokens_per_second": trained / seconds,
            "padding_fraction": 1 - real / processed if processed else 0.0,
            "peak_memory_gib": peak_memory_gib(),
        }
