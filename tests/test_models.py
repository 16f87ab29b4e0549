import json
import shutil
import warnings

import pytest
import torch

from trainer.config import MODES, TrainConfig, load_config
from trainer.errors import ConfigError
from trainer.architectures import ARCHITECTURES
from trainer.models import check_model_source, check_quantized, check_vocab_fits, choose_attention, load_model
from trainer.tokens import load_tokenizer

EXTRA_TOKENS = 20  # pushes len(tokenizer) past the tiny models' rows, so every load really resizes


@pytest.fixture(scope="module")
def grown_tokenizer(tokenizer, tmp_path_factory):
    directory = tmp_path_factory.mktemp("grown_tokenizer")
    tokenizer.save_pretrained(directory)
    grown = load_tokenizer(str(directory))
    grown.add_tokens([f"<extra_{i}>" for i in range(EXTRA_TOKENS)])
    return grown


def tiny_config(model_dir, **overrides) -> TrainConfig:
    values = dict(model_name=str(model_dir), dtype="fp32", lora_r=8, lora_dropout=0.0, residual_dropout=0.2)
    return TrainConfig.of(**{**values, **overrides})


def load(config: TrainConfig, tokenizer):
    return load_model(config.model, config.adapters, tokenizer, max_length=config.data.max_length)


def check(config: TrainConfig):
    return check_model_source(config.model, config.adapters)


def batch(tokenizer) -> dict[str, torch.Tensor]:
    texts = ["<|prompter|>What is a tree?<|endoftext|><|assistant|>A tall plant <extra_3>.<|endoftext|>",
             "<|prompter|>Hi<|endoftext|><|assistant|>Hello <extra_19>!<|endoftext|>"]
    enc = tokenizer(texts, padding=True, return_tensors="pt")
    enc["labels"] = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
    return dict(enc)


def eval_loss(model, inputs) -> float:
    model.eval()
    with torch.no_grad():
        return model(**inputs).loss.item()


def residual_dropout_rates(model, architecture: str) -> set[float]:
    """Where each family keeps it: a config field, MPT's modules, or Delphi's hooks (classes without a place)."""
    from trainer.architectures import residual_dropout

    if architecture == "mpt":
        from transformers.models.mpt.modeling_mpt import MptBlock, MptMLP

        return {m.resid_attn_dropout.p for m in model.modules() if isinstance(m, MptBlock)} | \
            {m.hidden_dropout for m in model.modules() if isinstance(m, MptMLP)}
    fields = ARCHITECTURES[architecture].dropout_fields
    return {getattr(model.config, f) for f in fields} if fields else residual_dropout.rates(model)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("architecture", list(ARCHITECTURES))
def test_load_train_and_what_changes(architecture, mode, tiny_model_dir, grown_tokenizer):
    import bitsandbytes as bnb
    from peft.tuners.lora import LoraLayer

    config = tiny_config(tiny_model_dir(architecture), mode=mode, gradient_checkpointing=True, max_length=3000)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = load(config, grown_tokenizer)
    # Delphi's own calls trip no deprecation (peft's prepare_model_for_kbit_training and PeftModel used to).
    assert not [str(w.message) for w in caught if issubclass(w.category, FutureWarning)]
    model = loaded.model
    base = model if mode == "full" else model.get_base_model()

    rows = model.get_input_embeddings().num_embeddings
    assert rows % 16 == 0 and len(grown_tokenizer) <= rows < len(grown_tokenizer) + 16
    assert model.get_output_embeddings().weight.shape[0] == rows
    assert residual_dropout_rates(base, architecture) == {0.2}
    assert base.is_activation_checkpointing
    assert loaded.attention == ("eager" if architecture in ("mpt", "gemma2") else "sdpa")
    assert any(note.startswith(f"attention: {loaded.attention}") for note in loaded.notes)
    if architecture == "mpt":
        assert base.config.max_seq_len == 3000
    quantized = sum(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())
    adapters = sum(isinstance(m, LoraLayer) for m in model.modules())
    linears = 2 * len(ARCHITECTURES[architecture].lora_targets)  # two layers
    assert (quantized, adapters) == ((linears if mode == "qlora" else 0), (0 if mode == "full" else linears))
    if mode != "full":  # `all` is every linear layer, as the architecture names them
        assert f"on {', '.join(sorted(ARCHITECTURES[architecture].lora_targets))}" in " ".join(loaded.notes)
    paged = mode == "qlora" and torch.cuda.is_available()  # paged AdamW only where CUDA can page
    assert loaded.optimizer == ("paged_adamw_32bit" if paged else "adamw_torch_fused")
    if mode == "full":
        assert loaded.trainable_params == loaded.total_params
    else:
        assert 0 < loaded.trainable_params < loaded.total_params
        assert all("lora_" in n for n, p in model.named_parameters() if p.requires_grad)

    inputs = {k: v.to(model.device) for k, v in batch(grown_tokenizer).items()}  # QLoRA: on the GPU if any
    model.train()
    assert not torch.equal(model(**inputs).logits, model(**inputs).logits)  # dropout is live in training
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    trained = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    before = eval_loss(model, inputs)  # an eval forward before training: bitsandbytes' CPU repacking trap
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(10):
        model.train()
        model(**inputs).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert eval_loss(model, inputs) < before - 0.5
    params = dict(model.named_parameters())
    assert all(torch.equal(params[n], t) for n, t in frozen.items())
    assert all(not torch.equal(params[n], t) for n, t in trained.items())


def test_falcon_4bit_fix_is_undone_after_the_load(tiny_model_dir, grown_tokenizer):
    from transformers.models.falcon import modeling_falcon

    load(tiny_config(tiny_model_dir("falcon"), mode="qlora"), grown_tokenizer)
    assert modeling_falcon.FalconLinear is not torch.nn.Linear
    assert issubclass(modeling_falcon.FalconLinear, torch.nn.Linear)


def test_a_load_that_quantizes_nothing_fails(tiny_model_dir, grown_tokenizer):
    model = load(tiny_config(tiny_model_dir("falcon")), grown_tokenizer).model
    with pytest.raises(ConfigError, match="mode: qlora, but loading 'tiny-falcon' in 4 bits quantized no layer"):
        check_quantized(model, "tiny-falcon")


def test_a_tokenizer_larger_than_the_embedding_fails(tiny_model_dir, grown_tokenizer):
    from transformers import AutoModelForCausalLM

    directory = tiny_model_dir("gpt_neox")
    model = AutoModelForCausalLM.from_pretrained(directory)
    with pytest.raises(ConfigError) as e:
        check_vocab_fits(model, grown_tokenizer, tiny_config(directory).model)
    rows = model.get_input_embeddings().num_embeddings
    assert f"token ids up to {len(grown_tokenizer) - 1:,}" in str(e.value)
    assert f"input embedding of model_name '{directory}' has {rows:,} rows" in str(e.value)
    assert "output head" in str(e.value)


def test_flash_attention_falls_back_and_says_why(tiny_model_dir):
    config = tiny_config(tiny_model_dir("gpt_neox"), use_flash_attention=True)
    attention, why = choose_attention(config.model, check(config))
    assert attention == "sdpa" and "flash-attn 2 is not installed or there is no CUDA device" in why
    assert "needs fp16 or bf16" in why


def test_qlora_fork_flags_parse(tiny_model_dir):
    directory = str(tiny_model_dir("mpt"))
    config = load_config(["--model_name", directory, "--mpt", "True", "--mode", "qlora", "--lora_r", "64",
                          "--lora_alpha", "16", "--quant_type", "fp4", "--double_quant", "False"], config_files=[])
    flat = config.flat()
    assert [flat[k] for k in ("mpt", "mode", "lora_r", "lora_alpha", "quant_type", "double_quant")] == \
        [True, "qlora", 64, 16, "fp4", False]
    assert check(config).architecture.model_type == "mpt"


def copy_model_files(source, target, names=("config.json", "model.safetensors")):
    target.mkdir()
    for name in names:
        shutil.copy(source / name, target / name)
    return target


@pytest.mark.parametrize("case, expected", [
    ("missing", r"model_name: no directory at '.*nowhere'"),
    ("no_config", r"model_name: '.*empty' has no config.json"),
    ("no_weights", r"model_name: '.*config_only' has config.json but no weights"),
    ("no_tokenizer", r"model_name: '.*weights_only' holds no tokenizer"),
    ("tokenizer_dir_empty", r"tokenizer_name: '.*empty' holds no tokenizer"),
    ("mpt_flag_on_neox", r"mpt: true, but '.*' is a gpt_neox checkpoint"),
    ("unknown_architecture", r"model_name: '.*gpt2' is a gpt2 checkpoint \(config.json model_type\); supported: "
                             r"gpt_neox \(GPT-NeoX / Pythia\), mpt \(MPT\), falcon \(Falcon\), "
                             r"llama \(Llama 2 / 3.x\), qwen2 .*, gemma2 \(Gemma 2\), "
                             r"gemma3_text \(Gemma 3 \(text\)\), phi3 \(Phi-3 / Phi-3.5\)$"),
    ("lora_target_typo", r"lora_target_modules: dense_4h_to_hh not among the linear layers of .*: dense, "
                         r"dense_4h_to_h, dense_h_to_4h, query_key_value, or 'all'"),
])
def test_bad_sources_fail_before_loading(case, expected, tiny_model_dir, tmp_path):
    neox = tiny_model_dir("gpt_neox")
    (tmp_path / "empty").mkdir()
    (tmp_path / "gpt2").mkdir()
    (tmp_path / "gpt2" / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 1}))
    config = {
        "missing": lambda: tiny_config(tmp_path / "nowhere"),
        "no_config": lambda: tiny_config(tmp_path / "empty"),
        "no_weights": lambda: tiny_config(copy_model_files(neox, tmp_path / "config_only", ["config.json"])),
        "no_tokenizer": lambda: tiny_config(copy_model_files(neox, tmp_path / "weights_only")),
        "tokenizer_dir_empty": lambda: tiny_config(neox, tokenizer_name=str(tmp_path / "empty")),
        "mpt_flag_on_neox": lambda: tiny_config(neox, mpt=True),
        "unknown_architecture": lambda: tiny_config(tmp_path / "gpt2"),
        "lora_target_typo": lambda: tiny_config(neox, mode="lora", lora_target_modules="dense,dense_4h_to_hh"),
    }[case]()
    with pytest.raises(ConfigError, match=expected):
        check(config)


@pytest.mark.gpu
def test_padding_free_on_cuda_picks_a_varlen_kernel_and_trains(tiny_model_dir, tmp_path):
    """On a GPU a padding-free GPT-NeoX run takes one row per micro-batch under flash-attention 2 or torch's varlen
    kernel (no mask, no host read-back), and learns."""
    from trainer.models import VARLEN_ATTENTIONS
    from trainer.paths import CHECKOUT
    from trainer.recipe import run
    from trainer.run_log import read_metrics

    config = tiny_config(tiny_model_dir("gpt_neox"), dtype="bf16", padding_free=True, max_length=128,
                         datasets=[{"alpaca": {"input_file_path": str(CHECKOUT / "data/alpaca/sample.json")}}],
                         learning_rate=1e-3, num_train_epochs=2, per_device_train_batch_size=8,
                         gradient_accumulation_steps=1, warmup_steps=0, logging_steps=1, eval_steps=1000,
                         save_steps=1000, report_to="none", cache_dir=str(tmp_path / "cache"),
                         output_dir=str(tmp_path / "out"))
    assert choose_attention(config.model, check(config), padding_free=True)[0] in VARLEN_ATTENTIONS
    result = run(config)
    losses = [r["loss"] for r in read_metrics(result.metrics_path) if "loss" in r]
    assert all(map(torch.isfinite, torch.tensor(losses))) and losses[-1] < losses[0]
    assert max(r["padding_fraction"] for r in read_metrics(result.metrics_path) if "loss" in r) < 0.05
