"""Trackers: each real library writes its real files offline, and they are read back."""
from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from trainer.config import TrainConfig
from trainer.errors import ConfigError
from trainer.run_log import RunLog
from trainer.tracking import TRACKERS, TrackerKind, check_installed

ROWS = [{"step": 4, "dataset": "alpaca", "prompt": "Say hi", "completion": "hi | there", "reference": "hello"}]


def logged_run(tmp_path: Path, report_to: str) -> Path:
    """What a training run sends a tracker: the config, scalars at steps, samples, one-off figures."""
    out = tmp_path / "run"
    config = TrainConfig.of(report_to=report_to, wandb_project="delphi-test", wandb_run_name="tracked",
                            output_dir=str(out))
    run_log = RunLog.start(config.logging, out, config.flat())
    run_log.log({"loss": 2.5, "learning_rate": 1e-3, "grad_norm": 0.5, "trained_tokens": 100.0,
                 "trained_tokens_per_second": 50.0, "peak_memory_gib": 0.25}, 2)
    run_log.log({"eval_alpaca#2_loss": 2.25, "delta/eval_alpaca#2_loss": -0.5}, 4)
    run_log.samples(ROWS, 4)
    run_log.summary({"data/alpaca/train_samples": 40, "best/checkpoint": "checkpoint-4", "best/eval_loss": 2.25})
    run_log.finish()
    return out


def test_tensorboard_gets_scalars_figures_and_samples(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = logged_run(tmp_path, "tensorboard")
    events = EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    scalars = events.Tags()["scalars"]
    assert {"loss", "learning_rate", "grad_norm", "trained_tokens_per_second", "peak_memory_gib",
            "eval_alpaca#2_loss", "delta/eval_alpaca#2_loss", "data/alpaca/train_samples"} <= set(scalars)
    assert [(e.step, e.value) for e in events.Scalars("loss")] == [(2, 2.5)]
    texts = {tag: events.Tensors(tag) for tag in events.Tags()["tensors"]}
    samples = texts["samples/text_summary"][0]
    assert samples.step == 4 and b"hi \\| there" in samples.tensor_proto.string_val[0]
    assert b"checkpoint-4" in texts["summary/text_summary"][0].tensor_proto.string_val[0]


def test_mlflow_gets_a_local_file_store_run(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    from mlflow.tracking import MlflowClient

    out = logged_run(tmp_path, "mlflow")
    client = MlflowClient(tracking_uri=(out / "mlruns").resolve().as_uri())
    [run] = client.search_runs([client.get_experiment_by_name("delphi-test").experiment_id])
    assert run.info.run_name == "tracked" and run.info.status == "FINISHED"
    assert run.data.params["report_to"] == "mlflow" and run.data.tags["best/checkpoint"] == "checkpoint-4"
    assert [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "loss")] == [(2, 2.5)]
    assert run.data.metrics["eval_alpaca_2_loss"] == 2.25 and run.data.metrics["best/eval_loss"] == 2.25
    artifact = client.download_artifacts(run.info.run_id, "samples/step-0000004.json", str(tmp_path))
    assert json.loads(Path(artifact).read_text()) == ROWS
    assert json.loads((out / "trackers.json").read_text()) == {"mlflow": run.info.run_id}


def wandb_records(run_file: Path):
    """The records of a wandb run file: its 7-byte header, then leveldb-log blocks of 32 KiB holding records of
    (crc32c, length, type) + protobuf bytes; FIRST/MIDDLE/LAST pieces join into one record."""
    from wandb.proto import wandb_internal_pb2

    data = run_file.read_bytes()
    offset, block, pieces = 7, 32768, b""
    while offset + 7 <= len(data):
        room = block - offset % block
        if room < 7:
            offset += room
            continue
        _, length, kind = struct.unpack("<IHB", data[offset:offset + 7])
        if kind == 0:
            break
        pieces += data[offset + 7:offset + 7 + length]
        offset += 7 + length
        if kind in (1, 4):  # FULL or LAST
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pieces)
            pieces = b""
            yield record


def test_wandb_charts_use_trained_tokens_and_the_step_and_the_summary_holds_the_best_checkpoint(
        tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    logged_run(tmp_path, "wandb")
    [run_file] = tmp_path.glob("wandb/offline-run-*/run-*.wandb")
    records = list(wandb_records(run_file))
    metrics = {r.metric.name or r.metric.glob_name: r.metric for r in records if r.WhichOneof("record_type") == "metric"}
    assert "trained_tokens" in metrics and metrics["*"].step_metric == "trained_tokens"
    history = [{item.key or "/".join(item.nested_key): item.value_json for item in r.history.item}
               for r in records if r.WhichOneof("record_type") == "history"]
    assert any(h.get("loss") == "2.5" and h.get("_step") == "2" for h in history)
    [evaluation] = [h for h in history if h.get("_step") == "4"]
    assert evaluation["trained_tokens"] == "100"  # the tokens axis filled in for rows without it
    assert evaluation["samples/_type"] == '"table-file"'
    [table] = run_file.parent.glob("files/media/table/samples_4_*.table.json")
    assert json.loads(table.read_text())["data"] == [list(ROWS[0].values())]
    summary = {item.key or "/".join(item.nested_key): item.value_json for r in records
               if r.WhichOneof("record_type") == "summary" for item in r.summary.update}
    assert summary.get("best/checkpoint") == '"checkpoint-4"'


def test_several_trackers_at_once_and_unknown_or_missing_ones_are_one_line(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    out = logged_run(tmp_path, "tensorboard,mlflow")
    assert (out / "tensorboard").is_dir() and (out / "mlruns").is_dir()
    with pytest.raises(ConfigError, match="'report_to' must be a comma list of wandb, tensorboard, mlflow, or none, "
                                          "got 'tensorbord' \\(did you mean 'tensorboard'\\?\\)"):
        TrainConfig.of(report_to="tensorbord")
    monkeypatch.setitem(TRACKERS, "neptune", TrackerKind("delphi_no_such_module", "neptune-client", None))
    with pytest.raises(ConfigError, match=r"^report_to: neptune is not installed \(pip install neptune-client\)"):
        check_installed(["tensorboard", "neptune"])
