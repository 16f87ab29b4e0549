"""One training run: config + model + data in, a trained model, checkpoints, metrics and a report out.

`train()` is the whole run in reading order: arguments, the step arithmetic, what output_dir allows (resume,
refuse, or nothing to do: `trainer.resume`), the output_dir's lock (`trainer.run_lock`), trainer, train (stopped
and saved on SIGTERM/SIGINT: `trainer.preemption`), save, report. The model, the per-dataset samples, the
collator and the sampler factory are passed in, so the same function runs the tests' tiny samples and the real
data builder's output, on 2 CPU processes or 64 GPUs (the launcher, `deepspeed` or `torchrun`, sets the ranks;
nothing here starts processes).
"""
from __future__ import annotations

import math
import sys
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from accelerate import PartialState
from torch.utils.data import ConcatDataset
from transformers import TrainingArguments
from transformers.trainer_callback import ProgressCallback

from trainer.checkpoints import complete_checkpoints, newest_complete, tokens_at
from trainer.compat import deepspeed_loads_weights_only
from trainer.config import TrainConfig
from trainer.delphi_trainer import DelphiTrainer, SamplerFactory, peak_memory_gib
from trainer.memory_plan import MemoryPlan, plan_run
from trainer.preemption import Preemption
from trainer.resume import RunStart, begin_run, check_run, loading, resume_path
from trainer.run_lock import check_free, locked
from trainer.run_log import RunLog, RunLogCallback, TokenProgressCallback, quiet_weight_bars
from trainer.strategy import OPTIMIZERS, Strategy

Samples = Sequence[Mapping[str, Any]]  # each with `input_ids` and `labels` (-100: not trained)


def training_arguments(config: TrainConfig, has_eval: bool, optim_name: str = "adamw_torch_fused",
                       layer_class: str | None = None) -> TrainingArguments:
    """The config in the Trainer's terms: the keys declared with a `trainer_arg` as they are, and what Delphi
    decides from the others. DeepSpeed's "auto" values are filled from these by transformers.
    `optim_name`: the loader's optimizer for `optim: adamw_torch`; `layer_class`: what FSDP wraps as one unit.
    Under ZeRO-3 these arguments must exist before the model loads (`trainer.strategy.start_sharded_loading`)."""
    cuda = torch.cuda.is_available()
    return TrainingArguments(
        **config.trainer_args(),
        optim=OPTIMIZERS[config.optim.optim] or optim_name,  # replaced by the JSON's optimizer under DeepSpeed
        **Strategy.of(config.optim).training_arguments(layer_class),  # deepspeed, or fsdp and fsdp_config
        use_cpu=not cuda,  # without it, DeepSpeed on CPU computes its batch size for a world of 1
        fp16=cuda and config.model.dtype == "fp16",  # mixed precision (and DeepSpeed's fp16 "auto") only on GPUs
        bf16=cuda and config.model.dtype == "bf16",
        eval_strategy="steps" if has_eval else "no",
        save_strategy="steps",
        save_total_limit=None,  # Delphi rotates, complete checkpoints only (trainer.checkpoints)
        logging_nan_inf_filter=False,  # a diverged loss is logged as it is (trainer.divergence); no per-step read
        report_to="none",  # RunLog writes metrics.jsonl and wandb itself
        remove_unused_columns=False,  # samples go to the collator as the data builder made them
        prediction_loss_only=True,  # evaluation keeps no logits
        average_tokens_across_devices=True,
        accelerator_config={"non_blocking": cuda},  # pinned batches are copied while the GPU works
    )


@dataclass(frozen=True)
class StepPlan:
    """How epochs become optimizer steps, computed the way the Trainer does."""

    micro_batch: str  # what one micro-batch holds at most
    micro_tokens: int  # its tokens at most
    accumulation: int
    world_size: int
    batches_per_epoch_per_rank: int
    steps_per_epoch: int
    total_steps: int
    epochs: float

    @classmethod
    def of(cls, config: TrainConfig, sampler_length: int, world_size: int) -> "StepPlan":
        """`sampler_length`: this rank's sampler's length, in samples (or in token-budget micro-batches)."""
        data, optim, epochs = config.data, config.optim, config.schedule.num_train_epochs
        if data.padding_free:
            tokens = data.token_budget(optim.per_device_train_batch_size)
            micro, batches = f"{tokens:,}-token budget", sampler_length
        else:
            tokens = optim.per_device_train_batch_size * data.max_length
            micro = f"{optim.per_device_train_batch_size} seq × {data.max_length} max_length"
            batches = math.ceil(sampler_length / optim.per_device_train_batch_size)
        steps_per_epoch = max(math.ceil(batches / optim.gradient_accumulation_steps), 1)
        return cls(micro, tokens, optim.gradient_accumulation_steps, world_size, batches, steps_per_epoch,
                   math.ceil(epochs * steps_per_epoch), epochs)

    def describe(self) -> str:
        tokens = self.micro_tokens * self.accumulation * self.world_size
        ranks = "rank" if self.world_size == 1 else "ranks"
        return (f"tokens per optimizer step: up to {tokens:,} = {self.micro_batch} × {self.accumulation} accum × "
                f"{self.world_size} {ranks}; {self.batches_per_epoch_per_rank:,} micro-batches per rank per epoch "
                f"→ {self.steps_per_epoch:,} optimizer steps/epoch × {self.epochs:g} epochs = {self.total_steps:,} "
                f"steps")


@dataclass(frozen=True)
class TrainResult:
    global_step: int
    epochs: float
    trained_tokens: float
    trained_tokens_per_second: float
    peak_memory_gib: float
    output_dir: Path
    checkpoints: tuple[Path, ...]
    metrics_path: Path

    def report(self) -> str:
        ckpts = ", ".join(p.name for p in self.checkpoints) or "none kept"
        return "\n".join([
            "training finished",
            f"  optimizer steps   {self.global_step:,} ({self.epochs:.2f} epochs)",
            f"  trained tokens    {self.trained_tokens:,.0f} ({self.trained_tokens_per_second:,.0f} tokens/s)",
            f"  peak memory       {self.peak_memory_gib:.2f} GiB (rank 0)",
            f"  model             {self.output_dir} (with tokenizer and resolved_config.yaml)",
            f"  checkpoints       {ckpts}",
            f"  metrics           {self.metrics_path}",
        ])


def train(config: TrainConfig, model, tokenizer, train_sets: Mapping[str, Samples], val_sets: Mapping[str, Samples],
          collator: Callable, sampler_factory: SamplerFactory, data_report: Mapping[str, Any] | None = None,
          callbacks: Sequence = (), optim: str = "adamw_torch_fused", args: TrainingArguments | None = None,
          memory: MemoryPlan | None = None) -> TrainResult | None:
    """Train `model` on the concatenated train splits; evaluate each validation split by name. Returns None when
    output_dir already holds this run, finished (said in one line). `args`: the Trainer's arguments where they had
    to exist before the model loaded (ZeRO-3); `memory`: the plan made before loading (else made here)."""
    output_dir = Path(config.outputs.output_dir)
    evals = {name: samples for name, samples in val_sets.items() if len(samples)}
    if args is None:
        args = training_arguments(config, has_eval=bool(evals), optim_name=optim, layer_class=layer_class(model))
    main = args.process_index == 0
    dataset = ConcatDataset(list(train_sets.values()))
    sampler = sampler_factory(dataset, args.world_size, args.process_index)
    plan = StepPlan.of(config, len(sampler), args.world_size)
    if main:
        check_free(output_dir)  # before reading a directory another run may be writing
        if config.schedule.warmup_steps >= plan.total_steps:
            print(f"warning: warmup_steps {config.schedule.warmup_steps:,} is not shorter than the run "
                  f"({plan.total_steps:,} steps): the learning rate never reaches learning_rate "
                  f"{config.optim.learning_rate:g}; lower warmup_steps to train at the rate you set", file=sys.stderr)
    start = check_run(config, args.world_size, plan.total_steps)
    if start.finished_step is not None:
        if main:
            print(start.finished_line(), flush=True)
        return None
    with locked(output_dir) if main else nullcontext():
        return _locked_run(config, args, plan, start, model, tokenizer, dataset, evals, sampler, collator,
                           data_report, callbacks, memory)


def _locked_run(config: TrainConfig, args: TrainingArguments, plan: StepPlan, start: RunStart, model, tokenizer,
                dataset, evals, sampler, collator, data_report, callbacks, memory: MemoryPlan | None
                ) -> TrainResult:
    """`train` once this process holds output_dir (the main process) or the main process does (the others)."""
    output_dir = Path(config.outputs.output_dir)
    strategy = Strategy.of(config.optim)
    main = args.process_index == 0
    if main:
        begin_run(config, start)
    PartialState().wait_for_everyone()  # the other ranks look for the checkpoint once it is tidied
    resume = resume_path(config, start)
    run_log = RunLog.start(config.logging, output_dir, config.flat()) if main else RunLog(output_dir / "metrics.jsonl")
    log_callback = RunLogCallback(run_log, tuple(evals))
    preemption = Preemption(args.world_size)
    try:
        trainer = DelphiTrainer(
            model=model, args=args, processing_class=tokenizer, data_collator=collator, train_dataset=dataset,
            eval_dataset=evals or None, sampler_factory=lambda *_: sampler, run_config=config,
            # Sharded weights are whole only inside the model's forward pass: the loss reads the logits.
            chunked_loss=config.model.chunked_loss and not strategy.shards_weights,
            callbacks=[log_callback, preemption, *callbacks])
        if resume:
            trainer.tokens_before = tokens_at(resume)
        trainer.remove_callback(ProgressCallback)
        progress = TokenProgressCallback(tuple(evals))
        trainer.add_callback(progress)
        if main:
            print(plan.describe(), flush=True)
            print((memory or plan_run(config, model.config, args.world_size)).describe(), flush=True)
            if resume:
                print(f"resuming from {resume}", flush=True)
            run_log.summary({"plan/steps_per_epoch": plan.steps_per_epoch, "plan/total_steps": plan.total_steps,
                             **{f"data/{k}": v for k, v in (data_report or {}).items()}})
        try:
            with quiet_weight_bars(), preemption.watching(), \
                    deepspeed_loads_weights_only() if config.optim.deepspeed else nullcontext(), \
                    loading(resume, start.resume_step, lambda: trainer.state.global_step):
                trainer.train(resume_from_checkpoint=str(resume) if resume else None)
        finally:
            progress.close()
        if preemption.stopped_at is not None:
            saved = newest_complete(output_dir)
            raise preemption.stopped(str(saved.path) if saved and saved.step == preemption.stopped_at else None)
        with quiet_weight_bars():
            trainer.save_final(output_dir)
        figures = trainer.throughput()
        result = TrainResult(
            global_step=trainer.state.global_step, epochs=trainer.state.epoch or 0.0,
            trained_tokens=figures["trained_tokens"], trained_tokens_per_second=figures["trained_tokens_per_second"],
            peak_memory_gib=peak_memory_gib(), output_dir=output_dir,
            checkpoints=tuple(c.path for c in complete_checkpoints(output_dir)), metrics_path=run_log.path)
        if main:
            run_log.summary({"final/" + k: v for k, v in figures.items()} | {"final/global_step": result.global_step}
                            | {"final/" + k: v for k, v in log_callback.end.items()})
            print(result.report(), flush=True)
    finally:
        run_log.finish()
    return result


def layer_class(model) -> str | None:
    """The architecture entry's transformer layer class (what FSDP wraps), for the model's config.json type."""
    from trainer.architectures import ARCHITECTURES

    entry = ARCHITECTURES.get(getattr(model.config, "model_type", ""))
    return entry.layer_class if entry else None
