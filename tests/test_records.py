"""JSONL / JSON-array reading, and the Alpaca and airoboros record readers, through real files."""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from trainer.config import DatasetConfig
from trainer.paths import CHECKOUT as REPO_ROOT
from trainer.data.conversation import ASSISTANT, PROMPTER
from trainer.data.jsonl import BadRecords, read_records
from trainer.data.sources import load_source
from trainer.errors import DataError


def records(path: Path, skip: bool = False) -> list[tuple[int, dict]]:
    return list(read_records(path, BadRecords(skip=skip)))


def test_jsonl_lines_blank_lines_and_gzip(tmp_path):
    text = '{"a": 1}\n\n   \n{"a": 2}\n'
    plain = tmp_path / "x.jsonl"
    plain.write_text(text)
    packed = tmp_path / "x.jsonl.gz"
    with gzip.open(packed, "wt", encoding="utf-8") as f:
        f.write(text)
    assert records(plain) == records(packed) == [(1, {"a": 1}), (4, {"a": 2})]


def test_json_array_keeps_each_records_line(tmp_path):
    path = tmp_path / "alpaca_data.json"
    path.write_text("\n" + json.dumps([{"a": 1}, {"b": [1, 2]}, {"c": "x\ny"}], indent=4) + "\n")
    assert records(path) == [(3, {"a": 1}), (6, {"b": [1, 2]}), (12, {"c": "x\ny"})]
    (tmp_path / "empty.json").write_text("[]")
    assert records(tmp_path / "empty.json") == []


@pytest.mark.parametrize("name, text, message", [
    ("x.jsonl", '{"a": 1}\n{"a": \n', r"x.jsonl:2: not valid JSON: Expecting value \(column 7\)"),
    ("x.jsonl", '{"a": 1}\n[{"a": 2}]\n', r"x.jsonl:2: expected a JSON object, got list"),
    ("x.jsonl", '"just a string"\n', r"x.jsonl:1: expected a JSON object, got str"),
    ("x.json", '[\n  {"a": 1},\n  {"a": 2,}\n]', r"x.json:3: not valid JSON: .*cannot skip"),
    ("x.json", '[\n  {"a": 1}\n  {"a": 2}\n]', r"x.json:3: not valid JSON: expected ',' or ']'"),
    ("x.json", '[{"a": 1}]\n{"a": 2}', r"x.json:2: not valid JSON: extra data after the array"),
    ("x.json", '[\n  {"a": 1},\n  7\n]', r"x.json:3: expected a JSON object, got int"),
])
def test_malformed_input_names_file_and_line(tmp_path, name, text, message):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(DataError, match=message):
        records(path)


def test_skipping_skips_a_line_that_is_not_utf8_and_keeps_the_rest(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"a": 1}\n{"a": "caf\xe9"}\n{"a": "\xc3\xa9"}\n')
    bad = BadRecords(skip=True)
    assert list(read_records(path, bad)) == [(1, {"a": 1}), (3, {"a": "\u00e9"})]
    assert bad.count == 1 and bad.first[0].startswith(f"{path}:2: not UTF-8 text")
    array = tmp_path / "x.json"
    array.write_bytes(b'[\n  {"a": 1},\n  {"a": "\xff"}\n]')
    with pytest.raises(DataError, match=r"x.json:3: not UTF-8 text \(byte 0xff\)"):
        records(array, skip=True)


def test_skipping_counts_and_keeps_locations(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"a": 1}\nnope\n[]\n{"a": 2}\n')
    bad = BadRecords(skip=True)
    assert list(read_records(path, bad)) == [(1, {"a": 1}), (4, {"a": 2})]
    assert bad.count == 2 and [b.split(": ")[0] for b in bad.first] == [f"{path}:2", f"{path}:3"]


def test_not_utf8_or_not_gzip_is_a_data_error(tmp_path):
    (tmp_path / "latin.jsonl").write_bytes('{"a": "caf\xe9"}\n'.encode("latin-1"))
    with pytest.raises(DataError, match=r"latin.jsonl:1: not UTF-8 text \(byte 0xe9 at column 11\)"):
        records(tmp_path / "latin.jsonl")
    (tmp_path / "fake.jsonl.gz").write_text('{"a": 1}\n')
    with pytest.raises(DataError, match="fake.jsonl.gz: cannot decode"):
        records(tmp_path / "fake.jsonl.gz")


# ----------------------------------------------------------------------------------------------------------
# Alpaca

def alpaca(path, **options) -> DatasetConfig:
    return DatasetConfig.of("alpaca", input_file_path=str(path), **options)


def test_alpaca_input_goes_to_context(tmp_path):
    path = tmp_path / "alpaca_data.json"
    path.write_text(json.dumps([
        {"instruction": "Translate.", "input": "Hallo", "output": "Hello"},
        {"instruction": "Say hi.", "input": "", "output": "Hi!"},
        {"instruction": "No input key.", "output": "Fine."},
    ], indent=4))
    data = load_source(alpaca(path, val_split=0.0), "no-cache")
    by_instruction = {c.turns[0].text: c for c in data.train}
    assert by_instruction["Translate."].turns[0].context == "Hallo"
    assert by_instruction["Say hi."].turns[0].context == ""
    assert by_instruction["No input key."].turns[1].text == "Fine."
    assert [t.role for t in by_instruction["Translate."].turns] == [PROMPTER, ASSISTANT]
    assert by_instruction["Translate."].origin == f"{path}:2"


@pytest.mark.parametrize("record, message", [
    ({"input": "", "output": "o"}, r":2: missing field 'instruction' \(expected a string\)"),
    ({"instruction": "i", "input": ""}, r":2: missing field 'output'"),
    ({"instruction": "i", "input": 3, "output": "o"}, r":2: field 'input' must be a string, got int"),
    ({"instruction": ["i"], "output": "o"}, r":2: field 'instruction' must be a string, got list"),
])
def test_alpaca_bad_record_names_file_line_field(tmp_path, record, message):
    path = tmp_path / "a.jsonl"
    path.write_text(json.dumps({"instruction": "ok", "output": "ok"}) + "\n" + json.dumps(record) + "\n")
    with pytest.raises(DataError, match=str(path) + message):
        load_source(alpaca(path), "no-cache")
    data = load_source(alpaca(path, skip_bad_lines=True, val_split=0.0), "no-cache")
    assert data.counts["bad_records_skipped"] == 1 and data.counts["samples"] == 1
    assert data.skipped[0].startswith(f"{path}:2: ")


def test_record_split_is_seeded_per_sample():
    path = REPO_ROOT / "data/alpaca/sample.json"
    first, again = load_source(alpaca(path), "no-cache"), load_source(alpaca(path), "no-cache")
    assert (len(first.train), len(first.val)) == (50, 12)  # floor(62 * 0.8), floor(62 * 0.2), remainder to train
    assert [c.origin for c in first.val] == [c.origin for c in again.val]
    assert not {c.origin for c in first.train} & {c.origin for c in first.val}
    reseeded = load_source(alpaca(path, manual_seed=7), "no-cache")
    assert {c.origin for c in reseeded.val} != {c.origin for c in first.val}


# ----------------------------------------------------------------------------------------------------------
# airoboros

def test_airoboros_texts_are_kept_byte_for_byte(tmp_path):
    closed = ("BEGININPUT\nBEGINCONTEXT\ndate: 2021-01-01\nurl: https://web.site/123\nENDCONTEXT\n"
              "Blueberries are now green.\nENDINPUT\nBEGININSTRUCTION\nWhat color are blueberries? Source?\n"
              "ENDINSTRUCTION")
    rows = [
        {"instruction": closed, "response": "Green.\nSource:\ndate: 2021-01-01\nurl: https://web.site/123",
         "category": "contextual"},
        {"instruction": "Write a websocket server in node.js. PLAINFORMAT", "response": "const ws = 1;\n"},
        {"instruction": "  padded both sides \n", "response": "\n answer with spaces  ", "skip_prompt": True},
    ]
    path = tmp_path / "instructions.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = load_source(DatasetConfig.of("airoboros", input_file_path=str(path), val_split=0.0), "no-cache")
    got = {c.origin: (c.turns[0].text, c.turns[1].text) for c in data.train}
    assert got == {f"{path}:{i}": (r["instruction"], r["response"]) for i, r in enumerate(rows, 1)}


def test_airoboros_missing_response_names_the_field(tmp_path):
    path = tmp_path / "instructions.jsonl"
    path.write_text('{"instruction": "hi", "output": "wrong key"}\n')
    with pytest.raises(DataError, match=f"{path}:1: missing field 'response'"):
        load_source(DatasetConfig.of("airoboros", input_file_path=str(path)), "no-cache")


def test_bundled_airoboros_sample_has_closed_context_and_plainformat():
    data = load_source(DatasetConfig.of("airoboros", input_file_path="data/airoboros/sample.jsonl"), "no-cache")
    instructions = [c.turns[0].text for c in data.train + data.val]
    assert any(i.startswith("BEGININPUT\nBEGINCONTEXT\n") and i.endswith("\nENDINSTRUCTION") for i in instructions)
    assert sum(i.endswith(" PLAINFORMAT") for i in instructions) >= 5
    assert any(i != i.strip() for i in instructions)
