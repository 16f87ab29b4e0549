"""The divergence guard: a non-finite loss, gradient norm or weight, or a loss that jumps and stays up, stops a real
run with one line, logs the true values, and never lets a checkpoint or a final model be written after it."""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, TrainerCallback

from train_samples import collator, distributed_sampler, qa_samples
from trainer.checkpoints import MARKER, complete_checkpoints
from trainer.cli import main as delphi
from trainer.config import TrainConfig
from trainer.divergence import DivergenceGuard
from trainer.errors import RunError
from trainer.paths import CHECKOUT as REPO_ROOT
from trainer.run_log import read_metrics
from trainer.train import train


def guard(**kwargs) -> DivergenceGuard:
    return DivergenceGuard(**({"spike_factor": 5.0, "window": 20, "patience": 3} | kwargs))


def test_the_first_non_finite_step_is_kept_on_the_device_and_read_once():
    g = guard()
    g.observe_step(1, torch.tensor(2.0), torch.tensor(1.0), skipped=False)
    assert g.verdict() is None
    g.observe_step(2, torch.tensor(float("nan")), torch.tensor(float("inf")), skipped=False)
    g.observe_step(3, torch.tensor(float("inf")), torch.tensor(1.0), skipped=False)
    assert g.verdict() == ("the loss is nan and the gradient norm is inf at step 2", 2)


def test_a_step_the_loss_scaler_skipped_is_not_divergence_but_its_loss_still_counts():
    g = guard()
    for step in range(1, 5):  # fp16 scaler overflows: inf norm, the step skipped, nothing applied
        g.observe_step(step, torch.tensor(3.0), torch.tensor(float("inf")), skipped=True)
    g.observe_step(5, torch.tensor(3.0), 2.5, skipped=False)  # DeepSpeed hands over a float
    assert g.verdict(weights_finite=True) is None
    overflowed = guard()
    overflowed.observe_step(7, torch.tensor(3.0), float("inf"), skipped=False)
    assert overflowed.verdict() == ("the gradient norm is inf at step 7", 7)
    g.observe_step(6, torch.tensor(float("nan")), torch.tensor(float("nan")), skipped=True)
    assert g.verdict() == ("the loss is nan at step 6", 6)
    assert guard().verdict(weights_finite=False, step=9) == ("the weights hold nan or inf", 9)


@pytest.mark.parametrize("losses, stops", [
    ([7.0, 6.0, 5.0, 5.0, 60.0, 70.0, 80.0], True),  # up 12x and staying there
    ([7.0, 6.0, 5.0, 5.0, 60.0, 5.0, 80.0, 4.0], False),  # jumps that come back down are noise
    ([2.0, 0.5, 0.05, 0.01, 0.3, 0.4, 0.2, 0.9], False),  # overfitting towards 0: large factors, no divergence
    ([7.0, 60.0, 70.0], False),  # not yet `patience` logs above the line
])
def test_the_spike_rule(losses, stops):
    g = guard()
    for step, loss in enumerate(losses, 1):
        g.observe_log(step, loss)
    assert (g.verdict() is not None) == stops
    if stops:
        what, first_bad = g.verdict()
        assert what.startswith("the loss jumped to 60 at step 5 and stayed above 5 x its running median")
        assert first_bad == 5  # step 4 was the last logged below the line
    off = guard(spike_factor=0.0)
    for step, loss in enumerate(losses, 1):
        off.observe_log(step, loss)
    assert off.verdict() is None


def test_a_gradient_norm_that_blows_up_under_a_flat_loss_stops_the_run_and_dates_the_damage():
    """The issue's LoRA run at learning rate 1e3: the norm reached 3.2e9 at step 4 while the loss stayed flat; a
    checkpoint of step 4 or later is not good, logged every 2 steps: the last calm log was step 2."""
    g = guard()
    for step, norm in [(2, 0.8), (4, 3.2e9), (6, 4e9), (8, 5e9)]:
        g.observe_log(step, 2.3, norm)
    what, first_bad = g.verdict()
    assert what.startswith("the gradient norm jumped to 3.2e+09 at step 4") and first_bad == 3
    g.observe_step(9, torch.tensor(float("nan")), torch.tensor(1.0), skipped=False)
    assert g.verdict() == ("the loss is nan at step 9", 3)  # the non-finite cause is named, the damage dated earlier


@pytest.fixture
def run_dir(tiny_model_dir, tmp_path) -> tuple[Path, list[str]]:
    """`delphi train` arguments for the tiny GPT-NeoX on the bundled alpaca sample, a checkpoint every step."""
    section = {"run": {
        "datasets": [{"alpaca": {"input_file_path": str(REPO_ROOT / "data/alpaca/sample.json"), "size": 24}}],
        "model_name": str(tiny_model_dir("gpt_neox")), "dtype": "fp32", "max_length": 64,
        "cache_dir": str(tmp_path / "cache"), "output_dir": str(tmp_path / "out"), "report_to": "none",
        "num_train_epochs": 4, "per_device_train_batch_size": 8, "gradient_accumulation_steps": 1,
        "warmup_steps": 0, "logging_steps": 1, "eval_steps": 100, "save_steps": 1, "save_total_limit": 2}}
    (tmp_path / "run.yaml").write_text(json.dumps(section))
    return tmp_path / "out", ["train", "--config_file", str(tmp_path / "run.yaml"), "--configs", "run"]


def stopped_step(message: str) -> int:
    return int(re.search(r"stopped at step (\d+)", message).group(1))


@pytest.mark.parametrize("learning_rate, cause", [
    ("1e3", r"the gradient norm is inf at step \d+"),  # the run: the norm overflows at once
    ("10", r"the loss jumped to [\d.e+]+ at step \d+ and stayed above 5 x its running median"),  # finite, diverged
])
def test_a_diverging_run_stops_with_one_line_and_saves_nothing_after_it(learning_rate, cause, run_dir, capsys):
    out, argv = run_dir
    assert delphi([*argv, "--learning_rate", learning_rate]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err
    assert re.search(f"error: training diverged: {cause}", lines[0]), lines[0]
    step = stopped_step(lines[0])
    kept = complete_checkpoints(out)
    assert kept and all(c.step < step for c in kept)
    bad = int(re.search(r"at step (\d+)", lines[0]).group(1))  # logged every step: the first that went bad
    good = [c for c in kept if c.step < bad]
    if good:
        assert f"last good checkpoint: {good[-1].path}" in lines[0]
    else:  # those kept were saved after it: none is named as good
        assert f"no checkpoint from before step {bad} is kept" in lines[0]
    assert not (out / MARKER).exists() and not (out / "model.safetensors").exists()
    rows = {r["step"]: r for r in read_metrics(out / "metrics.jsonl") if "loss" in r}
    assert max(rows) == step  # logged up to the stop, then nothing
    if learning_rate == "1e3":
        assert math.isinf(rows[step]["grad_norm"])  # the true value, not filtered
    for checkpoint in kept:  # what was kept is finite
        state = torch.load(checkpoint.path / "optimizer.pt", weights_only=True)["state"]
        assert all(torch.isfinite(t).all() for s in state.values() for t in s.values() if t.is_floating_point())


class Poison(TrainerCallback):
    """Puts a nan into one weight at the end of optimizer step `at` (a hardware fault, a bad kernel)."""

    def __init__(self, at: int):
        self.at = at

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step == self.at:
            with torch.no_grad():
                next(p for p in model.parameters() if p.requires_grad).view(-1)[0] = float("nan")


@pytest.mark.parametrize("save_steps, said", [
    (1, "the weights hold nan or inf"),  # caught by the check before the save of that very step
    (10, "the loss is nan and the gradient norm is nan at step 4"),  # caught at the next log; nan logged as nan
])
def test_a_nan_weight_is_never_saved(save_steps, said, tokenizer, tiny_model_dir, tmp_path):
    config = TrainConfig.of(model_name=str(tiny_model_dir("gpt_neox")), dtype="fp32", output_dir=str(tmp_path / "out"),
                            learning_rate=1e-3, num_train_epochs=1, per_device_train_batch_size=2,
                            gradient_accumulation_steps=1, warmup_steps=0, logging_steps=1, save_steps=save_steps,
                            report_to="none", max_length=64)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir("gpt_neox"))
    with pytest.raises(RunError, match=re.escape(said)) as stop:
        train(config, model, tokenizer, {"toy": qa_samples(tokenizer, 12)}, {}, collator(tokenizer),
              distributed_sampler(config.optim.rng_seed), callbacks=[Poison(3)])
    out = tmp_path / "out"
    assert [c.step for c in complete_checkpoints(out)] == ([1, 2] if save_steps == 1 else [])
    assert not (out / "model.safetensors").exists() and not list(out.glob(".staging/*"))
    if save_steps == 10:
        rows = [r for r in read_metrics(out / "metrics.jsonl") if "loss" in r]
        assert [r["step"] for r in rows] == [1, 2, 3, 4] and math.isnan(rows[-1]["loss"])
        assert "no checkpoint from before step 4 is kept" in str(stop.value)
