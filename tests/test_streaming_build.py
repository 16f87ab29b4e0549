"""The streamed build: the same samples, split and figures as encoding the whole split in memory; the same cache
bytes whatever the number of worker processes; nothing left behind by a build that stops half way."""
from __future__ import annotations

import json
import random

import numpy as np
import pytest

from trainer.config import TrainConfig
from trainer.data import build
from trainer.data.build import build_datasets, renderer_for
from trainer.data.report import dataset_figures
from trainer.data.sources import load_source
from trainer.data.tokenize import SegmentEncoder, encode_all
from trainer.errors import DataError
from trainer.formats import format_for
from trainer.paths import CHECKOUT as REPO

WORDS = "the a tree reply prompt fact answer question model token data shard row chunk worker build".split()


def chat_records(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)

    def text(k: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, k))) + "."

    records = []
    for _ in range(n):
        messages = [{"role": "system", "content": text(5)}] if rng.random() < 0.3 else []
        for _ in range(rng.randint(1, 3)):
            messages += [{"role": "user", "content": text(8)}, {"role": "assistant", "content": text(30)}]
        records.append({"messages": messages})
    return records


@pytest.fixture
def chats(tmp_path):
    path = tmp_path / "chats.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in chat_records(300)))
    return path


def config(tmp_path, path, cache: str = "cache", kind: str = "messages", **data) -> TrainConfig:
    return TrainConfig.of(datasets=[{kind: {"input_file_path": str(path), "val_split": 0.2}}],
                          cache_dir=str(tmp_path / cache), **{"max_length": 64, **data})


@pytest.fixture
def small_chunks(monkeypatch):
    monkeypatch.setattr(build, "CHUNK", 16)  # many chunks, so that workers get several each


@pytest.mark.parametrize("kind,source", [("messages", None), ("oasst_export", "data/oasst/sample_trees.jsonl")])
def test_the_streamed_build_equals_encoding_the_split_in_memory(tmp_path, tokenizer, chats, small_chunks, kind,
                                                                source):
    path = REPO / source if source else chats
    cfg = config(tmp_path, path, kind=kind, val_max_length=48)
    (built,) = build_datasets(cfg.data, tokenizer)
    ds = cfg.data.datasets[0]
    data = load_source(ds, cfg.data.cache_dir)
    fmt = renderer_for(ds, format_for(cfg.data, tokenizer))
    for rows, convs, max_length in ((built.train, data.train, 64), (built.val, data.val, 48)):
        samples, stats = encode_all(convs, fmt, SegmentEncoder(tokenizer), max_length, True)
        assert [s.input_ids.tolist() for s in samples] == rows["input_ids"]
        assert [s.labels.tolist() for s in samples] == rows["labels"]
        split = "train" if rows is built.train else "validation"
        assert built.counts[f"{split}_tokens"] == stats.tokens
        assert built.counts[f"{split}_truncated"] == stats.truncated > 0
    assert {k: built.counts[k] for k in data.counts} == data.counts
    lengths = np.asarray(built.train["length"])
    figures = dataset_figures(built, cfg)
    assert figures["length_percentiles"] == {f"p{p}": int(np.percentile(lengths, p)) for p in (50, 90, 95, 99, 100)}


def test_the_cache_bytes_do_not_depend_on_the_number_of_workers(tmp_path, tokenizer, chats, small_chunks):
    entries = []
    for workers in (1, 2):
        cfg = config(tmp_path, chats, cache=f"cache{workers}", preprocessing_num_workers=workers, val_max_length=48)
        (built,) = build_datasets(cfg.data, tokenizer)
        entries.append(built.cache_path)
    one, two = entries
    assert one.name == two.name
    names = sorted(p.name for p in one.iterdir())
    assert names == sorted(p.name for p in two.iterdir()) and "val_samples.arrow" in names
    for name in names:
        assert (one / name).read_bytes() == (two / name).read_bytes(), name


def test_a_build_that_stops_half_way_leaves_nothing_to_trust(tmp_path, tokenizer, chats, small_chunks):
    lines = chats.read_text().splitlines()
    lines.insert(250, '{"messages": [{"role": "user", "content": 5}]}')  # after several chunks went out
    chats.write_text("\n".join(lines) + "\n")
    cfg = config(tmp_path, chats, preprocessing_num_workers=2)
    with pytest.raises(DataError, match=rf"{chats}:251: messages\[0\]"):
        build_datasets(cfg.data, tokenizer)
    tokenized = tmp_path / "cache" / "tokenized"
    assert [p.name for p in tokenized.iterdir()] == ["digests"]  # no entry, finished or not
    del lines[250]
    chats.write_text("\n".join(lines) + "\n")
    (built,) = build_datasets(cfg.data, tokenizer)
    assert not built.from_cache and len(built.train) > 0


def test_a_second_run_finds_the_entry_without_reading_the_file_again(tmp_path, tokenizer, chats):
    cfg = config(tmp_path, chats)
    build_datasets(cfg.data, tokenizer)
    (memo,) = (tmp_path / "cache/tokenized/digests").iterdir()
    stamp = memo.stat().st_mtime_ns
    (again,) = build_datasets(cfg.data, tokenizer)
    assert again.from_cache and memo.stat().st_mtime_ns == stamp
