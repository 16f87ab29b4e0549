"""`delphi eval`: lm-evaluation-harness's HF backend on a training output and on an export, offline, with a local
task (task YAML + JSONL written here); and `delphi export --checkpoint`."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from trainer.cli import main as delphi
from trainer.config import TrainConfig
from trainer.recipe import run

pytest.importorskip("lm_eval", reason="lm-evaluation-harness is the optional extra delphi-trainer[eval]")

REPO = Path(__file__).resolve().parent.parent
QA = [("What colour is the sky?", [" blue", " green"], 0), ("How many legs has a cat?", [" four", " two"], 0),
      ("Is fire cold?", [" yes", " no"], 1), ("What do bees make?", [" honey", " milk"], 0)]


def local_task(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    data = directory / "qa.jsonl"
    data.write_text("".join(json.dumps({"question": q, "choices": c, "answer": a}) + "\n" for q, c, a in QA))
    (directory / "delphi_qa.yaml").write_text(f"""task: delphi_qa
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{answer}}}}"
metric_list:
  - metric: acc
metadata:
  version: 1.0
""")
    return directory


@pytest.fixture(scope="module")
def finished_run(tiny_model_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("harness")
    config = TrainConfig.of(
        model_name=str(tiny_model_dir("gpt_neox")), dtype="fp32", max_length=64, num_train_epochs=1,
        per_device_train_batch_size=8, gradient_accumulation_steps=1, warmup_steps=0, logging_steps=1, eval_steps=2,
        save_steps=2, save_total_limit=1, eval_sample_tokens=4, report_to="tensorboard",
        output_dir=str(tmp / "run"), cache_dir=str(tmp / "cache"),
        datasets=[{"alpaca": {"input_file_path": str(REPO / "data/alpaca/sample.json"), "val_split": 0.2,
                              "size": 24}}])
    run(config)
    return tmp, Path(config.outputs.output_dir)


def test_delphi_eval_runs_a_local_task_on_a_run_and_an_export(finished_run, monkeypatch, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    tmp, out = finished_run
    tasks = local_task(tmp / "tasks")
    assert delphi(["eval", str(out), "--tasks", "delphi_qa", "--include_path", str(tasks), "--batch_size", "2"]) == 0
    [results] = (out / "lm_eval").glob("results-*.json")
    record = json.loads(results.read_text())
    accuracy = record["results"]["delphi_qa"]["acc,none"]
    assert 0 <= accuracy <= 1 and record["results"]["delphi_qa"]["sample_len"] == len(QA)
    printed = capsys.readouterr().out
    assert f"lm_eval/delphi_qa/acc {accuracy:.4f}" in printed and "added to the run's tensorboard run" in printed
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    assert "lm_eval/delphi_qa/acc" in events.Tags()["scalars"]

    best = json.loads((out / "best_checkpoint.json").read_text())["best"]
    export_dir = tmp / "export"
    assert delphi(["export", str(out), str(export_dir), "--checkpoint", "best", "--dtype", "fp32"]) == 0
    assert json.loads((export_dir / "delphi_export.json").read_text())["source"] == str((out / best).resolve())
    assert delphi(["eval", str(export_dir), "--tasks", "delphi_qa", "--include_path", str(tasks), "--limit", "2"]) == 0
    [exported] = (export_dir / "lm_eval").glob("results-*.json")
    assert json.loads(exported.read_text())["results"]["delphi_qa"]["sample_len"] == 2


def test_bad_eval_and_checkpoint_arguments_are_one_line(finished_run, capsys):
    tmp, out = finished_run
    tasks = local_task(tmp / "tasks")
    cases = [
        (["eval", str(out), "--tasks", "delphi_qb", "--include_path", str(tasks)],
         "--tasks: unknown lm-eval task 'delphi_qb' (did you mean 'delphi_qa'?)"),
        (["export", str(out), str(tmp / "x"), "--checkpoint", "7"], f"--checkpoint 7: {out}/checkpoint-7 does not "
                                                                     f"exist (complete checkpoints in {out}: "),
        (["export", str(out), str(tmp / "x"), "--checkpoint", "last"], "--checkpoint: expected best or a step "
                                                                        "number, got 'last'"),
    ]
    for argv, message in cases:
        assert delphi(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {message}") and len(err.splitlines()) == 1, err
