"""A prompt format as a Jinja chat template, the form transformers' `apply_chat_template`, vLLM and TGI read.

The template is built from the format's own pieces: its header, prompter block and reply are rendered around a
marker, and the text on either side of the marker becomes a string literal of the template. So the template
cannot drift from the renderer: `apply_chat_template(messages)` of a conversation ending with an assistant
message is the training string, and with `add_generation_prompt=True` after a user message it is the chat's
generation prompt, byte for byte. A leading `system` message replaces the configured system prefix (the
conversation's own system prompt, as in chat data); roles other than system/user/assistant, a system message
anywhere but first, and turns that do not alternate user/assistant raise, naming what is wrong.

Only Jinja that transformers, vLLM (the same Jinja2) and TGI (minijinja) all accept is used: `set`, `if`, `for`,
`loop.index0`, slices and the `raise_exception` every one of them provides.
"""
from __future__ import annotations

import json
from typing import TYPE_CHECKING

from trainer.data.conversation import ASSISTANT, PROMPTER, Turn

if TYPE_CHECKING:
    from trainer.formats.base import PromptFormat

MARK = "\x00"  # stands for a message text while the format renders its pieces; no message contains it


def _text(segments) -> str:
    return "".join(s.text for s in segments)


def _around(text: str, piece: str, name: str) -> tuple[str, str]:
    """The text before and after the marker in a piece the format rendered."""
    before, found, after = text.partition(MARK)
    if not found or MARK in after:
        raise ValueError(f"prompt format {name}: its {piece} does not hold the message text exactly once")
    return before, after


def _literal(text: str) -> str:
    """A Jinja expression printing `text` as it is (JSON string syntax is a valid Jinja string literal)."""
    return "{{ " + json.dumps(text, ensure_ascii=False) + " }}" if text else ""


def _fail(message: str) -> str:
    return "{{ raise_exception(" + json.dumps(message, ensure_ascii=False) + ") }}"


def _fail_at(before_role: str, after_role: str) -> str:
    """`raise_exception` naming the message (its index in `messages`) and its role."""
    return ("{{ raise_exception('chat message ' ~ (loop.index0 + offset) ~ ' " + before_role + "' ~ message['role'] ~ "
            + json.dumps(after_role) + ") }}")


def build_chat_template(fmt: PromptFormat) -> str:
    name = fmt.name
    first = Turn(PROMPTER, MARK)
    no_system = _text(fmt.header(first, None))
    system_text = _text(fmt.header(first, MARK))
    has_system = MARK in system_text
    prompts = [_around(_text(fmt.prompt(first, index)), "prompter block", name) for index in (0, 1)]
    cue = fmt.assistant_cue
    for _, after in prompts:
        if not after.endswith(cue):
            raise ValueError(f"prompt format {name}: its prompter block does not end with its assistant cue {cue!r}")
    reply_before, reply_after = _around(_text(fmt.reply(Turn(ASSISTANT, MARK))), "reply", name)
    default = "none" if fmt.system is None else json.dumps(fmt.system, ensure_ascii=False)

    def user_block(index: int) -> str:
        before, after = prompts[index]
        return _literal(before) + "{{ message['content'] }}" + _literal(after[:len(after) - len(cue)])

    if has_system:
        system_before, system_after = _around(system_text, "header", name)
        header = (f"{{%- if system is none -%}}{_literal(no_system)}{{%- else -%}}{_literal(system_before)}"
                  f"{{{{ system }}}}{_literal(system_after)}{{%- endif -%}}")
    else:
        header = (f"{{%- if system is not none -%}}{_fail(f'the {name} prompt format has no system prompt')}"
                  f"{{%- endif -%}}{_literal(no_system)}")
    lines = [
        f"{{#- Delphi prompt format '{name}': renders exactly what Delphi trained on. -#}}",
        "{%- set leading_system = messages and messages[0]['role'] == 'system' -%}",
        f"{{%- set system = messages[0]['content'] if leading_system else {default} -%}}",
        "{%- set turns = messages[1:] if leading_system else messages -%}",
        "{%- set offset = 1 if leading_system else 0 -%}",
        header,
        "{%- for message in turns -%}",
        "{%- if message['role'] not in ['user', 'assistant'] -%}",
        _fail_at("has role ", "; expected user or assistant (system only as the first message)"),
        "{%- elif (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}",
        _fail_at("is from ", "; messages must alternate user/assistant, starting with user (after an optional "
                 "system message)"),
        *(["{%- elif message['role'] == 'user' and loop.index0 == 0 -%}", user_block(0)]
          if prompts[0] != prompts[1] else []),  # airoboros: the first prompt has a leading space
        "{%- elif message['role'] == 'user' -%}",
        user_block(1),
        "{%- else -%}",
        _literal(cue + reply_before) + "{{ message['content'] }}" + _literal(reply_after),
        "{%- endif -%}",
        "{%- endfor -%}",
        "{%- if add_generation_prompt -%}",
        "{%- if not turns or turns[-1]['role'] != 'user' -%}",
        _fail("add_generation_prompt needs the messages to end with a user message"),
        "{%- endif -%}",
        _literal(cue),
        "{%- endif -%}",
    ]
    return "\n".join(line for line in lines if line) + "\n"
