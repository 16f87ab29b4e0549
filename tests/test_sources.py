"""OASST trees to threads (formats.md §2), the per-tree split, and `load_source` end to end."""
from __future__ import annotations

import gzip
import json
import re
from collections import Counter
from pathlib import Path

import pytest

from trainer.config import DatasetConfig, load_config
from trainer.paths import CHECKOUT as REPO_ROOT
from trainer.data.conversation import ASSISTANT, PROMPTER
from trainer.data.jsonl import BadRecords
from trainer.data.kinds.oasst import TreeFilter, load_trees, new_counts, trees_from_records
from trainer.data.sources import load_source, resolve_input_path
from trainer.errors import DataError

SAMPLE_TREES = "data/oasst/sample_trees.jsonl"


def oasst(path, **options) -> DatasetConfig:
    return DatasetConfig.of("oasst_export", input_file_path=str(path), **options)


def lengths(threads) -> dict[int, int]:
    return dict(sorted(Counter(len(t.turns) for t in threads).items()))


def tree_ids(threads) -> set[str]:
    return {t.meta["tree_id"] for t in threads}


def write_lines(path: Path, objects) -> Path:
    path.write_text("".join((o if isinstance(o, str) else json.dumps(o)) + "\n" for o in objects))
    return path


def msg(mid, role, text="t", replies=(), **fields):
    return {"message_id": mid, "role": role, "text": text, "replies": list(replies), **fields}


def tree(prompt, state="ready_for_export", **root_fields):
    prompt = {**prompt, "lang": "en", "review_result": True, **root_fields}
    return {"message_tree_id": prompt["message_id"], "tree_state": state, "prompt": prompt}


# ----------------------------------------------------------------------------------------------------------
# The reference file: the exact counts of formats.md §2

@pytest.mark.parametrize("top_k, threads, with_thread, by_length", [
    (None, 538, 95, {2: 188, 4: 342, 6: 8}),
    (1, 98, 94, {2: 52, 4: 46}),
    (2, 276, 94, {2: 103, 4: 172, 6: 1}),
    (3, 467, 94, {2: 150, 4: 310, 6: 7}),
])
def test_reference_thread_counts(reference_data, top_k, threads, with_thread, by_length):
    data = load_source(oasst(reference_data / "oasst/en_100_tree.jsonl", top_k=top_k), "no-cache")
    everything = data.train + data.val
    assert data.counts["trees_kept"] == 100
    assert data.counts["trees_kept"] - data.counts["trees_without_thread"] == with_thread
    assert data.counts["threads"] == len(everything) == threads
    assert lengths(everything) == by_length
    for thread in everything:
        assert [t.role for t in thread.turns] == [PROMPTER, ASSISTANT] * (len(thread.turns) // 2)


def test_reference_split_is_by_tree_and_deterministic(reference_data):
    ds = oasst(reference_data / "oasst/en_100_tree.jsonl", val_split=0.2)
    first, second = load_source(ds, "no-cache"), load_source(ds, "no-cache")
    assert (first.counts["train_trees"], first.counts["val_trees"]) == (80, 20)
    assert not tree_ids(first.train) & tree_ids(first.val)
    assert [t.origin for t in first.train] == [t.origin for t in second.train]
    assert [t.turns for t in first.val] == [t.turns for t in second.val]
    other = load_source(DatasetConfig.of("oasst_export", input_file_path=ds.input_file_path, manual_seed=1),
                        "no-cache")
    assert tree_ids(other.val) != tree_ids(first.val)


def test_threads_share_message_turns(reference_data):
    """A message's Turn is one object in every thread through it, so it can be tokenized once."""
    data = load_source(oasst(reference_data / "oasst/en_100_tree.jsonl", val_split=0.0), "no-cache")
    by_id = {}
    for thread in data.train:
        assert len(thread.meta["message_ids"]) == len(thread.turns)
        for mid, turn in zip(thread.meta["message_ids"], thread.turns):
            assert by_id.setdefault(mid, turn) is turn
    assert len(by_id) < sum(len(t.turns) for t in data.train)


def flatten(tree_object):
    """Hub-style rows (OpenAssistant/oasst1): one message per row, tree id and state on every row, each row with
    its depth."""
    rows, stack = [], [(tree_object["prompt"], None, 0)]
    while stack:
        message, parent, depth = stack.pop()
        row = {k: v for k, v in message.items() if k != "replies"}
        row.update(parent_id=parent, message_tree_id=tree_object["message_tree_id"],
                   tree_state=tree_object["tree_state"])
        rows.append((depth, row))
        stack += [(reply, message["message_id"], depth + 1) for reply in reversed(message.get("replies") or [])]
    return rows


def test_flat_rows_rebuild_the_same_threads(reference_data, tmp_path):
    path = reference_data / "oasst/en_100_tree.jsonl"
    rows = [row for line in path.read_text().splitlines() for row in flatten(json.loads(line))]
    rows.sort(key=lambda item: -item[0])  # every reply before its parent; siblings keep their order
    located = [(f"row {i}", row) for i, (_, row) in enumerate(rows)]
    rules = TreeFilter.from_options(DatasetConfig.of("oasst_export", top_k=2).options)
    counts = new_counts()
    rebuilt = list(load_trees(trees_from_records(located, BadRecords(), counts), rules, counts, BadRecords()))
    direct = load_source(oasst(path, top_k=2, val_split=0.0), "no-cache")
    assert Counter(thread.turns for tree_threads in rebuilt for thread in tree_threads) == \
        Counter(thread.turns for thread in direct.train)
    # The same rows as a flat message export, read through load_source.
    export = write_lines(tmp_path / "messages.jsonl", [row for _, row in located])
    from_file = load_source(oasst(export, top_k=2), "no-cache")
    assert from_file.counts["threads"] == 276 and from_file.counts["trees_kept"] == 100


def test_gzip_export(tmp_path):
    plain = REPO_ROOT / SAMPLE_TREES
    packed = tmp_path / "sample_trees.jsonl.gz"
    with gzip.open(packed, "wt", encoding="utf-8") as f:
        f.write(plain.read_text(encoding="utf-8"))
    a, b = load_source(oasst(plain), "no-cache"), load_source(oasst(packed), "no-cache")
    assert a.counts == b.counts
    assert [t.turns for t in a.train] == [t.turns for t in b.train]


# ----------------------------------------------------------------------------------------------------------
# The rules, one at a time, on small trees

def test_leaf_rule_and_prompter_pop(tmp_path):
    t = tree(msg("r", PROMPTER, "q", [
        msg("a1", ASSISTANT, "x", [msg("p1", PROMPTER, "first follow-up"), msg("p2", PROMPTER, "second")], rank=0),
        msg("a2", ASSISTANT, "y", rank=1),
    ]))
    data = load_source(oasst(write_lines(tmp_path / "t.jsonl", [t]), val_split=0.0), "no-cache")
    # a1's first reply is a prompter leaf: kept, popped back to [r, a1]; p2 is not a first reply: no thread.
    assert sorted(t.meta["message_ids"] for t in data.train) == [("r", "a1"), ("r", "a2")]
    assert data.counts["leaf_paths"] == 2


def test_top_k_unranked_only_child_passes_unranked_siblings_fail(tmp_path):
    t = tree(msg("r", PROMPTER, "q", [
        msg("a1", ASSISTANT, "x", [msg("p", PROMPTER, "more", [msg("a3", ASSISTANT, "only child")])], rank=0),
        msg("a2", ASSISTANT, "y", rank=1),
    ]))
    u = tree(msg("s", PROMPTER, "q", [msg("b1", ASSISTANT, "x"), msg("b2", ASSISTANT, "y")]))
    path = write_lines(tmp_path / "t.jsonl", [t, u])
    data = load_source(oasst(path, top_k=1, val_split=0.0), "no-cache")
    assert [t.meta["message_ids"] for t in data.train] == [("r", "a1", "p", "a3")]
    assert data.counts["paths_dropped_top_k"] == 3
    assert data.counts["trees_without_thread"] == 1


@pytest.mark.parametrize("flag, option, counter", [
    ("deleted", "include_deleted", "paths_dropped_deleted"),
    ("synthetic", "include_synthetic", "paths_dropped_synthetic"),
])
def test_deleted_and_synthetic_anywhere_in_the_path(tmp_path, flag, option, counter):
    t = tree(msg("r", PROMPTER, "q", [
        msg("a1", ASSISTANT, "x", [msg("p", PROMPTER, "more", [msg("a2", ASSISTANT, "z")], **{flag: True})]),
    ]))
    path = write_lines(tmp_path / "t.jsonl", [t])
    with pytest.raises(DataError, match=f"{counter} 1"):
        load_source(oasst(path), "no-cache")
    data = load_source(oasst(path, val_split=0.0, **{option: True}), "no-cache")
    assert [t.meta["message_ids"] for t in data.train] == [("r", "a1", "p", "a2")]


def test_tree_filters_on_the_bundled_sample():
    default = load_source(oasst(SAMPLE_TREES), "no-cache")
    assert {k: default.counts[k] for k in ("trees_read", "trees_dropped_state", "trees_dropped_review",
                                           "trees_dropped_lang", "trees_kept")} == {
        "trees_read": 40, "trees_dropped_state": 4, "trees_dropped_review": 1, "trees_dropped_lang": 6,
        "trees_kept": 29}
    assert default.counts["paths_dropped_deleted"] and default.counts["paths_dropped_synthetic"]
    everything = load_source(oasst(SAMPLE_TREES, lang="en, de,es,fr,ru,it", include_spam=True,
                                   tree_state="ready_for_export,growing,ranking,aborted_low_grade"), "no-cache")
    assert everything.counts["trees_kept"] == 40
    assert everything.counts["trees_read"] - everything.counts["trees_kept"] == 0
    german = load_source(oasst(SAMPLE_TREES, lang="de", val_split=0.0), "no-cache")
    assert german.counts["trees_kept"] == 1 and "Berlin" in german.train[0].turns[0].text


def test_origin_names_file_line_and_tree():
    data = load_source(oasst(SAMPLE_TREES), "no-cache")
    for thread in data.train:
        assert re.fullmatch(rf".*{SAMPLE_TREES}:\d+ tree {thread.meta['tree_id']}", thread.origin)


# ----------------------------------------------------------------------------------------------------------
# Bad input: every message names file, line and field

BAD_TREES = [
    ('{"message_tree_id": "x", "prompt": ', r":1: not valid JSON"),
    ("[1, 2]", r":1: expected a JSON object, got list"),
    ({"foo": 1}, r":1: unknown object.*'message_tree_id'"),
    ({"message_tree_id": "x", "tree_state": "ready_for_export", "prompt": {"role": "prompter", "text": "q"}},
     r":1: .*field 'message_id'"),
    (tree(msg("r", PROMPTER, None)), r":1: message r: field 'text' must be a string"),
    (tree(msg("r", "user")), r":1: message r: field 'role' must be 'prompter' or 'assistant'"),
    (tree(msg("r", PROMPTER, "q", [msg("p", PROMPTER)])),
     r":1: message p: roles must alternate: expected role 'assistant' after a prompter message"),
    (tree(msg("r", ASSISTANT)), r":1: message r: roles must alternate: .*as the tree's root"),
    (tree(msg("r", PROMPTER, "q", [msg("a", ASSISTANT, rank="0")])), r":1: message a: field 'rank' must be int"),
    (tree(msg("r", PROMPTER, "q", [msg("a", ASSISTANT, deleted="no")])), r":1: message a: field 'deleted' must be bool"),
    (tree(msg("r", PROMPTER, "q", replies=[])) | {"prompt": None}, r":1: tree r: field 'prompt' must be"),
    ({"message_id": "m", "parent_id": "gone", "role": "assistant", "text": "t"},
     r":1: message m: field 'parent_id' names 'gone'"),
]


@pytest.mark.parametrize("bad, pattern", BAD_TREES)
def test_bad_tree_line_names_file_line_field(tmp_path, bad, pattern):
    good = tree(msg("ok", PROMPTER, "q", [msg("oka", ASSISTANT, "a")]))
    path = write_lines(tmp_path / "bad.jsonl", [bad, good])
    with pytest.raises(DataError, match=str(path) + pattern):
        load_source(oasst(path), "no-cache")
    skipped = load_source(oasst(path, skip_bad_lines=True, val_split=0.0), "no-cache")
    assert skipped.counts["bad_records_skipped"] == 1 and skipped.counts["threads"] == 1
    assert len(skipped.skipped) == 1 and skipped.skipped[0].startswith(f"{path}:1:")


def test_skip_counts_every_bad_line_and_keeps_the_first_few(tmp_path):
    good = tree(msg("ok", PROMPTER, "q", [msg("oka", ASSISTANT, "a")]))
    path = write_lines(tmp_path / "bad.jsonl", ["not json"] * 7 + [good])
    data = load_source(oasst(path, skip_bad_lines=True, val_split=0.0), "no-cache")
    assert data.counts["bad_records_skipped"] == 7
    assert [s.split(":")[-3] for s in data.skipped] == ["1", "2", "3", "4", "5"]


def flat(mid, role, parent=None, **fields):
    return {"message_id": mid, "parent_id": parent, "role": role, "text": f"text of {mid}", "lang": "en",
            "review_result": True, "message_tree_id": "t", "tree_state": "ready_for_export", **fields}


def test_duplicate_trees_and_dropped_cycles_are_counted(tmp_path):
    good = tree(msg("ok", PROMPTER, "q", [msg("oka", ASSISTANT, "a")]))
    twice = load_source(oasst(write_lines(tmp_path / "twice.jsonl", [good, good]), val_split=0.0), "no-cache")
    assert twice.counts["trees_duplicate"] == 1 and twice.counts["trees_read"] == 1 and twice.counts["threads"] == 1

    # A loop of parents (no duplicate ids) hanging nowhere, with a reply below it, beside a good thread.
    rows = [flat("r", PROMPTER), flat("a", ASSISTANT, "r"), flat("x", PROMPTER, "y"), flat("y", ASSISTANT, "x"),
            flat("z", PROMPTER, "y")]
    path = write_lines(tmp_path / "loop.jsonl", rows)
    with pytest.raises(DataError, match=rf"{path}:3: message x: its parent_id chain loops back on itself; 3 "):
        load_source(oasst(path), "no-cache")
    data = load_source(oasst(path, skip_bad_lines=True, val_split=0.0), "no-cache")
    assert data.counts["messages_dropped_cycle"] == 3 and data.counts["bad_records_skipped"] == 1
    assert [t.meta["message_ids"] for t in data.train] == [("r", "a")]

    # A message_id given twice makes a loop through the second copy: refused, or skipped and counted.
    rows = [flat("r", PROMPTER), flat("a", ASSISTANT, "r"), flat("r", PROMPTER, "a")]
    path = write_lines(tmp_path / "dup.jsonl", rows)
    with pytest.raises(DataError, match=rf"{path}:3: message r: duplicate message_id \(first at {path}:1\)"):
        load_source(oasst(path), "no-cache")
    data = load_source(oasst(path, skip_bad_lines=True, val_split=0.0), "no-cache")
    assert data.counts["bad_records_skipped"] == 1 and [t.meta["message_ids"] for t in data.train] == [("r", "a")]


def test_a_600_turn_thread_is_walked_without_recursion(tmp_path):
    roles = [PROMPTER, ASSISTANT]
    rows = [flat("m0", PROMPTER)] + [flat(f"m{i}", roles[i % 2], f"m{i - 1}") for i in range(1, 600)]
    data = load_source(oasst(write_lines(tmp_path / "deep.jsonl", rows), val_split=0.0), "no-cache")
    assert [len(t.turns) for t in data.train] == [600]
    nested = msg("n299", ASSISTANT, "a")
    for i in range(298, -1, -1):
        nested = msg(f"n{i}", roles[i % 2], "t", [nested])
    data = load_source(oasst(write_lines(tmp_path / "nested.jsonl", [tree(nested)]), val_split=0.0), "no-cache")
    assert [len(t.turns) for t in data.train] == [300]


def test_no_threads_left_names_dataset_file_and_counts(tmp_path):
    with pytest.raises(DataError) as e:
        load_source(oasst(SAMPLE_TREES, lang="xx"), "no-cache")
    message = str(e.value)
    assert "oasst_export" in message and SAMPLE_TREES in message and "trees_dropped_lang 35" in message


# ----------------------------------------------------------------------------------------------------------
# Finding files, the hub, the bundled samples

def test_relative_path_prefers_cache_dir_then_lists_every_place(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cached = tmp_path / "cache" / SAMPLE_TREES
    cached.parent.mkdir(parents=True)
    cached.write_text((REPO_ROOT / SAMPLE_TREES).read_text())
    assert resolve_input_path(SAMPLE_TREES, "cache") == tmp_path / "cache" / SAMPLE_TREES
    assert resolve_input_path(SAMPLE_TREES, "elsewhere") == REPO_ROOT / SAMPLE_TREES
    with pytest.raises(DataError) as e:
        resolve_input_path("missing.jsonl", "cache")
    assert str(e.value).count("missing.jsonl") == 4
    assert str(tmp_path / "cache" / "missing.jsonl") in str(e.value)
    assert str(REPO_ROOT / "missing.jsonl") in str(e.value)


def test_hub_offline_fails_fast_with_advice(monkeypatch):
    import datasets
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    with pytest.raises(DataError) as e:
        load_source(DatasetConfig.of("alpaca"), "no-cache", hub_timeout=1.0)
    message = str(e.value)
    assert "yahma/alpaca-cleaned" in message and "offline" in message
    assert "- alpaca: {input_file_path: path/to/alpaca_data.json}" in message


def test_bundled_samples_load_through_the_demo_config():
    config = load_config(["--configs", "demo-data"])
    loaded = {ds.name: load_source(ds, config.data.cache_dir) for ds in config.data.datasets}
    assert {name: d.counts["train"] + d.counts["val"] for name, d in loaded.items()} == {
        "oasst_export": 73, "alpaca": 62, "airoboros": 40, "messages": 30, "sharegpt": 30}
    for data in loaded.values():
        assert data.val and data.train and data.counts["bad_records_skipped"] == 0
        assert all(c.turns[-1].role == ASSISTANT for c in data.train + data.val)
