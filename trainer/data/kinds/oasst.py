"""OASST message trees to SFT threads, with the rules of OASST's `oasst_export` loader (LAION-AI/Open-Assistant
`model/model_training/custom_datasets/oasst_dataset.py`, 2da2d8c) kept exactly.

Trees come from tree exports (one tree per line), from flat message exports, or from the hub's flat
`OpenAssistant/oasst1` table; the last two are rebuilt into trees first. Each tree that passes the tree filter
contributes the root-to-leaf paths that pass the leaf rule and the thread filter, so shared prefixes repeat
across threads; the `Turn` of a message is one object shared by all its threads, and `meta["message_ids"]`
names the messages, so that later stages can tokenize every message once.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from trainer.data.conversation import ASSISTANT, PROMPTER, Conversation, Turn
from trainer.data.jsonl import BadRecords
from trainer.data.kinds.base import DatasetKind, Rows
from trainer.errors import DataError
from trainer.schema import FieldProblems, comma_list, option

# The per-filter counts, in the order a report lists them.
COUNT_KEYS = (
    "trees_duplicate", "messages_dropped_cycle", "trees_read", "trees_dropped_state", "trees_dropped_review",
    "trees_dropped_lang", "trees_kept",
    "trees_without_thread", "leaf_paths", "paths_dropped_deleted", "paths_dropped_synthetic", "paths_dropped_top_k",
    "threads",
)

# Why a path is rejected, as bits; a path with several reasons is counted under the first of these.
_DELETED, _SYNTHETIC, _TOP_K = 1, 2, 4
_REASONS = ((_DELETED, "paths_dropped_deleted"), (_SYNTHETIC, "paths_dropped_synthetic"),
            (_TOP_K, "paths_dropped_top_k"))
_OPTIONAL_TYPES = (("lang", str), ("parent_id", str), ("deleted", bool), ("synthetic", bool),
                   ("review_result", bool), ("rank", int), ("replies", list))


@dataclass(frozen=True)
class OasstOptions:
    """The `oasst_export` entry's own options (OASST's defaults)."""

    lang: str = option("en", "comma list of languages, checked on each tree's root prompt")
    top_k: int | None = option(None, "keep only replies ranked better than k (unranked only children pass)")
    tree_state: str = option("ready_for_export", "comma list of tree states to keep")
    include_deleted: bool = option(False, "keep threads with a deleted message")
    include_synthetic: bool = option(False, "keep threads with a synthetic message")
    include_spam: bool = option(False, "keep trees whose root prompt's review_result is false or null")

    def __post_init__(self) -> None:
        if self.top_k is not None and self.top_k < 1:
            raise FieldProblems([("top_k", f"must be at least 1, got {self.top_k}")])


@dataclass(frozen=True)
class TreeFilter:
    """The `oasst_export` options that decide which trees and paths become threads."""

    states: frozenset[str]
    langs: frozenset[str]
    top_k: int | None = None
    include_deleted: bool = False
    include_synthetic: bool = False
    include_spam: bool = False

    @classmethod
    def from_options(cls, options: OasstOptions) -> TreeFilter:
        return cls(states=frozenset(comma_list(options.tree_state)), langs=frozenset(comma_list(options.lang)),
                   top_k=options.top_k, include_deleted=options.include_deleted,
                   include_synthetic=options.include_synthetic, include_spam=options.include_spam)


def new_counts() -> dict[str, int]:
    return dict.fromkeys(COUNT_KEYS, 0)


# ----------------------------------------------------------------------------------------------------------
# Reading trees

def trees_from_records(records: Iterable[tuple[str, dict[str, Any]]], bad: BadRecords,
                       counts: dict[str, int]) -> Iterator[tuple[str, dict[str, Any]]]:
    """`(location, tree)` for every tree among the records; flat message records are rebuilt into trees.

    As in OASST's reader, a top-level `message_id` marks a message and otherwise `message_tree_id` a tree, so
    one reader serves tree exports, message exports and the hub's flat table.
    """
    messages: list[tuple[str, dict[str, Any]]] = []
    for where, record in records:
        if "message_id" in record:
            messages.append((where, record))
        elif "message_tree_id" in record:
            yield where, record
        else:
            bad.handle(DataError(f"{where}: unknown object: expected a tree (with 'message_tree_id') or a message "
                                 f"(with 'message_id'), got keys {sorted(record)[:8]}"))
    if messages:
        yield from trees_from_messages(messages, bad, counts)


def trees_from_messages(rows: Iterable[tuple[str, dict[str, Any]]], bad: BadRecords,
                        counts: dict[str, int]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Nested trees from flat message rows (the hub's `OpenAssistant/oasst1`, message exports).

    A row with no `parent_id` is a root; every other row becomes a reply of its parent, replies in row order,
    whatever order the rows come in. The tree's state is the root row's `tree_state`. A `message_id` given twice
    is a bad record (the second), and messages whose parent chain loops are a bad record too (they would make the
    "tree" endless), their number counted in `messages_dropped_cycle`.
    """
    nodes: dict[str, dict[str, Any]] = {}
    first_seen: dict[str, str] = {}
    located: list[tuple[str, dict[str, Any]]] = []
    for where, row in rows:
        message_id = row.get("message_id")
        if not isinstance(message_id, str):
            bad.handle(DataError(f"{where}: field 'message_id' must be a string, got {message_id!r}"))
            continue
        parent_id = row.get("parent_id")
        if parent_id is not None and not isinstance(parent_id, str):
            bad.handle(DataError(f"{where}: message {message_id}: field 'parent_id' must be str or null, got "
                                 f"{parent_id!r}"))
            continue
        if message_id in nodes:
            bad.handle(DataError(f"{where}: message {message_id}: duplicate message_id (first at "
                                 f"{first_seen[message_id]}); each message must be given once"))
            continue
        node = {k: v for k, v in row.items() if k not in ("message_tree_id", "tree_state", "replies")}
        node["replies"] = []
        nodes[message_id] = node
        first_seen[message_id] = where
        located.append((where, row))
    parents = {row["message_id"]: row.get("parent_id") for _, row in located}
    looping = _looping(parents)
    if looping:
        counts["messages_dropped_cycle"] += len(looping)
        where, row = next((w, r) for w, r in located if r["message_id"] in looping)
        bad.handle(DataError(f"{where}: message {row['message_id']}: its parent_id chain loops back on itself; "
                             f"{len(looping)} message(s) on or below such loops dropped (a thread must start at a "
                             f"message without parent_id)"))
    trees = []
    for where, row in located:
        if row["message_id"] in looping:
            continue
        node = nodes[row["message_id"]]
        parent_id = row.get("parent_id")
        if parent_id is None:
            trees.append((where, {"message_tree_id": row.get("message_tree_id") or row["message_id"],
                                  "tree_state": row.get("tree_state"), "prompt": node}))
        elif parent_id in nodes:
            nodes[parent_id]["replies"].append(node)
        else:
            bad.handle(DataError(f"{where}: message {row['message_id']}: field 'parent_id' names {parent_id!r}, "
                                 f"which is not a message of this dataset"))
    yield from trees


def _looping(parents: dict[str, Any]) -> set[str]:
    """The messages whose chain of parents never reaches a root (no parent_id) or a missing parent: those on a
    loop and those below one. Each chain is walked once (iteratively: exports can be thousands of turns deep)."""
    ends: dict[str, bool] = {}  # message -> its chain loops
    for start in parents:
        chain, seen, current = [], set(), start
        while isinstance(current, str) and current in parents and current not in ends and current not in seen:
            seen.add(current)
            chain.append(current)
            current = parents[current]
        loops = current in seen or ends.get(current, False)
        for message in chain:
            ends[message] = loops
    return {message for message, loops in ends.items() if loops}


# ----------------------------------------------------------------------------------------------------------
# Validation

def validate_tree(tree: dict[str, Any], where: str) -> None:
    """Raise DataError naming the field (and message) of the first schema problem in the tree."""
    tree_id = tree.get("message_tree_id")
    if not isinstance(tree_id, str):
        raise DataError(f"{where}: field 'message_tree_id' must be a string, got {tree_id!r}")
    state = tree.get("tree_state")
    if state is not None and not isinstance(state, str):
        raise DataError(f"{where}: tree {tree_id}: field 'tree_state' must be a string, got {state!r}")
    prompt = tree.get("prompt")
    if not isinstance(prompt, dict):
        raise DataError(f"{where}: tree {tree_id}: field 'prompt' must be a message object, got {prompt!r}")
    stack: list[tuple[Any, str | None]] = [(prompt, None)]
    while stack:
        message, parent_role = stack.pop()
        _validate_message(message, parent_role, where)
        for reply in message.get("replies") or ():
            stack.append((reply, message["role"]))


def _validate_message(message: Any, parent_role: str | None, where: str) -> None:
    if not isinstance(message, dict):
        raise DataError(f"{where}: expected a message object in 'replies', got {type(message).__name__}")
    message_id = message.get("message_id")
    if not isinstance(message_id, str):
        raise DataError(f"{where}: a message's field 'message_id' must be a string, got {message_id!r}")
    at = f"{where}: message {message_id}"
    if not isinstance(message.get("text"), str):
        raise DataError(f"{at}: field 'text' must be a string, got {message.get('text')!r}")
    role = message.get("role")
    if role not in (PROMPTER, ASSISTANT):
        raise DataError(f"{at}: field 'role' must be 'prompter' or 'assistant', got {role!r}")
    expected = PROMPTER if parent_role in (None, ASSISTANT) else ASSISTANT
    if role != expected:
        after = "as the tree's root" if parent_role is None else f"after a {parent_role} message"
        raise DataError(f"{at}: roles must alternate: expected role '{expected}' {after}, got '{role}'")
    for key, kind in _OPTIONAL_TYPES:
        value = message.get(key)
        if value is not None and (type(value) is not kind):
            raise DataError(f"{at}: field '{key}' must be {kind.__name__} or null, got {value!r}")


# ----------------------------------------------------------------------------------------------------------
# Threads

def tree_threads(tree: dict[str, Any], where: str, rules: TreeFilter, counts: dict[str, int],
                 source: str = "oasst_export") -> list[Conversation] | None:
    """The SFT threads of one tree, or None when the tree filter drops it (counted in `counts`)."""
    validate_tree(tree, where)
    counts["trees_read"] += 1
    prompt = tree["prompt"]
    if tree.get("tree_state") not in rules.states:
        counts["trees_dropped_state"] += 1
        return None
    if not rules.include_spam and not prompt.get("review_result"):
        counts["trees_dropped_review"] += 1
        return None
    if prompt.get("lang") not in rules.langs:
        counts["trees_dropped_lang"] += 1
        return None
    counts["trees_kept"] += 1
    tree_id = tree["message_tree_id"]
    origin = f"{where} tree {tree_id}"
    threads: list[Conversation] = []
    turns: list[Turn] = []
    ids: list[str] = []
    # Depth first, replies in order, with an explicit stack: a thread hundreds of turns deep must not hit
    # Python's recursion limit. Each entry: message, its number of siblings, whether it is the first, the
    # rejection bits of its ancestors, its depth.
    stack: list[tuple[dict[str, Any], int, bool, int, int]] = [(prompt, 1, True, 0, 0)]
    while stack:
        message, siblings, first, mask, depth = stack.pop()
        del turns[depth:], ids[depth:]
        role = message["role"]
        if not rules.include_deleted and message.get("deleted"):
            mask |= _DELETED
        if not rules.include_synthetic and message.get("synthetic"):
            mask |= _SYNTHETIC
        if rules.top_k is not None and role == ASSISTANT:
            rank = message.get("rank")
            if (rank is None and siblings > 1) or (rank is not None and rank >= rules.top_k):
                mask |= _TOP_K
        turns.append(Turn(role, message["text"]))
        ids.append(message["message_id"])
        replies = message.get("replies")
        if replies:
            stack += [(reply, len(replies), i == 0, mask, depth + 1)
                      for i, reply in reversed(list(enumerate(replies)))]
        elif len(turns) >= 2 and (role == ASSISTANT or first):
            counts["leaf_paths"] += 1
            if mask:
                counts[next(name for bit, name in _REASONS if mask & bit)] += 1
            else:
                end = len(turns) if role == ASSISTANT else len(turns) - 1  # a prompter leaf is dropped
                threads.append(Conversation(tuple(turns[:end]), source, origin,
                                            {"tree_id": tree_id, "message_ids": tuple(ids[:end])}))
    counts["threads"] += len(threads)
    if not threads:
        counts["trees_without_thread"] += 1
    return threads


def load_trees(trees: Iterable[tuple[str, dict[str, Any]]], rules: TreeFilter, counts: dict[str, int],
               bad: BadRecords, source: str = "oasst_export") -> Iterator[list[Conversation]]:
    """Threads per tree, for every tree that passed the tree filter (trees with no thread included, since
    OASST's split counts them), one tree at a time."""
    seen: set[str] = set()
    for where, tree in trees:
        tree_id = tree.get("message_tree_id")
        if isinstance(tree_id, str):
            if tree_id in seen:
                counts["trees_duplicate"] += 1  # the same tree twice (two exports joined): its threads once
                continue
            seen.add(tree_id)
        try:
            threads = tree_threads(tree, where, rules, counts, source)
        except DataError as e:
            bad.handle(e)
            continue
        if threads is not None:
            yield threads


def read_threads(rows: Rows, options: OasstOptions, bad: BadRecords, source: str):
    """Threads per tree (the split unit), for every tree that passed the tree filter."""
    counts = new_counts()
    return load_trees(trees_from_records(rows, bad, counts), TreeFilter.from_options(options), counts, bad,
                      source), counts


KIND = DatasetKind("oasst_export", "OpenAssistant/oasst1", 0.2, "path/to/2023-04-12_oasst_ready.trees.jsonl.gz",
                   read_threads, OasstOptions, unit="tree",
                   columns=(("message_id", "role", "text"), ("message_tree_id", "prompt")))
