"""What a fine-tune did: samples at every evaluation, the base model as the baseline, the best checkpoint that
regressed nowhere; on real tiny models through the whole recipe, and the pieces on their own."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from trainer.checkpoints import complete_checkpoints, rotate, write_marker
from trainer.config import TrainConfig
from trainer.data.build import build_datasets
from trainer.data.conversation import PROMPTER, Turn
from trainer.errors import ConfigError
from trainer.evaluation.baseline import Baseline, with_delta
from trainer.evaluation.best_checkpoint import BestCheckpoint, best_step
from trainer.evaluation.samples import (SampleSettings, configured_prompts, first_exchange, generate_samples,
                                        picked_prompts, sample_line)
from trainer.formats import format_for
from trainer.models import load_model
from trainer.recipe import run
from trainer.run_log import read_metrics
from trainer.tokens import load_tokenizer

REPO = Path(__file__).resolve().parent.parent


def run_config(model_dir: Path, tmp_path: Path, **overrides) -> TrainConfig:
    """alpaca trained (12 steps, evaluated and saved every 4), the messages sample eval-only with its own prompt."""
    values = dict(
        model_name=str(model_dir), dtype="fp32", max_length=96, num_train_epochs=2, per_device_train_batch_size=8,
        per_device_eval_batch_size=16, gradient_accumulation_steps=1, warmup_steps=0, learning_rate=3e-3,
        residual_dropout=0.0, logging_steps=2, eval_steps=4, save_steps=4, save_total_limit=1, report_to="none",
        eval_sample_tokens=8, output_dir=str(tmp_path / "out"), cache_dir=str(tmp_path / "cache"),
        datasets=[{"alpaca": {"input_file_path": str(REPO / "data/alpaca/sample.json"), "val_split": 0.2}},
                  {"messages": {"input_file_path": str(REPO / "data/messages/sample.jsonl"), "eval_only": True,
                                "eval_prompts": ["What is a meme?"]}}])
    return TrainConfig.of(**(values | overrides))


@pytest.fixture(scope="module")
def trained(tiny_model_dir, tmp_path_factory):
    """One run, its console output, then a second start that trains two more epochs from its last checkpoint."""
    import contextlib
    import io

    tmp_path = tmp_path_factory.mktemp("evaluated")
    config = run_config(tiny_model_dir("gpt_neox"), tmp_path)
    outputs = []
    for cfg in (config, config.replace(num_train_epochs=3, resume_with_changes=True)):
        out = io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            run(cfg)
        outputs.append(out.getvalue())
    return Path(config.outputs.output_dir), outputs


def test_the_base_model_is_measured_once_and_every_evaluation_is_a_change_against_it(trained):
    out, (first, second) = trained
    baseline = Baseline.read(out)
    rows = read_metrics(out / "metrics.jsonl")
    base = {k: v for r in rows if r["step"] == 0 for k, v in r.items()}  # one row per validation set
    assert baseline.losses == {"alpaca": base["base/eval_alpaca_loss"], "messages": base["base/eval_messages_loss"]}
    assert base["base/eval_loss"] == pytest.approx(baseline.mean)
    assert not any("eval_alpaca_loss" in r for r in rows if r["step"] == 0)  # never an eval_* figure to rank
    evals = [r for r in rows if "eval_alpaca_loss" in r]
    # 7 steps per epoch: every 4 steps and at the end of each start (2 epochs, then 3)
    assert [r["step"] for r in evals] == [4, 8, 12, 14, 16, 20, 21]
    for row in rows:
        if "delta/eval_alpaca_loss" in row:
            loss = next(r["eval_alpaca_loss"] for r in evals if r["step"] == row["step"])
            assert row["delta/eval_alpaca_loss"] == pytest.approx(loss - baseline.losses["alpaca"])
    assert first.count("base model: alpaca") == 1 and "base model" not in second  # reused on resume
    step4 = next(r for r in evals if r["step"] == 4)
    delta = step4["eval_alpaca_loss"] - baseline.losses["alpaca"]
    assert f"eval step 4: alpaca {with_delta(step4['eval_alpaca_loss'], delta)}" in first
    assert delta < 0 and f"({delta:+.2f})" in first


def test_samples_are_written_logged_and_shown_at_every_evaluation(trained):
    out, (first, second) = trained
    rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in rows if r["dataset"] == "messages"]
    assert steps == [0, 4, 8, 12, 14, 16, 20, 21]  # each step once after the resume
    at4 = [r for r in rows if r["step"] == 4]
    assert [r["dataset"] for r in at4] == ["alpaca", "alpaca", "messages"]
    assert at4[2]["prompt"] == "What is a meme?" and at4[2]["reference"] is None
    assert all(r["reference"] for r in at4[:2]) and all(set(r) == {"step", "dataset", "prompt", "completion",
                                                                    "reference"} for r in rows)
    assert [r["prompt"] for r in at4] == [r["prompt"] for r in rows if r["step"] == 16]  # the same prompts
    assert first.count("  sample alpaca: ") == 5 and second.count("  sample alpaca: ") == 3
    assert all(len(line) <= 100 for line in first.splitlines() if "sample alpaca:" in line)


def test_the_best_checkpoint_is_kept_beside_the_newest_and_named(trained):
    out, (first, second) = trained
    record = json.loads((out / "best_checkpoint.json").read_text())
    candidates = {c["step"]: c for c in record["candidates"]}
    assert sorted(candidates) == [4, 8, 12, 14, 16, 20, 21]
    eligible = [c for c in candidates.values() if all(d <= 0.05 for d in c["deltas"].values())]
    best = min(eligible, key=lambda c: c["eval_loss"])
    assert record["best"] == f"checkpoint-{best['step']}" == f"checkpoint-{best_step(out)}"
    assert f"best checkpoint   checkpoint-{best['step']} (mean eval loss {best['eval_loss']:.3f}" in second
    kept = [c.step for c in complete_checkpoints(out)]
    assert kept == sorted({best["step"], 21})  # save_total_limit 1, and the best in addition
    summary = read_metrics(out / "metrics.jsonl")[-1]
    assert summary["best/checkpoint"] == record["best"] and summary["final/samples_seconds"] > 0


def test_an_eval_only_dataset_is_never_trained_on(trained, tokenizer):
    out, _ = trained
    resolved = (out / "resolved_config.yaml").read_text()
    assert "eval_only: true" in resolved
    rows = read_metrics(out / "metrics.jsonl")
    assert any("eval_messages_loss" in r for r in rows)
    stats = next(r for r in rows if r["step"] is None and any(k.startswith("data/messages/") for k in r))
    assert stats.get("data/messages/train_samples", 0) == 0


def test_best_checkpoint_skips_a_lower_mean_that_regressed_on_one_set(tmp_path):
    best = BestCheckpoint(margin=0.1)
    base = {"a": 5.0, "b": 5.0}
    best.add(2, {"a": 4.0, "b": 5.05}, base)  # mean 4.525, b within the margin
    best.add(4, {"a": 3.0, "b": 5.2}, base)  # mean 4.1, but b worse than the base by 0.2
    assert best.best().step == 2 and "checkpoint-2 (mean eval loss 4.525" in best.describe()
    best.write(tmp_path)
    again = BestCheckpoint.read(tmp_path, margin=0.5)  # judged again with the new margin
    assert again.best().step == 4
    again.cut_after(3)
    assert [c.step for c in again.candidates] == [2]
    assert BestCheckpoint(0.0).describe().startswith("none (no checkpoint")
    none = BestCheckpoint(0.0)
    none.add(2, {"a": 6.0}, {"a": 5.0})
    assert none.best() is None and "worse than the base" in none.describe()
    plain = BestCheckpoint(0.0)
    plain.add(2, {"a": 6.0}, None)  # a run without a baseline: the lowest mean
    assert plain.describe() == "checkpoint-2 (mean eval loss 6.000; no baseline to compare with)"
    (tmp_path / "best_checkpoint.json").write_text("[1, 2]")
    with pytest.raises(ConfigError, match="best_checkpoint.json: not a best-checkpoint record"):
        BestCheckpoint.read(tmp_path, 0.1)


def test_rotation_keeps_the_protected_checkpoint_in_addition(tmp_path):
    for step in (2, 4, 6, 8):
        directory = tmp_path / f"checkpoint-{step}"
        directory.mkdir()
        (directory / "weights").write_text(str(step))
        write_marker(directory, "checkpoint", step, 1)
    rotate(tmp_path, 2, protect=tmp_path / "checkpoint-2")
    assert [c.step for c in complete_checkpoints(tmp_path)] == [2, 6, 8]
    rotate(tmp_path, 2)
    assert [c.step for c in complete_checkpoints(tmp_path)] == [6, 8]


@pytest.fixture(scope="module")
def alpaca_val(tokenizer, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("alpaca")
    directory = tmp / "tok"
    tokenizer.save_pretrained(directory)
    tok = load_tokenizer(str(directory))
    config = TrainConfig.of(cache_dir=str(tmp / "cache"), max_length=96, datasets=[
        {"alpaca": {"input_file_path": str(REPO / "data/alpaca/sample.json"), "val_split": 0.2}}])
    return config, tok, build_datasets(config.data, tok)[0].val


def test_picked_prompts_are_the_samples_own_prompts_and_replies_and_the_pick_is_seeded(alpaca_val):
    config, tok, val = alpaca_val
    fmt = format_for(config.data, tok)
    picked = picked_prompts("alpaca", val, 3, 7, tok, fmt.end_key, 200)
    assert picked == picked_prompts("alpaca", val, 3, 7, tok, fmt.end_key, 200)
    assert picked != picked_prompts("alpaca", val, 3, 8, tok, fmt.end_key, 200)
    for prompt in picked:
        index = next(i for i in range(len(val)) if tuple(val[i]["input_ids"][:len(prompt.prompt_ids)])
                     == prompt.prompt_ids)
        sample = val[index]
        ids, reply = first_exchange(sample["input_ids"], sample["labels"])
        assert tuple(ids) == prompt.prompt_ids and sample["labels"][len(ids)] != -100
        assert tok.decode(prompt.prompt_ids).endswith("<|assistant|>")  # the run's format, to the reply
        assert prompt.reference and prompt.reference in tok.decode(reply)
    assert picked_prompts("alpaca", val, 3, 7, tok, fmt.end_key, 5) == []  # prompts longer than the room
    assert first_exchange([1, 2, 3], [1, 2, 3]) is None  # label_masking off: no boundary


def test_configured_prompts_are_what_a_chat_sends(alpaca_val):
    config, tok, _ = alpaca_val
    fmt = format_for(config.data, tok)
    [prompt] = configured_prompts("alpaca", ["What is a meme?"], fmt, tok)
    assert tok.decode(prompt.prompt_ids) == fmt.generation_prompt([Turn(PROMPTER, "What is a meme?")], fmt.system)


@pytest.mark.parametrize("mode", ["full", "lora", "qlora"])
def test_samples_generate_under_every_mode_and_leave_training_as_it_was(mode, tiny_model_dir, alpaca_val):
    config, tok, val = alpaca_val
    fmt = format_for(config.data, tok)
    train_config = config.replace(model_name=str(tiny_model_dir("gpt_neox")), mode=mode, dtype="fp32")
    model = load_model(train_config.model, train_config.adapters, tok, max_length=96).model
    model.train()
    prompts = picked_prompts("alpaca", val, 2, 0, tok, fmt.end_key, 80)
    state = torch.random.get_rng_state()
    rows = generate_samples(model, tok, prompts, fmt.end_key, SampleSettings(max_new_tokens=6, temperature=0.8), 3)
    assert torch.equal(torch.random.get_rng_state(), state) and model.training
    assert [r["step"] for r in rows] == [3, 3] and all(isinstance(r["sampled"], str) for r in rows)
    again = generate_samples(model, tok, prompts, fmt.end_key, SampleSettings(max_new_tokens=6, temperature=0.8), 3)
    assert again == rows  # greedy, and sampled under a fixed seed
    assert sample_line(rows).startswith("  sample alpaca: ") and len(sample_line(rows)) <= 100


def test_samples_generate_with_the_padding_free_varlen_attention(tiny_model_dir, alpaca_val):
    from transformers import AutoModelForCausalLM

    from trainer import varlen_attention

    config, tok, val = alpaca_val
    fmt = format_for(config.data, tok)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir("gpt_neox"),
                                                 attn_implementation=varlen_attention.register())
    prompts = picked_prompts("alpaca", val, 1, 0, tok, fmt.end_key, 80)
    rows = generate_samples(model, tok, prompts, fmt.end_key, SampleSettings(max_new_tokens=4), 1)
    assert len(rows) == 1 and model.config._attn_implementation == varlen_attention.NAME


@pytest.mark.parametrize("prompts, message", [
    ("What is a meme?", "'eval_prompts' must be a list of strings, got 'What is a meme?'"),
    ([1, 2], "'eval_prompts' must be a list of strings, got [1, 2]"),
    (["ok", " "], "'eval_prompts' must be a list of non-empty strings"),
])
def test_eval_prompts_must_be_a_list_of_strings(prompts, message):
    with pytest.raises(ConfigError) as error:
        TrainConfig.of(datasets=[{"alpaca": {"eval_prompts": prompts}}])
    assert message in str(error.value)
