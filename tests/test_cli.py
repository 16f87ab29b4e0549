"""The command lines users bring: `--help` on every entry point, OASST's and HF's flag forms, and no config key
that is accepted and then ignored."""
from __future__ import annotations

import json

import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import pytest

from trainer.cli import check_local_rank, main
from trainer.config import (GROUPS, KEY_GROUP, RETIRED_OASST_KEYS, TRAINER_ARGS, DatasetConfig, TrainConfig,
                            load_config)
from trainer.data.kinds import KINDS
from trainer.errors import ConfigError
from trainer.paths import CHECKOUT
from trainer.schema import fields_of

ENTRY_POINTS = [["trainer_sft.py", "-h"], ["-m", "trainer.data", "-h"], ["-m", "trainer.export", "-h"],
                ["-m", "trainer.chat", "--help"], ["-m", "trainer.sweep", "-h"], ["-m", "trainer", "-h"],
                ["-m", "trainer", "train", "--help"], ["-m", "trainer", "sweep", "run", "-h"]]
HEAVY = ("torch", "transformers", "peft", "bitsandbytes", "datasets", "wandb", "numpy")


@pytest.mark.parametrize("argv", ENTRY_POINTS, ids=" ".join)
def test_every_entry_point_answers_help(argv):
    done = subprocess.run([sys.executable, *argv], capture_output=True, text=True, cwd=CHECKOUT, timeout=60)
    assert done.returncode == 0 and done.stdout.startswith("usage:") and not done.stderr


def test_the_installed_delphi_command_answers_help():
    delphi = Path(sys.executable).parent / "delphi"
    if not delphi.is_file():
        pytest.skip(f"no `delphi` script beside {sys.executable} (pip install -e . creates it)")
    done = subprocess.run([str(delphi), "-h"], capture_output=True, text=True, cwd=CHECKOUT, timeout=60)
    assert done.returncode == 0 and "delphi train" in done.stdout


def test_help_imports_no_model_library():
    code = ("import sys\nfrom trainer.cli import main\n"
            "for command in ('train', 'data', 'export', 'chat', 'sweep'):\n"
            "    try:\n        main([command, '-h'])\n    except SystemExit:\n        pass\n"
            f"print('loaded:', sorted(m for m in {HEAVY!r} if m in sys.modules), file=sys.stderr)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=CHECKOUT, timeout=60)
    assert done.stderr.strip() == "loaded: []"


def test_train_help_lists_every_key_once_with_its_type_default_and_help(tmp_path, capsys):
    mine = tmp_path / "mine.yaml"
    mine.write_text("my-run:\n  max_length: 64\n")
    assert main(["train", "--config_file", str(mine), "-h"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    for title, cls in GROUPS.values():
        assert f"{title}:" in lines
        for f in dataclasses.fields(cls):
            (line,) = [line for line in lines if line.startswith(f"  --{f.name} ")]
            assert f.metadata["help"] in line and "(default: " in line
    assert "  --dtype {fp32,fp16,bf16} " in out and "  --use_flash_attention [bool] " in out
    for kind in KINDS:
        assert f"  {kind} (" in out
    assert re.search(r"^    --top_k int\|none +keep only replies", out, re.M)
    for section in ("defaults", "reference-pythia-12b", "demo-data", "my-run"):
        assert re.search(rf"^  \S+: .*\b{section}\b", out, re.M), section
    for key, advice in RETIRED_OASST_KEYS.items():
        assert [line for line in lines if line.startswith(f"  {key} ")] == [f"  {key:<34} {advice}"]
    assert main(["data", "-h"]) == 0
    assert "  --examples N " in capsys.readouterr().out


# ----------------------------------------------------------------------------------------------------------
# OASST's trainer_sft.py flags (its first argparse parser) and its `--KEY` / `--no-KEY` per config key

def test_oasst_flag_forms():
    flat = load_config(["--configs", "reference-data,reference-pythia-12b", "--wandb-entity", "team", "--deepspeed",
                        "--rng_seed", "7", "--show_dataset_stats", "--per-device-train-batch-size=4",
                        "--no-val_max_length"]).flat()
    assert flat == load_config(["--configs", "reference-data", "reference-pythia-12b", "--wandb_entity=team",
                                "--deepspeed", "true", "--rng_seed=7", "--show_dataset_stats", "yes",
                                "--per_device_train_batch_size", "4"]).flat()
    assert (flat["model_name"], flat["wandb_entity"], flat["deepspeed"], flat["rng_seed"]) == \
        ("EleutherAI/pythia-12b-deduped", "team", True, 7)
    assert flat["show_dataset_stats"] and flat["per_device_train_batch_size"] == 4 and flat["val_max_length"] is None
    assert load_config(["--deepspeed", "--no-deepspeed"]).optim.deepspeed is False


@pytest.mark.parametrize("argv, error", [
    (["--no-max_length"], r"--no-max_length: 'max_length' cannot be unset \(it is int, default 512\); give a value "
                          r"with --max_length VALUE"),
    (["--no-deepspeed", "true"], r"--no-deepspeed takes no value, got 'true'"),
    (["--learning_rat", "1e-4"], r"unknown key 'learning_rat' \(did you mean 'learning_rate'\?\)"),
    (["--max_length"], r"'max_length' needs a value \(int\)"),
    (["--no-fuse_gelu"], r"'fuse_gelu' is an OASST option Delphi does not have: it patched"),
    (["--world_size", "8"], r"'world_size' is an OASST option Delphi does not have: the launcher sets it"),
])
def test_flags_without_an_oasst_meaning_here_are_refused_in_one_line(argv, error):
    with pytest.raises(ConfigError, match=error) as e:
        load_config(argv)
    assert "\n" not in str(e.value)


def test_every_retired_oasst_key_is_refused_with_what_to_use_instead(tmp_path):
    f = tmp_path / "oasst.yaml"
    f.write_text("old:\n" + "".join(f"  {key}: 1\n" for key in RETIRED_OASST_KEYS))
    with pytest.raises(ConfigError) as e:
        load_config(["--configs", "old", "--config_file", str(f)])
    for line, (key, advice) in zip(str(e.value).splitlines(), RETIRED_OASST_KEYS.items()):
        assert line.endswith(f"'{key}' is an OASST option Delphi does not have: {advice}")


def test_resume_from_checkpoint_bare_flag_means_the_newest_checkpoint(tmp_path):
    from trainer.checkpoints import write_marker
    from trainer.resume import user_checkpoint

    def resume_point(config) -> str:
        return str(user_checkpoint(config.outputs).path)

    out = tmp_path / "out"
    bare = load_config(["--resume_from_checkpoint", "--output_dir", str(out)])
    assert bare.outputs.resume_from_checkpoint == "last"
    with pytest.raises(ConfigError, match=rf"resume_from_checkpoint: last, but output_dir '{out}' holds no complete "
                                          r"checkpoint"):
        resume_point(bare)
    for step in (3, 10, 12):
        checkpoint = out / f"checkpoint-{step}"
        checkpoint.mkdir(parents=True)
        (checkpoint / "trainer_state.json").write_text(json.dumps({"global_step": step}))
        if step != 12:  # checkpoint-12's save never finished: it has no completion marker
            write_marker(checkpoint, "checkpoint", step, 1)
    assert resume_point(bare) == str(out / "checkpoint-10")
    f = tmp_path / "r.yaml"
    f.write_text("resume:\n  resume_from_checkpoint: true\nfresh:\n  resume_from_checkpoint: false\n")
    assert load_config(["--configs", "resume", "--config_file", str(f)]).outputs.resume_from_checkpoint == "last"
    assert load_config(["--configs", "fresh", "--config_file", str(f)]).outputs.resume_from_checkpoint is None
    path = load_config(["--resume_from_checkpoint", str(out / "checkpoint-3"), "--output_dir", str(out)])
    assert resume_point(path) == str(out / "checkpoint-3")


@pytest.mark.parametrize("flag, environment, error", [
    (None, None, None), ("-1", None, None), ("0", None, None), ("2", "2", None),
    ("2", None, "no launcher set LOCAL_RANK"), ("1", "0", "disagrees with LOCAL_RANK=0"),
    ("first", None, "expected a rank"),
])
def test_local_rank_flag_must_agree_with_the_launcher(flag, environment, error):
    if error is None:
        check_local_rank(flag, environment)
    else:
        with pytest.raises(ConfigError, match=error):
            check_local_rank(flag, environment)


def test_log_dir_names_the_wandb_run_as_oasst_does(tmp_path, monkeypatch):
    from trainer.run_log import RunLog

    logging = TrainConfig.of(log_dir="/data/runs/pythia_log_12b", wandb_project="delphi-test").logging
    assert logging.oasst_run_name("EleutherAI/pythia-12b-deduped") == "pythia-12b-deduped-pythia_log_12b-finetuned"
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    run_log = RunLog.start(logging, tmp_path, {"model_name": "/models/tiny-neox"})
    try:
        assert run_log.wandb_run.name == "tiny-neox-pythia_log_12b-finetuned"
    finally:
        run_log.finish()


def test_verbose_and_show_dataset_stats_both_print_the_stats():
    assert TrainConfig.of(verbose=True).logging.shows_dataset_stats
    assert TrainConfig.of(show_dataset_stats=True).logging.shows_dataset_stats
    assert not TrainConfig.of().logging.shows_dataset_stats


def test_every_config_key_is_read_somewhere():
    """Nothing accepted and then ignored: each key (and dataset option) is passed to the Trainer as declared
    (`trainer_arg`), or read in the package outside --help, as an attribute or by name."""
    sources = [p.read_text() for p in (CHECKOUT / "trainer").rglob("*.py") if p.name != "help.py"]
    keys = [*KEY_GROUP, *fields_of(DatasetConfig),
            *(key for kind in KINDS.values() if kind.options for key in fields_of(kind.options))]
    unread = [key for key in keys if key not in TRAINER_ARGS
              and not any(re.search(rf"\.{key}\b|[\"']{key}[\"']", s) for s in sources)]
    assert unread == []


def _another_valid_value(key: str):
    """A value of `key` that differs from its default (and, for floats, from any round library default)."""
    f = fields_of(GROUPS[KEY_GROUP[key]][1])[key]
    default, choices = f.default, f.metadata["choices"]
    if choices:
        return next(c for c in choices if c != default)
    if isinstance(default, bool):
        return not default
    if isinstance(default, int):
        return default + 3
    if isinstance(default, float):
        return default * 0.37 if default else 0.013
    return f"{default}-other"


def test_every_key_named_like_a_trainer_argument_reaches_it_or_is_declared_otherwise(tmp_path):
    """The TrainingArguments the run trains with carry every key declared `trainer_arg`; a key that shares a
    TrainingArguments field's name without declaring it (a dropped mapping) fails here by name."""
    from transformers import TrainingArguments

    from trainer.train import training_arguments

    trainer_fields = {f.name for f in dataclasses.fields(TrainingArguments)}
    undeclared = [key for key in KEY_GROUP if key in trainer_fields
                  and fields_of(GROUPS[KEY_GROUP[key]][1])[key].metadata["trainer_arg"] is None]
    assert undeclared == [], "declare trainer_arg=True, or False where training_arguments sets the field otherwise"
    values = {key: _another_valid_value(key) for key in TRAINER_ARGS} | {"output_dir": str(tmp_path / "out")}
    config = TrainConfig.of(**values)
    args = training_arguments(config, has_eval=True)
    arrived = {key: getattr(args, arg) for key, arg in TRAINER_ARGS.items()}
    assert arrived == values
