from pathlib import Path

import pytest

from trainer.config import CONFIG_DIR, load_config, write_resolved
from trainer.errors import ConfigError

REFERENCE = ("--configs defaults reference-data reference-pythia-12b --cache_dir /home/ubuntu/data_cache "
             "--output_dir .saved/oasst-sft-3-pythia-12b-reference_2kpre --num_train_epochs 8 "
             "--residual_dropout 0.2 --deepspeed --use_flash_attention true "
             "--model_name andreaskoepf/pythia-12b-pre-2000").split()


def test_reference_command_resolves_to_the_model_card_values():
    c = load_config(REFERENCE).flat()
    assert c["model_name"] == "andreaskoepf/pythia-12b-pre-2000"
    assert [c[k] for k in ("learning_rate", "warmup_steps", "weight_decay", "max_length")] == [6e-6, 100, 0.0, 2048]
    assert [c[k] for k in ("per_device_train_batch_size", "gradient_accumulation_steps", "num_train_epochs")] == \
        [4, 2, 8]
    assert [c[k] for k in ("residual_dropout", "use_flash_attention", "deepspeed", "gradient_checkpointing")] == \
        [0.2, True, True, True]
    assert [c[k] for k in ("adam_beta1", "adam_beta2", "adam_epsilon", "max_grad_norm")] == [0.9, 0.95, 1e-12, 2.0]
    assert [c[k] for k in ("eval_steps", "save_steps", "save_total_limit", "dtype", "log_dir")] == \
        [100, 1000, 4, "fp16", "pythia_log_12b"]
    assert c["rng_seed"] == 0xA1221F97
    oasst, alpaca = load_config(REFERENCE).data.datasets
    assert oasst.name == "oasst_export" and oasst.val_split == 0.05 and oasst.options.lang.split(",")[5] == "en"
    assert oasst.input_file_path == "2023-03-25_oasst_research_ready_synth_labels.jsonl.gz"
    assert alpaca.name == "alpaca" and alpaca.effective_val_split == 0.2
    assert c["system_prefix"].endswith("Current date: 2023-03-12")


def test_keys_live_in_their_groups_and_components_read_only_those():
    c = load_config(REFERENCE)
    assert c.model.model_name == "andreaskoepf/pythia-12b-pre-2000" and c.optim.learning_rate == 6e-6
    assert c.data.max_length == 2048 and c.schedule.num_train_epochs == 8 and c.logging.log_dir == "pythia_log_12b"
    assert c.outputs.save_total_limit == 4 and c.adapters.mode == "full"
    assert c.replace(learning_rate=1e-4).optim.learning_rate == 1e-4 and c.optim.learning_rate == 6e-6


def test_later_sections_win_and_mappings_merge(tmp_path):
    f = tmp_path / "mine.yaml"
    f.write_text("a:\n  max_length: 100\n  learning_rate: 1e-4\nb:\n  max_length: 200\n")
    c = load_config(["--configs", "a", "b", "--config_file", str(f)])
    assert (c.data.max_length, c.optim.learning_rate) == (200, 1e-4)
    assert load_config(["--configs", "b", "a", "--config_file", str(f)]).data.max_length == 100


def test_unknown_keys_name_the_file_line_and_nearest_key(tmp_path):
    f = tmp_path / "mine.yaml"
    f.write_text("exp:\n  learning_rat: 1e-4\n  max_length: long\n")
    with pytest.raises(ConfigError) as e:
        load_config(["--configs", "exp", "--config_file", str(f), "--num_train_epoch", "2"])
    msg = str(e.value)
    assert f"{f}:2 (section 'exp'): unknown key 'learning_rat' (did you mean 'learning_rate'?)" in msg
    assert f"{f}:3 (section 'exp'): 'max_length' must be int, got 'long'" in msg
    assert "command line --num_train_epoch: unknown key 'num_train_epoch' (did you mean 'num_train_epochs'?)" in msg


def test_flags_convert_types_and_bare_flags_mean_true():
    c = load_config(["--deepspeed", "--use_flash_attention", "false", "--learning_rate=1e-4", "--max_length", "64",
                     "--val_max_length", "none"]).flat()
    assert [c[k] for k in ("deepspeed", "use_flash_attention", "learning_rate", "max_length", "val_max_length")] == \
        [True, False, 1e-4, 64, None]
    with pytest.raises(ConfigError, match="'max_length' needs a value"):
        load_config(["--max_length"])
    with pytest.raises(ConfigError, match="'use_flash_attention' must be bool, got 'maybe'"):
        load_config(["--use_flash_attention", "maybe"])
    with pytest.raises(ConfigError, match="'prompt_format' must be one of .* got 'oast'.*did you mean 'oasst'"):
        load_config(["--prompt_format", "oast"])


def test_unknown_section_suggests_the_nearest():
    with pytest.raises(ConfigError, match="unknown section 'reference-pythia12b'.*did you mean 'reference-pythia-12b'"):
        load_config(["--configs", "reference-pythia12b"])


def test_model_card_flat_dataset_yaml_is_read_with_a_warning(tmp_path, capsys):
    f = tmp_path / "card.yaml"
    f.write_text('card-data:\n  datasets:\n    - oasst_export:\n      lang: "en,de"\n      val_split: 0.05\n    - alpaca\n')
    datasets = load_config(["--configs", "card-data", "--config_file", str(f)]).data.datasets
    assert [d.name for d in datasets] == ["oasst_export", "alpaca"]
    assert (datasets[0].options.lang, datasets[0].val_split) == ("en,de", 0.05)
    assert "same indentation" in capsys.readouterr().err


def test_dataset_option_errors(tmp_path):
    f = tmp_path / "d.yaml"
    f.write_text("d:\n  datasets:\n    - alpaca: {lang: en}\n    - oasst_export: {top_k: two, val_splitt: 0.1}\n"
                 "    - alpacca\n")
    with pytest.raises(ConfigError) as e:
        load_config(["--configs", "d", "--config_file", str(f)])
    msg = str(e.value)
    assert "datasets[0] (alpaca): unknown option 'lang'; it applies to oasst_export only" in msg
    assert "datasets[1] (oasst_export): 'top_k' must be int, got 'two'" in msg
    assert "unknown option 'val_splitt' (did you mean 'val_split'?)" in msg
    assert "datasets[2]: unknown dataset 'alpacca' (did you mean 'alpaca'?)" in msg


def test_duplicate_section_names_both_places(tmp_path):
    f = tmp_path / "dup.yaml"
    f.write_text("defaults:\n  max_length: 3\n")
    with pytest.raises(ConfigError, match=r"section 'defaults' is already defined at .*config\.yaml:\d+"):
        load_config(["--config_file", str(f)])


def test_resolved_config_round_trips(tmp_path):
    c = load_config(REFERENCE)
    path = write_resolved(c, tmp_path)
    again = load_config(["--configs", "resolved", "--config_file", str(path)], config_files=[])
    assert again == c


def test_every_bundled_section_is_valid():
    from trainer.config import read_sections

    for name, section in read_sections(sorted(CONFIG_DIR.glob("*.yaml"))).items():
        config = load_config(["--configs", name]).flat()
        for key, value in section.values.items():
            if key != "datasets" and value is not None:
                assert config[key] == type(config[key])(value), (name, key)


def test_out_of_range_values_name_their_origin_and_every_dataset_is_checked(tmp_path):
    f = tmp_path / "r.yaml"
    f.write_text("r:\n  max_length: 0\n  datasets:\n    - alpaca: {fraction: 2}\n    - oasst_export: {top_k: 0}\n")
    with pytest.raises(ConfigError) as e:
        load_config(["--configs", "r", "--config_file", str(f), "--learning_rate", "-1"])
    msg = str(e.value)
    assert f"{f}:3 (section 'r'): datasets[0] (alpaca): 'fraction' must be in (0, 1], got 2.0" in msg
    assert "datasets[1] (oasst_export): 'top_k' must be at least 1, got 0" in msg
    with pytest.raises(ConfigError) as e:
        load_config(["--configs", "r", "--config_file", str(f), "--learning_rate", "-1", "--datasets", "[]"])
    msg = str(e.value)
    assert f"{f}:2 (section 'r'): 'max_length' must be at least 1, got 0" in msg
    assert "command line --learning_rate: 'learning_rate' must be a finite number greater than 0, got -1.0" in msg


def test_relative_paths_fall_back_to_the_checkout_then_the_package(tmp_path, monkeypatch):
    from trainer.paths import CHECKOUT, bundled

    monkeypatch.chdir(tmp_path)
    assert bundled("configs/zero2.json") == str(CHECKOUT / "configs" / "zero2.json")
    assert Path(bundled("configs/zero2.json")).resolve() == CONFIG_DIR / "zero2.json"
    assert bundled("EleutherAI/pythia-12b-deduped") == "EleutherAI/pythia-12b-deduped"
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs/zero2.json").write_text("{}")
    assert bundled("configs/zero2.json") == "configs/zero2.json"
