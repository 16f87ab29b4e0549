"""The `text` kind (documents packed into rows, every token trained) and the `completion` kind (prompt and
completion, no template, the completion trained), through the builder on real files."""
from __future__ import annotations

import json

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from trainer.config import TrainConfig
from trainer.data.build import build_datasets
from trainer.errors import DataError

DOCUMENTS = ["The tree has many branches.", "Every reply ends with the end token.\nA second line.",
             "Short.", "A longer document about data shards, rows, chunks and workers that build caches."] * 5
PAIRS = [{"prompt": "Translate to French: cat\nFrench:", "completion": " chat"},
         {"prompt": "2 + 2 =", "completion": " 4"},
         {"prompt": "", "completion": "A completion with no prompt."}]


def built_from(tmp_path, tokenizer, kind: str, path, **data):
    cfg = TrainConfig.of(datasets=[{kind: {"input_file_path": str(path), "val_split": 0.0}}],
                         cache_dir=str(tmp_path / "cache"), **data)
    (built,) = build_datasets(cfg.data, tokenizer)
    return built


def ids(tokenizer, text: str) -> list[int]:
    return tokenizer.backend_tokenizer.encode(text, add_special_tokens=False).ids


def test_text_documents_are_packed_into_rows_with_every_token_trained(tmp_path, tokenizer):
    path = tmp_path / "corpus.parquet"
    pq.write_table(pa.table({"text": DOCUMENTS, "url": ["u"] * len(DOCUMENTS)}), path)
    built = built_from(tmp_path, tokenizer, "text", path, max_length=16, preprocessing_num_workers=2)
    stream = [t for doc in DOCUMENTS for t in ids(tokenizer, doc) + [tokenizer.eos_token_id]]
    in_file_order = datasets.Dataset.from_file(str(built.cache_path / "samples.arrow"))
    lone = len(stream) % 16 == 1  # a last row of one token has nothing to predict: dropped, and counted
    assert [t for row in in_file_order["input_ids"] for t in row] == stream[:len(stream) - lone]
    assert built.counts["train_dropped_no_trained_tokens"] == lone
    assert all(length == 16 for length in in_file_order["length"][:-1])
    assert sorted(map(tuple, built.train["input_ids"])) == sorted(map(tuple, in_file_order["input_ids"]))
    for row in built.train:
        assert row["labels"] == [-100] + row["input_ids"][1:] and row["trained"] == row["length"] - 1
    assert built.counts["records_read"] == len(DOCUMENTS) and built.counts["train"] == len(in_file_order) + lone


def test_text_records_that_are_not_strings_are_one_line(tmp_path, tokenizer):
    path = tmp_path / "corpus.jsonl"
    path.write_text(json.dumps({"text": "fine"}) + "\n" + json.dumps({"text": ["not", "a", "string"]}) + "\n")
    with pytest.raises(DataError) as e:
        built_from(tmp_path, tokenizer, "text", path)
    assert str(e.value) == f"{path}:2: field 'text' must be a string, got list ['not', 'a', 'string']"


@pytest.mark.parametrize("label_masking", [True, False])
def test_completion_pairs_are_prompt_then_completion_and_eos_without_a_template(tmp_path, tokenizer,
                                                                                label_masking):
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in PAIRS))
    built = built_from(tmp_path, tokenizer, "completion", path, label_masking=label_masking,
                       prompt_format="oasst", use_system_prefix=True)
    expected = {}
    for pair in PAIRS:
        prompt, completion = ids(tokenizer, pair["prompt"]), ids(tokenizer, pair["completion"])
        sample = prompt + completion + [tokenizer.eos_token_id]
        trained = sample if not label_masking else [-100] * len(prompt) + sample[len(prompt):]
        expected[tuple(sample)] = [-100] + trained[1:]
    rows = {tuple(row["input_ids"]): row["labels"] for row in built.train}
    assert rows == expected
    decoded = [tokenizer.decode(row) for row in built.train["input_ids"]]
    assert not any("<|prompter|>" in text or "You are" in text for text in decoded)


def test_completion_needs_a_completion(tmp_path, tokenizer):
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps({"prompt": "only a prompt"}) + "\n")
    with pytest.raises(DataError, match=rf"^{path}:1: missing field 'completion' \(expected a string\)$"):
        built_from(tmp_path, tokenizer, "completion", path)
