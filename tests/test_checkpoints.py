"""Complete-or-invisible checkpoints: every state a kill -9 can leave in output_dir (a save torn after each of its
files, a finished save not yet renamed, a rotation half done, a final save cut short, a stray directory) is
rebuilt from a real uninterrupted run, and the rerun must end with that run's exact weights; plus real kill -9s of
a training subprocess in the middle of a save, of a rotation and of the final save."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from train_samples import collator, distributed_sampler, qa_samples
from trainer.checkpoints import MARKER, complete_checkpoints, listing, marker_problem, rotate
from trainer.config import TrainConfig
from trainer.run_log import read_metrics
from trainer.train import train

REPO = Path(__file__).resolve().parent.parent
# 12 samples / batch 2 = 6 steps; a checkpoint every 2 steps (2, 4, 6), all kept.
SETTINGS = dict(dtype="fp32", learning_rate=1e-3, num_train_epochs=1, per_device_train_batch_size=2,
                gradient_accumulation_steps=1, warmup_steps=1, max_grad_norm=1.0, logging_steps=1, eval_steps=1000,
                save_steps=2, save_total_limit=5, report_to="none", max_length=64, lr_scheduler_type="cosine")


def config(model_dir: Path, out: Path, **overrides) -> TrainConfig:
    return TrainConfig.of(**(SETTINGS | dict(model_name=str(model_dir), output_dir=str(out)) | overrides))


def run(model_dir: Path, out: Path, tokenizer, **overrides):
    from transformers import AutoModelForCausalLM

    cfg = config(model_dir, out, **overrides)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    return train(cfg, model, tokenizer, {"toy": qa_samples(tokenizer, 12)}, {}, collator(tokenizer),
                 distributed_sampler(cfg.optim.rng_seed))


def assert_same_weights(a: Path, b: Path) -> None:
    x, y = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert x.keys() == y.keys()
    for name in x:
        torch.testing.assert_close(y[name], x[name], rtol=0, atol=0, msg=name)


def steps_logged(out: Path) -> list[int]:
    return [r["step"] for r in read_metrics(out / "metrics.jsonl") if "loss" in r]


@pytest.fixture(scope="module")
def uninterrupted(tiny_model_dir, tokenizer, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("uninterrupted") / "out"
    result = run(tiny_model_dir("gpt_neox"), out, tokenizer)
    assert [p.name for p in result.checkpoints] == ["checkpoint-2", "checkpoint-4", "checkpoint-6"]
    return out


def write_order(checkpoint: Path) -> list[str]:
    """The files of a save in the order they were written (the marker, written last, left out)."""
    return sorted(listing(checkpoint), key=lambda name: ((checkpoint / name).stat().st_mtime_ns, name))


def resumed_from_copy(uninterrupted: Path, tmp_path: Path, *complete: int, logged: int = 5) -> Path:
    """A fresh output_dir holding copies of the uninterrupted run's complete checkpoints `complete` and its
    metrics up to step `logged`, the last line cut (as a run killed at that point would have left them)."""
    out = tmp_path / "out"
    out.mkdir(parents=True)
    for step in complete:
        shutil.copytree(uninterrupted / f"checkpoint-{step}", out / f"checkpoint-{step}")
    rows = [r for r in read_metrics(uninterrupted / "metrics.jsonl")
            if r["step"] is not None and r["step"] <= logged]
    (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 5, "lo')
    return out


def finish_and_compare(uninterrupted: Path, out: Path, model_dir: Path, tokenizer, capsys) -> str:
    result = run(model_dir, out, tokenizer)
    assert result.global_step == 6
    assert_same_weights(uninterrupted, out)
    assert steps_logged(out) == [1, 2, 3, 4, 5, 6]
    assert not (out / ".staging").exists() and not (out / ".rotating").exists()
    assert [c.step for c in complete_checkpoints(out)][-1] == 6
    return capsys.readouterr().out


@pytest.mark.slow
def test_a_save_torn_after_each_of_its_files_is_set_aside_and_the_rerun_ends_on_the_same_weights(
        uninterrupted, tiny_model_dir, tokenizer, tmp_path, capsys):
    source = uninterrupted / "checkpoint-4"
    order = write_order(source)
    assert {"model.safetensors", "optimizer.pt", "trainer_state.json", "rng_state.pth"} <= set(order)
    for written in range(len(order) + 1):  # 0 .. all files written, the next one cut in half
        case = tmp_path / str(written)
        out = resumed_from_copy(uninterrupted, case, 2)
        staged = out / ".staging" / "checkpoint-4"
        staged.mkdir(parents=True)
        for name in order[:written]:
            shutil.copy2(source / name, staged / name)
        if written < len(order):
            data = (source / order[written]).read_bytes()
            (staged / order[written]).write_bytes(data[:len(data) // 2])
        said = finish_and_compare(uninterrupted, out, tiny_model_dir("gpt_neox"), tokenizer, capsys)
        assert "resuming from" in said and "checkpoint-2" in said.split("resuming from")[1].splitlines()[0]
        aside = list((out / "incomplete").iterdir())  # kept, not deleted: every file that had been written
        assert [p.name.startswith("checkpoint-4-") for p in aside] == [True]
        assert sorted(listing(aside[0])) == sorted(order[:written + 1])


def test_a_finished_save_not_yet_renamed_is_published_and_resumed(uninterrupted, tiny_model_dir, tokenizer,
                                                                    tmp_path, capsys):
    out = resumed_from_copy(uninterrupted, tmp_path, 2)
    (out / ".staging").mkdir()
    shutil.copytree(uninterrupted / "checkpoint-4", out / ".staging" / "checkpoint-4")
    said = finish_and_compare(uninterrupted, out, tiny_model_dir("gpt_neox"), tokenizer, capsys)
    assert "its save had finished before the run stopped; published" in said
    assert f"resuming from {out / 'checkpoint-4'}" in said
    assert not (out / "incomplete").exists()


@pytest.mark.parametrize("damage", ["truncated", "marker_missing", "planted_file", "empty_dir"])
def test_damaged_or_foreign_checkpoint_directories_are_set_aside(damage, uninterrupted, tiny_model_dir, tokenizer,
                                                                 tmp_path, capsys):
    out = resumed_from_copy(uninterrupted, tmp_path, 2, 4)
    if damage == "truncated":
        state = out / "checkpoint-4" / "trainer_state.json"
        state.write_bytes(state.read_bytes()[:100])
        why = "trainer_state.json has 100 bytes"
    elif damage == "marker_missing":
        (out / "checkpoint-4" / MARKER).unlink()
        why = f"no {MARKER}"
    elif damage == "planted_file":
        planted = out / "checkpoint-4" / "global_step4" / "mp_rank_00_model_states.pt"
        planted.parent.mkdir()
        planted.write_bytes(b"not written by Delphi")
        why = "global_step4/mp_rank_00_model_states.pt was not written by the save"
    else:
        (out / "checkpoint-999").mkdir()
        why = f"no {MARKER}"
    said = finish_and_compare(uninterrupted, out, tiny_model_dir("gpt_neox"), tokenizer, capsys)
    line = next(line for line in said.splitlines() if "set aside" in line)
    assert why in line and str(out / "incomplete") in line
    assert ("checkpoint-2" if damage != "empty_dir" else "checkpoint-4") in said.split("resuming from")[1]


def test_a_rotation_cut_short_is_finished_and_the_newest_complete_checkpoint_always_stays(
        uninterrupted, tiny_model_dir, tokenizer, tmp_path, capsys):
    out = resumed_from_copy(uninterrupted, tmp_path, 4)
    doomed = out / ".rotating" / "checkpoint-2"
    shutil.copytree(uninterrupted / "checkpoint-2", doomed)
    (doomed / "optimizer.pt").unlink()  # the delete had begun
    said = finish_and_compare(uninterrupted, out, tiny_model_dir("gpt_neox"), tokenizer, capsys)
    assert f"resuming from {out / 'checkpoint-4'}" in said

    kept = tmp_path / "rotation"
    for step in (2, 4, 6):
        shutil.copytree(uninterrupted / f"checkpoint-{step}", kept / f"checkpoint-{step}")
    (kept / "checkpoint-8").mkdir()  # incomplete: neither counted nor able to push a complete one out
    rotate(kept, keep=1)
    assert sorted(p.name for p in kept.iterdir()) == ["checkpoint-6", "checkpoint-8"]


def test_a_final_save_cut_short_leaves_an_unfinished_run_that_the_rerun_finishes(uninterrupted, tiny_model_dir,
                                                                                 tokenizer, tmp_path, capsys):
    out = resumed_from_copy(uninterrupted, tmp_path, 4, 6, logged=6)
    staged = out / ".staging" / "final"
    staged.mkdir(parents=True)
    for name in ("config.json", "model.safetensors"):
        shutil.copy2(uninterrupted / name, staged / name)
    (out / "config.json").write_bytes((uninterrupted / "config.json").read_bytes())  # moved before the kill
    finish_and_compare(uninterrupted, out, tiny_model_dir("gpt_neox"), tokenizer, capsys)
    assert marker_problem(out, exact=False) is None
    assert json.loads((out / MARKER).read_text())["kind"] == "final"


# ----------------------------------------------------------------------------------------------------------
# Real kill -9 of a training process

@pytest.mark.slow
@pytest.mark.parametrize("moment", ["checkpoint", "rotation", "final"])
def test_kill_9_mid_save_then_rerun_ends_on_the_uninterrupted_weights(moment, uninterrupted, tiny_model_dir,
                                                                      tokenizer, tmp_path):
    out = tmp_path / "out"
    flag = tmp_path / "stopped-here"
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'tests'}"}
    worker = subprocess.Popen([sys.executable, str(REPO / "tests" / "kill_worker.py"), str(tiny_model_dir("gpt_neox")),
                               str(out), moment, str(flag)], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not flag.exists():
            assert worker.poll() is None, worker.stderr.read().decode()[-3000:]
            assert time.monotonic() < deadline, "the worker never reached the save"
            time.sleep(0.02)
    finally:
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait()
    torn = {"checkpoint": out / ".staging" / "checkpoint-4", "rotation": out / ".rotating",
            "final": out / ".staging" / "final"}[moment]
    assert torn.exists() and not (out / MARKER).exists()
    result = run(tiny_model_dir("gpt_neox"), out, tokenizer)
    assert result.global_step == 6
    assert_same_weights(uninterrupted, out)
    assert steps_logged(out) == [1, 2, 3, 4, 5, 6]
