"""Where a model's own chat template puts each assistant turn, found from the template alone (no per-model rules).

For the assistant message at index i of a conversation rendered as `full`:
- its turn starts where the template's generation prompt for the messages before it ends: `render(messages[:i],
  add_generation_prompt=True)` must be a prefix of `full`, and is exactly the text a server sends the model to
  answer there;
- its turn ends where `render(messages[:i + 1])` ends, when that is a prefix of `full` (the template renders
  history the same whether or not more follows). Templates that render a last turn differently (Qwen3 adds an
  empty thinking block to the turns after the last user message) close it the same way: the turn then ends at
  the first occurrence, after its start, of the text `render(messages[:i + 1])` closes with (from its last special
  token on: `<|im_end|>\\n`);
- whitespace the template renders after the turn's last special token (Qwen's newline after `<|im_end|>`) is not
  trained: a server stops at the token and never generates what follows it, and the next turn's text is not the
  assistant's. Every turn must end with a special token (`<|eot_id|>`, `<|im_end|>`, `</s>`), the token a server
  stops at.
A template for which any of this fails is refused, naming the template and the message.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

from trainer.errors import DataError

Render = Callable[..., str]  # (messages, add_generation_prompt=False) -> the template's text


@dataclass(frozen=True)
class TemplateSpans:
    text: str  # the conversation as the template renders it
    spans: tuple[tuple[int, int], ...]  # per assistant message: the trained characters of its turn
    end_tokens: tuple[str, ...]  # per assistant message: the special token its turn ends with


def locate_turns(render: Render, messages: Sequence[dict[str, Any]], specials: Sequence[str],
                 where: str) -> TemplateSpans:
    """The rendered conversation and its assistant spans; `specials` are the tokenizer's special tokens, longest
    first; `where` names the sample and the template in errors."""
    full = render(messages)
    spans, ends = [], []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = render(messages[:i], add_generation_prompt=True)
        start = len(prompt)
        if not full.startswith(prompt):
            raise DataError(f"{where}: cannot locate assistant message {i}: the generation prompt the template "
                            f"renders for it is not the start of the conversation it renders")
        end = _turn_end(render, messages, i, full, start, specials)
        if end is None:
            raise DataError(f"{where}: cannot locate the end of assistant message {i}: the template renders it "
                            f"differently inside the conversation than as its last message, and does not close it "
                            f"with the same special token there")
        turn = full[start:end].rstrip()
        token = next((t for t in specials if turn.endswith(t)), None)
        if token is None:
            raise DataError(f"{where}: assistant message {i} ends with {turn[-30:]!r}, not with a special token a "
                            f"server could stop at")
        spans.append((start, start + len(turn)))
        ends.append(token)
    return TemplateSpans(full, tuple(spans), tuple(ends))


def _turn_end(render: Render, messages: Sequence[dict[str, Any]], i: int, full: str, start: int,
              specials: Sequence[str]) -> int | None:
    through = full if i == len(messages) - 1 else render(messages[:i + 1])
    if full.startswith(through):
        return len(through)
    body = through.rstrip()
    token = next((t for t in specials if body.endswith(t)), None)
    if token is None:
        return None
    closing = through[len(body) - len(token):]
    found = full.find(closing, start)
    return None if found < 0 else found + len(closing)
