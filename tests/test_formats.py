"""Every prompt format against exact strings: single and multi-turn, with and without input and system prefix."""
from __future__ import annotations

import pytest

from trainer.config import TrainConfig
from trainer.data.conversation import ASSISTANT, PROMPTER, Conversation, Turn
from trainer.errors import ConfigError, DataError
from trainer.formats import FORMATS, PromptFormat, build_format, detect_format, format_for
from trainer.formats.airoboros import AiroborosFormat
from trainer.formats.alpaca import AlpacaFormat
from trainer.formats.oasst import OasstFormat
from trainer.formats.plain import PlainFormat

EOS = "<|endoftext|>"


def conv(*texts: str, context: str = "") -> Conversation:
    """Alternating prompter/assistant turns; `context` is the first turn's Alpaca input."""
    turns = tuple(Turn(PROMPTER if i % 2 == 0 else ASSISTANT, t, context if i == 0 else "")
                  for i, t in enumerate(texts))
    return Conversation(turns, "test", "test:1")


def rendered(fmt: PromptFormat, c: Conversation) -> tuple[str, str]:
    """(the whole training string, the trained part of it)."""
    segments = fmt.render(c)
    return "".join(s.text for s in segments), "".join(s.text for s in segments if s.trained)


MEME = ("What is a meme?", "A unit of culture that spreads.", "Who coined the word?", "Richard Dawkins, in 1976.")


# ---------------------------------------------------------------------------------------------------------- oasst

def test_oasst_one_exchange():
    text, trained = rendered(OasstFormat(EOS, EOS, None), conv("Dummy Question?", "Dummy Answer."))
    assert text == "<|prompter|>Dummy Question?<|endoftext|><|assistant|>Dummy Answer.<|endoftext|>"
    assert trained == "Dummy Answer.<|endoftext|>"


def test_oasst_two_exchanges_and_generation_prompt():
    fmt = OasstFormat(EOS, EOS, None)
    text, trained = rendered(fmt, conv(*MEME))
    assert text == ("<|prompter|>What is a meme?<|endoftext|><|assistant|>A unit of culture that spreads."
                    "<|endoftext|><|prompter|>Who coined the word?<|endoftext|><|assistant|>Richard Dawkins, in "
                    "1976.<|endoftext|>")
    # Only assistant text + eos: not the <|prompter|> that follows a non-final reply (OASST trains that one).
    assert trained == "A unit of culture that spreads.<|endoftext|>Richard Dawkins, in 1976.<|endoftext|>"
    assert fmt.generation_prompt(conv(*MEME).turns[:3], None) == (
        "<|prompter|>What is a meme?<|endoftext|><|assistant|>A unit of culture that spreads.<|endoftext|>"
        "<|prompter|>Who coined the word?<|endoftext|><|assistant|>")
    assert fmt.end_key == EOS


def test_oasst_special_tokens_and_message_texts_are_segments_of_their_own():
    segments = OasstFormat(EOS, EOS, None).render(conv("Q", "A"))
    assert [s.text for s in segments] == ["<|prompter|>", "Q", EOS, "<|assistant|>", "A", EOS]
    assert [s.trained for s in segments] == [False, False, False, False, True, True]


def test_oasst_system_prefix_comes_first_and_is_masked():
    fmt = OasstFormat(EOS, EOS, "You are Joi.")
    text, trained = rendered(fmt, conv("Hi", "Hello!"))
    assert text == "<|system|>You are Joi.<|endoftext|><|prompter|>Hi<|endoftext|><|assistant|>Hello!<|endoftext|>"
    assert trained == "Hello!<|endoftext|>"
    assert fmt.generation_prompt(conv("Hi").turns, "S") == "<|system|>S<|endoftext|><|prompter|>Hi<|endoftext|>" \
                                                           "<|assistant|>"


def test_oasst_appends_alpaca_input_on_a_new_line():
    text, _ = rendered(OasstFormat(EOS, EOS, None), conv("Translate.", "Hallo", context="Hello"))
    assert text == "<|prompter|>Translate.\nHello<|endoftext|><|assistant|>Hallo<|endoftext|>"


# ------------------------------------------------------------------------------------------------------ airoboros

PREAMBLE = ("A chat between a curious user and an assistant. The assistant gives helpful, detailed, accurate, "
            "uncensored responses to the user's input.")


def test_airoboros_model_card_example():
    fmt = AiroborosFormat(EOS, EOS, None)
    text, trained = rendered(fmt, conv("Tell me a joke about bananas.",
                                       "What did the banana say when it got hit by a bus? R.I.P.E."))
    assert text == ("<|endoftext|>A chat between a curious user and an assistant. The assistant gives helpful, "
                    "detailed, accurate, uncensored responses to the user's input. USER: Tell me a joke about "
                    "bananas. ASSISTANT: What did the banana say when it got hit by a bus? R.I.P.E.<|endoftext|>")
    assert trained == "What did the banana say when it got hit by a bus? R.I.P.E.<|endoftext|>"
    assert fmt.generation_prompt(conv("Q").turns, None) == f"<|endoftext|>{PREAMBLE} USER: Q ASSISTANT: "
    assert fmt.end_key == EOS


def test_airoboros_multi_turn_is_vicuna_v1_1():
    text, trained = rendered(AiroborosFormat(EOS, EOS, None), conv(*MEME))
    assert text == (f"<|endoftext|>{PREAMBLE} USER: What is a meme? ASSISTANT: A unit of culture that spreads."
                    "<|endoftext|>USER: Who coined the word? ASSISTANT: Richard Dawkins, in 1976.<|endoftext|>")
    assert trained == "A unit of culture that spreads.<|endoftext|>Richard Dawkins, in 1976.<|endoftext|>"


def test_airoboros_system_prefix_replaces_preamble_and_no_bos_without_one():
    text, _ = rendered(AiroborosFormat(EOS, None, "A chat."), conv("Hi", "Hello"))
    assert text == "A chat. USER: Hi ASSISTANT: Hello<|endoftext|>"


@pytest.mark.parametrize("instruction", ["  indented and trailing  ", "\nstarts on a new line\n", "\ttab\t"])
def test_airoboros_spacing_survives_surrounding_whitespace(instruction):
    text, _ = rendered(AiroborosFormat(EOS, EOS, None), conv(instruction, " answer "))
    assert text == f"<|endoftext|>{PREAMBLE} USER: {instruction} ASSISTANT:  answer <|endoftext|>"


def test_airoboros_closed_context_and_plainformat_pass_byte_for_byte():
    block = ("BEGININPUT\nBEGINCONTEXT\ndate: 2021-01-01\nurl: https://web.site/123\nENDCONTEXT\nIn a shocking "
             "turn of events, blueberries are now green, but will be sticking with the same name.\nENDINPUT\n"
             "BEGININSTRUCTION\nWhat color are bluberries? Source?\nENDINSTRUCTION")
    answer = "Blueberries are now green.\nSource:\ndate: 2021-01-01\nurl: https://web.site/123"
    text, trained = rendered(AiroborosFormat(EOS, EOS, None), conv(block, answer))
    assert text == f"<|endoftext|>{PREAMBLE} USER: {block} ASSISTANT: {answer}<|endoftext|>"
    assert trained == answer + EOS
    text, _ = rendered(AiroborosFormat(EOS, EOS, None),
                       conv("Write a websocket application in node.js. PLAINFORMAT", "const ws = 1;"))
    assert " USER: Write a websocket application in node.js. PLAINFORMAT ASSISTANT: const ws = 1;" in text


# --------------------------------------------------------------------------------------------------------- alpaca

def test_alpaca_without_input_is_the_stanford_template():
    fmt = AlpacaFormat(EOS, EOS, None)
    text, trained = rendered(fmt, conv("Give three tips for staying healthy.", "1. Eat well."))
    assert text == ("Below is an instruction that describes a task. Write a response that appropriately completes "
                    "the request.\n\n### Instruction:\nGive three tips for staying healthy.\n\n### Response:"
                    "1. Eat well.<|endoftext|>")
    assert trained == "1. Eat well.<|endoftext|>"
    assert fmt.generation_prompt(conv("Q").turns, None).endswith("\n\n### Instruction:\nQ\n\n### Response:")


def test_alpaca_with_input_is_the_stanford_template():
    text, _ = rendered(AlpacaFormat(EOS, EOS, None), conv("Translate to German.", "Hallo Welt", context="Hello world"))
    assert text == ("Below is an instruction that describes a task, paired with an input that provides further "
                    "context. Write a response that appropriately completes the request.\n\n### Instruction:\n"
                    "Translate to German.\n\n### Input:\nHello world\n\n### Response:Hallo Welt<|endoftext|>")


def test_alpaca_multi_turn_and_system_prefix():
    text, trained = rendered(AlpacaFormat(EOS, EOS, "You answer briefly."), conv(*MEME))
    assert text == ("You answer briefly.\n\n### Instruction:\nWhat is a meme?\n\n### Response:A unit of culture "
                    "that spreads.<|endoftext|>\n\n### Instruction:\nWho coined the word?\n\n### Response:"
                    "Richard Dawkins, in 1976.<|endoftext|>")
    assert trained == "A unit of culture that spreads.<|endoftext|>Richard Dawkins, in 1976.<|endoftext|>"


# ---------------------------------------------------------------------------------------------------------- plain

TUTORIAL = ("What is Newtonian mechanics?",
            "Newtonian mechanics refers to the classical mechanics developed by Isaac Newton.",
            "How about Lagrangian mechanics?")


def test_plain_matches_the_falcon_tutorial_prompt():
    fmt = PlainFormat(EOS, None, None, "Alice", "Bob")
    assert fmt.generation_prompt(conv(*TUTORIAL).turns, "Bob is a professor in Physics.") == (
        "Bob is a professor in Physics.\nAlice: What is Newtonian mechanics?\nBob: Newtonian mechanics refers to "
        "the classical mechanics developed by Isaac Newton.\nAlice: How about Lagrangian mechanics?\nBob: ")
    assert fmt.generation_prompt(conv("What is relativity?").turns, None) == "Alice: What is relativity?\nBob: "
    assert fmt.end_key == "\n"


def test_plain_training_string_trains_reply_and_its_newline():
    text, trained = rendered(PlainFormat(EOS, None, "Persona.", "User", "Assistant"), conv(*MEME))
    assert text == ("Persona.\nUser: What is a meme?\nAssistant: A unit of culture that spreads.\nUser: Who coined "
                    "the word?\nAssistant: Richard Dawkins, in 1976.\n")
    assert trained == "A unit of culture that spreads.\nRichard Dawkins, in 1976.\n"


# ---------------------------------------------------------------------------------------------- choice and errors

def test_generation_prompt_is_the_training_prefix_in_every_format():
    for fmt in (OasstFormat(EOS, EOS, "S"), AiroborosFormat(EOS, EOS, "S"), AlpacaFormat(EOS, EOS, "S"),
                PlainFormat(EOS, None, "S", "U", "B")):
        text, _ = rendered(fmt, conv(*MEME))
        prompt = fmt.generation_prompt(conv(*MEME).turns[:3], "S")
        assert text.startswith(prompt) and text[len(prompt):] == MEME[3] + fmt.end_key


def test_prompt_format_follows_the_config(oa_test_tokenizer):
    expected = {"oasst": OasstFormat, "airoboros": AiroborosFormat, "alpaca": AlpacaFormat, "plain": PlainFormat}
    for name in expected:
        fmt = format_for(TrainConfig.of(prompt_format=name).data, oa_test_tokenizer)
        assert type(fmt) is expected[name] and fmt.system is None and fmt.eos == "<|endoftext|>"
    data = TrainConfig.of(prompt_format="plain", plain_user_name="Alice", plain_bot_name="Bob",
                          use_system_prefix=True, system_prefix="Bob is kind.").data
    fmt = format_for(data, oa_test_tokenizer)
    assert rendered(fmt, conv("Hi", "Hey"))[0] == "Bob is kind.\nAlice: Hi\nBob: Hey\n"
    assert fmt.settings() == {"name": "plain", "system": "Bob is kind.", "eos": "<|endoftext|>",
                              "bos": oa_test_tokenizer.bos_token, "plain_user_name": "Alice",
                              "plain_bot_name": "Bob"}


def test_a_format_is_detected_from_its_tokens(oa_test_tokenizer):
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    assert detect_format(oa_test_tokenizer) == ("oasst", "the tokenizer holds <|prompter|>, <|assistant|>, <|system|>")
    words = Tokenizer(models.WordLevel({"<|endoftext|>": 0, "hello": 1}, unk_token="<|endoftext|>"))
    bare = PreTrainedTokenizerFast(tokenizer_object=words, eos_token="<|endoftext|>")
    assert detect_format(bare) == ("plain", "the tokenizer holds no format's special tokens")


def test_oasst_needs_the_chat_tokens(reference_data):
    from transformers import PreTrainedTokenizerFast

    bare = PreTrainedTokenizerFast(tokenizer_file=str(reference_data / "tokenizers/gpt-neox-20b/20B_tokenizer.json"),
                                   eos_token="<|endoftext|>")
    with pytest.raises(ConfigError, match=r"lacks <\|prompter\|>.*load_tokenizer"):
        build_format("oasst", bare)


def test_turns_must_alternate_and_end_on_an_assistant_turn():
    fmt = OasstFormat(EOS, EOS, None)
    bad = Conversation((Turn(PROMPTER, "a"), Turn(PROMPTER, "b")), "oasst_export", "trees.jsonl:7")
    with pytest.raises(DataError, match=r"trees.jsonl:7: turn 1 has role 'prompter', expected 'assistant'"):
        fmt.render(bad)
    with pytest.raises(DataError, match="last turn must have role 'assistant'"):
        fmt.render(conv("only a question"))
    with pytest.raises(DataError, match="chat history: the last turn must have role 'prompter'"):
        fmt.generation_prompt(conv("Q", "A").turns, None)
