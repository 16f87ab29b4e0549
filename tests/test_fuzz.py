"""Every bad input is one clean line: each case of fuzz_cases.CASES goes through `delphi` in this process and must
exit with code 2, print exactly one line on stderr (`error: ...`, naming what the case expects) and no traceback,
end within a time limit (a hang fails), and leave every file that existed before it exactly as it was. The cases
marked `succeeds` are inputs Delphi accepts by design (an Alpaca `"input": null`, a 600-turn OASST thread, a warmup
longer than the run): exit 0, no traceback, no `error:` line, and the words the case expects said.

Library progress bars and notices are turned off for these runs (they are not errors), so that stderr holds what
Delphi itself reports. The kill -9 cases need processes of their own: tests/test_checkpoints.py.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import shutil
import signal
import warnings
from collections import Counter
from pathlib import Path

import pytest
import torch

from fuzz_cases import CASES, Case
from trainer.cli import main as delphi
from trainer.paths import CHECKOUT as REPO_ROOT

TIME_LIMIT_S = 60
CATEGORIES = ("numbers", "yaml", "cli", "filesystem", "weights", "data", "tokenizer", "sweep", "resume", "export",
              "scale")


class Payload:
    """A pickle that runs code when loaded without `weights_only`: it creates a file."""

    def __init__(self, sentinel: Path):
        self.sentinel = sentinel

    def __reduce__(self):
        return open, (str(self.sentinel), "w")


def foreign_tokenizer(directory: Path, specials: list[str], eos: str | None, vocab_size: int) -> None:
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    texts = [line for p in sorted((REPO_ROOT / "data").rglob("*")) if p.is_file()
             for line in p.read_text(encoding="utf-8").splitlines()]
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=vocab_size, min_frequency=1, special_tokens=specials)
    PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, eos_token=eos).save_pretrained(directory)


def run_train(argv: list[str]) -> None:
    assert delphi(["train", *argv]) == 0


@pytest.fixture(scope="module")
def world(tiny_model_dir, tmp_path_factory) -> Path:
    """The inputs the cases share: a tiny model (and copies), the alpaca sample, a section file, a finished full run
    and LoRA run of it, a LoRA run whose base has since been deleted, damaged models and foreign tokenizers."""
    import trainer.chat  # noqa: F401  (imported once here: their import-time notices are not a case's output)
    import trainer.export.cli  # noqa: F401
    import trainer.recipe  # noqa: F401
    import trainer.sweep.cli  # noqa: F401

    w = tmp_path_factory.mktemp("world")
    model = tiny_model_dir("gpt_neox")
    for name in ("model", "model-copy", "tomove"):
        shutil.copytree(model, w / name)
    shutil.copytree(tiny_model_dir("mpt"), w / "mpt")
    (w / "data").mkdir()
    shutil.copy(REPO_ROOT / "data/alpaca/sample.json", w / "data/alpaca.json")
    section = {"base": {
        "datasets": [{"alpaca": {"input_file_path": str(w / "data/alpaca.json"), "size": 16}}],
        "model_name": str(w / "model"), "dtype": "fp32", "max_length": 64, "cache_dir": str(w / "cache"),
        "report_to": "none", "num_train_epochs": 1, "per_device_train_batch_size": 8,
        "gradient_accumulation_steps": 1, "learning_rate": 1e-3, "warmup_steps": 0, "logging_steps": 1,
        "eval_steps": 100, "save_steps": 1}}
    (w / "base.yaml").write_text(json.dumps(section))
    base = ["--config_file", str(w / "base.yaml"), "--configs", "base"]
    run_train([*base, "--output_dir", str(w / "run")])
    run_train([*base, "--output_dir", str(w / "lora"), "--mode", "lora"])
    run_train([*base, "--output_dir", str(w / "lora-moved"), "--mode", "lora", "--model_name", str(w / "tomove")])
    shutil.rmtree(w / "tomove")

    from safetensors.torch import load_file, save_file

    shutil.copytree(model, w / "nan-model")
    weights = load_file(w / "nan-model" / "model.safetensors")
    next(iter(weights.values())).view(-1)[3] = float("nan")
    save_file(weights, w / "nan-model" / "model.safetensors", metadata={"format": "pt"})
    for name in ("pickle-model", "cut-bin-model"):
        (w / name).mkdir()
        for file in ("config.json", "tokenizer.json", "tokenizer_config.json"):
            shutil.copy(model / file, w / name / file)
    torch.save(Payload(w / "payload-ran"), w / "pickle-model" / "pytorch_model.bin")
    torch.save(weights, w / "cut-bin-model" / "pytorch_model.bin")
    data = (w / "cut-bin-model" / "pytorch_model.bin").read_bytes()
    (w / "cut-bin-model" / "pytorch_model.bin").write_bytes(data[:len(data) // 2])

    shutil.copytree(model, w / "emptied-tokenizer")
    tokenizer = json.loads((model / "tokenizer.json").read_text())
    tokenizer["model"]["vocab"] = {k: v for k, v in tokenizer["model"]["vocab"].items() if v < 7}
    tokenizer["model"]["merges"] = []
    (w / "emptied-tokenizer" / "tokenizer.json").write_text(json.dumps(tokenizer))
    foreign_tokenizer(w / "tokenizers" / "big", ["<|endoftext|>", "<|padding|>"], "<|endoftext|>", 3000)
    foreign_tokenizer(w / "tokenizers" / "other-eos", ["<s>", "<pad>", "</s>"], "</s>", 500)
    foreign_tokenizer(w / "tokenizers" / "no-eos", ["<|endoftext|>"], None, 500)
    (w / "tokenizers" / "own").mkdir()
    for file in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(model / file, w / "tokenizers" / "own" / file)
    return w


def file_hashes(*roots: Path) -> dict[Path, str]:
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for root in roots for p in sorted(root.rglob("*"))
            if p.is_file()}


class TimeLimit(Exception):
    pass


@contextlib.contextmanager
def time_limit(seconds: int):
    def expire(signum, frame):
        raise TimeLimit(f"still running after {seconds} s: a hang")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@contextlib.contextmanager
def quiet_libraries(monkeypatch):
    """Progress bars, library log notices and Python warnings off: stderr is left to Delphi."""
    import datasets
    import transformers

    monkeypatch.setenv("TQDM_DISABLE", "1")
    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    verbosity = transformers.utils.logging.get_verbosity()
    transformers.utils.logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        transformers.utils.logging.set_verbosity(verbosity)
        transformers.utils.logging.enable_progress_bar()


def fill(text: str, world: Path, here: Path) -> str:
    return text.replace("{W}", str(world)).replace("{C}", str(here))


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_clean_line(case: Case, world: Path, tmp_path: Path, monkeypatch):
    here = tmp_path / "case"
    here.mkdir()
    if case.setup:
        case.setup(here, world)
    for key, value in case.env.items():
        monkeypatch.setenv(key, value)
    before = file_hashes(world, here)
    err, out = io.StringIO(), io.StringIO()
    with quiet_libraries(monkeypatch), time_limit(TIME_LIMIT_S), contextlib.redirect_stderr(err), \
            contextlib.redirect_stdout(out):
        code = delphi([fill(arg, world, here) for arg in case.argv])
    text = err.getvalue()
    assert "Traceback" not in text, text
    if case.succeeds:  # the documented success: exit 0, no error line (the progress bar may draw), words said
        assert code == 0, text
        assert "error:" not in text, text
        assert fill(case.expect, world, here) in text + out.getvalue(), text + out.getvalue()
    else:
        assert code == case.code, text
        assert text.endswith("\n") and text.count("\n") == 1 and text.startswith("error: "), repr(text)
        assert fill(case.expect, world, here) in text, text
    after = file_hashes(world, here)
    assert {p: h for p, h in after.items() if p in before} == before, "a file that was there before changed"
    assert not (world / "payload-ran").exists()


def test_the_table_has_150_cases_across_every_category():
    counts = Counter(c.category for c in CASES)
    assert sum(counts.values()) >= 150 and set(counts) == set(CATEGORIES), counts
    assert len({c.id for c in CASES}) == len(CASES)
