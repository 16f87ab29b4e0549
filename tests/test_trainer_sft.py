"""`delphi train` (what `trainer_sft.py` runs) end to end in-process: the recipe's wiring of config, data builder,
sampler, collator (packing included), model loading and training, on the bundled data and tiny real models."""
import json
import re

import pytest

from trainer.cli import main
from trainer.formats import build_format
from trainer.paths import CHECKOUT as REPO_ROOT
from trainer.run_log import read_metrics


@pytest.mark.parametrize("architecture,flags", [
    ("gpt_neox", ["--packing", "true", "--sort_by_length", "true", "--show_dataset_stats"]),
    ("mpt", ["--packing", "true"]),
    ("falcon", ["--mode", "lora", "--use_custom_sampler", "true"]),
    ("gpt_neox", ["--padding_free", "true", "--max_tokens_per_batch", "512"]),
    ("mpt", ["--padding_free", "--chunked_loss", "false"]),
])
def test_trainer_sft_trains_on_the_bundled_data(architecture, flags, tiny_model_dir, tokenizer, tmp_path, capsys):
    section = {"run": {
        "datasets": [{"oasst_export": {"input_file_path": str(REPO_ROOT / "data/oasst/sample_trees.jsonl")}},
                     {"alpaca": {"input_file_path": str(REPO_ROOT / "data/alpaca/sample.json"), "fraction": 0.5}},
                     {"sharegpt": {"input_file_path": str(REPO_ROOT / "data/sharegpt/sample.json")}}],
        "model_name": str(tiny_model_dir(architecture)), "dtype": "fp32", "max_length": 128,
        "cache_dir": str(tmp_path / "cache"), "output_dir": str(tmp_path / "out"), "report_to": "none",
        "num_train_epochs": 1, "per_device_train_batch_size": 8, "gradient_accumulation_steps": 1,
        "learning_rate": 1e-3, "warmup_steps": 0, "logging_steps": 1, "eval_steps": 4, "save_steps": 4}}
    (tmp_path / "run.yaml").write_text(json.dumps(section))
    assert main(["train", "--configs", "run", "--config_file", str(tmp_path / "run.yaml"), *flags]) == 0
    out, err = capsys.readouterr()
    # The console: one line per evaluation and one for the end of training, never the Trainer's raw dicts.
    assert re.search(r"^eval step 4: oasst_export \d+\.\d{3} · alpaca \d+\.\d{3} · sharegpt \d+\.\d{3} · mean "
                     r"\d+\.\d{3}$", out, re.M)
    assert re.search(r"^trained for 1 epoch in (\d+ min )?[\d.]+ s: .* mean training loss \d+\.\d{3}$", out, re.M)
    assert "{'" not in out + err
    assert ("Training dataset sizes (before sampling):" in out) == ("--show_dataset_stats" in flags)
    if "--show_dataset_stats" in flags:  # OASST's stats: sizes with shares, then the per-epoch draws
        assert re.search(r"^sharegpt: 24 \(\d+\.\d\d%\)$", out, re.M) and "Total eval: " in out
        assert re.search(r"^alpaca: 2\d of [45]\d \(fraction 0\.50\)$", out, re.M)

    rows = read_metrics(tmp_path / "out" / "metrics.jsonl")
    steps = [r for r in rows if "loss" in r]
    assert steps and all(r["trained_tokens"] > 0 and 0 <= r["padding_fraction"] < 1 for r in steps)
    for name in ("eval_oasst_export_loss", "eval_alpaca_loss", "eval_sharegpt_loss", "eval_loss"):
        assert [r[name] for r in rows if name in r], name
    assert (tmp_path / "out" / "resolved_config.yaml").is_file()
    saved = "adapter_config.json" if "lora" in flags else "config.json"
    assert (tmp_path / "out" / saved).is_file()
    # The tokenizer of the output and of every checkpoint carries the format's chat template.
    template = build_format("oasst", tokenizer).chat_template()
    for directory in [tmp_path / "out", *(tmp_path / "out").glob("checkpoint-*")]:
        assert (directory / "chat_template.jinja").read_text() == template
    if any(flag.startswith("--padding") for flag in flags):  # token budgets, packed into rows of max_length here
        budget = "512" if "512" in flags else "1,024"  # 8 x 128 by default
        assert f"tokens per optimizer step: up to {budget} = {budget}-token budget" in out
        assert max(r["padding_fraction"] for r in steps) < 0.5  # rows of max_length on a CPU: one row on a GPU
