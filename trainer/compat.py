"""Every place Delphi reaches into a library's internals, each with the upstream behaviour it works around.

Tested against the versions `pyproject.toml` pins (transformers 5.24, peft 0.21, bitsandbytes 0.50,
huggingface_hub 2.4, accelerate 1.15). `tests/test_compat.py` checks, for each item, that upstream still behaves
the way the workaround assumes, so an upgrade that fixes or changes it fails there, in one place, instead of
silently somewhere in a run.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch

HUB_TIMEOUT_VARIABLES = ("HF_HUB_ETAG_TIMEOUT", "HF_HUB_DOWNLOAD_TIMEOUT")


# ----------------------------------------------------------------------------------------------------------
# transformers: the Trainer

class TrainerSeams:
    """The `transformers.Trainer` internals Delphi's trainer overrides; mixed in before `Trainer`."""

    def count_loss_tokens_ourselves(self) -> None:
        """Delphi's `compute_loss` divides by the step's trained-token count itself: the Trainer must count them
        (`model_accepts_loss_kwargs`) on labels that the loss shifts (`_loss_shifts_labels`, 5.x) and not divide
        again."""
        self.model_accepts_loss_kwargs = True
        self._loss_shifts_labels = True

    def rank_local_dataloader(self, dataset, sampler) -> torch.utils.data.DataLoader:
        """The Trainer's own loader (collator, workers, pinning, device placement) around a sampler that already
        yields this rank's indices. `accelerator.prepare` wraps it in a `BatchSamplerShard` that would shard it
        again; made a pass-through, as transformers 5.24 does for its own rank-aware `BatchRebalanceSampler`."""
        loader = self._get_dataloader(dataset, "Training", self._train_batch_size, sampler_fn=lambda _: sampler,
                                      is_training=True)
        shard = getattr(loader, "batch_sampler", None)
        if shard is not None and hasattr(shard, "num_processes"):
            shard.num_processes, shard.process_index = 1, 0
        return loader

    checkpoint_staging: str | None = None  # set while a checkpoint is being written

    def _get_output_dir(self, trial) -> str:
        """Where `Trainer._save_checkpoint` puts `checkpoint-N`: the staging directory while Delphi saves one."""
        return self.checkpoint_staging or super()._get_output_dir(trial)

    def _save_checkpoint(self, model, trial) -> None:
        """transformers 5.24 writes `checkpoint-N` in place, file by file, with no mark of completion, and rotates
        by mtime, counting torn leftovers. Here the Trainer writes it under `.staging/` and `checkpoint_saved`
        (trainer.checkpoints) publishes it once every rank is done; `save_total_limit` is given to the Trainer as
        None, so it rotates nothing itself."""
        from trainer.checkpoints import staging_dir

        self.before_save()
        self.checkpoint_staging = str(staging_dir(Path(self.args.output_dir)))
        try:
            super()._save_checkpoint(model, trial)
        finally:
            staged, self.checkpoint_staging = self.checkpoint_staging, None
        self.checkpoint_saved(Path(staged) / f"checkpoint-{self.state.global_step}")

    def _maybe_log_save_evaluate(self, tr_loss, grad_norm, model, trial, epoch, ignore_keys_for_eval, start_time,
                                 learning_rate=None) -> None:
        """Called after every optimizer step with the loss summed since the last log and this step's gradient
        norm, the only place both are seen each step (callbacks get the norm at logging steps only)."""
        self.observe_step(tr_loss, grad_norm, self.accelerator.optimizer_step_was_skipped)
        super()._maybe_log_save_evaluate(tr_loss, grad_norm, model, trial, epoch, ignore_keys_for_eval, start_time,
                                         learning_rate=learning_rate)

    def _load_optimizer_and_scheduler(self, checkpoint) -> None:
        """A resumed LambdaLR (linear, cosine) keeps the checkpoint's `base_lrs`, and the optimizer the learning rate
        of the checkpoint's schedule for its first step, so a resume with a new learning_rate or num_train_epochs
        would go on with the old ones. Both are set again from the configured peak and the new schedule at the
        resumed step; for an unchanged run that recomputes the same numbers."""
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is None or not isinstance(self.lr_scheduler, torch.optim.lr_scheduler.LambdaLR):
            return
        scheduler = self.lr_scheduler
        scheduler.base_lrs = [self.args.learning_rate] * len(scheduler.base_lrs)
        rates = [base * factor(scheduler.last_epoch) for base, factor in zip(scheduler.base_lrs, scheduler.lr_lambdas)]
        for group, rate in zip(self.optimizer.param_groups, rates):
            group["lr"] = rate
        scheduler._last_lr = rates

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        """transformers 5.24 saves full-model checkpoints under the hub's key names (GPT-NeoX: `embed_out`, not
        `lm_head`) but reloads them with a plain `load_state_dict(strict=False)`, which leaves such weights at
        their fresh values on resume without an error. Load them through the model's own key renaming instead."""
        target = model if model is not None else self.model
        files = sorted(Path(resume_from_checkpoint).glob("model*.safetensors"))
        if not files or self.is_deepspeed_enabled or hasattr(target, "peft_config"):
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        self._issue_warnings_after_load(target.load_state_dict(renamed_state_dict(target, files), strict=False))


def renamed_state_dict(model, files: list[Path]) -> dict[str, torch.Tensor]:
    """The tensors of safetensors files under the model's current parameter names (transformers 5's
    checkpoint conversion mapping, as `from_pretrained` applies it)."""
    from safetensors.torch import load_file
    from transformers.conversion_mapping import get_model_conversion_mapping
    from transformers.core_model_loading import WeightConverter, WeightRenaming, rename_source_key

    transforms = get_model_conversion_mapping(model)
    renamings = [t for t in transforms if isinstance(t, WeightRenaming)]
    converters = [t for t in transforms if isinstance(t, WeightConverter)]
    return {rename_source_key(key, renamings, converters)[0]: value
            for file in files for key, value in load_file(file, device="cpu").items()}


# ----------------------------------------------------------------------------------------------------------
# transformers: model classes

def attention_support(model_class) -> dict[str, bool]:
    """Which attention implementations a model class declares (private class flags in 5.x)."""
    return {"sdpa": getattr(model_class, "_supports_sdpa", False),
            "flash_attention_2": getattr(model_class, "_supports_flash_attn", False),
            "flex_attention": getattr(model_class, "_supports_flex_attn", False)}


@contextmanager
def falcon_linears_quantizable() -> Iterator[None]:
    """Builds Falcon with plain nn.Linear layers while it loads in 4 bits.

    transformers 5.24 replaces only modules whose type *is* nn.Linear with bitsandbytes layers, so Falcon's
    `FalconLinear(nn.Linear)` stays unquantized without a word. FalconLinear's forward is `x @ W.T + b`, the
    same as nn.Linear's, so nothing else changes; the class is restored as soon as the model is built.
    """
    from transformers.models.falcon import modeling_falcon

    original = modeling_falcon.FalconLinear
    modeling_falcon.FalconLinear = torch.nn.Linear
    try:
        yield
    finally:
        modeling_falcon.FalconLinear = original


def set_mpt_residual_dropout(model, p: float) -> None:
    """transformers' MptBlock and MptMLP take their residual dropout from `attn_config.attn_pdrop`, which
    transformers 5.24 types as int (0.1 fails its validation), so the rate is set on the built modules."""
    from transformers.models.mpt.modeling_mpt import MptBlock, MptMLP

    for module in model.modules():
        if isinstance(module, MptBlock):
            module.resid_attn_dropout.p = p
        elif isinstance(module, MptMLP):
            module.hidden_dropout = p


# ----------------------------------------------------------------------------------------------------------
# bitsandbytes

def keep_4bit_weights_trainable(model) -> None:
    """On CPUs with AVX512-BF16, bitsandbytes 0.50 repacks a Linear4bit's weight into an inference-only layout at
    its first no-grad eval forward and never packs it back, so the next training step (after any evaluation)
    fails in its forward. Turning that repacking off keeps the one layout that trains."""
    import bitsandbytes as bnb

    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False


# ----------------------------------------------------------------------------------------------------------
# huggingface_hub

@contextmanager
def hub_timeouts(seconds: float) -> Iterator[None]:
    """Bound the hub's network waits to `seconds`.

    huggingface_hub reads HF_HUB_ETAG_TIMEOUT / HF_HUB_DOWNLOAD_TIMEOUT into module constants at import (and
    transformers has usually imported it already), so the constants are set for the duration of the call; a
    value the user set in the environment wins.
    """
    from huggingface_hub import constants

    saved = {name: getattr(constants, name) for name in HUB_TIMEOUT_VARIABLES if name not in os.environ}
    for name in saved:
        setattr(constants, name, seconds)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(constants, name, value)


