"""Export: adapter merges reproduce the adapter model, the base stays untouched, double merges are refused, the
IPU export loads under transformers 4.25.1 / tokenizers 0.13.3, the other families refuse it and export for hf."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from trainer.checkpoints import write_marker
from trainer.cli import main as delphi
from trainer.config import TrainConfig, write_resolved
from trainer.errors import ConfigError, RunError
from trainer.export.check import check_prompts, prompt_ids, run_prompts
from trainer.export.cli import export
from trainer.data.conversation import ASSISTANT, PROMPTER, Turn
from trainer.data.tokenize import SegmentEncoder, encode_prompt
from trainer.formats import build_format, format_for
from trainer.inference import load_for_inference
from trainer.paths import CHECKOUT as REPO_ROOT


def tree_hashes(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir()) if p.is_file()}


def train_adapter(base: Path, out: Path, tokenizer, mode: str) -> Path:
    """A real LoRA/QLoRA run in miniature: the trainer's model loading, 3 AdamW steps, the run's files."""
    from trainer.models import load_model

    config = TrainConfig.of(model_name=str(base), mode=mode, dtype="fp32", lora_r=4, lora_alpha=8,
                            lora_dropout=0.0, residual_dropout=0.0, output_dir=str(out))
    model = load_model(config.model, config.adapters, tokenizer, max_length=config.data.max_length).model
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-2)
    batch = tokenizer(["<|prompter|>Hello there<|endoftext|><|assistant|>General Kenobi<|endoftext|>"],
                      return_tensors="pt")
    for _ in range(3):
        model(**batch, labels=batch["input_ids"]).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    write_resolved(config, out)
    write_marker(out, "final", 3, 1)  # the save completed, as training marks it
    return out


def adapter_reference(run: Path, base: Path, tokenizer) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Logits of the adapter on its fp32 base, built with peft directly, and of the base alone."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    ids = prompt_ids(tokenizer, check_prompts(build_format("oasst", tokenizer)))
    base_logits = run_prompts(AutoModelForCausalLM.from_pretrained(base), ids).logits
    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), run)
    return run_prompts(adapted, ids).logits, base_logits


@pytest.fixture(scope="module")
def lora_run(tiny_model_dir, tokenizer, tmp_path_factory) -> Path:
    return train_adapter(tiny_model_dir("gpt_neox"), tmp_path_factory.mktemp("lora-run"), tokenizer, "lora")


def test_lora_merge_reproduces_adapter_and_leaves_base_untouched(lora_run, tiny_model_dir, tokenizer, tmp_path):
    base = tiny_model_dir("gpt_neox")
    before = tree_hashes(base)
    result = export(lora_run, tmp_path / "merged", target="hf", dtype="fp32")

    assert tree_hashes(base) == before
    assert result.record["merged"] and result.record["kind"] == "lora"
    assert result.record["max_logit_diff"] < 1e-5
    names = {p.name for p in (tmp_path / "merged").iterdir()}
    assert {"model.safetensors", "tokenizer.json", "delphi_export.json", "README.md"} <= names
    assert "adapter_config.json" not in names
    loaded = load_for_inference(tmp_path / "merged", device="cpu")
    fmt = format_for(loaded.config.data, loaded.tokenizer)
    assert fmt.name == "oasst"
    ids = prompt_ids(loaded.tokenizer, check_prompts(fmt))
    merged_logits = run_prompts(loaded.model, ids).logits
    adapter_logits, base_logits = adapter_reference(lora_run, base, tokenizer)
    for merged, adapted, plain in zip(merged_logits, adapter_logits, base_logits):
        torch.testing.assert_close(merged, adapted, atol=1e-5, rtol=0)
        assert (adapted - plain).abs().max() > 1e-3  # the adapter is trained, so the merge is not a no-op
    assert not any("lora" in k for k in loaded.model.state_dict())


def test_hf_export_carries_the_chat_template_and_the_token_ids(lora_run, tokenizer, tmp_path):
    """What transformers, vLLM and TGI read: the template renders the trained format token for token, the pad and
    eos ids are in both configs (the tiny base has no pad id), and tokenizer_config.json is in the 4.x form."""
    from transformers import AutoTokenizer

    out = export(lora_run, tmp_path / "hf", target="hf", dtype="fp32").out
    ids = {"pad_token_id": tokenizer.pad_token_id, "eos_token_id": tokenizer.eos_token_id}
    for name in ("config.json", "generation_config.json"):
        saved = json.loads((out / name).read_text())
        assert {k: saved[k] for k in ids} == ids, name
    tokenizer_config = json.loads((out / "tokenizer_config.json").read_text())
    assert tokenizer_config["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert tokenizer_config["chat_template"] == (out / "chat_template.jinja").read_text()
    loaded = AutoTokenizer.from_pretrained(out)
    fmt = format_for(TrainConfig.of().data, loaded)
    history = [Turn(PROMPTER, "What is a meme?"), Turn(ASSISTANT, "A unit of culture."), Turn(PROMPTER, "Who?")]
    messages = [{"role": "user" if t.role == PROMPTER else "assistant", "content": t.text} for t in history]
    assert loaded.apply_chat_template(messages, add_generation_prompt=True)["input_ids"] == \
        encode_prompt(history, fmt, SegmentEncoder(loaded), None).tolist()
    assert "apply_chat_template" in (out / "README.md").read_text()


def test_plain_format_export_stops_at_the_newline_it_was_trained_to_end_with(tiny_model_dir, tokenizer, tmp_path):
    """A `plain` model ends replies with a newline, never eos: servers must stop there too."""
    from trainer.tiny import save_tiny_model

    run = save_tiny_model(tmp_path / "run", "gpt_neox", tokenizer)
    write_resolved(TrainConfig.of(model_name=str(tiny_model_dir("gpt_neox")), prompt_format="plain"), run)
    write_marker(run, "final", 0, 1)  # the save completed, as training marks it
    out = export(run, tmp_path / "hf", target="hf", dtype="fp32").out
    newline = tokenizer.encode("\n", add_special_tokens=False)
    assert len(newline) == 1
    generation = json.loads((out / "generation_config.json").read_text())
    assert generation["eos_token_id"] == [tokenizer.eos_token_id, newline[0]]
    assert "Assistant: " in (out / "chat_template.jinja").read_text()


def test_double_merge_is_refused(lora_run, tmp_path):
    export(lora_run, tmp_path / "merged", target="hf", dtype="fp32")
    with pytest.raises(ConfigError, match="already has the adapter .* merged"):
        export(lora_run, tmp_path / "twice", target="hf", dtype="fp32", base_model=str(tmp_path / "merged"))
    assert not (tmp_path / "twice").exists()


def test_qlora_merges_into_the_unquantized_base(tiny_model_dir, tokenizer, tmp_path):
    base = tiny_model_dir("gpt_neox")
    before = tree_hashes(base)
    run = train_adapter(base, tmp_path / "qlora-run", tokenizer, "qlora")
    result = export(run, tmp_path / "merged", target="hf", dtype="fp32")

    assert tree_hashes(base) == before
    assert result.record["kind"] == "qlora" and result.record["max_logit_diff"] < 1e-5
    config = json.loads((tmp_path / "merged" / "config.json").read_text())
    assert "quantization_config" not in config
    from safetensors.torch import load_file

    weights = load_file(tmp_path / "merged" / "model.safetensors")
    assert {t.dtype for t in weights.values()} == {torch.float32}
    assert not any(word in k for k in weights for word in ("lora_", "absmax", "quant_", "base_layer"))
    loaded = load_for_inference(tmp_path / "merged", device="cpu")
    ids = prompt_ids(loaded.tokenizer, check_prompts(format_for(loaded.config.data, loaded.tokenizer)))
    adapter_logits, _ = adapter_reference(run, base, tokenizer)
    for merged, adapted in zip(run_prompts(loaded.model, ids).logits, adapter_logits):
        torch.testing.assert_close(merged, adapted, atol=1e-5, rtol=0)


@pytest.mark.parametrize("architecture,dtype", [("mpt", "fp16"), ("falcon", "bf16"), ("llama", "bf16"),
                                               ("qwen2", "fp16"), ("gemma2", "bf16"), ("phi3", "fp16")])
def test_other_families_refuse_ipu_and_export_for_hf(architecture, dtype, tiny_model_dir, tmp_path, capsys):
    source = tiny_model_dir(architecture)
    assert delphi(["export", str(source), str(tmp_path / "ipu"), "--target", "ipu"]) == 2
    message = capsys.readouterr().err
    assert f"is a {architecture} model" in message and "GPT-NeoX only" in message and "--target hf" in message
    assert sum("--target ipu:" in line for line in message.splitlines()) == 1
    assert not (tmp_path / "ipu").exists()

    result = export(source, tmp_path / "hf", target="hf", dtype=dtype)
    from transformers import AutoModelForCausalLM

    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    assert reloaded.config.model_type == architecture
    assert reloaded.dtype == {"fp16": torch.float16, "bf16": torch.bfloat16}[dtype]
    assert result.record["check"].endswith(": ok")
    assert (tmp_path / "hf" / "model.safetensors").is_file()


def test_ipu_export_of_neox20b_vocab_loads_in_transformers_4_25(neox20b_tokenizer, tmp_path):
    """The real GPT-NeoX-20B tokenizer + OASST tokens: 50,288 rows, loaded and compared under the old libraries."""
    from trainer.tiny import save_tiny_model

    venv = REPO_ROOT / ".venv-ipu" / "bin" / "python"
    if not venv.is_file():
        pytest.skip("no .venv-ipu: `bash scripts/setup_ipu_env.sh` creates it (scripts/test.sh does)")
    run = save_tiny_model(tmp_path / "run", "gpt_neox", neox20b_tokenizer)
    write_resolved(TrainConfig.of(model_name="EleutherAI/pythia-12b", max_length=512), run)
    write_marker(run, "final", 0, 1)
    result = export(run, tmp_path / "ipu", target="ipu", dtype="fp16", max_shard_size="4MB", verify=True)

    out = tmp_path / "ipu"
    index = json.loads((out / "pytorch_model.bin.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1 and all((out / s).is_file() for s in shards)
    assert not list(out.glob("*.safetensors"))
    tensors = {k: v for s in shards for k, v in torch.load(out / s, weights_only=True).items()}
    assert tensors["gpt_neox.embed_in.weight"].shape[0] == tensors["embed_out.weight"].shape[0] == 50_288
    assert {t.dtype for t in tensors.values()} == {torch.float16}
    assert all(f"layers.{i}.attention.query_key_value.bias" in " ".join(tensors) for i in range(2))
    config = json.loads((out / "config.json").read_text())
    assert (config["vocab_size"], config["rotary_pct"], config["torch_dtype"]) == (50_288, 0.25, "float16")
    merges = json.loads((out / "tokenizer.json").read_text())["model"]["merges"]
    assert all(isinstance(m, str) and m.count(" ") == 1 for m in merges)
    specials = json.loads((out / "special_tokens_map.json").read_text())
    assert specials["pad_token"] == "<|padding|>" and "<|prompter|>" in specials["additional_special_tokens"]
    tokenizer_config = json.loads((out / "tokenizer_config.json").read_text())  # 4.25.1 loaded it above
    assert tokenizer_config["chat_template"] == build_format("oasst", neox20b_tokenizer).chat_template()
    pipeline = result.record["ipu_pipeline"]
    assert pipeline["prompt_format"] == "<|prompter|>{instruction}<|endoftext|><|assistant|>"
    assert (pipeline["vocab_size"], pipeline["sequence_length"], pipeline["end_key"]) == (50_288, 512, "<|endoftext|>")
    assert result.record["verify"].endswith("equal on 3/3: ok")
    card = (out / "README.md").read_text()
    assert "EleutherAI/pythia-12b" in card and "vocab_size = 50288" in card


def test_verify_names_the_file_at_fault(neox20b_tokenizer, tmp_path):
    """A head saved under today's name and merges in today's pair form: 4.25.1 must say which file is wrong."""
    from trainer.export.verify import load_problems, run_probe
    from trainer.tiny import save_tiny_model

    if not (REPO_ROOT / ".venv-ipu" / "bin" / "python").is_file():
        pytest.skip("no .venv-ipu: `bash scripts/setup_ipu_env.sh` creates it (scripts/test.sh does)")
    run = save_tiny_model(tmp_path / "run", "gpt_neox", neox20b_tokenizer)
    out = export(run, tmp_path / "ipu", target="ipu", dtype="fp16").out
    weights = torch.load(out / "pytorch_model.bin", weights_only=True)
    weights["lm_head.weight"] = weights.pop("embed_out.weight")
    torch.save(weights, out / "pytorch_model.bin")
    problems = load_problems(run_probe(out, ["<|prompter|>Hi<|endoftext|><|assistant|>"], "<|endoftext|>"))
    assert any(p.startswith("pytorch_model*.bin: tensors missing") and "embed_out.weight" in p for p in problems)

    tokenizer_json = json.loads((out / "tokenizer.json").read_text())
    tokenizer_json["model"]["merges"] = [m.split(" ") for m in tokenizer_json["model"]["merges"]]
    (out / "tokenizer.json").write_text(json.dumps(tokenizer_json))
    with pytest.raises(RunError, match="tokenizer.json / tokenizer_config.json: AutoTokenizer"):
        run_probe(out, ["Hi"], "<|endoftext|>")
