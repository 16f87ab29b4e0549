"""The data builder, its cache, the data report and the `python -m trainer.data` command, on the bundled data."""
import json
import shutil

import numpy as np
import pytest

from trainer.paths import CHECKOUT as REPO
from trainer.config import load_config
from trainer.cli import data_command as data_main
from trainer.data.build import build_datasets
from trainer.data.report import dataset_figures, render_marked, write_dump
from trainer.errors import DataError


@pytest.fixture
def workspace(tmp_path, tokenizer):
    """Copies of the bundled datasets, a tokenizer directory and a config section that uses them."""
    for name in ("oasst/sample_trees.jsonl", "alpaca/sample.json", "airoboros/sample.jsonl", "messages/sample.jsonl",
                 "sharegpt/sample.json"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / "data" / name, tmp_path / name)
    tokenizer.save_pretrained(tmp_path / "tok")
    section = {"datasets": [{"oasst_export": {"input_file_path": str(tmp_path / "oasst/sample_trees.jsonl")}},
                            {"alpaca": {"input_file_path": str(tmp_path / "alpaca/sample.json")}},
                            {"airoboros": {"input_file_path": str(tmp_path / "airoboros/sample.jsonl")}},
                            {"messages": {"input_file_path": str(tmp_path / "messages/sample.jsonl")}},
                            {"sharegpt": {"input_file_path": str(tmp_path / "sharegpt/sample.json")}}],
               "model_name": str(tmp_path / "tok"), "cache_dir": str(tmp_path / "cache"), "max_length": 128,
               "output_dir": str(tmp_path / "out"), "per_device_train_batch_size": 4}
    (tmp_path / "exp.yaml").write_text(json.dumps({"exp": section}))
    return tmp_path


def config_for(workspace, *flags):
    return load_config(["--configs", "exp", "--config_file", str(workspace / "exp.yaml"), *flags])


def test_build_gives_masked_samples_for_every_dataset(workspace, tokenizer):
    built = build_datasets(config_for(workspace).data, tokenizer)
    assert [b.name for b in built] == ["oasst_export", "alpaca", "airoboros", "messages", "sharegpt"]
    for b in built:
        assert len(b.train) > 0 and len(b.val) > 0 and not b.from_cache
        for row in b.train:
            ids, labels = np.array(row["input_ids"]), np.array(row["labels"])
            assert len(ids) == len(labels) == row["length"] <= 128
            trained = labels != -100
            assert row["trained"] == trained.sum() > 0
            assert (labels[trained] == ids[trained]).all()
        assert b.counts["train_samples"] == len(b.train)
    oasst = built[0]
    assert oasst.counts["train"] + oasst.counts["val"] == oasst.counts["threads"]


def test_second_build_reuses_the_cache_and_changes_rebuild_it(workspace, tokenizer):
    config = config_for(workspace)
    first = build_datasets(config.data, tokenizer)
    again = build_datasets(config.data, tokenizer)
    assert all(b.from_cache for b in again)
    for a, b in zip(first, again):
        assert a.train["input_ids"] == b.train["input_ids"] and a.counts == b.counts

    with open(workspace / "airoboros/sample.jsonl", "a") as f:
        f.write(json.dumps({"instruction": "One more?", "response": "Yes, one more."}) + "\n")
    changed_file = build_datasets(config.data, tokenizer)
    assert [b.from_cache for b in changed_file] == [True, True, False, True, True]
    assert changed_file[2].counts["records_read"] == first[2].counts["records_read"] + 1

    shorter = build_datasets(config_for(workspace, "--max_length", "64").data, tokenizer)
    assert not any(b.from_cache for b in shorter)
    assert max(max(b.train["length"]) for b in shorter) <= 64


def test_a_malformed_line_names_the_file_and_line_and_the_skip_option_counts_it(workspace, tokenizer):
    path = workspace / "airoboros/sample.jsonl"
    lines = path.read_text().splitlines()
    lines.insert(2, '{"instruction": "broken", ')
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=rf"{path}:3: "):
        build_datasets(config_for(workspace).data, tokenizer)

    section = json.loads((workspace / "exp.yaml").read_text())
    section["exp"]["datasets"][2]["airoboros"]["skip_bad_lines"] = True
    (workspace / "exp.yaml").write_text(json.dumps(section))
    built = build_datasets(config_for(workspace).data, tokenizer)
    assert built[2].counts["bad_records_skipped"] == 1
    assert built[2].skipped[0].startswith(f"{path}:3")


def test_report_marks_trained_spans_and_dump_round_trips(workspace, tokenizer):
    config = config_for(workspace)
    built = build_datasets(config.data, tokenizer)
    row = built[1].train[0]
    marked = render_marked(tokenizer, row["input_ids"], row["labels"])
    assert marked.startswith("<|prompter|>") and marked.endswith("<|endoftext|>⟧")
    assert "<|assistant|>⟦" in marked and marked.count("⟦") == 1

    figures = dataset_figures(built[0], config)
    assert figures["train_samples"] == len(built[0].train)
    assert 0 < figures["trained_share"] < 1 and 0 <= figures["padding_fraction"] < 1
    assert figures["length_percentiles"]["p100"] == max(built[0].train["length"])
    sorted_figures = dataset_figures(built[0], config_for(workspace, "--sort_by_length", "true"))
    assert sorted_figures["padding_fraction"] < figures["padding_fraction"]

    dump = workspace / "dump.jsonl"
    n = write_dump(dump, built, tokenizer)
    records = [json.loads(line) for line in dump.read_text().splitlines()]
    assert n == len(records) == sum(len(b.train) + len(b.val) for b in built)
    first = records[0]
    assert (first["dataset"], first["split"]) == ("oasst_export", "train")
    assert first["input_ids"] == built[0].train[0]["input_ids"] and first["labels"] == built[0].train[0]["labels"]
    assert first["text"] == tokenizer.decode(first["input_ids"])


def test_data_command_prints_the_report_and_writes_it_with_the_resolved_config(workspace, capsys):
    argv = ["--configs", "exp", "--config_file", str(workspace / "exp.yaml"), "--examples", "1",
            "--dump", str(workspace / "d.jsonl")]
    assert data_main(argv) == 0
    out = capsys.readouterr().out
    assert "== oasst_export (built" in out and "trees_dropped_lang" in out and "⟦" in out
    report = json.loads((workspace / "out/data_report.json").read_text())
    assert set(report) == {"oasst_export", "alpaca", "airoboros", "messages", "sharegpt"}
    assert (workspace / "out/resolved_config.yaml").is_file() and (workspace / "d.jsonl").is_file()
    assert data_main(argv[:4]) == 0
    assert "== oasst_export (cache" in capsys.readouterr().out
