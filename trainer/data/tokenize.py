"""Conversations to `input_ids` / `labels`: every distinct segment text is encoded once, samples are numpy joins.

OASST threads repeat their prefixes (every root-to-leaf branch is a sample), so encoding whole rendered strings
would tokenize the same messages many times. Segments are encoded instead, in one `encode_batch` over the unique
texts, and a sample is the concatenation of its segments' cached ids. For the oasst format this equals
tokenizing the rendered string (special tokens split the text anyway). For the template formats the reply is
encoded apart from its prompt, as the qlora fork does and as inference sees it (the prompt ends before the
reply); a reply is then tokenized from its own first character, e.g. after `ASSISTANT: ` the trailing space
stays its own token.

A format that renders with a model's own chat template (`tokenize_segments` false) is tokenized as
`apply_chat_template` tokenizes: the whole rendered text in one piece, a token trained when it overlaps a trained
segment (as transformers' `return_assistant_tokens_mask` decides); samples are encoded one by one.

Labels are -100 except on trained segments (the assistant replies and their end tokens); `label_masking` false
trains every token. Position 0 is never a target (nothing precedes it), so its label is always -100.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence, TypeVar

import numpy as np

from trainer.data.conversation import PROMPTER, Conversation, Turn
from trainer.formats import ConversationFormat, Segment
from trainer.errors import ConfigError
from trainer.tokens import IGNORE_INDEX

PRIME_BATCH = 4096  # texts per encode_batch call
T = TypeVar("T")


class SegmentEncoder:
    """Token ids per segment text, computed once per distinct text with the tokenizer's fast backend."""

    def __init__(self, tokenizer):
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is None:
            raise ConfigError(f"tokenizer '{tokenizer.name_or_path}' has no fast (`tokenizers`) backend; "
                              f"Delphi needs one to encode datasets")
        self._backend = backend
        self._ids: dict[str, np.ndarray] = {}

    def prime(self, texts: Iterable[str]) -> None:
        """Batch-encode every text not seen yet (duplicates are encoded once)."""
        new = [t for t in dict.fromkeys(texts) if t not in self._ids]
        if not new:
            return
        # In slices: an Encoding carries strings and masks besides the ids, and holding one per message of a
        # large export at once costs gigabytes. `encode_batch_fast` skips the character offsets nobody reads here
        # (14% less time than `encode_batch`, measured with the GPT-NeoX-20B tokenizer).
        for start in range(0, len(new), PRIME_BATCH):
            batch = new[start:start + PRIME_BATCH]
            for text, encoding in zip(batch, self._backend.encode_batch_fast(batch, add_special_tokens=False)):
                self._ids[text] = np.array(encoding.ids, dtype=np.int32)

    def lookup(self, segments: Sequence[Segment]) -> list[np.ndarray]:
        """The ids of every segment (the fast path: one dict lookup each once primed)."""
        table = self._ids
        try:
            return [table[segment.text] for segment in segments]
        except KeyError:
            return [self.ids(segment.text) for segment in segments]

    def whole(self, segments: Sequence[Segment]) -> tuple[list[np.ndarray], list[bool]]:
        """The segments' text tokenized in one piece, as runs of ids that are all trained or all not: a token is
        trained when its characters overlap a trained segment's."""
        encoding = self._backend.encode("".join(s.text for s in segments), add_special_tokens=False)
        ids = np.array(encoding.ids, dtype=np.int32)
        offsets = np.array(encoding.offsets, dtype=np.int64).reshape(-1, 2)
        trained = np.zeros(len(ids), dtype=bool)
        position = 0
        for segment in segments:
            end = position + len(segment.text)
            if segment.trained:
                trained |= (offsets[:, 1] > position) & (offsets[:, 0] < end)
            position = end
        cuts = np.flatnonzero(np.diff(trained.view(np.int8))) + 1
        return np.split(ids, cuts), trained[np.concatenate([[0], cuts]).astype(np.int64)].tolist()

    def pieces(self, fmt: ConversationFormat, segments: Sequence[Segment]) -> tuple[list[np.ndarray], list[bool]]:
        """The ids of a rendered sample in trained / untrained pieces, as the format is tokenized."""
        if fmt.tokenize_segments:
            return self.lookup(segments), [s.trained for s in segments]
        return self.whole(segments)

    def ids(self, text: str) -> np.ndarray:
        """Cached ids of `text`; a text not primed (e.g. a re-rendered truncated sample) is encoded now."""
        found = self._ids.get(text)
        if found is None:
            found = np.array(self._backend.encode(text, add_special_tokens=False).ids, dtype=np.int32)
            self._ids[text] = found
        return found

    def __len__(self) -> int:
        return len(self._ids)

    def clear(self) -> None:
        """Forget every text: a build clears it after each chunk, so that its memory does not grow with the data."""
        self._ids.clear()


@dataclass(frozen=True, slots=True)
class EncodedSample:
    input_ids: np.ndarray  # int32
    labels: np.ndarray  # int32, IGNORE_INDEX where not trained
    trained_tokens: int
    truncated: bool  # exchanges were dropped or the last reply was cut
    turns_dropped: int  # oldest turns dropped to fit max_length (whole exchanges)
    conversation: Conversation | None = None  # what was encoded (its turns from `turns_dropped` on)


@dataclass
class EncodeStats:
    samples: int = 0  # kept
    truncated: int = 0  # kept, but shortened to fit max_length
    dropped_no_trained_tokens: int = 0  # not kept: nothing left to train on after truncation
    tokens: int = 0
    trained_tokens: int = 0

    def __iadd__(self, other: EncodeStats) -> EncodeStats:
        for f in dataclasses.fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))
        return self

    def add(self, sample: EncodedSample | None) -> None:
        if sample is None:
            self.dropped_no_trained_tokens += 1
            return
        self.samples += 1
        self.truncated += sample.truncated
        self.tokens += len(sample.input_ids)
        self.trained_tokens += sample.trained_tokens


def encode(conv: Conversation, fmt: ConversationFormat, encoder: SegmentEncoder, max_length: int,
           label_masking: bool) -> EncodedSample | None:
    """One conversation as ids and labels, or None when no trained token survives truncation."""
    return _encode(conv, fmt.render(conv), fmt, encoder, max_length, label_masking)


def encode_all(convs: Sequence[Conversation], fmt: ConversationFormat, encoder: SegmentEncoder, max_length: int,
               label_masking: bool) -> tuple[list[EncodedSample], EncodeStats]:
    """`encode_each`, keeping the samples: those with no trained token are counted in the stats, not kept."""
    return _kept(encode_each(convs, fmt, encoder, max_length, label_masking))


def encode_each(convs: Sequence[Conversation], fmt: ConversationFormat, encoder: SegmentEncoder, max_length: int,
                label_masking: bool) -> list[EncodedSample | None]:
    """Every conversation, as `encode` would do it one by one, but vectorized for segment-wise formats: rendered
    once, encoded in one batch, and joined in one numpy pass (samples are views into two shared arrays)."""
    if not fmt.tokenize_segments:
        return [encode(conv, fmt, encoder, max_length, label_masking) for conv in convs]
    rendered = [fmt.render(conv) for conv in convs]
    encoder.prime(segment.text for segments in rendered for segment in segments)
    arrays: list[np.ndarray] = []
    trained_flags: list[bool] = []
    segment_counts: list[int] = []
    for segments in rendered:
        arrays += encoder.lookup(segments)
        trained_flags += [segment.trained for segment in segments]
        segment_counts.append(len(segments))
    if not arrays:
        return []
    # Every format renders at least one non-empty segment per sample, so no sample is empty.
    lengths = np.fromiter(map(len, arrays), dtype=np.int64, count=len(arrays))
    totals = np.add.reduceat(lengths, np.cumsum([0] + segment_counts[:-1]))
    starts = np.cumsum(totals) - totals
    input_ids = np.concatenate(arrays)
    if label_masking:
        ignore = np.full(int(lengths.max()), IGNORE_INDEX, dtype=np.int32)
        labels = np.concatenate([a if trained else ignore[:len(a)] for a, trained in zip(arrays, trained_flags)])
    else:
        labels = input_ids.copy()
    labels[starts] = IGNORE_INDEX
    trained_counts = np.add.reduceat((labels != IGNORE_INDEX).view(np.int8).astype(np.int32), starts)

    samples: list[EncodedSample | None] = []
    for conv, segments, start, total, trained in zip(convs, rendered, starts.tolist(), totals.tolist(),
                                                     trained_counts.tolist()):
        if total > max_length:
            sample = _encode(conv, segments, fmt, encoder, max_length, label_masking)
        elif trained:
            sample = EncodedSample(input_ids[start:start + total], labels[start:start + total], trained, False, 0,
                                   conv)
        else:
            sample = None
        samples.append(sample)
    return samples


def _kept(samples: Iterable[EncodedSample | None]) -> tuple[list[EncodedSample], EncodeStats]:
    kept: list[EncodedSample] = []
    stats = EncodeStats()
    for sample in samples:
        stats.add(sample)
        if sample is not None:
            kept.append(sample)
    return kept, stats


def fit_exchanges(turns: Sequence[Turn], measure: Callable[[Sequence[Turn]], tuple[int, T]],
                  limit: int) -> tuple[int, T]:
    """Drop whole exchanges (a prompter turn and every turn up to the next one: the reply, tool calls and their
    results), oldest first, until `measure(turns[dropped:])` (a length and what was measured) is within `limit` or
    only the last exchange is left; the header (system prompt) is the format's and always stays. Training keeps
    the last exchange (and cuts its reply if it alone is too long); a chat keeps the new prompt."""
    starts = [i for i, turn in enumerate(turns) if turn.role == PROMPTER]
    dropped = 0
    length, measured = measure(turns)
    for start in starts[1:]:
        if length <= limit:
            break
        dropped = start
        length, measured = measure(turns[dropped:])
    return dropped, measured


def encode_prompt(turns: Sequence[Turn], fmt: ConversationFormat, encoder: SegmentEncoder,
                  system: str | None) -> np.ndarray:
    """A chat's generation prompt as ids, segment by segment exactly as the training samples were encoded."""
    return np.concatenate(encoder.lookup(fmt.generation_segments(turns, system)))


def _encode(conv: Conversation, segments: list[Segment], fmt: ConversationFormat, encoder: SegmentEncoder,
            max_length: int, label_masking: bool) -> EncodedSample | None:
    def measure(turns: Sequence[Turn]) -> tuple[int, tuple[list[np.ndarray], list[bool]]]:
        rendered = segments if len(turns) == len(conv.turns) else fmt.render(dataclasses.replace(conv, turns=turns))
        arrays, flags = encoder.pieces(fmt, rendered)
        return sum(map(len, arrays)), (arrays, flags)

    dropped, (arrays, flags) = fit_exchanges(conv.turns, measure, max_length)
    total = sum(map(len, arrays))
    input_ids = np.concatenate(arrays)[:max_length]
    if label_masking:
        labels = np.full(len(input_ids), IGNORE_INDEX, dtype=np.int32)
        offset = 0
        for trained, array in zip(flags, arrays):
            if offset >= max_length:
                break
            if trained:
                labels[offset:offset + len(array)] = array[:max_length - offset]
            offset += len(array)
    else:
        labels = input_ids.copy()
    labels[:1] = IGNORE_INDEX
    trained = int(np.count_nonzero(labels != IGNORE_INDEX))
    if trained == 0:
        return None
    return EncodedSample(input_ids, labels, trained, dropped > 0 or total > max_length, dropped, conv)
