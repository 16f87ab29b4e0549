"""Each workaround in `trainer.compat` against the upstream behaviour it works around: when an upgrade changes that
behaviour, the test here fails and says which workaround to revisit."""
from __future__ import annotations

import json
import subprocess
import sys
import warnings

import pytest

from trainer import compat
from trainer.formats import build_format
from trainer.paths import CHECKOUT


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
