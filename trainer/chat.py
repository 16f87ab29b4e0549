"""Chat with a fine-tuned model in the prompt format it was trained on.

    python -m trainer.chat --model outputs/tiny-pythia [--temperature 0] [--k 5] [--output_length 64]
                           [--system "You are ..."] [--seed 0]

The session (`trainer.chat_session`) builds and tokenizes the prompt exactly as training built its samples and
sends the whole history each turn. As in Graphcore's IPU chat notebook, an empty prompt ends the chat, and
`EXAMPLE_PROMPTS` (a JSON list of strings in the environment) replaces the keyboard: each item is echoed as
`Prompter: AUTO text`. This module loads no model library until the arguments are read, so `--help` is instant.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import TYPE_CHECKING, Callable, Sequence, TextIO

from trainer.errors import ConfigError, RunError

if TYPE_CHECKING:
    from trainer.chat_session import ChatSession

PROMPT_LABEL = "Prompter:"


def example_prompts(environ: dict[str, str]) -> list[str] | None:
    """`EXAMPLE_PROMPTS` as the IPU notebook reads it: a JSON list of strings, or None when unset."""
    raw = environ.get("EXAMPLE_PROMPTS")
    if raw is None:
        return None
    try:
        prompts = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ConfigError(f"EXAMPLE_PROMPTS: not valid JSON ({e.msg} at character {e.pos}); expected a JSON list "
                          f"of strings, e.g. '[\"Hello\", \"And then?\"]'") from None
    if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
        raise ConfigError(f"EXAMPLE_PROMPTS: expected a JSON list of strings, got {raw!r}")
    return prompts


def prompt_reader(prompts: list[str] | None, out: TextIO) -> Callable[[], str]:
    """Like input(), but takes the canned prompts in order when given (echoed), then "" which ends the chat."""
    if prompts is None:
        return lambda: input(f"{PROMPT_LABEL} ")
    queue = list(prompts)

    def read() -> str:
        text = queue.pop(0) if queue else ""
        out.write(f"{PROMPT_LABEL} AUTO {text}\n")
        return text

    return read


def chat(session: ChatSession, read: Callable[[], str]) -> int:
    """Exchanges until an empty prompt; returns the number of replies."""
    session.out.write("To complete the chat, enter an empty prompt\n")
    replies = 0
    while text := read():
        try:
            session.respond(text)
        except RunError as e:  # this prompt only: the chat goes on
            print(f"error: {e}", file=sys.stderr)
            continue
        replies += 1
    return replies


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    from trainer.cli import ArgumentParser

    parser = ArgumentParser(prog="delphi chat", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a training output or an exported model directory")
    parser.add_argument("--temperature", type=float, default=1.0, help="0 = greedy; 1 = the model's distribution")
    parser.add_argument("--k", type=int, default=5, help="top-k; 0 disables it")
    parser.add_argument("--output_length", type=int_or_none, default=None,
                        help="most new tokens per reply; none = until the end key or the context is full")
    parser.add_argument("--system", default=None,
                        help="system prompt; \"\" for none; none = the one trained with, if use_system_prefix was on")
    parser.add_argument("--seed", type=int, default=None, help="seed for reproducible sampling")
    parser.add_argument("--base_model", default=None, help="an adapter's base model, when it has moved")
    parser.add_argument("--trust_remote_code", action="store_true",
                        help="run code shipped in the model directory (never taken from the directory itself)")
    return parser.parse_args(argv)


def int_or_none(value: str) -> int | None:
    return None if value.lower() in ("none", "null") else int(value)


def main(argv: Sequence[str], environ: dict[str, str] | None = None) -> int:
    """`delphi chat`; bad input raises DelphiError (the `delphi` wrapper prints it and exits with 2)."""
    args = parse_args(argv)
    from transformers import set_seed

    from trainer.chat_session import ChatSession, chat_format
    from trainer.generation import SamplingOptions
    from trainer.inference import load_for_inference

    options = SamplingOptions(args.temperature, args.k, args.output_length)
    prompts = example_prompts(dict(os.environ) if environ is None else environ)
    loaded = load_for_inference(args.model, trust_remote_code=args.trust_remote_code, base_model=args.base_model)
    fmt, how = chat_format(loaded)
    system = fmt.system if args.system is None else args.system or None
    session = ChatSession(loaded, fmt, options, system)  # checks the options against the model first
    for note in [*loaded.notes, how]:
        print(note, file=sys.stderr)
    if args.seed is not None:
        set_seed(args.seed)
    try:
        chat(session, prompt_reader(prompts, sys.stdout))
    except (EOFError, KeyboardInterrupt):
        print(file=sys.stderr)
    return 0


if __name__ == "__main__":
    from trainer.cli import main as delphi

    sys.exit(delphi(["chat", *sys.argv[1:]]))
