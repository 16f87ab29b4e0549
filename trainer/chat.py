"""Chat with a fine-tuned model in the prompt format it was trained on.

    python -m trainer.chat --model outputs/tiny-pythia [--temperature 0] [--k 5] [--output_length 64]
                           [--system "You are ..."] [--seed 0]

The prompt is built and tokenized exactly as training built its samples (`encode_prompt`: segment by segment), the
whole history is sent each turn, and the oldest exchanges are dropped when the prompt plus `output_length` would
not fit the context. As in Graphcore's IPU chat notebook, an empty prompt ends the chat, and `EXAMPLE_PROMPTS` (a
JSON list of strings in the environment) replaces the keyboard: each item is echoed as `Prompter: AUTO text`.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Callable, Sequence, TextIO

import numpy as np
from transformers import set_seed

from trainer.data.conversation import ASSISTANT, PROMPTER, Turn
from trainer.data.tokenize import SegmentEncoder, encode_prompt, fit_exchanges
from trainer.errors import ConfigError, RunError
from trainer.formats import PromptFormat, build_format, detect_format, format_for
from trainer.generation import Reply, SamplingOptions, generate_reply
from trainer.inference import InferenceModel, context_length, load_for_inference

PROMPT_LABEL = "Prompter:"
REPLY_LABEL = "Assistant:"


def fit_history(turns: Sequence[Turn], fmt: PromptFormat, encoder: SegmentEncoder, system: str | None,
                limit: int) -> tuple[np.ndarray, int]:
    """The prompt ids for `turns` (history ending with the new prompter turn) in at most `limit` tokens, and how
    many turns were dropped: whole exchanges, oldest first; the header (system prompt) always stays."""

    def measure(kept: Sequence[Turn]) -> tuple[int, np.ndarray]:
        ids = encode_prompt(kept, fmt, encoder, system)
        return len(ids), ids

    dropped, ids = fit_exchanges(turns, measure, limit, keep=1)
    if len(ids) > limit:
        raise RunError(f"the prompt alone is {len(ids)} tokens, but only {limit} fit the context with the "
                       f"room kept for the reply; shorten it or lower --output_length")
    return ids, dropped


class ChatSession:
    """The history and one model; `respond` adds an exchange, printing the reply as it is generated."""

    def __init__(self, loaded: InferenceModel, fmt: PromptFormat, options: SamplingOptions, system: str | None,
                 out: TextIO | None = None):
        self.loaded = loaded
        self.fmt = fmt
        self.options = options
        self.system = system
        self.out = out or sys.stdout
        self.encoder = SegmentEncoder(loaded.tokenizer)
        self.context = context_length(loaded.model, loaded.tokenizer)
        options.check(loaded.model.get_output_embeddings().weight.shape[0], self.context)
        self.history: list[Turn] = []

    def respond(self, text: str) -> Reply:
        turns = [*self.history, Turn(PROMPTER, text)]
        room = self.options.output_length or 1
        ids, dropped = fit_history(turns, self.fmt, self.encoder, self.system, self.context - room)
        if dropped:
            self.history = self.history[dropped:]
            print(f"(dropped the {dropped // 2} oldest exchange(s) to fit the {self.context}-token context)",
                  file=sys.stderr)
        self.out.write(f"{REPLY_LABEL} ")
        reply = generate_reply(self.loaded.model, self.loaded.tokenizer, ids.tolist(), self.options,
                               self.fmt.end_key, self.options.output_length or self.context - len(ids), self.out)
        self.history += [Turn(PROMPTER, text), Turn(ASSISTANT, reply.text)]
        return reply


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


def chat_format(loaded: InferenceModel) -> tuple[PromptFormat, str]:
    """The prompt format training used, and a line saying where it came from."""
    if loaded.config is not None:
        how = f"prompt format: {loaded.config.data.prompt_format} (from the run's resolved config)"
        return format_for(loaded.config.data, loaded.tokenizer), how
    name, why = detect_format(loaded.tokenizer)
    how = f"prompt format: {name} (no resolved_config.yaml, and {why})"
    return build_format(name, loaded.tokenizer), how


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    from trainer.cli import ArgumentParser

    parser = ArgumentParser(prog="delphi chat", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a training output or an exported model directory")
    parser.add_argument("--temperature", type=float, default=1.0, help="0 = greedy; 1 = the model's distribution")
    parser.add_argument("--k", type=int, default=5, help="top-k; 0 disables it (default 5)")
    parser.add_argument("--output_length", type=int_or_none, default=None,
                        help="most new tokens per reply; none (default) = until the end key or the context is full")
    parser.add_argument("--system", default=None,
                        help="system prompt; \"\" for none (default: the one trained with, if use_system_prefix "
                             "was on)")
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
