"""Every place Delphi reaches into a library's internals, each with the upstream behaviour it works around.

Tested against the versions `pyproject.toml` pins (transformers 5.24, peft 0.21, bitsandbytes 0.50,
huggingface_hub 2.4, accelerate 1.15). `tests/test_compat.py` checks, for each item, that upstream still behaves
the way the workaround assumes, so an upgrade that fixes or changes it fails there, in one place, instead of
silently somewhere in a run. torch is imported where it is used, so that the entry points can install the log
filters below (and answer `--help`) before any heavy library loads.
"""
from __future__ import annotations

import functools
import inspect
import json
import logging
import os
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

if TYPE_CHECKING:
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

    def rank_local_dataloader(self, dataset, sampler, batches: bool = False) -> torch.utils.data.DataLoader:
        """The Trainer's own loader (collator, workers, pinning, device placement) around a sampler that already
        yields this rank's indices, or (`batches`) this rank's lists of indices. `accelerator.prepare` wraps it in
        a `BatchSamplerShard` that would shard it again; made a pass-through, as transformers 5.24 does for its own
        rank-aware `BatchRebalanceSampler`."""
        import torch

        if batches:
            args = self.args
            loader = self.accelerator.prepare(torch.utils.data.DataLoader(
                dataset, batch_sampler=sampler, collate_fn=self.data_collator, num_workers=args.dataloader_num_workers,
                pin_memory=args.dataloader_pin_memory and torch.cuda.is_available()))
        else:
            loader = self._get_dataloader(dataset, "Training", self._train_batch_size, sampler_fn=lambda _: sampler,
                                          is_training=True)
        shard = getattr(loader, "batch_sampler", None)
        if shard is not None and hasattr(shard, "num_processes"):
            shard.num_processes, shard.process_index = 1, 0
        return loader

    def create_accelerator_and_postprocess(self) -> None:
        """accelerate 1.15 turns an FSDP plugin into FSDP only on GPU-like devices; on CPU ranks (gloo) it drops it
        without a word and wraps the model in DDP. torch's FSDP2 runs on CPU meshes, so the plugin is put back,
        as accelerate does for GPUs, before anything is prepared."""
        super().create_accelerator_and_postprocess()
        from accelerate.state import PartialState
        from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

        state = self.accelerator.state
        if self.args.fsdp_plugin_args and state.distributed_type == DistributedType.MULTI_CPU:
            state.distributed_type = DistributedType.FSDP
            PartialState._shared_state["distributed_type"] = DistributedType.FSDP
            state.fsdp_plugin = FullyShardedDataParallelPlugin(**self.args.fsdp_plugin_args)
            self.is_fsdp_enabled = True

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
        with self.writing_checkpoint():
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

    def _run_epoch(self, *args, **kwargs) -> None:
        """transformers 5.24 checks `max_steps` only after an optimizer step, so a run resumed from a checkpoint of
        its last step with a fractional num_train_epochs (the epoch is not over) trains one step past its plan.
        Nothing is left to train there: the epoch is not run."""
        if self.state.global_step >= self.state.max_steps:
            return
        super()._run_epoch(*args, **kwargs)

    def _load_optimizer_and_scheduler(self, checkpoint) -> None:
        """A resumed LambdaLR (linear, cosine) keeps the checkpoint's `base_lrs`, and the optimizer the learning rate
        of the checkpoint's schedule for its first step, so a resume with a new learning_rate or num_train_epochs
        would go on with the old ones. Both are set again from the configured peak and the new schedule at the
        resumed step; for an unchanged run that recomputes the same numbers."""
        import torch

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
# Sharded parameters (DeepSpeed ZeRO-3, torch FSDP2)

def full_shape(param) -> tuple[int, ...]:
    """A parameter's whole shape: ZeRO-3 leaves an empty placeholder where the model sees it (`ds_shape` holds the
    real one); FSDP2's DTensor reports its global shape itself."""
    return tuple(getattr(param, "ds_shape", param.shape))


def local_shard(param) -> torch.Tensor:
    """The part of a parameter this rank holds: ZeRO-3's partition, FSDP2's local shard, else the parameter."""
    if hasattr(param, "ds_tensor"):
        return param.ds_tensor
    return param.to_local() if hasattr(param, "to_local") else param


def whole_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """A plain tensor for an FSDP2 DTensor (the gradient norm FSDP2's clipping returns is one, replicated), which
    would otherwise drag every later operation into DTensor's sharding rules."""
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor

# ----------------------------------------------------------------------------------------------------------
# deepspeed: loading its checkpoint files

# The classes ZeRO-1/2 optimizer states hold besides tensors and plain containers (DeepSpeed 0.19).
DEEPSPEED_STATE_CLASSES = (
    "deepspeed.runtime.fp16.loss_scaler.LossScaler", "deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler",
    "deepspeed.runtime.zero.config.ZeroStageEnum", "deepspeed.utils.tensor_fragment.fragment_address")


@contextmanager
def deepspeed_loads_weights_only() -> Iterator[None]:
    """DeepSpeed 0.19's `TorchCheckpointEngine.load` unpickles with `weights_only=False`, so a checkpoint copied in
    from elsewhere, even with a forged completion marker, could run code on resume. While the block runs it loads
    with `weights_only=True` and only the DeepSpeed classes its ZeRO states hold allowed: anything else is refused
    by torch (`pickle.UnpicklingError`, one line through `trainer.files.refused_pickles`)."""
    import importlib

    import torch
    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine

    allowed = [getattr(importlib.import_module(name.rsplit(".", 1)[0]), name.rsplit(".", 1)[1])
               for name in DEEPSPEED_STATE_CLASSES]

    def load(self, path: str, map_location=None):
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location=map_location, weights_only=True)

    original = TorchCheckpointEngine.load
    TorchCheckpointEngine.load = load
    try:
        yield
    finally:
        TorchCheckpointEngine.load = original


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
    import torch
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
# transformers: tokenizer files for the readers of exports

TOKENIZER_LOADER_KEYS = ("backend", "is_local", "local_files_only")  # 5.24's own bookkeeping in the saved file


def tokenizer_config_for_4x(directory: Path) -> None:
    """Rewrites a `tokenizer_config.json` saved by transformers 5.24 so that transformers 4.x (what vLLM and TGI
    run) reads it as well.

    5.24 writes `tokenizer_class: "TokenizersBackend"`, a class 4.x does not have (ValueError), the extra special
    tokens as a list under `extra_special_tokens` (which later 4.x read as a mapping, and crash), and its loader's
    bookkeeping; it moves the chat template out into `chat_template.jinja`, which 4.x before 4.50 never read.
    Rewritten: `PreTrainedTokenizerFast` (both read `tokenizer.json` verbatim; the model-specific classes rebuild
    it from vocab and merges in 5.x), `additional_special_tokens`, no bookkeeping, and the template also under
    `chat_template` (5.24 reads the `.jinja` file, which wins; it holds the same text)."""
    path = directory / "tokenizer_config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    for key in TOKENIZER_LOADER_KEYS:
        config.pop(key, None)
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    extra = config.pop("extra_special_tokens", None)
    if isinstance(extra, list):
        config["additional_special_tokens"] = extra
    template = directory / "chat_template.jinja"
    if template.is_file():
        config["chat_template"] = template.read_text(encoding="utf-8")
    path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


# ----------------------------------------------------------------------------------------------------------
# peft

@contextmanager
def quiet_peft_model_init() -> Iterator[None]:
    """peft 0.21's `PeftModel.__init__` reads `model.is_gradient_checkpointing` (peft/peft_model.py), which
    transformers 5.24 deprecated with a FutureWarning: a warning about peft's code, raised on every adapter
    Delphi builds or loads, that the user can do nothing about. Dropped while a PeftModel is built, nowhere else."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        yield


# ----------------------------------------------------------------------------------------------------------
# torch

@functools.cache
def varlen_causal_kwargs(window: int | None = None) -> dict:
    """torch's `varlen_attn` said "causal" as `is_causal=True` in its first releases and as `window_size=(-1, 0)`
    later, where `(window - 1, 0)` is causal within a sliding window; the first releases have no window."""
    from torch.nn.attention.varlen import varlen_attn

    if "window_size" in inspect.signature(varlen_attn).parameters:
        return {"window_size": (-1 if window is None else window - 1, 0)}
    if window is not None:
        raise ValueError("this torch's varlen_attn has no sliding window; use flash_attention_2 or a newer torch")
    return {"is_causal": True}


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
# Library log messages that are not true of Delphi's runs

BNB_KERNEL_MESSAGE = "Failed to load CPU gemm_4bit_forward from kernels-community"
MTIME_MESSAGE = "mtime may not be reliable on this filesystem"
# logger -> the start of the one message dropped from it.
DROPPED_MESSAGES = {
    # bitsandbytes 0.50 logs this at import on CPUs with AVX512-BF16 when the optional `kernels` package (an
    # optimised 4-bit CPU kernel fetched from the hub) is missing; transformers' Trainer and peft import it, so every
    # command printed it, although the built-in fallback is what runs, and what Delphi is tested with.
    "bitsandbytes.backends.cpu.ops": BNB_KERNEL_MESSAGE,
    # transformers 5.24 rotates checkpoints by mtime and, when the oldest and newest are less than a second apart
    # (any fast run), blames the filesystem, which is fine; it then falls back to step order, which is right.
    "transformers.trainer_utils": MTIME_MESSAGE,
}


class _DropMessage(logging.Filter):
    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefix)


def quiet_library_messages() -> None:
    """A filter on each logger of `DROPPED_MESSAGES` that drops that one message; installed by the entry points
    before any library is imported (bitsandbytes logs at import). Idempotent."""
    for name, prefix in DROPPED_MESSAGES.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropMessage) for f in logger.filters):
            logger.addFilter(_DropMessage(prefix))


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


