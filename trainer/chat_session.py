"""A chat with a fine-tuned model: the history, the prompt built and tokenized exactly as training built its samples
(`encode_prompt`: segment by segment), the oldest exchanges dropped when the prompt plus `output_length` would not
fit the context, and the reply streamed as it is generated. `trainer.chat` is the command around it."""
from __future__ import annotations

import sys
from typing import Sequence, TextIO

import numpy as np

from trainer.data.conversation import ASSISTANT, PROMPTER, Turn
from trainer.data.tokenize import SegmentEncoder, encode_prompt, fit_exchanges
from trainer.errors import RunError
from trainer.formats import ConversationFormat, build_format, detect_format, format_for
from trainer.generation import Reply, SamplingOptions, generate_reply
from trainer.inference import InferenceModel, context_length

REPLY_LABEL = "Assistant:"


def fit_history(turns: Sequence[Turn], fmt: ConversationFormat, encoder: SegmentEncoder, system: str | None,
                limit: int) -> tuple[np.ndarray, int]:
    """The prompt ids for `turns` (history ending with the new prompter turn) in at most `limit` tokens, and how
    many turns were dropped: whole exchanges, oldest first; the header (system prompt) always stays."""

    def measure(kept: Sequence[Turn]) -> tuple[int, np.ndarray]:
        ids = encode_prompt(kept, fmt, encoder, system)
        return len(ids), ids

    dropped, ids = fit_exchanges(turns, measure, limit)
    if len(ids) > limit:
        raise RunError(f"the prompt alone is {len(ids)} tokens, but only {limit} fit the context with the "
                       f"room kept for the reply; shorten it or lower --output_length")
    return ids, dropped


class ChatSession:
    """The history and one model; `respond` adds an exchange, printing the reply as it is generated."""

    def __init__(self, loaded: InferenceModel, fmt: ConversationFormat, options: SamplingOptions, system: str | None,
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


def chat_format(loaded: InferenceModel) -> tuple[ConversationFormat, str]:
    """The prompt format training used, and a line saying where it came from."""
    if loaded.config is not None:
        how = f"prompt format: {loaded.config.data.prompt_format} (from the run's resolved config)"
        return format_for(loaded.config.data, loaded.tokenizer), how
    name, why = detect_format(loaded.tokenizer)
    how = f"prompt format: {name} (no resolved_config.yaml, and {why})"
    return build_format(name, loaded.tokenizer), how
