"""`prompt_format: chat_template` on the real tokenizers of today's chat models (../shared/data/model_tokenizers):
through the data builder, the stored ids are `apply_chat_template` of the conversation, the trained tokens are
exactly each assistant turn (its content, what the template renders around it, its end-of-turn token), parity.json
records the check, and every bad input is one line."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from trainer.config import TrainConfig
from trainer.data.build import build_datasets
from trainer.data.conversation import ASSISTANT, PROMPTER, Conversation, Turn
from trainer.data.parity import PARITY_FILE
from trainer.data.tokenize import SegmentEncoder, encode
from trainer.errors import ConfigError, DataError
from trainer.formats import build_format
from trainer.formats.own_template import PINNED_DATE
from trainer.tokens import IGNORE_INDEX, load_tokenizer

END = {"llama-3.2-3b-instruct": "<|eot_id|>", "qwen2.5-0.5b-instruct": "<|im_end|>", "qwen3-0.6b": "<|im_end|>",
       "mistral-7b-instruct-v0.3": "</s>"}
PAD = {"llama-3.2-3b-instruct": "<|finetune_right_pad_id|>", "qwen2.5-0.5b-instruct": "<|endoftext|>",
       "qwen3-0.6b": "<|endoftext|>", "mistral-7b-instruct-v0.3": "[control_8]"}
TOOL_TEMPLATES = ("llama-3.2-3b-instruct", "qwen2.5-0.5b-instruct", "qwen3-0.6b")
SYSTEM = {"role": "system", "content": "You answer briefly."}
EXCHANGES = [("Hi, who are you?", "I am a helpful assistant."), ("What is 2+2?", "2+2 equals 4."),
             ("And 3+3?", "6, twice 3.")]
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "The weather in a city",
                                            "parameters": {"type": "object",
                                                           "properties": {"city": {"type": "string"}}}}}
CALL = {"role": "assistant", "content": None, "tool_calls": [
    {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]}
RESULT = {"role": "tool", "name": "get_weather", "content": "22 degrees, sunny"}


@pytest.fixture(scope="module")
def tokenizers(reference_data):
    """Each real tokenizer as training loads it for this format (nothing added, a pad chosen)."""
    folder = reference_data / "model_tokenizers"
    if not folder.is_dir():
        pytest.fail(f"DELPHI_REFERENCE_DATA={reference_data} does not hold model_tokenizers/")
    return {name: load_tokenizer(str(folder / name), chat_tokens=False) for name in END}


def chat(exchanges, system: bool) -> list[dict]:
    head = [SYSTEM] if system else []
    return head + [m for q, a in exchanges for m in ({"role": "user", "content": q},
                                                    {"role": "assistant", "content": a})]


def build(tmp_path, tokenizer, records, **options):
    path = tmp_path / "chat.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    config = TrainConfig.of(datasets=[{"messages": {"input_file_path": str(path), "val_split": 0.0}}],
                            prompt_format="chat_template", cache_dir=str(tmp_path / "cache"), **options)
    (built,) = build_datasets(config.data, tokenizer)
    return built


def template_ids(tokenizer, messages, **kwargs) -> list[int]:
    return tokenizer.apply_chat_template(messages, tokenize=True, date_string=PINNED_DATE, **kwargs)["input_ids"]


def trained_runs(tokenizer, row) -> list[str]:
    """The trained tokens, decoded run by run (consecutive trained tokens)."""
    ids, trained = np.asarray(row["input_ids"]), np.asarray(row["labels"]) != IGNORE_INDEX
    assert (np.asarray(row["labels"])[trained] == ids[trained]).all()
    cuts = np.flatnonzero(np.diff(trained.astype(np.int8))) + 1
    return [tokenizer.decode(run.tolist()) for run, flags in zip(np.split(ids, cuts), np.split(trained, cuts))
            if flags[0]]


@pytest.mark.parametrize("system", [False, True], ids=["no-system", "system"])
@pytest.mark.parametrize("name", list(END))
def test_trained_ids_are_apply_chat_template_and_labels_are_the_replies(tmp_path, tokenizers, name, system):
    tokenizer = tokenizers[name]
    conversations = [chat(EXCHANGES[:n], system) for n in (1, 2, 3)]
    if name.startswith("mistral") and system:  # its template refuses a system role: one line, naming the sample
        with pytest.raises(DataError, match=r"chat.jsonl:\d: the chat template of '.*mistral-7b-instruct-v0.3' "
                                            r"refuses this conversation: Conversation roles must alternate"):
            build(tmp_path, tokenizer, [{"messages": m} for m in conversations])
        return
    built = build(tmp_path, tokenizer, [{"messages": m} for m in conversations])
    assert len(built.train) == 3 and tokenizer.pad_token == PAD[name]
    rows = {tuple(row["input_ids"]): row for row in built.train}  # the split shuffles
    for messages in conversations:
        row = rows[tuple(template_ids(tokenizer, messages))]
        replies = [a + END[name] for _, a in EXCHANGES[:len(messages) // 2]]
        if name == "qwen3-0.6b":  # its template opens the turn after the last user message with a thinking block
            replies[-1] = "<think>\n\n</think>\n\n" + replies[-1]
        assert trained_runs(tokenizer, row) == replies
    parity = json.loads((built.cache_path / PARITY_FILE).read_text())
    assert parity["result"] == "ok" and parity["splits"]["train"]["checked"] == parity["splits"]["train"]["samples"] == 3
    assert parity["end_of_turn_tokens"] == [END[name]] and parity["splits"]["train"]["assistant_turns"] == 6
    assert parity["date_string"] == PINNED_DATE and not parity["sampled"]


@pytest.mark.parametrize("name", TOOL_TEMPLATES)
def test_tool_calls_are_trained_and_tool_results_masked(tmp_path, tokenizers, name):
    tokenizer = tokenizers[name]
    messages = [{"role": "user", "content": "Weather in Paris?"}, CALL, RESULT,
                {"role": "assistant", "content": "It is 22 degrees and sunny in Paris."}]
    built = build(tmp_path, tokenizer, [{"messages": messages, "tools": [WEATHER]}])
    (row,) = built.train
    assert row["input_ids"] == template_ids(tokenizer, messages, tools=[WEATHER])
    call, reply = trained_runs(tokenizer, row)
    assert '"get_weather"' in call and '"Paris"' in call and call.endswith(END[name]) and "22" not in call
    thinking = "<think>\n\n</think>\n\n" if name == "qwen3-0.6b" else ""  # Qwen3's last turn, as above
    assert reply == thinking + "It is 22 degrees and sunny in Paris." + END[name]
    assert "22 degrees, sunny" in tokenizer.decode(row["input_ids"])  # the result is there, untrained
    assert json.loads((built.cache_path / PARITY_FILE).read_text())["splits"]["train"]["assistant_turns"] == 2


def test_qwen3_reasoning_is_trained_as_rendered_and_dropped_from_earlier_turns(tmp_path, tokenizers):
    tokenizer = tokenizers["qwen3-0.6b"]
    first = {"role": "assistant", "content": "4.", "reasoning_content": "Two and two make four."}
    last = {"role": "assistant", "content": "6.", "reasoning_content": "Three and three make six."}
    messages = [{"role": "user", "content": "2+2?"}, first, {"role": "user", "content": "3+3?"}, last]
    (row,) = build(tmp_path, tokenizer, [{"messages": messages}]).train
    assert row["input_ids"] == template_ids(tokenizer, messages)
    assert trained_runs(tokenizer, row) == ["4.<|im_end|>",
                                            "<think>\nThree and three make six.\n</think>\n\n6.<|im_end|>"]
    assert "Two and two" not in tokenizer.decode(row["input_ids"])  # the template drops earlier reasoning


def test_truncation_keeps_whole_recent_turns_and_drops_samples_with_nothing_trained(tmp_path, tokenizers):
    tokenizer = tokenizers["llama-3.2-3b-instruct"]
    long = chat(EXCHANGES, system=False)
    last_alone = len(template_ids(tokenizer, long[-2:]))
    too_long = [{"role": "user", "content": "word " * 400}, {"role": "assistant", "content": "ok"}]
    built = build(tmp_path, tokenizer, [{"messages": long}, {"messages": too_long}], max_length=last_alone + 5)
    (row,) = built.train
    assert row["input_ids"] == template_ids(tokenizer, long[-2:])
    assert trained_runs(tokenizer, row) == [EXCHANGES[-1][1] + "<|eot_id|>"]
    assert built.counts["train_truncated"] == 1 and built.counts["train_dropped_no_trained_tokens"] == 1


def test_generation_prompt_is_the_chat_prefix_and_end_key_the_turn_end(tokenizers):
    for name, tokenizer in tokenizers.items():
        fmt = build_format("chat_template", tokenizer)
        (q1, a1), (q2, _) = EXCHANGES[:2]
        prompt = fmt.generation_prompt([Turn(PROMPTER, q1), Turn(ASSISTANT, a1), Turn(PROMPTER, q2)], None)
        assert prompt == tokenizer.apply_chat_template(chat(EXCHANGES[:2], False)[:3], tokenize=False,
                                                       add_generation_prompt=True, date_string=PINNED_DATE)
        assert fmt.end_key == END[name] and fmt.chat_template() == tokenizer.chat_template


def test_a_reply_merging_into_its_generation_prompt_fails_parity(tmp_path, tokenizers):
    """Qwen's generation prompt ends with a newline token; a reply starting with blank lines merges with it into
    one token, so the server's prompt is not a prefix of what training would use."""
    messages = [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "\n\nA."}]
    with pytest.raises(DataError, match=r"parity: .*chat.jsonl:1: position \d+: training has '\\n\\n\\n' \(id \d+\), "
                                        r"the generation prompt before message 1 has '\\n'"):
        build(tmp_path, tokenizers["qwen2.5-0.5b-instruct"], [{"messages": messages}])


def test_tool_calls_on_a_template_without_tools_are_refused(tmp_path, tokenizers):
    tokenizer = tokenizers["qwen2.5-0.5b-instruct"]
    plain = tokenizer.__class__.from_pretrained(tokenizer.name_or_path)
    plain.chat_template = ("{% for m in messages %}{{ '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}"
                           "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
    messages = [{"role": "user", "content": "Weather?"}, CALL, RESULT, {"role": "assistant", "content": "Sunny."}]
    with pytest.raises(DataError, match=r"chat.jsonl:1: the chat template of .* does not render the tool_calls of "
                                        r"turn 1 \(role 'assistant'\)"):
        build(tmp_path, plain, [{"messages": messages}])
    with pytest.raises(DataError, match=r"does not render tool definitions"):
        build(tmp_path, plain, [{"messages": chat(EXCHANGES[:1], False), "tools": [WEATHER]}])
    with pytest.raises(DataError, match=r"chat.jsonl:1: the chat template of .*mistral.* refuses this conversation: "
                                        r"Conversation roles must alternate"):
        build(tmp_path, tokenizers["mistral-7b-instruct-v0.3"], [{"messages": messages}])


def test_a_tokenizer_without_a_template_is_refused(tokenizers, tmp_path):
    bare = tokenizers["mistral-7b-instruct-v0.3"].__class__.from_pretrained(
        tokenizers["mistral-7b-instruct-v0.3"].name_or_path)
    bare.chat_template = None
    with pytest.raises(ConfigError, match=r"prompt_format chat_template: tokenizer '.*' has no chat template"):
        build_format("chat_template", bare)


def test_delphi_formats_refuse_tool_turns(tokenizer):
    conv = Conversation((Turn(PROMPTER, "Weather?"), Turn(ASSISTANT, "", extra={"tool_calls": CALL["tool_calls"]}),
                         Turn("tool", "sunny"), Turn(ASSISTANT, "Sunny.")), "messages", "chat.jsonl:4")
    with pytest.raises(DataError, match=r"chat.jsonl:4: turn 1 has tool_calls: tool calls are not trained by the "
                                        r"oasst format \(prompt_format chat_template trains them"):
        encode(conv, build_format("oasst", tokenizer), SegmentEncoder(tokenizer), 512, True)


def test_a_tokenizer_padding_with_its_eos_gets_a_pad_of_its_own():
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    from trainer.tokens import PADDING_TOKEN, choose_pad

    bare = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(WordLevel({"<eos>": 0, "a": 1}, unk_token="<eos>")),
                                   eos_token="<eos>", pad_token="<eos>")
    choose_pad(bare)
    assert bare.pad_token == PADDING_TOKEN and bare.pad_token_id == 2 and len(bare) == 3


# ----------------------------------------------------------------------------------------------- end to end, tiny models

E2E = {"llama": "llama-3.2-3b-instruct", "qwen2": "qwen2.5-0.5b-instruct"}


@pytest.mark.parametrize("family", list(E2E))
def test_train_export_and_chat_on_the_models_own_template(tmp_path, tokenizers, tiny_model_dir, reference_data,
                                                          family, monkeypatch, capsys):
    """`delphi train` with prompt_format chat_template on a tiny model of the family carrying the real tokenizer,
    `delphi export`, then: parity.json beside the data and in the export, the exported template unchanged, its
    generation prompt the prefix every reply was trained to continue, the stop ids, and a chat."""
    from transformers import AutoTokenizer

    from trainer.chat_session import fit_history
    from trainer.cli import main as delphi

    name = E2E[family]
    tokenizer = tokenizers[name]
    model_dir = tmp_path / "model"
    shutil.copytree(tiny_model_dir(family, tokenizer), model_dir)
    shutil.copy(reference_data / "model_tokenizers" / name / "generation_config.json", model_dir)
    records = [{"messages": chat(EXCHANGES[:1 + i % 3], system=i % 2 == 1)} for i in range(6)]
    (tmp_path / "chat.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    section = {"ct": {"datasets": [{"messages": {"input_file_path": str(tmp_path / "chat.jsonl"), "val_split": 0.34}}],
                      "prompt_format": "chat_template", "model_name": str(model_dir), "dtype": "fp32",
                      "max_length": 128, "num_train_epochs": 1, "per_device_train_batch_size": 2,
                      "gradient_accumulation_steps": 1, "warmup_steps": 0, "learning_rate": 1e-3, "logging_steps": 1,
                      "eval_steps": 3, "save_steps": 100, "report_to": "none", "cache_dir": str(tmp_path / "cache"),
                      "output_dir": str(tmp_path / "out")}}
    (tmp_path / "ct.yaml").write_text(json.dumps(section))
    assert delphi(["train", "--config_file", str(tmp_path / "ct.yaml"), "--configs", "ct"]) == 0
    (data_parity,) = (tmp_path / "cache" / "tokenized").glob(f"*/{PARITY_FILE}")
    record = json.loads(data_parity.read_text())
    assert record["result"] == "ok" and record["end_of_turn_tokens"] == [END[name]]
    assert record["splits"]["train"]["checked"] == record["splits"]["train"]["samples"] == 4

    assert delphi(["export", str(tmp_path / "out"), str(tmp_path / "export"), "--dtype", "fp32"]) == 0
    assert "parity: chat template, special and added tokens unchanged" in capsys.readouterr().out
    exported = json.loads((tmp_path / "export" / PARITY_FILE).read_text())
    assert exported["result"] == "ok" and exported["pad_token"] == PAD[name]
    served = AutoTokenizer.from_pretrained(tmp_path / "export")
    assert served.chat_template == tokenizer.chat_template and served.pad_token == PAD[name]
    stops = json.loads((tmp_path / "export" / "generation_config.json").read_text())["eos_token_id"]
    base_stops = json.loads((model_dir / "generation_config.json").read_text())["eos_token_id"]
    assert set(base_stops) | {served.convert_tokens_to_ids(END[name])} <= set(stops)

    import datasets
    entry = data_parity.parent  # the cache entry: every sample in samples.arrow, the train split as indices
    train = datasets.Dataset.from_file(str(entry / "samples.arrow"), indices_filename=str(entry / "train.indices.arrow"))
    fmt = build_format("chat_template", served)
    for row in train:
        ids, labels = row["input_ids"], row["labels"]
        for messages in (r["messages"] for r in records):
            if template_ids(served, messages) == ids:
                break
        else:
            raise AssertionError("a trained sample that is no conversation's apply_chat_template")
        for i in (i for i, m in enumerate(messages) if m["role"] == "assistant"):
            prompt = template_ids(served, messages[:i], add_generation_prompt=True)
            assert ids[:len(prompt)] == prompt and labels[len(prompt)] == ids[len(prompt)]
            assert labels[len(prompt) - 1] == IGNORE_INDEX
        turns = [Turn(PROMPTER if m["role"] == "user" else ASSISTANT, m["content"]) for m in messages
                 if m["role"] != "system"]
        system = messages[0]["content"] if messages[0]["role"] == "system" else None
        chat_ids, _ = fit_history(turns[:-1], fmt, SegmentEncoder(served), system, 4096)
        assert chat_ids.tolist() == template_ids(served, messages[:-1], add_generation_prompt=True)

    monkeypatch.setenv("EXAMPLE_PROMPTS", json.dumps(["Hi, who are you?", "What is 2+2?"]))
    assert delphi(["chat", "--model", str(tmp_path / "export"), "--temperature", "0", "--output_length", "4"]) == 0
    assert capsys.readouterr().out.count("Assistant:") == 2
