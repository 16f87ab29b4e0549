"""`prompt_format: chat_template`: every conversation rendered with the model's own chat template, so that the
training ids are exactly `tokenizer.apply_chat_template(conversation, tokenize=True)`, what a server renders.

The rendered text is tokenized in one piece (`tokenize_segments` false), as `apply_chat_template` tokenizes it;
the trained tokens are those overlapping each assistant turn, from the end of the template's generation prompt
through the turn's end-of-turn token (`trainer.formats.template_spans`): the reply, whatever the template renders
around it (Qwen3's thinking block, a tool call), and `<|eot_id|>` / `<|im_end|>` / `</s>`, never the next turn's
header nor the whitespace after the end token. System, user and tool turns are not trained.

- System prompt: a conversation's own system turn, else the configured `system_prefix` when `use_system_prefix`
  is on, else none, and the template does what it does without one (Qwen2.5 adds its default system prompt,
  Llama 3.x its date header). A template that refuses a system role (Mistral v0.3) refuses the sample.
- Date: templates that print today's date (Llama 3.1+) read `date_string`; it is pinned to `PINNED_DATE` (the
  date Llama's own template falls back to) in training and in every check, so the same data gives the same ids
  on any day.
- Tools: the `messages` kind's assistant `tool_calls`, `tool` results and the record's `tools` are handed to the
  template; a template that does not render them (its output does not change with them) is refused, naming the
  sample, rather than training a call the model never sees.
Errors the template raises (`raise_exception`, a role it does not know) become one line naming the sample.
"""
from __future__ import annotations

from typing import Any, Sequence

from jinja2 import TemplateError

from trainer.data.conversation import ASSISTANT, PROMPTER, TOOL, Conversation, Turn
from trainer.errors import ConfigError, DataError
from trainer.formats.base import ConversationFormat, Segment, turn_text
from trainer.formats.template_spans import TemplateSpans, locate_turns

PINNED_DATE = "26 Jul 2024"
DELPHI_TEMPLATE_MARK = "{#- Delphi prompt format"  # how `trainer.formats.chat_template` templates begin
ROLES = {PROMPTER: "user", ASSISTANT: "assistant", TOOL: "tool"}
PROBE = (Turn(PROMPTER, "Hi"), Turn(ASSISTANT, "Hello"))
# What a template raising on a conversation throws: jinja2's TemplateError (raise_exception, undefined names)
# and Python's own errors from the expressions it evaluates.
TEMPLATE_ERRORS = (TemplateError, TypeError, ValueError, KeyError, IndexError, AttributeError)


class ChatTemplateFormat(ConversationFormat):
    """The tokenizer's own `chat_template`; `end_key` is the end-of-turn token it closes assistant turns with."""

    name = "chat_template"
    tokenize_segments = False
    adds_chat_tokens = False

    def __init__(self, tokenizer, system: str | None):
        template = tokenizer.chat_template
        self.template_name = f"the chat template of '{tokenizer.name_or_path}'"
        if not isinstance(template, str) or not template.strip():
            raise ConfigError(f"prompt_format chat_template: tokenizer '{tokenizer.name_or_path}' has no chat "
                              f"template (no chat_template in tokenizer_config.json, no chat_template.jinja); use "
                              f"a model that ships one, or another prompt_format")
        self.tokenizer = tokenizer
        self.template = template
        self.system = system
        self.specials = sorted({*tokenizer.all_special_tokens,
                                *(t.content for t in tokenizer.added_tokens_decoder.values() if t.special)},
                               key=len, reverse=True)
        try:
            probe = self.locate(Conversation(PROBE, "probe", "a probe conversation [user 'Hi', assistant 'Hello']"))
        except DataError as e:
            raise ConfigError(f"prompt_format chat_template: {e}") from None
        self.end_key = probe.end_tokens[0]

    @classmethod
    def for_tokenizer(cls, tokenizer, system: str | None, **options: Any) -> ChatTemplateFormat:
        return cls(tokenizer, system, **options)

    @classmethod
    def detect(cls, tokenizer) -> bool:
        """A tokenizer carrying a chat template that is not one of Delphi's own formats'."""
        template = tokenizer.chat_template
        return isinstance(template, str) and bool(template.strip()) and not template.startswith(DELPHI_TEMPLATE_MARK)

    def settings(self) -> dict[str, Any]:
        return {"name": self.name, "system": self.system, "template": self.template, "date": PINNED_DATE}

    def chat_template(self) -> str:
        """The model's own template, unchanged: it is what training rendered."""
        return self.template

    def messages(self, turns: Sequence[Turn], system: str | None) -> list[dict[str, Any]]:
        """The turns as the chat messages `apply_chat_template` takes."""
        head = [] if system is None else [{"role": "system", "content": system}]
        return head + [{"role": ROLES[t.role], "content": turn_text(t), **t.extra} for t in turns]

    def conversation_messages(self, conv: Conversation) -> list[dict[str, Any]]:
        return self.messages(conv.turns, self.system if conv.system is None else conv.system)

    def apply(self, messages: list[dict[str, Any]], tools: Sequence[dict[str, Any]] = (), where: str = "",
              **kwargs: Any):
        """`apply_chat_template` with the pinned date; an error the template raises is one DataError line."""
        try:
            return self.tokenizer.apply_chat_template(messages, tools=list(tools) or None, date_string=PINNED_DATE,
                                                      **kwargs)
        except TEMPLATE_ERRORS as e:
            message = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise DataError(f"{where}: {self.template_name} refuses this conversation: {message}") from None

    def locate(self, conv: Conversation) -> TemplateSpans:
        """The conversation as the template renders it, with its assistant spans."""
        where = f"{conv.origin or conv.source}: {self.template_name}"
        messages = self.conversation_messages(conv)

        def render(msgs, add_generation_prompt: bool = False) -> str:
            return self.apply(msgs, conv.tools, conv.origin or conv.source, tokenize=False,
                              add_generation_prompt=add_generation_prompt)

        if conv.tools or any(t.role == TOOL or t.extra.get("tool_calls") for t in conv.turns):
            self._check_tools_rendered(render, messages, conv, where)
        return locate_turns(render, messages, self.specials, where)

    def _check_tools_rendered(self, render, messages: list[dict[str, Any]], conv: Conversation, where: str) -> None:
        """Refuse tool definitions, tool calls or tool results the template leaves out of its text."""
        full = render(messages)
        if conv.tools and self.apply(messages, (), where, tokenize=False) == full:
            raise DataError(f"{where} does not render tool definitions ('tools'); this model's template has no "
                            f"place for tool calls")
        offset = len(messages) - len(conv.turns)
        for i, message in enumerate(messages):
            if message.get("tool_calls"):
                changed = [*messages[:i], {k: v for k, v in message.items() if k != "tool_calls"}, *messages[i + 1:]]
                what = "the tool_calls of"
            elif message["role"] == "tool":
                changed = [*messages[:i], {**message, "content": message["content"] + "\x01"}, *messages[i + 1:]]
                what = "the tool result in"
            else:
                continue
            try:
                same = render(changed) == full
            except DataError:
                same = False
            if same:
                raise DataError(f"{where} does not render {what} turn {i - offset} (role {message['role']!r}); "
                                f"this model's template has no place for tool calls")

    def render(self, conv: Conversation) -> list[Segment]:
        located = self.locate(conv)
        segments, position = [], 0
        for start, end in located.spans:
            segments += [Segment(located.text[position:start], False), Segment(located.text[start:end], True)]
            position = end
        segments.append(Segment(located.text[position:], False))
        return [s for s in segments if s.text]

    def generation_segments(self, turns: Sequence[Turn], system: str | None) -> list[Segment]:
        if not turns or turns[-1].role != PROMPTER:
            raise DataError("chat history: the last turn must be a user turn")
        text = self.apply(self.messages(turns, system), where="chat history", tokenize=False,
                          add_generation_prompt=True)
        return [Segment(text, False)]
