"""Every prompt format's chat template against Delphi's own rendering: string for string always, and token for
token where tokenizing the whole string in one piece equals Delphi's segment-wise encoding."""
from __future__ import annotations

import numpy as np
import pytest

from trainer.data.conversation import ASSISTANT, PROMPTER, Conversation, Turn
from trainer.data.tokenize import SegmentEncoder, encode_prompt
from trainer.formats import FORMATS, PromptFormat, build_format

TEXTS = ["What is a meme?", "A unit of culture that spreads, like a tune or a phrase.",
         'Who coined the word "meme"?', "Richard Dawkins, in 1976.\nIn The Selfish Gene.",
         "Write {{ braces }} and a backslash \\ for me, s'il vous plaît 🙂", "{{ braces }} \\ ok 🙂"]
SYSTEMS = {"none": None, "configured": "You are Joi.\nBe brief.", "message": "Reply in \"quotes\" {% if %} ü."}

DELPHI_FORMATS = [name for name, cls in FORMATS.items() if issubclass(cls, PromptFormat)]  # built from pieces


def case(exchanges: int, system: str):
    """(turns, chat messages, the system prompt the format is built with, the one in effect)."""
    turns = [Turn(PROMPTER if i % 2 == 0 else ASSISTANT, t) for i, t in enumerate(TEXTS[:2 * exchanges])]
    messages = [{"role": "user" if t.role == PROMPTER else "assistant", "content": t.text} for t in turns]
    configured = SYSTEMS["configured"] if system != "none" else None
    if system == "message":
        messages.insert(0, {"role": "system", "content": SYSTEMS["message"]})
    return turns, messages, configured, SYSTEMS[system] if system != "none" else None


@pytest.mark.parametrize("tokenizer_fixture", ["tokenizer", "neox20b_tokenizer"])
@pytest.mark.parametrize("system", SYSTEMS)
@pytest.mark.parametrize("exchanges", [1, 2, 3])
@pytest.mark.parametrize("name", DELPHI_FORMATS)
def test_template_renders_what_the_format_renders(request, tokenizer_fixture, name, exchanges, system):
    tokenizer = request.getfixturevalue(tokenizer_fixture)
    turns, messages, configured, in_effect = case(exchanges, system)
    fmt = build_format(name, tokenizer, configured)
    template = fmt.chat_template()

    def apply(msgs, **kwargs):
        return tokenizer.apply_chat_template(msgs, chat_template=template, **kwargs)

    conv = Conversation(tuple(turns), "test", system=SYSTEMS["message"] if system == "message" else None)
    training = fmt.render(conv)
    assert apply(messages, tokenize=False) == "".join(s.text for s in training)
    generation = fmt.generation_prompt(turns[:-1], in_effect)
    assert apply(messages[:-1], tokenize=False, add_generation_prompt=True) == generation
    assert apply(messages[:-1], tokenize=False) == generation.removesuffix(fmt.assistant_cue)

    encoder = SegmentEncoder(tokenizer)
    prompt_ids = apply(messages[:-1], add_generation_prompt=True)["input_ids"]
    training_ids = apply(messages)["input_ids"]
    segment_prompt = encode_prompt(turns[:-1], fmt, encoder, in_effect).tolist()
    segment_training = np.concatenate(encoder.lookup(training)).tolist()
    # A reply is encoded on its own (as the qlora fork and Delphi train); where the cue ends with a space, one-piece
    # tokenization joins that space to the reply's first word instead. Only earlier replies are affected, so the
    # first generation prompt is equal in every format.
    one_piece_equal = not fmt.assistant_cue.endswith(" ")
    assert (training_ids == segment_training) == one_piece_equal
    assert (prompt_ids == segment_prompt) == (one_piece_equal or exchanges == 1)
    assert tokenizer.decode(training_ids) == tokenizer.decode(segment_training)


@pytest.mark.parametrize("messages, error", [
    ([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}],
     "chat message 1 is from user; messages must alternate user/assistant"),
    ([{"role": "assistant", "content": "a"}], "chat message 0 is from assistant; messages must alternate"),
    ([{"role": "system", "content": "s"}, {"role": "tool", "content": "{}"}],
     "chat message 1 has role tool; expected user or assistant"),
    ([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "system", "content": "s"}],
     "chat message 2 has role system; expected user or assistant \\(system only as the first message\\)"),
    ([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}],
     "add_generation_prompt needs the messages to end with a user message"),
])
@pytest.mark.parametrize("name", DELPHI_FORMATS)
def test_bad_conversations_raise_naming_the_message(tokenizer, name, messages, error):
    from jinja2.exceptions import TemplateError

    template = build_format(name, tokenizer).chat_template()
    with pytest.raises(TemplateError, match=error):
        tokenizer.apply_chat_template(messages, chat_template=template, add_generation_prompt=True, tokenize=False)


def test_template_is_saved_and_loaded_with_the_tokenizer(tokenizer, tmp_path):
    from transformers import AutoTokenizer

    tokenizer.save_pretrained(tmp_path / "plain")
    copy = AutoTokenizer.from_pretrained(tmp_path / "plain")
    copy.chat_template = build_format("airoboros", copy).chat_template()
    copy.save_pretrained(tmp_path / "templated")
    assert (tmp_path / "templated/chat_template.jinja").read_text() == copy.chat_template
    loaded = AutoTokenizer.from_pretrained(tmp_path / "templated")
    assert loaded.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True,
                                      tokenize=False) == \
        build_format("airoboros", loaded).generation_prompt([Turn(PROMPTER, "Hi")], None)
