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


def test_bitsandbytes_kernel_message_is_dropped_and_only_it():
    """Upstream: importing bitsandbytes logs the message on `BNB_CPU_LOGGER` (on CPUs with AVX512-BF16 and without
    the `kernels` package); with the filter installed first, that message is gone and the logger still works."""
    upstream = python("import bitsandbytes.backends.cpu.ops as ops, importlib.util, sys\n"
                      "sys.exit(0 if ops.has_avx512bf16() and not importlib.util.find_spec('kernels') else 3)")
    if upstream.returncode == 3:
        pytest.skip("this machine's bitsandbytes has no reason to log the kernel message (no AVX512-BF16, or "
                    "`kernels` is installed)")
    assert compat.BNB_KERNEL_MESSAGE in upstream.stderr
    quiet = python("import logging\nfrom trainer import compat\ncompat.quiet_bitsandbytes_import()\n"
                   "import bitsandbytes\n"
                   f"logging.getLogger({compat.BNB_CPU_LOGGER!r}).warning('still here')")
    assert compat.BNB_KERNEL_MESSAGE not in quiet.stderr and "still here" in quiet.stderr


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
