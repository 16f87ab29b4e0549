"""Trust: code shipped in a directory runs only when the user asks on their command line, never because the
directory's own resolved_config.yaml says so; a pickle torch refuses to load is one clean line; an incomplete run
is not exported, and the export's check covers the tokenizer."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from trainer.checkpoints import write_marker
from trainer.cli import main as delphi
from trainer.config import TrainConfig, write_resolved
from trainer.paths import CHECKOUT as REPO_ROOT


class Payload:
    """A pickle that runs code when loaded without `weights_only`: it creates a file."""

    def __init__(self, sentinel: Path):
        self.sentinel = sentinel

    def __reduce__(self):
        return open, (str(self.sentinel), "w")


@pytest.fixture
def run_with_code(tiny_model_dir, tmp_path) -> tuple[Path, Path]:
    """A finished run directory whose config.json maps AutoModelForCausalLM to its own module (which creates a
    file when imported) and whose resolved_config.yaml says trust_remote_code: true."""
    run = tmp_path / "run"
    shutil.copytree(tiny_model_dir("gpt_neox"), run)
    sentinel = tmp_path / "remote-code-ran"
    (run / "evil.py").write_text(f"import pathlib\npathlib.Path({str(sentinel)!r}).touch()\n"
                                 f"from transformers import GPTNeoXForCausalLM\n\n\n"
                                 f"class EvilModel(GPTNeoXForCausalLM):\n    pass\n")
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps(config | {"auto_map": {"AutoModelForCausalLM": "evil.EvilModel"}}))
    write_resolved(TrainConfig.of(model_name=str(tiny_model_dir("gpt_neox")), trust_remote_code=True, dtype="fp32"),
                   run)
    write_marker(run, "final", 1, 1)
    return run, sentinel


def test_a_directory_cannot_grant_itself_trust(run_with_code, tmp_path, capsys, monkeypatch):
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    # Remote code registers its class for the config type in transformers' process-wide mapping: undone after.
    monkeypatch.setattr(MODEL_FOR_CAUSAL_LM_MAPPING, "_extra_content", dict(MODEL_FOR_CAUSAL_LM_MAPPING._extra_content))
    run, sentinel = run_with_code
    monkeypatch.setenv("EXAMPLE_PROMPTS", "[]")
    assert delphi(["chat", "--model", str(run)]) == 0
    assert delphi(["export", str(run), str(tmp_path / "export"), "--dtype", "fp32"]) == 0
    assert not sentinel.exists()
    assert delphi(["chat", "--model", str(run), "--trust_remote_code"]) == 0  # the user's own flag
    assert sentinel.exists()


@pytest.fixture
def train_args(tiny_model_dir, tmp_path) -> list[str]:
    return ["train", "--model_name", str(tiny_model_dir("gpt_neox")), "--report_to", "none", "--dtype", "fp32",
            "--datasets", json.dumps([{"alpaca": {"input_file_path": str(REPO_ROOT / "data/alpaca/sample.json"),
                                                  "size": 16}}]),
            "--max_length", "64", "--per_device_train_batch_size", "8", "--gradient_accumulation_steps", "1",
            "--num_train_epochs", "1", "--save_steps", "1", "--cache_dir", str(tmp_path / "cache")]


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err[-2000:]
    return lines[0]


def test_a_refused_pickle_in_a_model_directory_is_one_line(train_args, tiny_model_dir, tmp_path, capsys):
    sentinel = tmp_path / "payload-ran"
    model = tmp_path / "model"
    model.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_model_dir("gpt_neox") / name, model / name)
    torch.save(Payload(sentinel), model / "pytorch_model.bin")
    assert delphi([*train_args, "--model_name", str(model), "--output_dir", str(tmp_path / "out")]) == 2
    line = one_error_line(capsys)
    assert line.startswith(f"error: model_name '{model}': refused to load a pickle that is not plain tensors")
    assert not sentinel.exists()


def test_a_refused_pickle_in_a_named_checkpoint_is_one_line(train_args, tmp_path, capsys):
    assert delphi([*train_args, "--output_dir", str(tmp_path / "first")]) == 0
    checkpoint = tmp_path / "first" / "checkpoint-1"
    (checkpoint / "delphi_complete.json").unlink()  # named by the user: loaded although Delphi did not mark it
    sentinel = tmp_path / "payload-ran"
    torch.save(Payload(sentinel), checkpoint / "optimizer.pt")
    capsys.readouterr()
    assert delphi([*train_args, "--output_dir", str(tmp_path / "second"),
                   "--resume_from_checkpoint", str(checkpoint)]) == 2
    line = one_error_line(capsys)
    assert line.startswith(f"error: resume_from_checkpoint '{checkpoint}': refused to load a pickle")
    assert not sentinel.exists()


def test_export_refuses_a_run_whose_final_save_did_not_finish(train_args, tmp_path, capsys):
    run = tmp_path / "run"
    assert delphi([*train_args, "--output_dir", str(run)]) == 0
    for name in ("tokenizer.json", "delphi_complete.json"):  # a kill during the final save
        (run / name).unlink()
    capsys.readouterr()
    assert delphi(["export", str(run), str(tmp_path / "export")]) == 2
    line = one_error_line(capsys)
    assert f"{run}: the training run did not finish saving its final model" in line
    assert "checkpoint-N" in line and not (tmp_path / "export").exists()
    assert delphi(["export", str(run / "checkpoint-2"), str(tmp_path / "export"), "--dtype", "fp32"]) == 0


def test_the_export_check_covers_the_tokenizer(tiny_model_dir, tmp_path, capsys):
    """A tokenizer that lost its vocabulary encodes the check prompts to nothing: refused before writing."""
    source = tmp_path / "model"
    shutil.copytree(tiny_model_dir("gpt_neox"), source)
    tokenizer = json.loads((source / "tokenizer.json").read_text())
    tokenizer["model"]["vocab"] = {k: v for k, v in tokenizer["model"]["vocab"].items() if v < 7}
    tokenizer["model"]["merges"] = []
    (source / "tokenizer.json").write_text(json.dumps(tokenizer))
    assert delphi(["export", str(source), str(tmp_path / "export")]) == 2
    line = one_error_line(capsys)
    assert f"{source}: its tokenizer fails the check prompts:" in line
    assert not (tmp_path / "export").exists()
