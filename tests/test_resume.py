"""Safe resumes through `delphi train`: a rerun that would train something else is refused with the keys and the
ways forward; --resume_with_changes continues on the schedule the new values plan; a finished run is left alone;
--overwrite_output_dir moves the old run aside; output_dir never overlaps what the run reads; metrics.jsonl holds
each step once after any number of resumes; rng_seed makes runs, adapters included, bit-identical."""
from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from trainer.checkpoints import MARKER, complete_checkpoints
from trainer.cli import main as delphi
from trainer.config import load_config
from trainer.errors import ConfigError
from trainer.paths import CHECKOUT as REPO_ROOT
from trainer.resume import check_run
from trainer.run_log import read_metrics

ALPACA = REPO_ROOT / "data/alpaca/sample.json"


def tree_hashes(directory: Path) -> dict[str, str]:
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.fixture
def cli(tiny_model_dir, tmp_path):
    """`delphi train` on the tiny GPT-NeoX and 24 alpaca samples: 3 steps per epoch, a checkpoint every 3."""
    section = {"run": {
        "datasets": [{"alpaca": {"input_file_path": str(ALPACA), "size": 24}}],
        "model_name": str(tiny_model_dir("gpt_neox")), "dtype": "fp32", "max_length": 64,
        "cache_dir": str(tmp_path / "cache"), "output_dir": str(tmp_path / "out"), "report_to": "none",
        "num_train_epochs": 1, "per_device_train_batch_size": 8, "gradient_accumulation_steps": 1,
        "learning_rate": 1e-3, "warmup_steps": 1, "logging_steps": 1, "eval_steps": 100, "save_steps": 3}}
    (tmp_path / "run.yaml").write_text(json.dumps(section))
    base = ["train", "--config_file", str(tmp_path / "run.yaml"), "--configs", "run"]
    return tmp_path / "out", lambda *flags: delphi([*base, *flags])


def logged(out: Path, key: str) -> dict[int, float]:
    return {r["step"]: r[key] for r in read_metrics(out / "metrics.jsonl") if key in r}


def test_a_rerun_with_other_training_values_is_refused_with_the_keys_and_the_ways_forward(cli, capsys):
    out, train = cli
    assert train() == 0
    capsys.readouterr()
    before = tree_hashes(out)
    assert train("--learning_rate", "1e-2", "--num_train_epochs", "8") == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err
    assert "learning_rate 0.001 -> 0.01, num_train_epochs 1.0 -> 8.0" in err
    assert "new output_dir" in err and "--overwrite_output_dir" in err and "--resume_with_changes" in err
    assert train("--mode", "lora") == 2  # not continuable: no --resume_with_changes offered
    err = capsys.readouterr().err.strip()
    assert "mode full -> lora" in err and "--resume_with_changes" not in err and err.count("\n") == 0
    assert train("--mode", "lora", "--resume_with_changes") == 2
    assert tree_hashes(out) == before
    # Keys that do not change the training may differ.
    assert train("--eval_steps", "7", "--logging_steps", "2", "--gradient_checkpointing", "true") == 0
    assert tree_hashes(out) == before


def test_a_finished_run_rerun_unchanged_is_said_to_be_finished_and_left_alone(cli, capsys):
    out, train = cli
    assert train() == 0
    capsys.readouterr()
    before = tree_hashes(out)
    assert train() == 0
    said = capsys.readouterr().out
    assert f"{out} holds a finished run (step 3) with this config: nothing to train" in said
    assert tree_hashes(out) == before


def test_resume_with_changes_continues_on_the_schedule_the_new_values_plan(cli, tmp_path, capsys):
    out, train = cli
    assert train() == 0
    first_model = tree_hashes(out)["model.safetensors"]
    for epochs in ("2", "3"):  # two more resumes, the learning rate changed on the way
        assert train("--num_train_epochs", epochs, "--learning_rate", "2e-3", "--resume_with_changes") == 0
    said = capsys.readouterr().out
    assert "--resume_with_changes: continuing from step 3 with learning_rate 0.001 -> 0.002, num_train_epochs" \
        in said
    assert tree_hashes(out)["model.safetensors"] != first_model
    assert json.loads((out / MARKER).read_text())["step"] == 9

    planned = tmp_path / "planned"
    assert train("--num_train_epochs", "3", "--learning_rate", "2e-3", "--output_dir", str(planned)) == 0
    rates, expected = logged(out, "learning_rate"), logged(planned, "learning_rate")
    assert [rates[s] for s in range(7, 10)] == [expected[s] for s in range(7, 10)]  # after the last change
    assert [rates[s] for s in range(4, 7)] == pytest.approx(  # the 2-epoch plan from step 3 on, at 2e-3
        [2e-3 * (6 - s + 1) / (6 - 1) for s in range(4, 7)])

    rows = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in rows if "loss" in r] == list(range(1, 10))  # each step once after 2 resumes
    assert [r for r in rows if r["step"] is None and "plan/total_steps" in r] == [
        {"step": None, "plan/steps_per_epoch": 3, "plan/total_steps": 9, **{k: v for k, v in rows[
            next(i for i, r in enumerate(rows) if r["step"] is None)].items() if k.startswith("data/")}}]
    finals = [r for r in rows if r["step"] is None and "final/global_step" in r]
    assert len(finals) == 1 and finals[0]["final/global_step"] == 9 and "final/train_runtime" in finals[0]

    assert train("--num_train_epochs", "2", "--resume_with_changes") == 2
    assert "nothing left to train; raise num_train_epochs" in capsys.readouterr().err


def test_overwrite_output_dir_moves_the_old_run_aside_and_starts_over(cli, capsys):
    out, train = cli
    assert train() == 0
    before = tree_hashes(out)
    assert train("--learning_rate", "2e-3", "--overwrite_output_dir") == 0
    said = capsys.readouterr().out
    aside = next(out.parent.glob("out.previous-*"))
    assert f"the earlier run in {out} moved to {aside}" in said and "resuming from" not in said
    assert tree_hashes(aside) == before
    assert load_config(["--config_file", str(out / "resolved_config.yaml"), "--configs", "resolved"],
                       config_files=[]).optim.learning_rate == 2e-3
    resolved = yaml.safe_load((out / "resolved_config.yaml").read_text())["resolved"]
    assert "overwrite_output_dir" not in resolved and "resume_with_changes" not in resolved  # reruns resume


@pytest.mark.parametrize("where", ["model", "inside_model", "holds_model", "tokenizer", "holds_data"])
def test_output_dir_overlapping_what_the_run_reads_is_refused(where, tiny_model_dir, tmp_path, capsys):
    model = tmp_path / "models" / "base"
    model.parent.mkdir()
    import shutil

    shutil.copytree(tiny_model_dir("gpt_neox"), model)
    data = tmp_path / "data" / "a.json"
    data.parent.mkdir()
    shutil.copy(ALPACA, data)
    out = {"model": model, "inside_model": model / "run", "holds_model": model.parent, "tokenizer": model,
           "holds_data": data.parent}[where]
    flags = ["--tokenizer_name", str(model), "--model_name", str(tiny_model_dir("gpt_neox"))] \
        if where == "tokenizer" else ["--model_name", str(model)]
    before = tree_hashes(tmp_path)
    assert delphi(["train", "--datasets", json.dumps([{"alpaca": {"input_file_path": str(data)}}]), *flags,
                   "--output_dir", str(out), "--report_to", "none", "--cache_dir", str(tmp_path / "cache")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: output_dir '{out}'") and err.count("\n") == 0
    assert ("tokenizer_name" if where == "tokenizer" else "input_file_path" if where == "holds_data"
            else "model_name") in err
    assert tree_hashes(tmp_path) == before


def test_a_checkpoint_from_another_number_of_ranks_is_refused(cli):
    out, train = cli
    assert train("--num_train_epochs", "2") == 0
    (out / MARKER).unlink()  # as if killed during the final save
    config = load_config(["--config_file", str(out.parent / "run.yaml"), "--configs", "run",
                          "--num_train_epochs", "2"])
    assert check_run(config, world_size=1).resume.step == 6
    with pytest.raises(ConfigError, match=r"ranks \(WORLD_SIZE\) 1 -> 2; give a new output_dir"):
        check_run(config, world_size=2)


def test_two_identical_lora_runs_are_bit_identical(cli, tmp_path):
    out, train = cli
    adapters = []
    for name in ("a", "b"):
        assert train("--mode", "lora", "--lora_dropout", "0.1", "--residual_dropout", "0.1",
                     "--output_dir", str(tmp_path / name)) == 0
        adapters.append(load_file(tmp_path / name / "adapter_model.safetensors"))
    assert adapters[0].keys() == adapters[1].keys() and adapters[0]
    for key in adapters[0]:
        assert torch.equal(adapters[0][key], adapters[1][key]), key
    trained = [k for k in adapters[0] if "lora_B" in k]
    assert trained and all(adapters[0][k].abs().sum() > 0 for k in trained)  # B moved off its zero start
    assert [c.step for c in complete_checkpoints(tmp_path / "a")] == [3]


def summary_tokens(stdout: str) -> int:
    return int(re.search(r"trained tokens\s+([\d,]+) \(", stdout).group(1).replace(",", ""))


def test_a_finished_run_with_a_bare_resume_flag_trains_nothing_and_the_summary_counts_the_whole_run(cli, capsys):
    """Half an epoch (6 of 12 steps), a checkpoint every 3. Rerun with the bare --resume_from_checkpoint: finished,
    nothing written. With the final save lost (its marker gone) the rerun resumes from checkpoint-6, the plan's
    last step, trains no step past it and saves the same final weights; resumed from checkpoint-3, it trains 4-6.
    Every closing summary counts the whole run's trained tokens."""
    out, train = cli
    plan = ("--num_train_epochs", "0.5", "--per_device_train_batch_size", "2")
    assert train(*plan) == 0
    whole = summary_tokens(capsys.readouterr().out)
    before = tree_hashes(out)
    assert train(*plan, "--resume_from_checkpoint") == 0
    assert f"{out} holds a finished run (step 6) with this config: nothing to train" in capsys.readouterr().out
    assert tree_hashes(out) == before

    (out / MARKER).unlink()
    assert train(*plan, "--resume_from_checkpoint") == 0
    said = capsys.readouterr().out
    assert f"resuming from {out / 'checkpoint-6'}" in said and summary_tokens(said) == whole
    assert [c.step for c in complete_checkpoints(out)] == [3, 6]
    assert {k: v for k, v in tree_hashes(out).items() if k.endswith(".safetensors")} == \
        {k: v for k, v in before.items() if k.endswith(".safetensors")}

    shutil.rmtree(out / "checkpoint-6")
    (out / MARKER).unlink()
    assert train(*plan) == 0
    said = capsys.readouterr().out
    assert f"resuming from {out / 'checkpoint-3'}" in said and summary_tokens(said) == whole
    assert sorted(logged(out, "loss")) == [1, 2, 3, 4, 5, 6]
