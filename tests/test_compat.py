"""Each workaround in trainer/compat.py, checked against the upstream behaviour it exists for.

When an upgrade fixes or changes that behaviour, the test here fails and says which workaround to revisit, instead
of a run misbehaving somewhere else. Every test runs the real library code on tiny real models.
"""
from __future__ import annotations

import inspect
import json
import subprocess
import sys
import warnings

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, Trainer, TrainingArguments
from transformers.trainer_utils import get_last_checkpoint

from trainer import compat
from trainer.formats import build_format
from trainer.paths import CHECKOUT


def test_transformers_still_reloads_full_checkpoints_without_key_renaming(tiny_model_dir):
    """compat.TrainerSeams._load_from_checkpoint: a plain load_state_dict of a saved GPT-NeoX misses the head."""
    from safetensors.torch import load_file

    directory = tiny_model_dir("gpt_neox")
    model = AutoModelForCausalLM.from_pretrained(directory)
    files = [directory / "model.safetensors"]
    plain = model.load_state_dict(load_file(files[0]), strict=False)
    assert "embed_out.weight" in plain.unexpected_keys, "upstream now renames on load: drop the override"
    assert {"lm_head.weight"} <= set(plain.missing_keys)
    renamed = compat.renamed_state_dict(model, files)
    assert model.load_state_dict(renamed, strict=True)  # every tensor lands under today's name
    source = inspect.getsource(Trainer._load_from_checkpoint)
    assert "load_state_dict" in source and hasattr(Trainer, "_issue_warnings_after_load")


def test_the_trainer_seams_delphi_overrides_still_exist():
    """compat.TrainerSeams: the private names it sets or calls are still read by the 5.24 Trainer."""
    params = inspect.signature(Trainer._get_dataloader).parameters
    assert {"dataset", "description", "batch_size", "sampler_fn", "is_training"} <= set(params)
    source = inspect.getsource(Trainer)
    assert "self._loss_shifts_labels" in source and "self.model_accepts_loss_kwargs" in source
    assert "_train_batch_size" in source


def test_a_batch_sampler_shard_with_one_process_passes_every_batch_through():
    """compat.TrainerSeams.rank_local_dataloader: accelerate's shard wrapper, made a pass-through."""
    from accelerate.data_loader import BatchSamplerShard
    from torch.utils.data import BatchSampler, SequentialSampler

    batches = BatchSampler(SequentialSampler(range(8)), batch_size=2, drop_last=False)
    shard = BatchSamplerShard(batches, num_processes=2, process_index=1)
    assert list(shard) == [[2, 3], [6, 7]]  # upstream still shards what it wraps
    shard.num_processes, shard.process_index = 1, 0
    assert list(shard) == list(batches)


@pytest.mark.parametrize("model_type, expected", [
    ("gpt_neox", {"sdpa": True, "flash_attention_2": True, "flex_attention": True}),
    ("mpt", {"sdpa": False, "flash_attention_2": False, "flex_attention": False}),
])
def test_attention_support_flags(tiny_model_dir, model_type, expected):
    """compat.attention_support reads private class flags; MPT stays eager (its ALiBi bias needs it)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    config = AutoConfig.from_pretrained(tiny_model_dir(model_type))
    assert compat.attention_support(MODEL_FOR_CAUSAL_LM_MAPPING[type(config)]) == expected


def test_transformers_still_skips_falcons_linear_subclass_when_quantizing(tiny_model_dir):
    """compat.falcon_linears_quantizable: without it a 4-bit Falcon load quantizes nothing."""
    import bitsandbytes as bnb
    from transformers import BitsAndBytesConfig

    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32)

    def quantized_layers() -> int:
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir("falcon"), quantization_config=quant,
                                                     device_map={"": "cpu"})
        return sum(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())

    assert quantized_layers() == 0, "upstream quantizes FalconLinear now: drop compat.falcon_linears_quantizable"
    with compat.falcon_linears_quantizable():
        assert quantized_layers() == 8


def test_transformers_mpt_still_ignores_the_configured_residual_dropout(tiny_model_dir):
    """compat.set_mpt_residual_dropout: MptBlock does not read `resid_pdrop`."""
    from transformers.models.mpt.modeling_mpt import MptBlock

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir("mpt"), resid_pdrop=0.3)
    blocks = [m for m in model.modules() if isinstance(m, MptBlock)]
    assert {b.resid_attn_dropout.p for b in blocks} != {0.3}, "upstream reads resid_pdrop now: drop the workaround"
    compat.set_mpt_residual_dropout(model, 0.3)
    assert {b.resid_attn_dropout.p for b in blocks} == {0.3}


def test_bitsandbytes_4bit_layers_still_carry_the_cpu_repacking_switch(tiny_model_dir):
    """compat.keep_4bit_weights_trainable sets an attribute bitsandbytes 0.50 reads in Linear4bit.forward."""
    import bitsandbytes as bnb

    assert "support_avx512bf16_for_cpu" in inspect.getsource(bnb.nn.Linear4bit)
    layer = bnb.nn.Linear4bit(16, 16, compute_dtype=torch.float32, quant_type="nf4")
    compat.keep_4bit_weights_trainable(torch.nn.Sequential(layer))
    assert layer.support_avx512bf16_for_cpu is False


def test_huggingface_hub_still_reads_its_timeouts_from_module_constants(monkeypatch):
    """compat.hub_timeouts sets huggingface_hub.constants, which the download code reads at call time."""
    import huggingface_hub.file_download as download
    from huggingface_hub import constants

    source = inspect.getsource(download)
    assert "constants.HF_HUB_ETAG_TIMEOUT" in source and "constants.HF_HUB_DOWNLOAD_TIMEOUT" in source
    for name in compat.HUB_TIMEOUT_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    before = constants.HF_HUB_ETAG_TIMEOUT
    with compat.hub_timeouts(3.0):
        assert constants.HF_HUB_ETAG_TIMEOUT == constants.HF_HUB_DOWNLOAD_TIMEOUT == 3.0
    assert constants.HF_HUB_ETAG_TIMEOUT == before


def test_torch_varlen_attention_takes_causal_in_the_form_compat_passes():
    """compat.varlen_causal_kwargs: `is_causal=True` in torch's first releases of varlen_attn, `window_size` later."""
    from trainer import varlen_attention

    if not varlen_attention.available():
        pytest.skip("this torch has no torch.nn.attention.varlen")
    from torch.nn.attention.varlen import varlen_attn

    (name, value), = compat.varlen_causal_kwargs().items()
    assert name in inspect.signature(varlen_attn).parameters and value in (True, (-1, 0))
    if name == "window_size":  # a sliding window of W tokens: the W - 1 before each query, as transformers' masks
        assert compat.varlen_causal_kwargs(16) == {"window_size": (15, 0)}
    assert "enable_gqa" in inspect.signature(varlen_attn).parameters  # grouped-query heads (Llama 3, Qwen, ...)



def python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=CHECKOUT, timeout=300)


BNB_LOGGER = "bitsandbytes.backends.cpu.ops"


def test_bitsandbytes_kernel_message_is_dropped_and_only_it():
    """Upstream: importing bitsandbytes logs the message (on CPUs with AVX512-BF16 and without the `kernels`
    package); with the filters installed first, that message is gone and the logger still works."""
    upstream = python("import bitsandbytes.backends.cpu.ops as ops, importlib.util, sys\n"
                      "sys.exit(0 if ops.has_avx512bf16() and not importlib.util.find_spec('kernels') else 3)")
    if upstream.returncode == 3:
        pytest.skip("this machine's bitsandbytes has no reason to log the kernel message (no AVX512-BF16, or "
                    "`kernels` is installed)")
    assert compat.BNB_KERNEL_MESSAGE in upstream.stderr and compat.DROPPED_MESSAGES[BNB_LOGGER]
    quiet = python("import logging\nfrom trainer import compat\ncompat.quiet_library_messages()\n"
                   "import bitsandbytes\n"
                   f"logging.getLogger({BNB_LOGGER!r}).warning('still here')")
    assert compat.BNB_KERNEL_MESSAGE not in quiet.stderr and "still here" in quiet.stderr


def test_checkpoint_rotation_blames_the_filesystem_for_checkpoints_a_second_apart(tmp_path):
    """Upstream: the Trainer rotates checkpoints by mtime, and checkpoints saved less than a second apart (any fast
    run) make it log MTIME_MESSAGE although the filesystem is fine; it then sorts by step, which is right."""
    import inspect
    import logging

    from transformers import Trainer, trainer_utils

    assert "use_mtime=True" in inspect.getsource(Trainer._save_checkpoint)
    assert compat.MTIME_MESSAGE in inspect.getsource(trainer_utils.sort_checkpoints)
    for step in (10, 2):
        (tmp_path / f"checkpoint-{step}").mkdir()
    assert trainer_utils.sort_checkpoints(str(tmp_path), use_mtime=True) == \
        [str(tmp_path / "checkpoint-2"), str(tmp_path / "checkpoint-10")]

    compat.quiet_library_messages()
    seen = []
    handler = logging.Handler()
    handler.emit = seen.append
    logger = logging.getLogger(trainer_utils.__name__)
    logger.addHandler(handler)
    try:
        logger.warning(compat.MTIME_MESSAGE + ", falling back to numerical ordering")
        logger.warning("other messages pass")
    finally:
        logger.removeHandler(handler)
    assert [r.getMessage() for r in seen] == ["other messages pass"]


def test_peft_model_init_reads_the_deprecated_checkpointing_flag(tiny_model_dir):
    """Upstream: PeftModel.__init__ reads `is_gradient_checkpointing`, which warns; inside the context it does not."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    def wrap():
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir("gpt_neox"))
        return get_peft_model(model, LoraConfig(r=2, target_modules="all-linear"))

    with warnings.catch_warnings(record=True) as upstream:
        warnings.simplefilter("always")
        wrap()
    assert any(issubclass(w.category, FutureWarning) and "is_gradient_checkpointing" in str(w.message)
               for w in upstream)
    with warnings.catch_warnings(record=True) as quiet:
        warnings.simplefilter("always")
        with compat.quiet_peft_model_init():
            wrap()
    assert not [w for w in quiet if "is_gradient_checkpointing" in str(w.message)]


def test_tokenizer_config_rewritten_for_4x_loads_the_same_tokenizer_today(tokenizer, tmp_path):
    """Upstream: 5.24 saves `TokenizersBackend`, a list of `extra_special_tokens` and loader keys, and moves the
    chat template to `chat_template.jinja`; the rewritten file loads back in 5.24 as the same tokenizer."""
    from transformers import AutoTokenizer

    tokenizer.save_pretrained(tmp_path / "source")
    source = AutoTokenizer.from_pretrained(tmp_path / "source")
    source.chat_template = build_format("oasst", source).chat_template()
    source.save_pretrained(tmp_path / "out")
    saved = json.loads((tmp_path / "out/tokenizer_config.json").read_text())
    assert saved["tokenizer_class"] == "TokenizersBackend" and isinstance(saved["extra_special_tokens"], list)
    assert "chat_template" not in saved and "backend" in saved

    compat.tokenizer_config_for_4x(tmp_path / "out")
    rewritten = json.loads((tmp_path / "out/tokenizer_config.json").read_text())
    assert rewritten["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert rewritten["additional_special_tokens"] == saved["extra_special_tokens"]
    assert rewritten["chat_template"] == source.chat_template
    assert not set(compat.TOKENIZER_LOADER_KEYS) & set(rewritten) and "extra_special_tokens" not in rewritten
    loaded = AutoTokenizer.from_pretrained(tmp_path / "out")
    text = "<|system|>S<|endoftext|><|prompter|>Héllo, world?<|endoftext|><|assistant|>"
    assert loaded.encode(text) == source.encode(text)
    assert loaded.all_special_tokens == source.all_special_tokens and loaded.chat_template == source.chat_template
    assert (loaded.pad_token_id, loaded.eos_token_id) == (source.pad_token_id, source.eos_token_id)


def test_the_trainer_resumes_from_the_highest_numbered_directory_whatever_it_holds(tmp_path):
    """Why Delphi chooses the checkpoint itself (trainer.checkpoints): a torn or stray checkpoint-N wins."""
    (tmp_path / "checkpoint-10").mkdir()
    (tmp_path / "checkpoint-999").mkdir()  # empty
    assert get_last_checkpoint(str(tmp_path)) == str(tmp_path / "checkpoint-999")


def test_the_trainer_writes_checkpoints_in_place_under_get_output_dir_and_rotates_them_itself():
    """The seam TrainerSeams._save_checkpoint relies on: the directory comes from `_get_output_dir`, and the
    rotation (which Delphi turns off with save_total_limit=None) runs inside the save."""
    source = inspect.getsource(Trainer._save_checkpoint)
    assert "run_dir = self._get_output_dir(trial=trial)" in source
    assert "rotate_checkpoints(" in source and "save_total_limit=self.args.save_total_limit" in source


def test_the_per_step_hook_sees_the_loss_and_the_gradient_norm():
    """TrainerSeams._maybe_log_save_evaluate's signature, called after every optimizer step."""
    params = list(inspect.signature(Trainer._maybe_log_save_evaluate).parameters)
    assert params == ["self", "tr_loss", "grad_norm", "model", "trial", "epoch", "ignore_keys_for_eval",
                      "start_time", "learning_rate"]


def test_a_diverged_loss_is_hidden_by_default():
    """logging_nan_inf_filter (True by default) logs a nan/inf loss as the running mean; Delphi turns it off."""
    assert TrainingArguments(output_dir="x", report_to="none").logging_nan_inf_filter is True
    assert "logging_nan_inf_filter" in inspect.getsource(Trainer._run_epoch)


def test_a_resumed_lambda_schedule_keeps_the_checkpoints_peak_learning_rate():
    """Why TrainerSeams._load_optimizer_and_scheduler sets base_lrs again: LambdaLR restores them from the
    checkpoint, so a new learning_rate would be ignored."""
    param = torch.nn.Parameter(torch.zeros(1))
    old = torch.optim.lr_scheduler.LambdaLR(torch.optim.AdamW([param], lr=1.0), lambda step: 1.0)
    new = torch.optim.lr_scheduler.LambdaLR(torch.optim.AdamW([param], lr=2.0), lambda step: 1.0)
    new.load_state_dict(old.state_dict())
    assert new.base_lrs == [1.0]


def test_deepspeed_unpickles_its_checkpoint_files_with_arbitrary_code():
    """Why a DeepSpeed checkpoint is loaded only with Delphi's completion marker (or when the user names it), and
    through `deepspeed_loads_weights_only`, which replaces this very method while a run resumes."""
    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine

    assert "weights_only=False" in inspect.getsource(TorchCheckpointEngine.load)


def test_accelerate_makes_fsdp_only_on_gpu_like_devices():
    """TrainerSeams.create_accelerator_and_postprocess puts the FSDP plugin back on CPU ranks: accelerate 1.15
    promotes a plugin to FSDP only inside its branch for GPU-like multi-device types, which MULTI_CPU is not."""
    from accelerate.state import AcceleratorState

    source = inspect.getsource(AcceleratorState.__init__)
    gpu_branch = source[source.index("DistributedType.MULTI_GPU,"):source.index("self.distributed_type = DistributedType.FSDP")]
    assert "MULTI_CPU" not in gpu_branch and "fsdp_plugin is not None" in gpu_branch
    assert "self.is_fsdp_enabled = getattr(self.accelerator.state, \"fsdp_plugin\", None) is not None" in \
        inspect.getsource(Trainer.create_accelerator_and_postprocess)


def test_zero3_init_sizes_its_batch_from_deepspeeds_own_process_group():
    """Why strategy.start_sharded_loading starts DeepSpeed's process group on CPU: zero.Init's config reads the
    world size from deepspeed.comm and falls back to 1 (then fails its batch check) when it is not started."""
    from deepspeed.runtime.config import DeepSpeedConfig

    source = inspect.getsource(DeepSpeedConfig.__init__)
    assert "self.world_size = dist.get_world_size()" in source and "self.world_size = 1" in source


def test_the_deepspeed_classes_allowed_in_a_weights_only_load_are_where_the_allowlist_names_them():
    """Each allowlisted class still exists under its name (a rename would make every ZeRO resume refused)."""
    import importlib

    from trainer.compat import DEEPSPEED_STATE_CLASSES

    for name in DEEPSPEED_STATE_CLASSES:
        module, _, attribute = name.rpartition(".")
        assert isinstance(getattr(importlib.import_module(module), attribute), type), name


def test_an_epoch_checks_the_step_limit_only_after_a_step():
    """Why TrainerSeams._run_epoch skips an epoch once global_step reached max_steps: upstream trains a step before it
    first asks whether to stop, so a run resumed at its last step (fractional epochs) would train one more."""
    from transformers import Trainer

    source = inspect.getsource(Trainer._run_epoch)
    assert source.index("self.training_step(") < source.index("should_training_stop")
