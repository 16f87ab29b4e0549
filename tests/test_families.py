"""The modern families through the unchanged recipe: `delphi train` on each family's tiny example section
(configs/models.yaml) pointed at a tiny random model of the fixture, then hf export and chat, and a sweep; the tiny
chat tokenizers of the families without reference tokenizers (Gemma 2, Gemma 3, Phi-3).

What each run exercises is spread over the families (each run is a few seconds): full, LoRA and QLoRA, packing,
padding-free rows, gradient checkpointing, residual dropout (the default 0.1: config fields or Delphi's hooks),
the chunked loss with tied (Llama, Qwen, Gemma) and untied (Mistral, Phi-3) heads, and Gemma 2's soft-capping."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from trainer.architectures import ARCHITECTURES
from trainer.cli import main as delphi
from trainer.paths import CHECKOUT
from trainer.run_log import read_metrics

RUNS = {  # model_type: (its tiny section in configs/models.yaml, what the run adds)
    "llama": ("tiny-llama", {"mode": "qlora", "packing": True, "gradient_checkpointing": True}),
    "qwen2": ("tiny-qwen2", {"mode": "lora", "padding_free": True}),
    "qwen3": ("tiny-qwen3", {"mode": "full", "packing": True}),
    "mistral": ("tiny-mistral", {"mode": "lora", "gradient_checkpointing": True}),
    "gemma2": ("tiny-gemma2", {"mode": "full", "packing": True, "gradient_checkpointing": True}),
    "gemma3_text": ("tiny-gemma3", {"mode": "qlora", "packing": True}),
    "phi3": ("tiny-phi3", {"mode": "lora", "packing": True}),
}
SMALL = {"datasets": [{"alpaca": {"input_file_path": str(CHECKOUT / "data/alpaca/sample.json"), "val_split": 0.2,
                                  "size": 24}}],
         "max_length": 96, "num_train_epochs": 1, "per_device_train_batch_size": 4, "per_device_eval_batch_size": 8,
         "gradient_accumulation_steps": 1, "learning_rate": 3e-3, "warmup_steps": 0, "logging_steps": 1,
         "eval_steps": 3, "save_steps": 3, "report_to": "none"}


def train_family(architecture: str, model_dir: Path, tmp_path: Path, **more) -> Path:
    section, options = RUNS[architecture]
    out = tmp_path / "out"
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "test.yaml").write_text(yaml.safe_dump({"family-test": {
        **SMALL, **options, **more, "cache_dir": str(tmp_path / "cache"), "output_dir": str(out)}}))
    code = delphi(["train", "--configs", section, "family-test", "--config_file", str(tmp_path / "test.yaml"),
                   "--model_name", str(model_dir)])
    assert code == 0
    return out


def test_every_modern_family_has_a_run_and_both_example_sections():
    sections = yaml.safe_load((CHECKOUT / "configs" / "models.yaml").read_text())
    modern = [a for a in ARCHITECTURES if a not in ("gpt_neox", "mpt", "falcon")]
    assert sorted(RUNS) == sorted(modern)
    assert all(sections[section]["model_name"] == f".cache/tiny/{a}" for a, (section, _) in RUNS.items())
    hub = {name: s["model_name"] for name, s in sections.items() if "/" in s.get("model_name", "")
           and not s["model_name"].startswith(".")}
    assert len(hub) == len(RUNS)


@pytest.mark.parametrize("architecture", RUNS)
def test_each_family_trains_through_delphi_train(architecture, tiny_model_dir, tmp_path, capsys):
    out = train_family(architecture, tiny_model_dir(architecture), tmp_path)
    log = capsys.readouterr().err
    rows = read_metrics(out / "metrics.jsonl")
    losses = [r["loss"] for r in rows if "loss" in r]
    evals = [r["eval_loss"] for r in rows if "eval_loss" in r]
    assert len(losses) >= 4 and all(map(math.isfinite, losses + evals)) and losses[-1] < losses[0]
    mode = RUNS[architecture][1]["mode"]
    if mode == "full":
        assert (out / "model.safetensors").is_file()
    else:
        adapter = json.loads((out / "adapter_config.json").read_text())
        adapted = {name.rsplit(".", 1)[-1] for name in adapter["target_modules"]}  # peft saves the full paths
        assert adapted == set(ARCHITECTURES[architecture].lora_targets)
    assert "Traceback" not in log


@pytest.mark.parametrize("architecture", ["llama", "gemma2"])
def test_a_trained_family_exports_for_hf_and_chats(architecture, tiny_model_dir, tmp_path, capsys):
    """QLoRA (Llama: merged into the unquantized base) and full (Gemma 2: its sliding-window cache and soft-capped
    attention at generation), exported and then chatted with."""
    from transformers import AutoModelForCausalLM

    from trainer.chat import main as chat

    out = train_family(architecture, tiny_model_dir(architecture), tmp_path)
    assert delphi(["export", str(out), str(tmp_path / "hf"), "--target", "hf", "--dtype", "fp32"]) == 0
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    assert reloaded.config.model_type == architecture
    capsys.readouterr()
    code = chat(["--model", str(tmp_path / "hf"), "--temperature", "0", "--output_length", "8"],
                {"EXAMPLE_PROMPTS": json.dumps(["What is a tree?"])})
    transcript = capsys.readouterr().out
    assert code == 0 and "AUTO What is a tree?" in transcript and "Assistant:" in transcript


def test_gemma2s_final_logit_soft_capping_reaches_the_chunked_loss(tiny_model_dir, tmp_path):
    """The chunked loss never runs the model's head, which soft-caps Gemma 2's logits: the trainer hands the cap
    over, so the first step's loss is the full-logit path's. The cap is lowered from 30 to 1, where it bites on
    the tiny model's small logits."""
    import shutil

    model_dir = tmp_path / "capped"
    shutil.copytree(tiny_model_dir("gemma2"), model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    (model_dir / "config.json").write_text(json.dumps({**config, "final_logit_softcapping": 1.0}))
    firsts = [[r["loss"] for r in read_metrics(train_family("gemma2", model_dir, tmp_path / str(chunked),
                                                            chunked_loss=chunked, residual_dropout=0.0)
                                               / "metrics.jsonl") if "loss" in r][0] for chunked in (True, False)]
    assert firsts[0] == pytest.approx(firsts[1], rel=1e-5)


@pytest.mark.slow
def test_a_sweep_over_a_modern_family(tiny_model_dir, tmp_path):
    from trainer.sweep.trials import read_state

    (tmp_path / "sections.yaml").write_text(yaml.safe_dump({"sweep-base": {
        **SMALL, "mode": "lora", "cache_dir": str(tmp_path / "cache")}}))
    path = tmp_path / "qwen3.yaml"
    path.write_text(yaml.safe_dump({"name": "qwen3", "configs": ["tiny-qwen3", "sweep-base"],
                                    "config_files": ["sections.yaml"], "output_dir": str(tmp_path / "qwen3"),
                                    "fixed": {"model_name": str(tiny_model_dir("qwen3"))},
                                    "parameters": {"lora_r": [4, 8]}, "run_name": "r{lora_r}"}))
    assert delphi(["sweep", "run", str(path)]) == 0
    for name in ("r4", "r8"):
        assert read_state(tmp_path / "qwen3" / name)["status"] == "finished"
        assert json.loads((tmp_path / "qwen3" / name / "adapter_config.json").read_text())["r"] == int(name[1:])


@pytest.mark.parametrize("model_type", ["gemma2", "gemma3_text", "phi3"])
def test_tiny_chat_tokenizers_carry_the_familys_template_and_special_tokens(tiny_chat_tokenizer, model_type):
    from trainer.tiny import TINY_CHATS

    tokenizer = tiny_chat_tokenizer(model_type)
    chat = TINY_CHATS[model_type]
    conversation = [{"role": "user", "content": "What is a tree?"}, {"role": "assistant", "content": "A plant."}]
    text = tokenizer.apply_chat_template(conversation, tokenize=False)
    ids = tokenizer.apply_chat_template(conversation, tokenize=True)["input_ids"]
    assert tokenizer.decode(ids) == text and tokenizer.eos_token == chat.eos
    for token in chat.turn_tokens:
        assert len(tokenizer.encode(token, add_special_tokens=False)) == 1
    end = "<end_of_turn>" if model_type != "phi3" else "<|end|>"
    assert ids.count(tokenizer.convert_tokens_to_ids(end)) == 2
