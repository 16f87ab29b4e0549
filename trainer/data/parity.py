"""The train<->serve parity check at data build, for `prompt_format: chat_template`, written to `parity.json`
beside the tokenized data.

For every sample (or `PARITY_SAMPLES` of each split, drawn with the dataset's seed, on larger sets), on the ids
as they are stored for training:
- they equal `apply_chat_template(conversation, tokenize=True)` of the turns the sample kept (its prefix, where
  the last reply was cut to fit max_length);
- before every assistant turn stands exactly `apply_chat_template(messages before it, add_generation_prompt=True)`,
  the prompt a server sends the model there, and (with label masking) the turn's first token right after it is
  trained;
- (with label masking) every assistant turn the sample holds whole ends on a trained end-of-turn special token.
A failure stops the build with one line naming the sample, the position and the first differing tokens.
"""
from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from trainer.data.conversation import Conversation
from trainer.data.tokenize import EncodedSample
from trainer.errors import DataError
from trainer.formats.own_template import PINNED_DATE, ChatTemplateFormat
from trainer.tokens import IGNORE_INDEX

PARITY_SAMPLES = 1000  # per split: checked samples at most, drawn with the dataset's seed beyond that
PARITY_FILE = "parity.json"
CHECKS = ("training ids == apply_chat_template(conversation, tokenize=True)",
          "each assistant turn starts right after apply_chat_template(messages before it, add_generation_prompt=True)"
          ", its first token trained",
          "each whole assistant turn ends on a trained end-of-turn special token")


def checked_conversations(convs: Sequence[Conversation], seed: int) -> set[int]:
    """`id()` of the conversations whose samples are checked: all, or a seeded draw of PARITY_SAMPLES."""
    if len(convs) <= PARITY_SAMPLES:
        return {id(c) for c in convs}
    drawn = np.random.default_rng(seed).choice(len(convs), PARITY_SAMPLES, replace=False)
    return {id(convs[i]) for i in drawn.tolist()}


@dataclass
class SplitParity:
    samples: int = 0  # kept samples
    checked: int = 0
    assistant_turns: int = 0
    end_tokens: dict[str, int] = field(default_factory=dict)  # end-of-turn token -> turns checked ending on it


class DataParity:
    """The checks over one dataset entry's splits, and their record."""

    def __init__(self, fmt: ChatTemplateFormat, label_masking: bool, seed: int):
        self.fmt = fmt
        self.tokenizer = fmt.tokenizer
        self.label_masking = label_masking
        self.seed = seed
        self.splits: dict[str, SplitParity] = {}
        self.sampled = False

    def check(self, split: str, samples: Sequence[EncodedSample], chosen: set[int], total: int) -> None:
        record = self.splits.setdefault(split, SplitParity())
        self.sampled |= total > PARITY_SAMPLES
        record.samples += len(samples)
        for sample in samples:
            if id(sample.conversation) in chosen:
                self._check_sample(sample, record)
                record.checked += 1

    def _check_sample(self, sample: EncodedSample, record: SplitParity) -> None:
        conv = dataclasses.replace(sample.conversation, turns=sample.conversation.turns[sample.turns_dropped:])
        where = conv.origin or conv.source
        messages = self.fmt.conversation_messages(conv)
        ids = sample.input_ids.tolist()
        expected = self.fmt.apply(messages, conv.tools, where, tokenize=True)["input_ids"]
        if ids != expected[:len(ids)] or (not sample.truncated and len(ids) != len(expected)):
            self._fail(where, ids, expected, "apply_chat_template(conversation)")
        labels = sample.labels
        for i, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            prompt = self.fmt.apply(messages[:i], conv.tools, where, tokenize=True,
                                    add_generation_prompt=True)["input_ids"]
            if len(prompt) >= len(ids):
                break
            if ids[:len(prompt)] != prompt:
                self._fail(where, ids, prompt, f"the generation prompt before message {i}")
            record.assistant_turns += 1
            if self.label_masking:
                self._check_turn(where, i, ids, labels, len(prompt), record)

    def _check_turn(self, where: str, i: int, ids: list[int], labels: np.ndarray, start: int,
                    record: SplitParity) -> None:
        if labels[start] == IGNORE_INDEX:
            raise DataError(f"parity: {where}: position {start}: the first token of assistant message {i} "
                            f"({self._token(ids[start])}) is not trained")
        untrained = np.flatnonzero(labels[start:] == IGNORE_INDEX)
        if not len(untrained):
            return  # the turn runs to the end of the sample: cut to fit max_length, or the last turn
        last = start + int(untrained[0]) - 1
        token = self.tokenizer.convert_ids_to_tokens(ids[last])
        if token not in self.fmt.specials:
            raise DataError(f"parity: {where}: position {last}: assistant message {i}'s trained tokens end on "
                            f"{self._token(ids[last])}, not on an end-of-turn special token")
        record.end_tokens[token] = record.end_tokens.get(token, 0) + 1

    def _token(self, token_id: int) -> str:
        return f"{self.tokenizer.decode([token_id])!r} (id {token_id})"

    def _fail(self, where: str, ids: list[int], expected: list[int], what: str) -> None:
        position = next((p for p, (a, b) in enumerate(zip(ids, expected)) if a != b), min(len(ids), len(expected)))
        ours = self._token(ids[position]) if position < len(ids) else "the end of the sample"
        theirs = self._token(expected[position]) if position < len(expected) else "its end"
        raise DataError(f"parity: {where}: position {position}: training has {ours}, {what} has {theirs}")

    def record(self) -> dict:
        template = self.fmt.template
        end_tokens = sorted({t for s in self.splits.values() for t in s.end_tokens})
        return {
            "prompt_format": self.fmt.name,
            "tokenizer": self.tokenizer.name_or_path,
            "chat_template_sha256": hashlib.sha256(template.encode()).hexdigest(),
            "date_string": PINNED_DATE,
            "label_masking": self.label_masking,
            "checks": list(CHECKS),
            "sampled": self.sampled,
            "limit_per_split": PARITY_SAMPLES,
            "seed": self.seed,
            "splits": {name: dataclasses.asdict(split) for name, split in self.splits.items()},
            "end_of_turn_tokens": end_tokens,
            "result": "ok",
        }


def parity_line(record: dict) -> str:
    """The data report's line for a parity.json record."""
    splits = ", ".join(f"{s['checked']:,} of {s['samples']:,} {name}" for name, s in record["splits"].items())
    ends = ", ".join(record["end_of_turn_tokens"]) or "none whole"
    how = f"a seeded draw (seed {record['seed']})" if record["sampled"] else "every sample"
    return (f"parity ({how}): {splits} samples: ids == apply_chat_template, each reply right after its "
            f"generation prompt, end-of-turn token trained ({ends}): {record['result']}")
