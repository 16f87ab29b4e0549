"""The chat-data kinds (`messages`, `sharegpt`): records to conversations, system turns, clean errors, and the same
rendering, masking and truncation as every other kind, in every prompt format."""
from __future__ import annotations

import json

import numpy as np
import pytest

from trainer.config import DatasetConfig, TrainConfig
from trainer.data.build import build_datasets
from trainer.data.conversation import ASSISTANT, PROMPTER, Conversation, Turn
from trainer.data.sources import load_source
from trainer.data.tokenize import SegmentEncoder, encode
from trainer.errors import ConfigError, DataError
from trainer.formats import FORMATS, PromptFormat, format_for
from trainer.paths import CHECKOUT as REPO

SYSTEM = {"role": "system", "content": "You are terse."}
EXCHANGE = [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."}]

DELPHI_FORMATS = [name for name, cls in FORMATS.items() if issubclass(cls, PromptFormat)]  # built from pieces


def write(tmp_path, name: str, records: list) -> str:
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def load(kind: str, path: str, **options):
    return load_source(DatasetConfig.of(kind, input_file_path=path, val_split=0.0, **options), "no-cache")


def sharegpt(*turns: tuple[str, str]) -> dict:
    return {"conversations": [{"from": who, "value": text} for who, text in turns]}


def test_messages_records_keep_system_turn_and_every_exchange(tmp_path):
    path = write(tmp_path, "chat.jsonl", [{"messages": [SYSTEM, *EXCHANGE, *EXCHANGE]}, {"messages": EXCHANGE}])
    first, second = load("messages", path).train
    assert first.system == "You are terse." and second.system is None
    assert [t.role for t in first.turns] == [PROMPTER, ASSISTANT] * 2
    assert first.turns[1] == Turn(ASSISTANT, "Hello.") and first.origin == f"{path}:1"


def test_sharegpt_reads_human_gpt_and_the_user_assistant_aliases(tmp_path):
    path = tmp_path / "chat.json"
    path.write_text(json.dumps([sharegpt(("system", "S"), ("human", "q"), ("gpt", "a")),
                                sharegpt(("user", "q2"), ("assistant", "a2"))], indent=2))
    first, second = load("sharegpt", str(path)).train
    assert first.system == "S" and first.turns == (Turn(PROMPTER, "q"), Turn(ASSISTANT, "a"))
    assert second.turns == (Turn(PROMPTER, "q2"), Turn(ASSISTANT, "a2"))
    assert first.origin == f"{path}:2"


def test_trailing_user_turns_are_dropped_as_oasst_drops_a_trailing_prompter(tmp_path):
    path = write(tmp_path, "chat.jsonl", [{"messages": [*EXCHANGE, {"role": "user", "content": "Thanks!"}]}])
    (conv,) = load("messages", path).train
    assert [t.text for t in conv.turns] == ["Hi?", "Hello."]


@pytest.mark.parametrize("kind, record, message", [
    ("messages", {"messages": [{"role": "human", "content": "q"}]},
     r"chat.jsonl:1: messages\[0\]: role 'human' is not one of system, user, assistant, tool$"),
    ("messages", {"messages": [*EXCHANGE, {"role": "ipython", "content": "{}"}, EXCHANGE[1]]},
     r"chat.jsonl:1: messages\[2\]: role 'ipython' is not one of .* \(tool results: role 'tool'\)"),
    ("messages", {"messages": [*EXCHANGE, {"role": "tool", "content": "{}"}, EXCHANGE[1]]},
     r"chat.jsonl:1: messages\[2\] \(role 'tool'\): tool message where a user message must come; tool results "
     r"answer the assistant message whose tool_calls precede them"),
    ("sharegpt", sharegpt(("human", "q"), ("function_call", "{}")),
     r"chat.jsonl:1: conversations\[1\]: from 'function_call' is not one of system, human, user, gpt, assistant "
     r"\(tool calls"),
    ("messages", {"messages": [EXCHANGE[0], EXCHANGE[0], EXCHANGE[1]]},
     r"chat.jsonl:1: messages\[1\] \(role 'user'\): user message after a user message; messages alternate"),
    ("sharegpt", sharegpt(("gpt", "a"), ("human", "q")),
     r"chat.jsonl:1: conversations\[0\] \(from 'gpt'\): assistant message first; messages alternate"),
    ("messages", {"messages": [*EXCHANGE, SYSTEM, *EXCHANGE]},
     r"chat.jsonl:1: messages\[2\] \(role 'system'\): a system message can only come first"),
    ("messages", {"messages": [SYSTEM, EXCHANGE[0]]}, r"chat.jsonl:1: no assistant reply to train on"),
    ("messages", {"messages": [{"role": "user", "content": [{"type": "text", "text": "q"}]}]},
     r"chat.jsonl:1: messages\[0\]: field 'content' must be a string, got list"),
    ("messages", {"conversations": []}, r"chat.jsonl:1: field 'messages' must be a list of message objects, got "
                                        r"nothing"),
    ("sharegpt", {"conversations": "q"}, r"field 'conversations' must be a list of message objects, got str 'q'"),
])
def test_bad_records_name_the_file_line_message_and_value(tmp_path, kind, record, message):
    path = write(tmp_path, "chat.jsonl", [record])
    with pytest.raises(DataError, match=message):
        load(kind, path)


def test_bad_records_can_be_skipped_and_counted(tmp_path):
    path = write(tmp_path, "chat.jsonl", [{"messages": EXCHANGE}, {"messages": [EXCHANGE[1]]}, {"messages": EXCHANGE}])
    data = load("messages", path, skip_bad_lines=True)
    assert len(data.train) == 2 and data.counts["bad_records_skipped"] == 1
    assert data.skipped[0].startswith(f"{path}:2: messages[0] (role 'assistant'): assistant message first")


def test_no_hub_default_says_how_to_point_at_a_file():
    with pytest.raises(DataError, match=r"(?s)dataset 'sharegpt': no input_file_path and no hub dataset.*"
                                        r"- sharegpt: \{input_file_path: path/to/sharegpt.json\}"):
        load_source(DatasetConfig.of("sharegpt"), "no-cache")


def test_kind_options_are_checked_like_every_kind():
    with pytest.raises(ConfigError, match=r"datasets\[0\] \(messages\): unknown option 'lang'; it applies to "
                                          r"oasst_export only"):
        TrainConfig.of(datasets=[{"messages": {"lang": "en"}}])


@pytest.mark.parametrize("prompt_format", DELPHI_FORMATS)
def test_system_turn_replaces_the_configured_prefix_in_every_format(tokenizer, prompt_format):
    data = TrainConfig.of(prompt_format=prompt_format, use_system_prefix=True, system_prefix="CONFIGURED").data
    fmt = format_for(data, tokenizer)
    turns = (Turn(PROMPTER, "Hi?"), Turn(ASSISTANT, "Hello."))
    own = "".join(s.text for s in fmt.render(Conversation(turns, "messages", system="OWN")))
    configured = "".join(s.text for s in fmt.render(Conversation(turns, "messages")))
    assert "OWN" in own and "CONFIGURED" not in own
    assert own == configured.replace("CONFIGURED", "OWN")


@pytest.mark.parametrize("prompt_format", DELPHI_FORMATS)
def test_only_the_replies_are_trained_and_truncation_keeps_the_system_turn(tokenizer, prompt_format, tmp_path):
    records = [{"messages": [SYSTEM, {"role": "user", "content": f"Question {i}?"},
                             {"role": "assistant", "content": f"Answer number {i}."}]} for i in range(3)]
    long = [SYSTEM] + [m for i in range(6) for m in ({"role": "user", "content": f"Tell me fact {i}."},
                                                     {"role": "assistant", "content": f"Fact {i} is true."})]
    path = write(tmp_path, "chat.jsonl", [*records, {"messages": long}])
    config = TrainConfig.of(datasets=[{"messages": {"input_file_path": path, "val_split": 0.0}}],
                            prompt_format=prompt_format, cache_dir=str(tmp_path / "cache"), max_length=64)
    fmt = format_for(config.data, tokenizer)
    (built,) = build_datasets(config.data, tokenizer)
    assert len(built.train) == 4 and built.counts["train_truncated"] == 1
    replies = [m["content"] for m in long + [m for r in records for m in r["messages"]] if m["role"] == "assistant"]
    for row in built.train:
        ids, labels = np.array(row["input_ids"]), np.array(row["labels"])
        text = tokenizer.decode(ids, skip_special_tokens=False)
        trained = tokenizer.decode(ids[labels != -100], skip_special_tokens=False)
        assert text.count("You are terse.") == 1 and len(ids) <= 64
        assert trained == "".join(reply + fmt.end_key for reply in dict.fromkeys(replies) if reply in text)
    # The truncated sample lost its oldest exchanges, not its system turn or its last reply.
    longest = max(load("messages", path).train, key=lambda c: len(c.turns))
    sample = encode(longest, fmt, SegmentEncoder(tokenizer), 64, True)
    assert sample.turns_dropped > 0 and "Fact 5 is true." in tokenizer.decode(sample.input_ids)


def test_bundled_chat_samples_cover_system_turns_and_multi_turn():
    for kind, name in (("messages", "data/messages/sample.jsonl"), ("sharegpt", "data/sharegpt/sample.json")):
        data = load(kind, str(REPO / name))
        convs = data.train
        assert len(convs) == 30 and data.counts["bad_records_skipped"] == 0
        assert sum(c.system is not None for c in convs) >= 7
        assert max(len(c.turns) for c in convs) >= 4
