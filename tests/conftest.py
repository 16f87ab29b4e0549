"""Shared fixtures: a tokenizer trained on the bundled data, tiny real models, and the reference data."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def pytest_collection_modifyitems(config, items):
    """Test tiers: `reference_data` marks every test that reads ../shared/data (through the fixture), and `gpu`
    tests skip, saying so, where there is no CUDA device. `-m "not slow"` leaves out the multi-process ones."""
    import torch

    no_gpu = pytest.mark.skip(reason="needs a CUDA device (marked gpu)")
    for item in items:
        if "reference_data" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.reference_data)
        if item.get_closest_marker("gpu") and not torch.cuda.is_available():
            item.add_marker(no_gpu)


def _bundled_texts():
    for path in sorted((REPO / "data").rglob("*")):
        if path.is_file():
            yield from path.read_text(encoding="utf-8").splitlines()


@pytest.fixture(scope="session")
def tokenizer():
    """Byte-level BPE trained here on data/, with `<|endoftext|>`=0, `<|padding|>`=1 and the chat tokens."""
    from trainer.tiny import train_tokenizer

    return train_tokenizer(_bundled_texts())


@pytest.fixture(scope="session")
def tiny_model_dir(tokenizer, tmp_path_factory):
    """`tiny_model_dir(model_type, tokenizer=None)`: a saved random tiny model of any registered architecture
    (`trainer.architectures`: "gpt_neox", "mpt", "falcon", "llama", "qwen2", "qwen3", "mistral", "gemma2",
    "gemma3_text", "phi3") with the fixture tokenizer, or with `tokenizer` (e.g. a real one from the reference data:
    the embedding then has its rows, and the directory carries it and its chat template). Made once per session."""
    from trainer.tiny import save_tiny_model

    made: dict[tuple[str, int], tuple[object, Path]] = {}  # keeps each tokenizer alive, so its id stays its own

    def make(architecture: str, with_tokenizer=None) -> Path:
        chosen = tokenizer if with_tokenizer is None else with_tokenizer
        key = (architecture, id(chosen))
        if key not in made:
            name = architecture if with_tokenizer is None else f"{architecture}-{len(made)}"
            made[key] = chosen, save_tiny_model(tmp_path_factory.mktemp(name), architecture, chosen)
        return made[key][1]

    return make


@pytest.fixture(scope="session")
def tiny_chat_tokenizer():
    """`tiny_chat_tokenizer(model_type)`: a BPE trained on data/ carrying the special tokens and the chat template of
    the family's instruct checkpoint (`trainer.tiny.TINY_CHATS`: gemma2, gemma3_text, phi3, whose real tokenizers
    are not in the reference data); `tiny_model_dir(model_type, tiny_chat_tokenizer(model_type))` is its model."""
    from trainer.tiny import train_chat_tokenizer

    made: dict[str, object] = {}

    def make(model_type: str):
        if model_type not in made:
            made[model_type] = train_chat_tokenizer(_bundled_texts(), model_type)
        return made[model_type]

    return make


@pytest.fixture(scope="session")
def reference_data() -> Path:
    """`../shared/data` through DELPHI_REFERENCE_DATA; unset means skip (and say why), a wrong path fails."""
    value = os.environ.get("DELPHI_REFERENCE_DATA")
    if not value:
        pytest.skip("DELPHI_REFERENCE_DATA is not set; point it at ../shared/data to run the reference-data tests")
    path = Path(value)
    if not (path / "oasst" / "en_100_tree.jsonl").is_file():
        pytest.fail(f"DELPHI_REFERENCE_DATA={value} does not hold oasst/en_100_tree.jsonl")
    return path


@pytest.fixture(scope="session")
def neox20b_tokenizer(reference_data, tmp_path_factory):
    """The real GPT-NeoX-20B tokenizer (50,277 tokens) as a tokenizer directory, plus the chat tokens."""
    from transformers import PreTrainedTokenizerFast

    from trainer.tokens import load_tokenizer

    raw = PreTrainedTokenizerFast(tokenizer_file=str(reference_data / "tokenizers/gpt-neox-20b/20B_tokenizer.json"),
                                  eos_token="<|endoftext|>", bos_token="<|endoftext|>", unk_token="<|endoftext|>")
    directory = tmp_path_factory.mktemp("neox20b")
    raw.save_pretrained(directory)
    return load_tokenizer(str(directory))


@pytest.fixture(scope="session")
def oa_test_tokenizer(reference_data):
    """OpenAssistant's own collator-test tokenizer (783 ids, specials at 0-6)."""
    from trainer.tokens import load_tokenizer

    return load_tokenizer(str(reference_data / "tokenizers/oa-test"))
