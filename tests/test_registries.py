"""Extending Delphi along each axis is one registry entry: a new prompt format, dataset kind, export target and
architecture are registered here (as their one new module would be) and then work end to end through the
unchanged config, data builder, loader, trainer and export."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from trainer.architectures import ARCHITECTURES, Architecture
from trainer.config import TrainConfig, load_config
from trainer.data.conversation import ASSISTANT, PROMPTER, Conversation, Turn
from trainer.data.jsonl import string_field
from trainer.data.kinds import KINDS
from trainer.data.kinds.base import DatasetKind, record_reader
from trainer.export.hf import write_hf
from trainer.export.target import ExportTarget, WriteOptions
from trainer.export.targets import TARGETS
from trainer.formats import FORMATS, PromptFormat, Segment, format_for
from trainer.paths import CHECKOUT


class ChatMLFormat(PromptFormat):
    """`<|im_start|>user\\nq<|im_end|>\\n<|im_start|>assistant\\na<|im_end|>\\n`, with its own special tokens."""

    name = "chatml"
    required_tokens = ("<|im_start|>", "<|im_end|>")
    end_key = "<|im_end|>"
    assistant_cue = "<|im_start|>assistant\n"

    def header(self, first: Turn, system: str | None) -> list[Segment]:
        return [] if system is None else [Segment(f"<|im_start|>system\n{system}<|im_end|>\n", False)]

    def prompt(self, turn: Turn, index: int) -> list[Segment]:
        return [Segment(f"<|im_start|>user\n{turn.text}<|im_end|>\n{self.assistant_cue}", False)]

    def reply(self, turn: Turn) -> list[Segment]:
        return [Segment(turn.text, True), Segment("<|im_end|>", True), Segment("\n", False)]


def qa_conversation(record: dict[str, Any], where: str, source: str = "qa") -> Conversation:
    return Conversation((Turn(PROMPTER, string_field(record, "question", where)),
                         Turn(ASSISTANT, string_field(record, "answer", where))), source, where)


QA_KIND = DatasetKind("qa", None, 0.25, "path/to/qa.jsonl", record_reader(qa_conversation))


def tiny_olmo2_config(vocab_size: int, hidden: int, layers: int, heads: int, max_positions: int):
    from transformers import Olmo2Config

    return Olmo2Config(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
                       num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                       max_position_embeddings=max_positions, tie_word_embeddings=False, pad_token_id=None)


OLMO2 = Architecture("olmo2", dropout_fields=("attention_dropout",), packing="position_ids",
                     tiny_config=tiny_olmo2_config)


def write_marker_target(model, tokenizer, fmt, out: Path, options: WriteOptions) -> dict[str, Any]:
    record = write_hf(model, tokenizer, fmt, out, options)
    (out / "served_by.txt").write_text("a server that reads hf files\n")
    return record


MARKED = ExportTarget("marked", "a server that reads hf files", ("fp32",), write_marker_target,
                      lambda record: ["## Use", "serve PATH"])


@pytest.fixture
def registered(monkeypatch):
    monkeypatch.setitem(FORMATS, "chatml", ChatMLFormat)
    monkeypatch.setitem(KINDS, "qa", QA_KIND)
    monkeypatch.setitem(ARCHITECTURES, "olmo2", OLMO2)
    monkeypatch.setitem(TARGETS, "marked", MARKED)


def test_one_entry_per_axis_is_all_a_run_and_its_export_need(registered, tokenizer, tmp_path):
    from trainer.cli import main as delphi
    from trainer.export.cli import export
    from trainer.recipe import run
    from trainer.tiny import save_tiny_model
    from trainer.tokens import load_tokenizer

    model_dir = save_tiny_model(tmp_path / "olmo2", "olmo2", tokenizer)
    data = tmp_path / "qa.jsonl"
    data.write_text("".join(json.dumps({"question": f"What is {i} plus {i}?", "answer": f"{2 * i}."}) + "\n"
                            for i in range(12)))
    section = {"ext": {"datasets": [{"qa": {"input_file_path": str(data)}}], "prompt_format": "chatml",
                       "model_name": str(model_dir), "dtype": "fp32", "max_length": 64, "num_train_epochs": 2,
                       "per_device_train_batch_size": 3, "gradient_accumulation_steps": 1, "warmup_steps": 0,
                       "learning_rate": 1e-3, "logging_steps": 1, "eval_steps": 2, "save_steps": 100,
                       "report_to": "none", "packing": True, "cache_dir": str(tmp_path / "cache"),
                       "output_dir": str(tmp_path / "out")}}
    (tmp_path / "ext.yaml").write_text(json.dumps(section))
    config = load_config(["--configs", "ext", "--config_file", str(tmp_path / "ext.yaml")])

    result = run(config)
    assert result.global_step == 6
    trained = load_tokenizer(str(result.output_dir))
    assert all(len(trained.encode(t, add_special_tokens=False)) == 1 for t in ChatMLFormat.required_tokens)
    rendered = "".join(s.text for s in format_for(config.data, trained).render(
        Conversation((Turn(PROMPTER, "Hi"), Turn(ASSISTANT, "Hello")), "qa")))
    assert rendered == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello<|im_end|>\n"

    exported = export(result.output_dir, tmp_path / "served", target="marked", dtype="fp32")
    assert (tmp_path / "served" / "served_by.txt").is_file() and exported.record["check"].endswith(": ok")
    assert "serve PATH" in (tmp_path / "served" / "README.md").read_text()
    assert delphi(["export", str(result.output_dir), str(tmp_path / "bf16"), "--target", "marked",
                   "--dtype", "bf16"]) == 2


def test_the_help_and_the_errors_list_registered_members(registered, capsys):
    from trainer.help import config_help

    text = config_help("delphi train", [])
    assert "{oasst,airoboros,alpaca,chat_template,plain,chatml}" in text and "  qa (no hub default, val_split 0.25" in text
    assert TrainConfig.of(prompt_format="chatml").data.prompt_format == "chatml"
    with pytest.raises(Exception, match="unknown dataset 'qaa' .*did you mean 'qa'"):
        TrainConfig.of(datasets=[{"qaa": {"input_file_path": str(CHECKOUT / "x.jsonl")}}])
