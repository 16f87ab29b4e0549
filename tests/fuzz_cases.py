"""The bad-input table of test_fuzz.py: each case is one problem a user can make (a flag, a file, a directory), the
`delphi` command it is given to, and a piece of the one line that must name it.

Placeholders in argv and in written files: {W} the shared world (tiny model, data, a finished full run and a LoRA
run, foreign tokenizers; see test_fuzz.world), {C} the case's own empty directory.
"""
from __future__ import annotations

import gzip
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

Setup = Callable[[Path, Path], None]  # (case dir, world dir)


@dataclass(frozen=True)
class Case:
    category: str
    name: str
    argv: tuple[str, ...]
    expect: str  # a piece of the error line (of the output, for a case that succeeds)
    setup: Setup | None = None
    env: dict[str, str] = field(default_factory=dict)
    succeeds: bool = False  # accepted by design: exit 0, at most warnings
    code: int = 2

    @property
    def id(self) -> str:
        return f"{self.category}-{self.name}"


TRAIN = ("train", "--config_file", "{W}/base.yaml", "--configs", "base", "--output_dir", "{C}/out")
CASES: list[Case] = []


def case(category: str, name: str, argv, expect: str, setup: Setup | None = None, **env: str) -> None:
    CASES.append(Case(category, name, tuple(argv), expect, setup, env))


def accepted(category: str, name: str, argv, expect: str, setup: Setup | None = None) -> None:
    """An input Delphi accepts by design, saying `expect` (on stdout or as a warning)."""
    CASES.append(Case(category, name, tuple(argv), expect, setup, succeeds=True))


def write(relative: str, content: str | bytes) -> Setup:
    def make(c: Path, w: Path) -> None:
        path = c / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        data = content.replace("{W}", str(w)).replace("{C}", str(c)) if isinstance(content, str) else content
        path.write_bytes(data.encode() if isinstance(data, str) else data)
    return make


def table_bytes(columns: dict, parquet: bool = True) -> bytes:
    """A Parquet file (or an Arrow IPC stream) holding `columns`, as bytes."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = pa.BufferOutputStream()
    table = pa.table(columns)
    if parquet:
        pq.write_table(table, sink)
    else:
        with pa.ipc.new_stream(sink, table.schema) as w:
            w.write_table(table)
    return sink.getvalue().to_pybytes()


def zstd(data: bytes) -> bytes:
    import zstandard

    return zstandard.ZstdCompressor().compress(data)


def lines(*records) -> str:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records)


def data(kind: str, file: str = "{C}/d.jsonl", **options) -> tuple[str, ...]:
    return (*TRAIN, "--datasets", json.dumps([{kind: {"input_file_path": file, **options}}]))


def copy_of(source: str, target: str, then: Callable[[Path], None] | None = None) -> Setup:
    """Copies `{W}/source` to `{C}/target`, then changes the copy."""
    def make(c: Path, w: Path) -> None:
        src, dst = w / source, c / target
        shutil.copytree(src, dst) if src.is_dir() else shutil.copy(src, dst)
        if then:
            then(dst)
    return make


def cut(name: str, keep: int | float) -> Callable[[Path], None]:
    """Cuts `name` inside a copied directory to `keep` bytes (an int) or that share of its size (a float)."""
    def change(directory: Path) -> None:
        path = directory / name
        data_ = path.read_bytes()
        path.write_bytes(data_[:keep if isinstance(keep, int) else int(len(data_) * keep)])
    return change


def remove(*names: str) -> Callable[[Path], None]:
    def change(directory: Path) -> None:
        for name in names:
            (directory / name).unlink()
    return change


# ----------------------------------------------------------------------------------------------------------
# Out-of-range and mistyped numbers and choices: trainer.config refuses each, naming the key and where it came from

NUMBERS = [
    ("learning_rate", "nan"), ("learning_rate", "inf"), ("learning_rate", "-inf"), ("learning_rate", "-1e-4"),
    ("learning_rate", "0"), ("learning_rate", "fast"), ("max_grad_norm", "nan"), ("max_grad_norm", "inf"),
    ("max_grad_norm", "-1"), ("rng_seed", "-1"), ("rng_seed", "4294967296"), ("rng_seed", "1099511627776"),
    ("rng_seed", "1.5"), ("num_train_epochs", "1e12"), ("num_train_epochs", "0"), ("num_train_epochs", "-3"),
    ("num_train_epochs", "nan"), ("num_train_epochs", "inf"), ("num_train_epochs", "10001"),
    ("per_device_train_batch_size", "0"), ("per_device_train_batch_size", "-2"),
    ("per_device_train_batch_size", "2.5"), ("per_device_eval_batch_size", "0"), ("gradient_accumulation_steps", "0"),
    ("warmup_steps", "-1"), ("save_steps", "0"), ("eval_steps", "0"), ("logging_steps", "0"),
    ("save_total_limit", "0"), ("max_length", "0"), ("val_max_length", "100000"), ("residual_dropout", "1"),
    ("residual_dropout", "-0.1"), ("lora_r", "0"), ("lora_alpha", "0"), ("lora_dropout", "1"), ("adam_beta1", "1"),
    ("adam_beta2", "-0.5"), ("adam_epsilon", "nan"), ("weight_decay", "-1"), ("divergence_spike_factor", "-1"),
    ("divergence_spike_factor", "nan"), ("divergence_window", "0"), ("divergence_patience", "0"),
    ("pad_vocab_size_to_multiple_of", "0"), ("dtype", "fp8"), ("mode", "qora"), ("prompt_format", "chatml"),
    ("lr_scheduler_type", "step"), ("quant_type", "int4"), ("report_to", "tensorbord"), ("report_to", "wandb,none"), ("packing", "maybe"),
    ("deepspeed", "2"), ("max_length", "[1]"), ("eval_samples", "-1"), ("eval_sample_tokens", "0"),
    ("eval_sample_temperature", "nan"), ("best_checkpoint_margin", "-0.1"), ("eval_baseline", "maybe"),
]
for key, value in NUMBERS:
    case("numbers", f"{key}={value}", (*TRAIN, f"--{key}", value), f"'{key}'")

DATASET_OPTIONS = [
    ("alpaca", {"val_split": 1}, "'val_split' must be in [0, 1)"),
    ("alpaca", {"val_split": -0.1}, "'val_split' must be in [0, 1)"),
    ("alpaca", {"fraction": 0}, "'fraction' must be in (0, 1]"),
    ("alpaca", {"fraction": 2}, "'fraction' must be in (0, 1]"),
    ("alpaca", {"size": 0}, "'size' must be at least 1"),
    ("alpaca", {"size": 4, "fraction": 0.5}, "give 'fraction' or 'size', not both"),
    ("alpaca", {"manual_seed": -1}, "'manual_seed' must be in"),
    ("oasst_export", {"top_k": 0}, "'top_k' must be at least 1"),
    ("alpaca", {"skip_bad_lines": "sometimes"}, "'skip_bad_lines' must be bool"),
    ("alpaca", {"eval_prompts": "What is a meme?"}, "'eval_prompts' must be a list of strings, got 'What is a meme?'"),
    ("alpaca", {"eval_prompts": ["ok", 3]}, "'eval_prompts' must be a list of strings, got ['ok', 3]"),
    ("alpaca", {"eval_prompts": [""]}, "'eval_prompts' must be a list of non-empty strings"),
    ("alpaca", {"eval_only": "yes please"}, "'eval_only' must be bool"),
]
for kind, options, expect in DATASET_OPTIONS:
    case("numbers", f"{kind}-{'-'.join(f'{k}={v}' for k, v in options.items())}",
         data(kind, "{W}/data/alpaca.json", **options), expect)

# ----------------------------------------------------------------------------------------------------------
# Config files: YAML mistakes, each with the file and the line

YAML_CASES = [
    ("duplicate-key", "exp:\n  learning_rate: 1e-4\n  max_length: 64\n  learning_rate: 1e-3\n",
     "my.yaml:4: key 'learning_rate' given twice in section 'exp' (first at line 2)"),
    ("duplicate-nested-key", "exp:\n  datasets:\n    - alpaca:\n        size: 4\n        size: 8\n",
     "my.yaml:5: key 'size' given twice in section 'exp' (first at line 4)"),
    ("duplicate-section", "exp:\n  max_length: 64\nexp:\n  max_length: 32\n",
     "my.yaml:3: section 'exp' is already defined at"),
    ("not-utf8-comment", b"exp:\n  # caf\xe9\n  max_length: 64\n", "my.yaml:2: not UTF-8 text (byte 0xe9)"),
    ("not-utf8-value", b"exp:\n  wandb_run_name: r\xff\n", "my.yaml:2: not UTF-8 text (byte 0xff)"),
    ("utf16", "exp:\n  max_length: 64\n".encode("utf-16"), "my.yaml:1: not UTF-8 text"),
    ("unclosed-bracket", "exp:\n  datasets: [alpaca\n", "not valid YAML"),
    ("tab-indent", "exp:\n\tmax_length: 64\n", "not valid YAML"),
    ("root-list", "- exp\n- other\n", "my.yaml:1: expected a mapping of section names"),
    ("section-list", "exp:\n  - max_length\n", "section 'exp' must be a mapping"),
    ("unknown-key", "exp:\n  learning_rat: 1e-4\n", "unknown key 'learning_rat' (did you mean 'learning_rate'?)"),
    ("retired-key", "exp:\n  fuse_gelu: true\n", "'fuse_gelu' is an OASST option Delphi does not have"),
    ("datasets-mapping", "exp:\n  datasets: {alpaca: {}}\n", "'datasets' must be a list"),
    ("unknown-dataset", "exp:\n  datasets: [alpacca]\n", "unknown dataset 'alpacca'"),
    ("unknown-dataset-option", "exp:\n  datasets:\n    - alpaca: {fractoin: 0.5}\n", "unknown option 'fractoin'"),
    ("other-kinds-option", "exp:\n  datasets:\n    - alpaca: {top_k: 2}\n", "applies to oasst_export only"),
    ("dataset-entry-number", "exp:\n  datasets: [3]\n", "expected a dataset name or a mapping"),
    ("dataset-options-list", "exp:\n  datasets:\n    - alpaca: [1, 2]\n", "options of 'alpaca' must be a mapping"),
    ("undefined-alias", "exp:\n  max_length: *length\n", "not valid YAML"),
    ("wrong-type", "exp:\n  max_length: [64]\n", "'max_length' must be int"),
    ("wrong-type-bool", "exp:\n  packing: sometimes\n", "'packing' must be bool"),
]
for name, text, expect in YAML_CASES:
    case("yaml", name, ("train", "--config_file", "{C}/my.yaml", "--configs", "exp", "--output_dir", "{C}/out"),
         expect, write("my.yaml", text))
case("yaml", "config-file-missing", ("train", "--config_file", "{C}/nope.yaml"), "cannot read config file")
case("yaml", "config-file-is-dir", ("train", "--config_file", "{C}"), "cannot read config file")
case("yaml", "unknown-section", ("train", "--configs", "tiny-pythonn"), "unknown section 'tiny-pythonn'")

# ----------------------------------------------------------------------------------------------------------
# The command line itself

case("cli", "unknown-command", ("trian",), "unknown command 'trian' (did you mean 'train'?)")
case("cli", "positional", ("train", "extra", *TRAIN[1:]), "unexpected argument 'extra'")
case("cli", "no-value", (*TRAIN, "--max_length"), "'max_length' needs a value")
case("cli", "two-values", (*TRAIN, "--learning_rate", "1", "2"), "--learning_rate takes one value")
case("cli", "datasets-not-yaml", (*TRAIN, "--datasets", "[alpaca"), "'datasets' must be a YAML list")
case("cli", "no-non-optional", (*TRAIN, "--no-learning_rate"), "'learning_rate' cannot be unset (it is float")
case("cli", "data-examples", ("data", "--config_file", "{W}/base.yaml", "--configs", "base", "--examples", "many"),
     "--examples must be a number")
case("cli", "data-dump-dir-missing", ("data", "--config_file", "{W}/base.yaml", "--configs", "base", "--dump",
                                      "{C}/nowhere/d.jsonl"), "does not exist")
case("cli", "data-dump-is-dir", ("data", "--config_file", "{W}/base.yaml", "--configs", "base", "--dump", "{C}"),
     "is a directory; give a file name")
case("cli", "data-no-datasets", ("data", "--output_dir", "{C}/out"), "the config names no datasets")
case("cli", "export-no-args", ("export",), "the following arguments are required: source, out")
case("cli", "export-dtype", ("export", "{W}/run", "{C}/x", "--dtype", "fp8"), "invalid choice: 'fp8'")
case("cli", "export-target", ("export", "{W}/run", "{C}/x", "--target", "onnx"), "invalid choice: 'onnx'")
case("cli", "export-checkpoint-missing", ("export", "{W}/run", "{C}/x", "--checkpoint", "99"),
     "--checkpoint 99: {W}/run/checkpoint-99 does not exist (complete checkpoints in {W}/run: checkpoint-")
case("cli", "export-checkpoint-word", ("export", "{W}/run", "{C}/x", "--checkpoint", "newest"),
     "--checkpoint: expected best or a step number, got 'newest'")
case("cli", "export-checkpoint-incomplete", ("export", "{C}/run", "{C}/x", "--checkpoint", "1"),
     "{C}/run/checkpoint-1: not a complete checkpoint (no delphi_complete.json",
     copy_of("run", "run", remove("checkpoint-1/delphi_complete.json")))
case("cli", "export-checkpoint-best-unrecorded", ("export", "{C}/run", "{C}/x", "--checkpoint", "best"),
     "--checkpoint best: {C}/run records no best checkpoint (no best_checkpoint.json)",
     copy_of("run", "run", remove("best_checkpoint.json")))
case("cli", "eval-no-tasks", ("eval", "{W}/run"), "the following arguments are required: --tasks")
case("cli", "eval-unknown-task", ("eval", "{W}/run", "--tasks", "hellaswag,no_such_task_xyz"),
     "--tasks: unknown lm-eval task 'no_such_task_xyz'")
case("cli", "eval-not-a-directory", ("eval", "{C}/nothing", "--tasks", "hellaswag"), "{C}/nothing: no such directory")
case("cli", "chat-no-model", ("chat",), "the following arguments are required: --model")
case("cli", "chat-temperature", ("chat", "--model", "{W}/run", "--temperature", "-1"), "--temperature must be >= 0")
case("cli", "chat-k", ("chat", "--model", "{W}/run", "--k", "5000"), "--k must be in 0..")
case("cli", "chat-k-word", ("chat", "--model", "{W}/run", "--k", "five"), "invalid int value: 'five'")
case("cli", "chat-output-length", ("chat", "--model", "{W}/run", "--output_length", "0"),
     "--output_length must be in 1..")
case("cli", "chat-prompts-json", ("chat", "--model", "{W}/run"), "EXAMPLE_PROMPTS: not valid JSON",
     EXAMPLE_PROMPTS="[oops")
case("cli", "chat-prompts-type", ("chat", "--model", "{W}/run"), "EXAMPLE_PROMPTS: expected a JSON list of strings",
     EXAMPLE_PROMPTS='{"q": 1}')
case("cli", "sweep-no-command", ("sweep",), "the following arguments are required: command")
case("cli", "sweep-unknown-command", ("sweep", "go"), "invalid choice: 'go'")

# ----------------------------------------------------------------------------------------------------------
# Files and directories: where Delphi reads and writes

case("filesystem", "output-dir-is-file", (*TRAIN[:-1], "{C}/out"), "output_dir: '{C}/out' is a file",
     write("out", "not a directory"))
case("filesystem", "output-dir-below-file", (*TRAIN[:-1], "{C}/f/out"), "'{C}/f' is a file, so no directory",
     write("f", "x"))
case("filesystem", "output-dir-unwritable", (*TRAIN[:-1], "/sys/delphi-fuzz/out"), "cannot write into '/sys'")
case("filesystem", "cache-dir-is-file", (*TRAIN, "--cache_dir", "{C}/cache"), "cache_dir: '{C}/cache' is a file",
     write("cache", "x"))
case("filesystem", "cache-dir-unwritable", (*TRAIN, "--cache_dir", "/sys/delphi-fuzz"), "cannot write into '/sys'")
case("filesystem", "data-missing", data("alpaca", "{C}/missing.json"), "input_file_path '{C}/missing.json' not found")
case("filesystem", "data-is-dir", data("alpaca", "{C}/dir.json"), "dir.json: the directory holds no data files",
     write("dir.json/x", "x"))
case("filesystem", "data-unreadable", data("alpaca", "/proc/self/mem"), "/proc/self/mem: cannot read")
case("filesystem", "model-missing", (*TRAIN, "--model_name", "{C}/no-model"), "model_name: no directory at")
case("filesystem", "model-no-config", (*TRAIN, "--model_name", "{C}/m"), "has no config.json",
     write("m/weights.bin", "x"))
case("filesystem", "model-no-weights", (*TRAIN, "--model_name", "{C}/model"), "has config.json but no weights",
     copy_of("model", "model", remove("model.safetensors")))
case("filesystem", "model-is-file", (*TRAIN, "--model_name", "{C}/m.bin"), "has no config.json", write("m.bin", "x"))
case("filesystem", "tokenizer-dir-empty", (*TRAIN, "--tokenizer_name", "{C}/t"), "no tokenizer",
     write("t/readme.txt", "x"))
case("filesystem", "tokenizer-missing", (*TRAIN, "--tokenizer_name", "{C}/no-tokenizer"), "no such directory")
case("filesystem", "export-target-is-file", ("export", "{W}/run", "{C}/out"), "'{C}/out' is a file",
     write("out", "x"))
case("filesystem", "export-target-not-empty", ("export", "{W}/run", "{C}/out"), "exists and is not empty",
     write("out/keep.txt", "mine"))
case("filesystem", "export-target-below-file", ("export", "{W}/run", "{C}/f/out"), "is a file, so no directory",
     write("f", "x"))
case("filesystem", "export-source-missing", ("export", "{C}/nothing", "{C}/out"), "no such directory")
case("filesystem", "export-source-is-file", ("export", "{C}/f", "{C}/out"), "no such directory", write("f", "x"))
case("filesystem", "export-source-empty", ("export", "{C}/e", "{C}/out"), "neither a model (config.json) nor",
     write("e/readme.txt", "x"))
case("filesystem", "chat-model-missing", ("chat", "--model", "{C}/nothing"), "holds neither config.json")
case("filesystem", "sweep-file-missing", ("sweep", "run", "{C}/nope.yaml"), "cannot read sweep file")
case("filesystem", "sweep-report-no-manifest", ("sweep", "report", "{C}"), "no sweep.json")
case("filesystem", "resume-path-missing", (*TRAIN, "--resume_from_checkpoint", "{C}/nothing"),
     "resume_from_checkpoint: no checkpoint directory at")

# ----------------------------------------------------------------------------------------------------------
# Weights that are cut short, damaged or not plain tensors

case("weights", "model-safetensors-half", (*TRAIN, "--model_name", "{C}/model"), "model.safetensors is cut short",
     copy_of("model", "model", cut("model.safetensors", 0.5)))
case("weights", "model-safetensors-header-only", (*TRAIN, "--model_name", "{C}/model"), "is cut short",
     copy_of("model", "model", cut("model.safetensors", 2000)))
case("weights", "model-safetensors-4-bytes", (*TRAIN, "--model_name", "{C}/model"), "too short for a safetensors",
     copy_of("model", "model", cut("model.safetensors", 4)))
case("weights", "model-safetensors-empty", (*TRAIN, "--model_name", "{C}/model"), "too short for a safetensors",
     copy_of("model", "model", cut("model.safetensors", 0)))
case("weights", "model-safetensors-garbage", (*TRAIN, "--model_name", "{C}/model"), "model.safetensors",
     copy_of("model", "model", lambda d: (d / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00"
                                                                              + b"not json at all!" * 8)))
case("weights", "model-weight-nan", (*TRAIN, "--model_name", "{W}/nan-model"), "holds nan or inf values")
case("weights", "model-bin-pickle", (*TRAIN, "--model_name", "{W}/pickle-model"), "refused to load a pickle")
case("weights", "model-bin-cut", (*TRAIN, "--model_name", "{W}/cut-bin-model"), "cannot load its weights")
case("weights", "checkpoint-safetensors-cut", (*TRAIN, "--resume_from_checkpoint", "{C}/ckpt"),
     "is damaged: model.safetensors has", copy_of("run/checkpoint-2", "ckpt", cut("model.safetensors", 0.5)))
case("weights", "checkpoint-unmarked-safetensors-cut", (*TRAIN, "--resume_from_checkpoint", "{C}/ckpt"),
     "model.safetensors is cut short",
     copy_of("run/checkpoint-2", "ckpt", lambda d: (remove("delphi_complete.json")(d),
                                                    cut("model.safetensors", 0.5)(d))))
case("weights", "checkpoint-optimizer-cut", (*TRAIN, "--resume_from_checkpoint", "{C}/ckpt"),
     "resume_from_checkpoint '{C}/ckpt': cannot load it",
     copy_of("run/checkpoint-2", "ckpt", lambda d: (remove("delphi_complete.json")(d), cut("optimizer.pt", 0.3)(d))))
case("weights", "checkpoint-optimizer-pickle", (*TRAIN, "--resume_from_checkpoint", "{C}/ckpt"),
     "resume_from_checkpoint '{C}/ckpt': refused to load a pickle", lambda c, w: (
         copy_of("run/checkpoint-2", "ckpt", remove("delphi_complete.json"))(c, w),
         shutil.copy(w / "pickle-model" / "pytorch_model.bin", c / "ckpt" / "optimizer.pt")))
case("weights", "export-source-cut", ("export", "{C}/m", "{C}/out"), "export source '{C}/m': model.safetensors is cut",
     copy_of("model", "m", cut("model.safetensors", 0.7)))
case("weights", "export-source-pickle", ("export", "{W}/pickle-model", "{C}/out"),
     "export source '{W}/pickle-model': refused to load a pickle")
case("weights", "chat-model-pickle", ("chat", "--model", "{W}/pickle-model"), "refused to load a pickle")
case("weights", "export-run-cut", ("export", "{C}/run", "{C}/out"), "model.safetensors has",
     copy_of("run", "run", cut("model.safetensors", 0.7)))
case("weights", "chat-model-cut", ("chat", "--model", "{C}/m"), "--model '{C}/m': model.safetensors is cut",
     copy_of("model", "m", cut("model.safetensors", 0.7)))
case("weights", "export-adapter-no-weights", ("export", "{C}/lora", "{C}/out"), "adapter_model.safetensors is missing",
     copy_of("lora", "lora", remove("adapter_model.safetensors")))
case("weights", "export-adapter-config-cut", ("export", "{C}/lora", "{C}/out"), "adapter_config.json has",
     copy_of("lora", "lora", cut("adapter_config.json", 20)))
case("weights", "hand-made-adapter-no-weights", ("export", "{C}/lora", "{C}/out"), "found, but no adapter weights",
     copy_of("lora", "lora", remove("adapter_model.safetensors", "delphi_complete.json", "resolved_config.yaml",
                                    "metrics.jsonl")))
case("weights", "hand-made-adapter-config-broken", ("export", "{C}/lora", "{C}/out"),
     "adapter_config.json: not readable JSON", copy_of("lora", "lora", lambda d: (
         remove("delphi_complete.json", "resolved_config.yaml", "metrics.jsonl")(d),
         cut("adapter_config.json", 20)(d))))
case("weights", "chat-adapter-base-moved", ("chat", "--model", "{W}/lora-moved"),
     "is not there (moved or deleted?)")
case("weights", "export-adapter-base-moved", ("export", "{W}/lora-moved", "{C}/out"),
     "is not there (moved or deleted?)")

# ----------------------------------------------------------------------------------------------------------
# Data files: every message names the file and line

ALPACA_OK = {"instruction": "Say hi.", "input": "", "output": "Hi!"}
DATA_CASES = [
    ("not-json", lines(ALPACA_OK, "{'single': 'quotes'}"), ":2: not valid JSON"),
    ("json-list", lines(ALPACA_OK, [1, 2]), ":2: expected a JSON object, got list"),
    ("json-string", lines('"just text"'), ":1: expected a JSON object, got str"),
    ("bad-utf8-line", lines(ALPACA_OK).encode() + b'{"instruction": "caf\xe9", "output": "x"}\n',
     ":2: not UTF-8 text (byte 0xe9 at column 21)"),
    ("missing-output", lines({"instruction": "Q"}), ":1: missing field 'output'"),
    ("output-number", lines({"instruction": "Q", "output": 7}), ":1: field 'output' must be a string"),
    ("output-empty", lines({"instruction": "Q", "output": ""}), ":1: field 'output' is empty"),
    ("instruction-blank", lines({"instruction": "  \n", "output": "A"}), ":1: field 'instruction' is empty"),
    ("input-list", lines({"instruction": "Q", "input": ["a"], "output": "A"}), ":1: field 'input' must be a string"),
    ("truncated-line", lines(ALPACA_OK) + '{"instruction": "Q", "outp', ":2: not valid JSON"),
    ("deep-nesting", lines("[" * 100000 + "]" * 100000), ":1: JSON nested deeper than the parser allows"),
    ("empty-file", "", "has no samples left after filtering"),
    ("blank-lines", "\n\n   \n", "has no samples left after filtering"),
]
for name, content, expect in DATA_CASES:
    case("data", f"alpaca-{name}", data("alpaca"), expect, write("d.jsonl", content))
case("data", "alpaca-all-skipped", data("alpaca", skip_bad_lines=True), "bad_records_skipped 2",
     write("d.jsonl", lines("nope", [1])))
case("data", "array-broken-element", data("alpaca", "{C}/d.json"), "a JSON array cannot skip a broken element",
     write("d.json", '[\n  {"instruction": "Q", "output": "A"},\n  {"instruction": "Q",}\n]'))
case("data", "array-extra-data", data("alpaca", "{C}/d.json"), "extra data after the array",
     write("d.json", '[{"instruction": "Q", "output": "A"}]\n{"x": 1}'))
case("data", "array-missing-comma", data("alpaca", "{C}/d.json"), "expected ',' or ']'",
     write("d.json", '[\n {"instruction": "Q", "output": "A"}\n {"instruction": "R", "output": "B"}\n]'))
case("data", "array-bad-utf8", data("alpaca", "{C}/d.json"), "d.json:2: not UTF-8 text (byte 0xff)",
     write("d.json", b'[\n{"instruction": "\xff", "output": "A"}]'))
case("data", "gzip-fake", data("alpaca", "{C}/d.jsonl.gz"), "cannot decode the file", write("d.jsonl.gz", "plain"))
case("data", "gzip-cut", data("alpaca", "{C}/d.jsonl.gz"), "cannot decode the file",
     write("d.jsonl.gz", gzip.compress(lines(*[ALPACA_OK] * 50).encode())[:40]))
case("data", "zstd-cut", data("alpaca", "{C}/d.jsonl.zst"), "cannot decode the file as zstd-compressed JSON",
     lambda c, w: write("d.jsonl.zst", zstd(lines(*[ALPACA_OK] * 50).encode())[:40])(c, w))
case("data", "parquet-other-columns", data("alpaca", "{C}/d.parquet"),
     "the alpaca kind needs the column(s) instruction, output; the file has question, answer",
     write("d.parquet", table_bytes({"question": ["q?"], "answer": ["a."]})))
case("data", "parquet-cut", data("alpaca", "{C}/d.parquet"), "cannot read the Parquet file (cut short",
     write("d.parquet", table_bytes({"instruction": ["q?"] * 50, "output": ["a."] * 50})[:300]))
case("data", "arrow-shard-cut", data("alpaca", "{C}/shards"), "cannot read the Arrow file (cut short",
     write("shards/data-00000-of-00001.arrow", table_bytes({"instruction": ["q?"] * 50, "output": ["a."] * 50},
                                                           parquet=False)[:500]))
case("data", "shards-none", data("alpaca", "{C}/shards"), "the directory holds no data files",
     write("shards/README.txt", "nothing here"))
case("data", "hub-offline", (*TRAIN, "--datasets", json.dumps([{"messages": {"hub_name": "someone/big-chats"}}])),
     "'someone/big-chats' is a hub dataset name and this machine is offline", HF_HUB_OFFLINE="1")
case("data", "text-not-a-string", data("text"), ":2: field 'text' must be a string, got int 5",
     write("d.jsonl", lines({"text": "fine"}, {"text": 5})))
case("data", "completion-missing", data("completion"), ":1: missing field 'completion'",
     write("d.jsonl", lines({"prompt": "only a prompt"})))
case("data", "airoboros-missing-response", data("airoboros"), ":1: missing field 'response'",
     write("d.jsonl", lines({"instruction": "Q"})))
case("data", "airoboros-response-empty", data("airoboros"), ":1: field 'response' is empty",
     write("d.jsonl", lines({"instruction": "Q", "response": " "})))


def message(mid: str, role: str, text="hello", parent: str | None = None, **extra) -> dict:
    return {"message_id": mid, "parent_id": parent, "role": role, "text": text, "lang": "en",
            "review_result": True, "message_tree_id": "t1", "tree_state": "ready_for_export", **extra}


def tree(prompt: dict, tree_id="t1") -> dict:
    return {"message_tree_id": tree_id, "tree_state": "ready_for_export", "prompt": prompt}


def node(mid: str, role: str, replies=(), text="hello", **extra) -> dict:
    return {"message_id": mid, "role": role, "text": text, "lang": "en", "review_result": True,
            "replies": list(replies), **extra}


OASST_CASES = [
    ("duplicate-message-id-cycle", lines(message("a", "prompter"), message("b", "assistant", parent="a"),
                                         message("a", "prompter", parent="b")), ":3: message a: duplicate message_id"),
    ("parent-cycle", lines(message("r", "prompter"), message("x", "assistant", parent="y"),
                           message("y", "prompter", parent="x")), "its parent_id chain loops back on itself"),
    ("orphan-parent", lines(message("r", "prompter"), message("b", "assistant", parent="gone")),
     ":2: message b: field 'parent_id' names 'gone'"),
    ("parent-id-list", lines(message("r", "prompter"), message("b", "assistant", parent=["r"])),
     "field 'parent_id' must be str or null"),
    ("message-id-number", lines(message("r", "prompter") | {"message_id": 5}), "field 'message_id' must be a string"),
    ("roles-not-alternating", lines(tree(node("r", "prompter", [node("p", "prompter")]))),
     "roles must alternate: expected role 'assistant' after a prompter message"),
    ("text-missing", lines(tree(node("r", "prompter", [node("a", "assistant", text=None)]))),
     "message a: field 'text' must be a string"),
    ("tree-id-number", lines(tree(node("r", "prompter"), tree_id=7)), "field 'message_tree_id' must be a string"),
    ("prompt-missing", lines({"message_tree_id": "t", "tree_state": "ready_for_export"}),
     "field 'prompt' must be a message object"),
    ("reply-number", lines(tree(node("r", "prompter", [3]))), "expected a message object in 'replies'"),
    ("rank-text", lines(tree(node("r", "prompter", [node("a", "assistant", rank="first")]))),
     "field 'rank' must be int or null"),
    ("role-unknown", lines(tree(node("r", "system"))), "field 'role' must be 'prompter' or 'assistant'"),
    ("unknown-object", lines({"id": 1, "text": "x"}), "unknown object: expected a tree"),
    ("all-filtered", lines(tree(node("r", "prompter", [node("a", "assistant")], lang="xx"))),
     "trees_dropped_lang 1"),
]
for name, content, expect in OASST_CASES:
    case("data", f"oasst-{name}", data("oasst_export", val_split=0.0), expect, write("d.jsonl", content))

# ----------------------------------------------------------------------------------------------------------
# Tokenizers that do not belong to the model

case("tokenizer", "vocab-too-big", (*TRAIN, "--tokenizer_name", "{W}/tokenizers/big"),
     "the tokenizer does not belong to the model")
case("tokenizer", "other-family-eos", (*TRAIN, "--tokenizer_name", "{W}/tokenizers/other-eos"),
     "ends text with '</s>' (id 2)")
case("tokenizer", "no-eos", (*TRAIN, "--tokenizer_name", "{W}/tokenizers/no-eos"), "has no eos token")
case("tokenizer", "tokenizer-json-broken", (*TRAIN, "--tokenizer_name", "{C}/tok"), "could not be loaded",
     copy_of("model", "tok", cut("tokenizer.json", 100)))
case("tokenizer", "data-command-foreign", ("data", "--config_file", "{W}/base.yaml", "--configs", "base",
                                           "--tokenizer_name", "{C}/none"), "no such directory")
case("tokenizer", "export-tokenizer-empty-vocab", ("export", "{W}/emptied-tokenizer", "{C}/out"),
     "its tokenizer fails the check prompts")

# `prompt_format: chat_template`: the tokenizer's own template renders the data; each refusal names the sample
def with_template(template: str) -> Callable[[Path], None]:
    def change(directory: Path) -> None:
        config = json.loads((directory / "tokenizer_config.json").read_text())
        (directory / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": template}))
    return change


LOOP = "{% for m in messages %}"
GENERATION = "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
CHATML_LIKE = (LOOP + "{% if m.role == 'user' %}{{ '<|prompter|>' + m.content + eos_token }}"
               "{% else %}{{ '<|assistant|>' + m.content + eos_token }}{% endif %}" + GENERATION)
NO_SYSTEM = (LOOP + "{% if m.role == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
             + CHATML_LIKE[len(LOOP):])
ALTERNATING = (LOOP + "{% if (m.role == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles "
               "must alternate user/assistant') }}{% endif %}" + CHATML_LIKE[len(LOOP):])
SPACED = (LOOP + "{% if m.role == 'user' %}{{ 'User: ' + m.content + '\\n' }}{% else %}{{ 'Assistant: ' + m.content"
          " + eos_token }}{% endif %}{% endfor %}{% if add_generation_prompt %}{{ 'Assistant: ' }}{% endif %}")
PLAIN_END = (LOOP + "{{ m.role + ': ' + m.content + '\\n' }}{% endfor %}"
             "{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}")
CHAT = {"messages": [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."}]}
WITH_SYSTEM = {"messages": [{"role": "system", "content": "Be kind."}, *CHAT["messages"]]}
TOOL_CALL = {"messages": [{"role": "user", "content": "Weather?"},
                          {"role": "assistant", "tool_calls": [{"function": {"name": "w", "arguments": {}}}]},
                          {"role": "tool", "content": "sunny"}, {"role": "assistant", "content": "Sunny."}]}
TEMPLATE_CASES = [
    ("system-refused", NO_SYSTEM, WITH_SYSTEM, "d.jsonl:1: the chat template of '{C}/tok' refuses this conversation: "
                                               "System role not supported"),
    ("alternation-refused", ALTERNATING, WITH_SYSTEM, "refuses this conversation: Conversation roles must alternate"),
    ("tool-call-not-rendered", CHATML_LIKE, TOOL_CALL, "does not render the tool_calls of turn 1"),
    ("parity-reply-merges-into-prompt", SPACED, {"messages": [CHAT["messages"][0], {"role": "assistant",
                                                                                   "content": "the end."}]},
     "training has ' the' (id"),
    ("turn-ends-without-special-token", PLAIN_END, CHAT, "not with a special token a server could stop at"),
]
CHAT_TEMPLATE = ("--prompt_format", "chat_template", "--tokenizer_name", "{C}/tok")
case("tokenizer", "chat-template-missing", (*TRAIN, "--prompt_format", "chat_template"), "has no chat template")
for name, template, record, expect in TEMPLATE_CASES:
    def setup(c: Path, w: Path, template=template, record=record) -> None:
        copy_of("tokenizers/own", "tok", with_template(template))(c, w)
        write("d.jsonl", lines(record))(c, w)
    case("tokenizer", f"chat-template-{name}", (*data("messages"), *CHAT_TEMPLATE), expect, setup)

# ----------------------------------------------------------------------------------------------------------
# Sweep state

SWEEP = ("name: s\nconfigs: [base]\nconfig_files: ['{W}/base.yaml']\noutput_dir: '{C}/sweep'\n"
         "parameters:\n  learning_rate: [1e-3]\nrun_name: t{index}\n")
case("sweep", "trial-json-cut", ("sweep", "run", "{C}/s.yaml"), "trial.json: not a readable trial state",
     lambda c, w: (write("s.yaml", SWEEP)(c, w), write("sweep/t0/trial.json", '{"name": "t0", "param')(c, w)))
case("sweep", "trial-json-list", ("sweep", "run", "{C}/s.yaml"), "trial.json: not a trial state",
     lambda c, w: (write("s.yaml", SWEEP)(c, w), write("sweep/t0/trial.json", "[1, 2]")(c, w)))
case("sweep", "manifest-cut", ("sweep", "report", "{C}/sweep"), "sweep.json: not a readable sweep manifest",
     write("sweep/sweep.json", '{"name": "s", "trials": ["t0"'))
case("sweep", "metrics-row-broken", ("sweep", "report", "{C}/sweep"), "metrics.jsonl:2: not a metrics row",
     lambda c, w: (write("sweep/sweep.json", json.dumps({"name": "s", "trials": ["t0"], "metric": {
         "name": "eval_loss", "goal": "minimize", "summary": "best"}, "parameters": ["learning_rate"]}))(c, w),
                   write("sweep/t0/metrics.jsonl", '{"step": 1, "loss": 2.0}\n{"step": 2, "lo\n{"step": 3}\n')(c, w)))
case("sweep", "file-invalid-yaml", ("sweep", "run", "{C}/s.yaml"), "not valid YAML",
     write("s.yaml", "name: s\nconfigs: [base\n"))
case("sweep", "file-not-utf8", ("sweep", "run", "{C}/s.yaml"), "not UTF-8 text (byte 0xe9)",
     write("s.yaml", b"name: caf\xe9\n"))
case("sweep", "file-unknown-key", ("sweep", "run", "{C}/s.yaml"), "unknown sweep key 'paramters'",
     write("s.yaml", "name: s\nconfigs: [base]\nparamters: {}\n"))

# ----------------------------------------------------------------------------------------------------------
# Resuming: a run that would train something else, a path that is not a checkpoint, an output_dir that
# overlaps what the run reads. {W}/run is a finished run of base.yaml.

RUN = ("train", "--config_file", "{W}/base.yaml", "--configs", "base", "--output_dir", "{W}/run")
for flags, expect in [
    (("--learning_rate", "1e-2"), "learning_rate 0.001 -> 0.01"),
    (("--mode", "lora"), "mode full -> lora"),
    (("--max_length", "48"), "max_length 64 -> 48"),
    (("--datasets", json.dumps([{"alpaca": {"input_file_path": "{W}/data/alpaca.json", "size": 8}}])), "datasets"),
    (("--per_device_train_batch_size", "4"), "per_device_train_batch_size 8 -> 4"),
    (("--gradient_accumulation_steps", "2"), "gradient_accumulation_steps 1 -> 2"),
    (("--rng_seed", "7"), "rng_seed"),
    (("--prompt_format", "alpaca"), "prompt_format oasst -> alpaca"),
    (("--lr_scheduler_type", "cosine"), "lr_scheduler_type linear -> cosine"),
    (("--model_name", "{W}/model-copy"), "model_name"),
    (("--warmup_steps", "5"), "warmup_steps 0 -> 5"),
    (("--label_masking", "false"), "label_masking True -> False"),
    (("--mode", "lora", "--resume_with_changes"), "mode full -> lora"),
    (("--num_train_epochs", "0.5", "--resume_with_changes"), "nothing left to train"),
]:
    case("resume", "changed-" + "-".join(f.strip("-") for f in flags if f.startswith("--"))[:60], (*RUN, *flags),
         expect)
case("resume", "path-not-checkpoint", (*TRAIN, "--resume_from_checkpoint", "{C}/dir"), "is not a checkpoint",
     write("dir/readme.txt", "x"))
case("resume", "trainer-state-torn", (*TRAIN, "--resume_from_checkpoint", "{C}/ckpt"),
     "not a readable trainer state", copy_of("run/checkpoint-2", "ckpt", lambda d: (
         remove("delphi_complete.json")(d), cut("trainer_state.json", 50)(d))))
case("resume", "marked-checkpoint-damaged", (*TRAIN, "--resume_from_checkpoint", "{C}/ckpt"),
     "is damaged: trainer_state.json has 50 bytes", copy_of("run/checkpoint-2", "ckpt", cut("trainer_state.json", 50)))
case("resume", "marked-checkpoint-planted", (*TRAIN, "--resume_from_checkpoint", "{C}/ckpt"),
     "global_step2/mp_rank_00_model_states.pt was not written by the save",
     lambda c, w: (copy_of("run/checkpoint-2", "ckpt")(c, w),
                   write("ckpt/global_step2/mp_rank_00_model_states.pt", b"\x80\x04K\x01.")(c, w)))
def from_an_older_version(run: Path) -> None:
    """A run whose stored configs hold a key this Delphi no longer has (its markers written again to match)."""
    from trainer.checkpoints import read_marker, write_marker

    for directory in (run, *run.glob("checkpoint-*")):
        path = directory / "resolved_config.yaml"
        path.write_text(path.read_text().replace("resolved:", "resolved:\n  old_key: 1"))
        record = read_marker(directory)
        files = None if record["kind"] == "checkpoint" else dict(record["files"], **{
            "resolved_config.yaml": path.stat().st_size})
        write_marker(directory, record["kind"], record["step"], record["world_size"], files)


case("resume", "stored-config-unreadable", (*TRAIN[:-1], "{C}/run"), "the config stored with the run cannot be read",
     copy_of("run", "run", from_an_older_version))
case("resume", "output-dir-is-model", (*TRAIN[:-1], "{W}/model"), "is model_name")
case("resume", "output-dir-inside-model", (*TRAIN[:-1], "{W}/model/run"), "lies inside model_name")
case("resume", "output-dir-holds-model", (*TRAIN[:-1], "{W}"), "holds model_name")
case("resume", "output-dir-is-tokenizer", (*TRAIN[:-1], "{W}/tokenizers/own", "--tokenizer_name", "{W}/tokenizers/own"),
     "is tokenizer_name")
case("resume", "output-dir-holds-data", (*TRAIN[:-1], "{W}/data"), "holds datasets[0] (alpaca)")

# ----------------------------------------------------------------------------------------------------------
# Export and chat of runs that are not whole, or not what the target can take

case("export", "run-final-save-cut", ("export", "{C}/run", "{C}/out"), "did not finish saving its final model",
     copy_of("run", "run", remove("delphi_complete.json", "tokenizer.json")))
case("export", "run-final-file-cut", ("export", "{C}/run", "{C}/out"), "tokenizer.json has",
     copy_of("run", "run", cut("tokenizer.json", 0.5)))
case("export", "checkpoint-unmarked", ("export", "{C}/run/checkpoint-2", "{C}/out"), "not a complete checkpoint",
     copy_of("run", "run", lambda d: (d / "checkpoint-2" / "delphi_complete.json").unlink()))
case("export", "verify-hf", ("export", "{W}/run", "{C}/out", "--verify"), "--target hf has no verification")
case("export", "ipu-mpt", ("export", "{W}/mpt", "{C}/out", "--target", "ipu"), "is a mpt model")
case("export", "record-broken", ("export", "{C}/ex", "{C}/out"), "delphi_export.json: not valid JSON",
     copy_of("run", "ex", lambda d: (d / "delphi_export.json").write_text("{oops")))
case("export", "adapter-base-named-missing", ("export", "{W}/lora", "{C}/out", "--base_model", "{C}/gone/base"),
     "is not there (moved or deleted?)")
case("export", "adapter-base-is-adapter", ("export", "{W}/lora", "{C}/out", "--base_model", "{W}/lora"),
     "is itself a peft adapter")
case("export", "chat-final-save-cut", ("chat", "--model", "{C}/run"), "did not finish saving its final model",
     copy_of("run", "run", remove("tokenizer.json", "tokenizer_config.json")))

# ----------------------------------------------------------------------------------------------------------
# Scaling out: strategy combinations that cannot work, refused before any weight loads


def huge_config(directory: Path) -> None:
    """The tiny model's directory claiming a 70B-class shape in config.json (the weights are never read)."""
    config = json.loads((directory / "config.json").read_text())
    config.update(hidden_size=8192, num_hidden_layers=80, num_attention_heads=64, intermediate_size=28672)
    (directory / "config.json").write_text(json.dumps(config))


case("scale", "fsdp-and-deepspeed", (*TRAIN, "--fsdp", "full_shard", "--deepspeed"), "choose one engine")
case("scale", "fsdp-unknown", (*TRAIN, "--fsdp", "fully"), "'fsdp' must be one of full_shard, shard_grad_op")
case("scale", "8bit-optimizer-on-cpu", (*TRAIN, "--optim", "adamw_8bit"), "optim: adamw_8bit needs a CUDA GPU")
case("scale", "paged-optimizer-on-cpu", (*TRAIN, "--optim", "paged_adamw_32bit"), "use optim: adamw_torch")
case("scale", "qlora-zero3-on-cpu", (*TRAIN, "--mode", "qlora", "--deepspeed", "--deepspeed_config", "zero3"),
     "on CPU use mode: lora with zero3")
case("scale", "qlora-zero3-offload", (*TRAIN, "--mode", "qlora", "--deepspeed", "--deepspeed_config",
                                      "zero3_offload"), "use deepspeed_config: zero3 or fsdp: full_shard")
case("scale", "deepspeed-config-unknown", (*TRAIN, "--deepspeed", "--deepspeed_config", "zero4"),
     "one of zero2, zero3, zero3_offload")
case("scale", "deepspeed-config-not-json", (*TRAIN, "--deepspeed", "--deepspeed_config", "{C}/ds.json"),
     "ds.json:1: not a readable DeepSpeed JSON", write("ds.json", "{stage: 3}"))
case("scale", "offload-without-the-memory", (*TRAIN, "--model_name", "{C}/huge", "--deepspeed", "--deepspeed_config",
                                             "zero3_offload"), "offloading needs about",
     copy_of("model", "huge", huge_config))
case("scale", "plan-ranks", ("plan", "--config_file", "{W}/base.yaml", "--configs", "base", "--ranks", "0"),
     "--ranks must be a whole number of at least 1")

# ----------------------------------------------------------------------------------------------------------
# Issue 18: inputs that gave tracebacks, hangs or silence, and the inputs accepted by design

case("data", "datasets-null", (*TRAIN, "--datasets", "null"), "the config names no datasets")
case("data", "datasets-empty", (*TRAIN, "--datasets", "[]"), "the config names no datasets")
case("data", "max-length-drops-every-sample", (*TRAIN, "--max_length", "4"),
     "no training sample of dataset 'alpaca' fits max_length 4")
case("data", "data-symlink-loop", data("alpaca", "{C}/loop.json"), "is a symbolic link that loops back on itself",
     lambda c, w: (c / "loop.json").symlink_to(c / "loop.json"))
case("data", "data-symlink-dangling", data("alpaca", "{C}/gone.json"), "is a symbolic link that points to nothing",
     lambda c, w: (c / "gone.json").symlink_to(c / "nothing.json"))
case("data", "hub-name-path", (*TRAIN, "--datasets", json.dumps([{"alpaca": {"hub_name": "../some/dir"}}])),
     "hub_name '../some/dir' is a path, not a hub dataset")
accepted("data", "alpaca-input-null", data("alpaca"), "training finished",
         write("d.jsonl", lines(*[{"instruction": f"Say {i}.", "input": None, "output": f"{i}!"} for i in range(8)])))


def long_thread(turns: int, tree_id: str) -> str:
    """One OASST tree (a JSON line) whose single thread has `turns` messages, nested two JSON levels per turn;
    written as text, since json.dumps itself stops at Python's recursion limit."""
    opened = "".join(json.dumps(node(f"{tree_id}-{i}", "prompter" if i % 2 == 0 else "assistant",
                                     text=f"turn {i}"))[:-len(', "replies": []}')] + ', "replies": ['
                     for i in range(turns))
    head = json.dumps(tree(node("x", "prompter"), tree_id))[:-len(json.dumps(node("x", "prompter"))) - 1]
    return head + opened[:-len(', "replies": [')] + ', "replies": []' + "}]" * (turns - 1) + "}}"


accepted("data", "oasst-600-turn-thread", (*data("oasst_export", val_split=0.0), "--max_length", "64"),
         "training finished", write("d.jsonl", lines(long_thread(600, "t1"), long_thread(8, "t2"))))
case("filesystem", "output-dir-empty", (*TRAIN[:-1], ""), "output_dir: empty")
case("filesystem", "output-dir-dangling-symlink", (*TRAIN[:-1], "{C}/link"), "is a symbolic link to '{C}/gone'",
     lambda c, w: (c / "link").symlink_to(c / "gone"))
case("filesystem", "staging-symlink", TRAIN, ".staging is a symbolic link",
     lambda c, w: ((c / "out").mkdir(), (c / "elsewhere").mkdir(), (c / "out" / ".staging").symlink_to(c / "elsewhere")))
case("filesystem", "checkpoint-symlink", TRAIN, "checkpoint-2 is a symbolic link",
     lambda c, w: ((c / "out").mkdir(), (c / "out" / "checkpoint-2").symlink_to(w / "run" / "checkpoint-2")))
case("filesystem", "output-dir-locked-elsewhere", TRAIN, "is in use by another training run (pid 4242 on host node-9",
     write("out/.delphi.lock", json.dumps({"pid": 4242, "host": "node-9", "started": "then", "process_start": "1"})))
case("filesystem", "deepspeed-json-broken", (*TRAIN, "--deepspeed", "--deepspeed_config", "{C}/ds.json"),
     "{C}/ds.json:2: not a readable DeepSpeed JSON", write("ds.json", '{"zero_optimization":\n  {"stage": 2,}}'))
case("filesystem", "max-length-beyond-positions", (*TRAIN, "--max_length", "1000000"),
     "max_length 1,000,000 is longer than model_name")
accepted("resume", "warmup-longer-than-the-run", (*TRAIN, "--warmup_steps", "500"),
         "warning: warmup_steps 500 is not shorter than the run (2 steps)")
accepted("resume", "finished-run-bare-resume", (*RUN, "--resume_from_checkpoint"),
         "holds a finished run (step 2) with this config: nothing to train")
case("export", "ipu-sequence-length-0", ("export", "{W}/run", "{C}/out", "--target", "ipu", "--sequence_length", "0"),
     "--sequence_length: 0; expected a length of at least 1")

SWEEP_BASE = "name: s\nconfigs: [base]\nconfig_files: ['{W}/base.yaml']\noutput_dir: '{C}/sweep'\n"
for name, text, expect in [
    ("grid-count", "parameters:\n  learning_rate: [1e-3, 1e-4]\ncount: 3\n", "'count' applies to random sweeps"),
    ("parameter-twice", "parameters:\n  learning_rate: [1e-3]\n  learning_rate: [1e-4]\n",
     "s.yaml:7: 'parameters.learning_rate' given twice (first at line 6)"),
    ("parameter-fixed-and-varied", "fixed:\n  learning_rate: 1e-3\nparameters:\n  learning_rate: [1e-4]\n",
     "'learning_rate' is both varied (parameters) and fixed (line 6)"),
    ("run-name-dotdot", "parameters:\n  learning_rate: [1e-3]\nrun_name: '..'\n", "names trial 0 '..', which is not"),
    ("run-name-dot", "parameters:\n  learning_rate: [1e-3]\nrun_name: '.'\n", "names trial 0 '.', which is not"),
]:
    case("sweep", name, ("sweep", "run", "{C}/s.yaml"), expect, write("s.yaml", SWEEP_BASE + text))
case("export", "ipu-adapter-base-moved", ("export", "{W}/lora-moved", "{C}/out", "--target", "ipu"),
     "is not there (moved or deleted?); pass its directory with --base_model")
case("filesystem", "data-name-too-long", data("alpaca", "{C}/" + "d" * 300 + ".json"),
     "cannot read {C}/" + "d" * 300 + ".json: File name too long")

for name, text in [("alias-merges-itself", "exp: &e\n  max_length: 64\n  <<: *e\n"),
                   ("alias-lists-itself", "exp: &e\n  max_length: 64\n  datasets: [*e]\n"),
                   ("alias-nested-cycle", "exp:\n  datasets:\n    - alpaca: &o\n        size: 4\n        more: [*o]\n")]:
    case("yaml", name, ("train", "--config_file", "{C}/my.yaml", "--configs", "exp", "--output_dir", "{C}/out"),
         "contains itself through a YAML alias", write("my.yaml", text))
accepted("cli", "flag-twice", (*TRAIN, "--learning_rate", "1e-3", "--learning_rate", "1e-2"),
         "warning: command line: 'learning_rate' given twice (--learning_rate 1e-3, then --learning_rate 1e-2); the "
         "last is used")
accepted("cli", "flag-and-negation", (*TRAIN, "--packing", "--no-packing"),
         "'packing' given twice (--packing, then --no-packing); the last is used")
case("numbers", "per_device_train_batch_size-huge", (*TRAIN, "--per_device_train_batch_size", "10000000000000000000"),
     "'per_device_train_batch_size' must be at most 1,048,576")
case("filesystem", "output-dir-unset-variable", (*TRAIN[:-1], "runs/$DELPHI_FUZZ_UNSET/out"),
     "$DELPHI_FUZZ_UNSET is not set in the environment")
