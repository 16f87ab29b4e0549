"""Sweeps: real trials of `delphi train` (subprocesses) on the tiny GPT-NeoX and the bundled alpaca sample."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from trainer.config import resolve, split_argv
from trainer.paths import CHECKOUT as REPO_ROOT
from trainer.errors import ConfigError
from trainer.cli import main as delphi
from trainer.sweep.spec import load_sweep
from trainer.sweep.trials import plan, read_state, run_sweep
from trainer.sweep.wandb_sweep import wandb_config

BASE = {
    "dtype": "fp32", "max_length": 64, "num_train_epochs": 1, "per_device_train_batch_size": 4,
    "per_device_eval_batch_size": 8, "gradient_accumulation_steps": 1, "warmup_steps": 0, "logging_steps": 1,
    "eval_steps": 2, "save_steps": 2, "report_to": "none",
    "datasets": [{"alpaca": {"input_file_path": "data/alpaca/sample.json", "val_split": 0.2, "size": 16}}],
}


def write_sweep(tmp_path: Path, model_dir: Path, name: str, **spec) -> Path:
    """A section file with the tiny base config, and a sweep file over it."""
    sections = tmp_path / "sections.yaml"
    sections.write_text(yaml.safe_dump({"sweep-base": {**BASE, "model_name": str(model_dir),
                                                       "cache_dir": str(tmp_path / "cache")}}))
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, "configs": ["sweep-base"], "config_files": ["sections.yaml"],
                                    "output_dir": str(tmp_path / name), **spec}, sort_keys=False))
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def grid(tiny_model_dir, tmp_path_factory):
    """A 4-trial grid run to the end through the command line, then run a second time."""
    tmp = tmp_path_factory.mktemp("grid")
    path = write_sweep(tmp, tiny_model_dir("gpt_neox"), "grid", parameters={
        "learning_rate": ["1e-3", 1e-2], "warmup_steps": [0, 2]},
        metric={"name": "eval_loss", "goal": "minimize", "summary": "best"},
        run_name="lr{learning_rate}-w{warmup_steps}")
    pytest.importorskip("matplotlib", reason="the report's plots need matplotlib (a project dependency)")
    first = delphi(["sweep", "run", str(path)])
    logs = {p: p.stat().st_mtime_ns for p in (tmp / "grid").glob("*/train.log")}
    second = run_sweep(load_sweep(path))
    return path, tmp / "grid", first, logs, second


@pytest.mark.slow
def test_a_grid_runs_every_trial_once_and_a_second_run_starts_nothing(grid):
    path, out, first, logs, second = grid
    assert first == 0
    names = json.loads((out / "sweep.json").read_text())["trials"]
    assert names == ["lr0.001-w0", "lr0.001-w2", "lr0.01-w0", "lr0.01-w2"]
    for name in names:
        state = read_state(out / name)
        assert state["status"] == "finished" and state["attempts"] == 1, state
        config = yaml.safe_load((out / name / "resolved_config.yaml").read_text())["resolved"]
        assert config["output_dir"] == str(out / name) and config["wandb_group"] == "grid"
        assert config["wandb_run_name"] == name and f"warmup_steps={config['warmup_steps']}" in config["wandb_tags"]
        rows = read_jsonl(out / name / "metrics.jsonl")
        assert [r["step"] for r in rows if "eval_loss" in r] == [2, 4]
    assert [s["status"] for s in second] == ["finished"] * 4 and all(s["attempts"] == 1 for s in second)
    assert {p: p.stat().st_mtime_ns for p in logs} == logs  # nothing was started again


@pytest.mark.slow
def test_the_report_table_holds_each_trials_own_metrics_sorted_by_the_metric(grid):
    import csv

    _, out, *_ = grid
    with (out / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4
    best = [float(r["best eval_loss"]) for r in rows]
    assert best == sorted(best)
    for row in rows:
        metrics = read_jsonl(out / row["trial"] / "metrics.jsonl")
        evals = [r["eval_loss"] for r in metrics if "eval_loss" in r]
        assert float(row["best eval_loss"]) == min(evals)
        assert float(row["final eval_loss"]) == evals[-1]
        assert float(row["final train loss"]) == [r["loss"] for r in metrics if "loss" in r][-1]
        final = next(r for r in metrics if "final/trained_tokens_per_second" in r)
        assert float(row["trained tokens/s"]) == final["final/trained_tokens_per_second"] > 0
        assert float(row["peak memory GiB"]) > 0 and float(row["wall s"]) > 0 and row["status"] == "finished"
        assert row["learning_rate"] in ("0.001", "0.01") and row["warmup_steps"] in ("0", "2")
    markdown = (out / "results.md").read_text().splitlines()
    assert len(markdown) == 2 + 4 and markdown[2].startswith(f"| {rows[0]['trial']} |")


@pytest.mark.slow
def test_the_plots_are_pngs_with_one_line_per_trial(grid):
    import matplotlib.image

    from trainer.sweep.report import loss_figure, metric_figure, read_results

    _, out, *_ = grid
    for name in ("loss_curves.png", "metric_by_parameter.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        height, width, _ = matplotlib.image.imread(out / name).shape
        assert height > 100 and width > 100
    manifest, results = read_results(out)
    lines = loss_figure(results).axes[0].get_lines()
    assert sorted(line.get_label() for line in lines) == sorted(manifest["trials"])
    assert all(len(line.get_xdata()) == 4 for line in lines)  # 16 samples / 4 per step, logged every step
    panels = metric_figure(manifest, results).axes
    assert [ax.get_xlabel() for ax in panels] == ["learning_rate", "warmup_steps"]
    assert all(len(ax.collections[0].get_offsets()) == 4 for ax in panels)


@pytest.mark.slow
def test_a_killed_trial_resumes_from_its_checkpoint_and_a_failing_one_is_reported(tiny_model_dir, tmp_path,
                                                                                   monkeypatch):
    pytest.importorskip("matplotlib", reason="`run` writes the report, whose plots need matplotlib")
    missing = tmp_path / "no-such-model"
    path = write_sweep(tmp_path, tiny_model_dir("gpt_neox"), "killres", parameters={
        "model_name": [str(missing), str(tiny_model_dir("gpt_neox"))]},
        fixed={"num_train_epochs": 12, "report_to": "wandb"}, run_name="trial{index}")
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path)}
    sweep = subprocess.Popen([sys.executable, "-m", "trainer.sweep", "run", str(path)], cwd=REPO_ROOT, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    good = tmp_path / "killres" / "trial1"
    try:
        while not (good / "checkpoint-4" / "trainer_state.json").is_file():
            assert sweep.poll() is None, "the sweep ended before its trial was killed"
            time.sleep(0.05)
    finally:
        os.killpg(sweep.pid, signal.SIGKILL)
        sweep.wait()
    assert read_state(good)["status"] == "running"
    assert not (good / "model.safetensors").exists()

    monkeypatch.setenv("WANDB_MODE", "offline")  # the in-process sweep's trials inherit these
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    states = run_sweep(load_sweep(path))
    bad_state, good_state = states
    assert bad_state["status"] == "failed" and bad_state["returncode"] != 0 and bad_state["attempts"] == 1
    assert str(missing) in bad_state["error"]
    assert good_state["status"] == "finished" and good_state["attempts"] == 2
    log = (good / "train.log").read_text()
    assert "resuming from" in log and "checkpoint-" in log.split("resuming from")[1].splitlines()[0]
    steps = [r["step"] for r in read_jsonl(good / "metrics.jsonl") if "loss" in r]
    assert steps[-1] == 48 and steps.count(1) == 1  # 12 epochs x 4 steps; step 1 not trained again
    blob = b"".join(p.read_bytes() for p in tmp_path.glob("wandb/offline-run-*/run-*.wandb"))
    assert b"killres" in blob and b"model_name=" in blob  # the sweep's group and the trial's tags

    from trainer.sweep.report import read_results, table

    rows = table(*read_results(tmp_path / "killres"))
    assert [(r["trial"], r["status"]) for r in rows] == [("trial1", "finished"), ("trial0", "failed")]
    assert str(missing) in rows[1]["error"] and rows[1]["best eval_loss"] is None


def test_random_search_is_reproducible_and_within_bounds(tiny_model_dir, tmp_path):
    spec = dict(method="random", count=40, seed=3, parameters={
        "learning_rate": {"distribution": "log_uniform", "min": "1e-5", "max": 1e-2},
        "lora_dropout": {"distribution": "uniform", "min": 0.0, "max": 0.3},
        "lora_r": {"distribution": "int_uniform", "min": 4, "max": 9},
        "lr_scheduler_type": {"distribution": "choice", "values": ["linear", "cosine"]}})
    path = write_sweep(tmp_path, tiny_model_dir("gpt_neox"), "random", **spec)
    first, again = plan(load_sweep(path)), plan(load_sweep(path))
    assert [t.params for t in first] == [t.params for t in again]
    params = [t.params for t in first]
    assert all(1e-5 <= p["learning_rate"] <= 1e-2 and 0.0 <= p["lora_dropout"] <= 0.3 for p in params)
    assert {p["lora_r"] for p in params} == set(range(4, 10)) and {p["lr_scheduler_type"] for p in params} == {
        "linear", "cosine"}
    assert min(p["learning_rate"] for p in params) < 1e-4 < 1e-3 < max(p["learning_rate"] for p in params)
    assert [t.config.adapters.lora_r for t in first] == [p["lora_r"] for p in params]
    other = write_sweep(tmp_path, tiny_model_dir("gpt_neox"), "random", **{**spec, "seed": 4})
    assert [t.params for t in plan(load_sweep(other))] != params


@pytest.mark.parametrize("parameters, message", [
    ({"learning_rat": [1e-3]}, "(parameters.learning_rat): unknown key 'learning_rat' (did you mean 'learning_rate'?)"),
    ({"lora_r": [8, "big"]}, "(parameters.lora_r): 'lora_r' must be int, got 'big'"),
    ({"lora_r": [0]}, "'lora_r' must be at least 1, got 0"),
    ({"output_dir": ["a", "b"]}, "'output_dir' is set by the sweep"),
])
def test_every_parameter_is_checked_against_the_config_schema_before_anything_runs(tiny_model_dir, tmp_path,
                                                                                    parameters, message):
    path = write_sweep(tmp_path, tiny_model_dir("gpt_neox"), "bad", parameters=parameters)
    with pytest.raises(ConfigError) as error:
        load_sweep(path)
    assert f"{path}:" in str(error.value) and message in str(error.value)
    assert delphi(["sweep", "run", str(path)]) == 2 and not (tmp_path / "bad").exists()


def test_dry_run_lists_trials_and_overrides(tiny_model_dir, tmp_path, capsys):
    path = write_sweep(tmp_path, tiny_model_dir("gpt_neox"), "dry", parameters={"mode": ["full", "lora"]})
    assert delphi(["sweep", "run", str(path), "--dry-run"]) == 0
    assert capsys.readouterr().out.splitlines() == ["[0] dry-000 (new): --mode=full", "[1] dry-001 (new): --mode=lora"]
    assert not (tmp_path / "dry").exists()


@pytest.mark.parametrize("method, parameters", [
    ("grid", {"learning_rate": [1e-4, 1e-3], "mode": ["full", "lora"]}),
    ("random", {"learning_rate": {"distribution": "log_uniform", "min": 1e-5, "max": 1e-3},
                "lora_r": {"distribution": "int_uniform", "min": 4, "max": 32},
                "residual_dropout": {"distribution": "uniform", "min": 0.0, "max": 0.2},
                "mode": {"distribution": "choice", "values": ["lora", "qlora"]}}),
])
def test_the_wandb_sweep_config_passes_wandbs_validation_and_its_agent_args_reach_the_trainer(
        tiny_model_dir, tmp_path, method, parameters, monkeypatch):
    from wandb.sdk.launch.sweeps.utils import create_sweep_command_args

    sweeps = pytest.importorskip("sweeps", reason="wandb's sweep-config validator is the `sweeps` package "
                                                  "(wandb[sweeps]; in the project's test extra)")
    path = write_sweep(tmp_path, tiny_model_dir("gpt_neox"), "wb", method=method, parameters=parameters,
                       metric={"name": "eval_alpaca_loss", "goal": "minimize"},
                       **({"count": 3} if method == "random" else {}))  # a grid runs every combination
    config = wandb_config(load_sweep(path))
    assert sweeps.schema_violations_from_proposed_config(config) == []
    assert config["program"] == "trainer_sft.py" and config["method"] == method
    assert config["metric"] == {"name": "eval_alpaca_loss", "goal": "minimize"}
    assert config["command"][-1] == "${args}"

    # What the agent runs for one suggestion: its `${args}` are `--key=value` flags built by wandb's own code.
    suggestion = {"learning_rate": {"value": 1e-4}, "mode": {"value": "lora"}, "report_to": {"value": "wandb"},
                  "log_wandb": {"value": True}}
    argv = config["command"][3:-1] + create_sweep_command_args({"args": suggestion})["args"]
    assert "--learning_rate=0.0001" in argv and "--log_wandb=True" in argv
    monkeypatch.setenv("WANDB_RUN_ID", "r1")  # the agent sets it for each run
    trained = resolve(split_argv(argv)).flat()
    assert [trained[k] for k in ("learning_rate", "mode", "report_to", "log_wandb")] == [1e-4, "lora", "wandb", True]
    assert trained["wandb_group"] == "wb" and trained["output_dir"] == f"{tmp_path / 'wb'}/r1"
    assert resolve(split_argv(["--configs", "sweep-base", "--config_file", str(tmp_path / "sections.yaml"),
                               "--learning_rate=1e-4"])).optim.learning_rate == 1e-4
