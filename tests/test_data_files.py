"""The sources users have: Parquet and Arrow files, directories of shards, gzip- and zstd-compressed JSONL, and
hub dataset names (a local dataset directory through `datasets.load_dataset`, offline); each read into the same
conversations as the JSONL file it was written from, and each bad one refused in one line."""
from __future__ import annotations

import gzip
import json

import pyarrow as pa
import pyarrow.feather as feather
import pyarrow.parquet as pq
import pytest

from trainer.config import DatasetConfig
from trainer.data.sources import load_source
from trainer.errors import ConfigError, DataError
from trainer.paths import CHECKOUT as REPO

ALPACA = json.loads((REPO / "data/alpaca/sample.json").read_text())
CHATS = [json.loads(line) for line in (REPO / "data/messages/sample.jsonl").read_text().splitlines()]


def load(kind: str, path, **options):
    return load_source(DatasetConfig.of(kind, input_file_path=str(path), val_split=0.0, **options), "no-cache")


def turns(data) -> list:
    return [(c.system, c.turns) for c in data.train]


@pytest.fixture(scope="module")
def from_jsonl(tmp_path_factory):
    """The bundled chat and alpaca samples read from JSONL: what every other source must give."""
    d = tmp_path_factory.mktemp("jsonl")
    (d / "chat.jsonl").write_text("".join(json.dumps(r) + "\n" for r in CHATS))
    (d / "alpaca.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ALPACA))
    return {"messages": turns(load("messages", d / "chat.jsonl")), "alpaca": turns(load("alpaca", d / "alpaca.jsonl"))}


@pytest.mark.parametrize("writer", ["parquet", "arrow_stream", "feather"])
def test_columnar_files_give_the_same_conversations_as_jsonl(tmp_path, from_jsonl, writer):
    for kind, records in (("messages", CHATS), ("alpaca", ALPACA)):
        table = pa.Table.from_pylist(records)
        if writer == "parquet":
            path = tmp_path / f"{kind}.parquet"
            pq.write_table(table, path, row_group_size=7)  # several row groups
        elif writer == "feather":
            path = tmp_path / f"{kind}.arrow"
            feather.write_feather(table, path)
        else:
            path = tmp_path / f"{kind}.arrow"
            with pa.ipc.new_stream(path, table.schema) as w:
                for batch in table.to_batches(max_chunksize=5):
                    w.write_batch(batch)
        assert turns(load(kind, path)) == from_jsonl[kind]


def test_a_directory_of_shards_reads_them_in_name_order(tmp_path, from_jsonl):
    shards = tmp_path / "chats"
    shards.mkdir()
    third = len(CHATS) // 3
    pq.write_table(pa.Table.from_pylist(CHATS[third:]), shards / "train-00001-of-00002.parquet")
    pq.write_table(pa.Table.from_pylist(CHATS[:third]), shards / "train-00000-of-00002.parquet")
    (shards / "dataset_info.json").write_text("{}")  # datasets' metadata beside the shards is not data
    assert turns(load("messages", shards)) == from_jsonl["messages"]

    jsonl = tmp_path / "jsonl_shards"
    jsonl.mkdir()
    (jsonl / "b.jsonl").write_text("".join(json.dumps(r) + "\n" for r in CHATS[third:]))
    (jsonl / "a.jsonl.gz").write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in CHATS[:third]).encode()))
    assert turns(load("messages", jsonl)) == from_jsonl["messages"]


def test_gzip_and_zstd_jsonl(tmp_path, from_jsonl):
    zstandard = pytest.importorskip("zstandard")  # a dependency (pyproject.toml); older venvs may lack it
    text = "".join(json.dumps(r) + "\n" for r in CHATS).encode()
    (tmp_path / "chat.jsonl.gz").write_bytes(gzip.compress(text))
    # Two zstd frames, as parallel compressors write them.
    half = text.index(b"\n", len(text) // 2) + 1
    zstd = zstandard.ZstdCompressor()
    (tmp_path / "chat.jsonl.zst").write_bytes(zstd.compress(text[:half]) + zstd.compress(text[half:]))
    for name in ("chat.jsonl.gz", "chat.jsonl.zst"):
        assert turns(load("messages", tmp_path / name)) == from_jsonl["messages"]


def test_a_hub_name_loads_through_datasets_with_config_and_split_offline(tmp_path, from_jsonl, monkeypatch):
    """`datasets.load_dataset` reads an `owner/name` that exists as a directory in the working directory, as it
    does a downloaded hub dataset; here the same call reads it offline (scripts/env.sh sets HF_HUB_OFFLINE),
    with the split and streaming options."""
    monkeypatch.chdir(tmp_path)
    hub = tmp_path / "org/chats"
    (hub / "data").mkdir(parents=True)
    third = len(CHATS) // 3
    pq.write_table(pa.Table.from_pylist(CHATS[third:]), hub / "data/train-00000-of-00001.parquet")
    pq.write_table(pa.Table.from_pylist(CHATS[:third]), hub / "data/test-00000-of-00001.parquet")
    entry = {"hub_name": "org/chats", "val_split": 0.0}
    train = load_source(DatasetConfig.of("messages", hub_split="train", **entry), "no-cache")
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in CHATS[third:]))
    assert turns(train) == turns(load("messages", tmp_path / "train.jsonl"))
    streamed = load_source(DatasetConfig.of("messages", hub_split="train", streaming=True, **entry), "no-cache")
    assert turns(streamed) == turns(train)
    every_split = load_source(DatasetConfig.of("messages", **entry), "no-cache")
    assert sorted(map(repr, turns(every_split))) == sorted(map(repr, from_jsonl["messages"]))


def test_hub_options_with_a_local_file_are_refused():
    with pytest.raises(ConfigError, match="'hub_split' applies to hub datasets; this entry reads input_file_path"):
        DatasetConfig.of("messages", input_file_path="x.jsonl", hub_split="train")


# ----------------------------------------------------------------------------------------------------------
# Bad input: one line, naming the file and what was expected

def test_a_parquet_file_without_the_kinds_columns_names_the_columns_it_has(tmp_path):
    path = tmp_path / "other.parquet"
    pq.write_table(pa.table({"question": ["q?"], "answer": ["a."]}), path)
    with pytest.raises(DataError) as e:
        load("alpaca", path)
    assert str(e.value) == f"{path}: the alpaca kind needs the column(s) instruction, output; the file has " \
                           f"question, answer"
    with pytest.raises(DataError, match="message_id, role, text or message_tree_id, prompt; the file has question"):
        load("oasst_export", path)


@pytest.mark.parametrize("suffix", [".parquet", ".arrow"])
def test_a_truncated_shard_is_one_line(tmp_path, suffix):
    table = pa.Table.from_pylist(CHATS)
    path = tmp_path / f"cut{suffix}"
    if suffix == ".parquet":
        pq.write_table(table, path)
    else:
        with pa.ipc.new_stream(path, table.schema) as w:
            w.write_table(table)
    path.write_bytes(path.read_bytes()[:len(path.read_bytes()) * 2 // 3])
    what = "Parquet" if suffix == ".parquet" else "Arrow"
    with pytest.raises(DataError, match=rf"^{path}: cannot read the {what} file \(cut short, or not {what}\?\): "):
        load("messages", path)


def test_a_truncated_zstd_file_is_an_error_not_a_shorter_dataset(tmp_path):
    zstandard = pytest.importorskip("zstandard")  # a dependency (pyproject.toml); older venvs may lack it
    compressed = zstandard.ZstdCompressor().compress("".join(json.dumps(r) + "\n" for r in CHATS).encode())
    path = tmp_path / "cut.jsonl.zst"
    path.write_bytes(compressed[:len(compressed) // 2])
    with pytest.raises(DataError, match=rf"^{path}: cannot decode the file as zstd-compressed JSON .*cut short"):
        load("messages", path)


def test_an_unreachable_hub_name_says_it_is_a_hub_name_and_the_machine_is_offline(monkeypatch):
    import datasets
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    with pytest.raises(DataError) as e:
        load_source(DatasetConfig.of("messages", hub_name="someone/big-chats", hub_split="train"), "no-cache",
                    hub_timeout=1.0)
    message = str(e.value)
    assert "'someone/big-chats' is a hub dataset name and this machine is offline" in message
    assert "\n" not in message and "input_file_path: path/to/chat.jsonl" in message


def test_an_empty_directory_is_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="the directory holds no data files"):
        load("messages", tmp_path / "empty")
