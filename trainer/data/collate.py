"""Token samples -> model batches: dynamic padding, or packing several samples into one row without letting
them see each other.

Packing isolation differs by architecture (checked on transformers 5.24, see tests/test_collate.py):
- GPT-NeoX and Falcon build their attention mask with `create_causal_mask`, which splits a row into separate
  causal blocks wherever `position_ids` restart, but only when the batch has no 2D attention mask and the
  model keeps no cache. Packed batches for them therefore carry `position_ids`, no `attention_mask`, and
  `use_cache=False` (a cache is built even in training otherwise, and the samples then silently mix).
- MPT's ALiBi ignores `position_ids` and its mask never looks at them, so it gets a 4D additive
  block-diagonal mask instead (0 = attend, float32 min = blocked). MPT turns any mask into "True = blocked"
  with `.to(bool)`, so it must be this float form: a boolean "True = attend" mask would be read inverted.
- Each architecture's entry (`trainer.architectures`) names its way; one without an entry is refused.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from trainer.architectures import ARCHITECTURES, Isolation
from trainer.errors import ConfigError, DataError
from trainer.loss import trained_positions
from trainer.tokens import IGNORE_INDEX


def packing_isolation(model_config) -> Isolation:
    """How packed samples are kept apart for this model config; a ConfigError where that was never verified."""
    model_type = getattr(model_config, "model_type", None)
    if model_type not in ARCHITECTURES:
        raise ConfigError(f"packing: true is not supported for model type {model_type!r}: samples sharing a row "
                          f"are only verified to stay isolated for {', '.join(ARCHITECTURES)}; set packing: false")
    return ARCHITECTURES[model_type].packing


def training_collator(data, pad_token_id: int, isolation: Isolation = "position_ids",
                      one_row: int | None = None) -> "DataCollator":
    """The collator training uses for a DataConfig; widths round up to a multiple of 8 for GPU matmul tiles.

    `one_row` (a padding-free token budget under a varlen attention kernel) packs each micro-batch into one row of
    up to that many tokens and hands the kernel the sequence bounds; otherwise padding-free batches are packed
    into rows of `max_length`, which any isolation can mask."""
    return DataCollator(pad_token_id, data.max_length, pad_to_multiple_of=8, packing=data.packing or
                        data.padding_free, isolation=isolation, row_length=one_row, flash_kwargs=one_row is not None)


@dataclass(frozen=True)
class DataCollator:
    """Pads a list of samples (mappings or objects with `input_ids` and `labels`) to the longest in the batch,
    optionally rounded up to `pad_to_multiple_of`; labels are -100 on padding.

    >>> collate = DataCollator(pad_token_id=1, max_length=8, pad_to_multiple_of=4)
    >>> batch = collate([{"input_ids": [7, 8, 9], "labels": [-100, 8, 9]}])
    >>> batch["input_ids"].tolist(), batch["attention_mask"].tolist(), batch["labels"].tolist()
    ([[7, 8, 9, 1]], [[1, 1, 1, 0]], [[-100, 8, 9, -100]])

    With `packing`, samples are placed first-fit (longest first) into rows of at most `max_length` tokens (or
    `row_length`, below), and `isolation` (from `packing_isolation(model.config)`) says how the model is told where
    each one starts.
    Every packed sample's first label becomes -100: the loss shifts labels by one, so it would otherwise train
    the previous sample's last token to predict this sample's first.

    >>> packed = DataCollator(pad_token_id=1, max_length=5, packing=True)
    >>> batch = packed([{"input_ids": [7, 8, 9], "labels": [7, 8, 9]}, {"input_ids": [5, 6], "labels": [5, 6]},
    ...                 {"input_ids": [4, 3], "labels": [-100, 3]}])
    >>> batch["input_ids"].tolist()
    [[7, 8, 9, 5, 6], [4, 3, 1, 1, 1]]
    >>> batch["position_ids"].tolist()
    [[0, 1, 2, 0, 1], [0, 1, 0, 1, 2]]
    >>> batch["labels"].tolist()
    [[-100, 8, 9, -100, 6], [-100, 3, -100, -100, -100]]

    Every batch also carries, computed here on the CPU so that the training step never has to read a count or a
    boolean mask back from the GPU: `num_real_tokens` and `num_trained_tokens` (Python ints), `trained_index`
    (flat positions t of the rows x width batch whose next label is trained) and `trained_targets` (those labels).

    >>> batch["num_trained_tokens"], batch["trained_index"].tolist(), batch["trained_targets"].tolist()
    (4, [0, 1, 3, 5], [8, 9, 6, 3])

    `row_length` (default `max_length`) is the width rows are packed to: a token budget puts a whole budget batch
    in one row for a varlen attention kernel. `flash_kwargs` adds flash-attention's varlen arguments, one sequence
    per sample (and per padding tail) over the flattened rows, so the kernel needs nothing read back from the GPU.

    >>> flat = DataCollator(pad_token_id=1, max_length=5, packing=True, row_length=12, flash_kwargs=True)
    >>> batch = flat([{"input_ids": [7, 8, 9], "labels": [7, 8, 9]}, {"input_ids": [5, 6], "labels": [5, 6]}])
    >>> batch["input_ids"].tolist(), batch["position_ids"].tolist()
    ([[7, 8, 9, 5, 6]], [[0, 1, 2, 0, 1]])
    >>> batch["cu_seq_lens_q"].tolist(), batch["max_length_q"]
    ([0, 3, 5], 3)
    """

    pad_token_id: int
    max_length: int
    pad_to_multiple_of: int | None = None
    packing: bool = False
    isolation: Isolation = "position_ids"
    row_length: int | None = None
    flash_kwargs: bool = False

    def __post_init__(self) -> None:
        if self.row_length is not None and (not self.packing or self.row_length < self.max_length):
            raise ConfigError(f"collator: row_length {self.row_length} needs packing and at least max_length "
                              f"{self.max_length} (a sample must fit a row)")
        if self.flash_kwargs and not (self.packing and self.isolation == "position_ids"):
            raise ConfigError("collator: flash_kwargs needs packing with position_ids isolation (flash-attention "
                              "varlen cannot take the block-diagonal mask MPT's ALiBi needs)")

    def __call__(self, samples: Sequence[Any]) -> dict[str, Any]:
        pairs = [_ids_and_labels(sample, i) for i, sample in enumerate(samples)]
        lengths = [len(ids) for ids, _ in pairs]
        rows = self._rows(lengths)
        width = self._width(rows, lengths)
        batch = self._packed(pairs, rows, width) if self.packing else self._padded(pairs, width)
        # For throughput accounting: a packed batch has no 2D mask to count its padding from.
        batch["num_real_tokens"] = sum(lengths)
        batch.update(_trained(batch["labels"]))
        if self.flash_kwargs:
            batch.update(_varlen_kwargs(rows, lengths, width))
        return batch

    def padded_size(self, lengths: Sequence[int]) -> int:
        """Token slots (rows x width) a batch of samples with these lengths takes, padding included."""
        rows = self._rows(list(lengths))
        return len(rows) * self._width(rows, lengths)

    def _rows(self, lengths: list[int]) -> list[list[int]]:
        """Sample indices per row: one each, or first-fit decreasing into rows of `row_length` (or `max_length`)."""
        for i, length in enumerate(lengths):
            if length > self.max_length:
                raise DataError(f"sample {i} of the batch has {length} tokens, more than max_length "
                                f"{self.max_length}: samples must be truncated before collation")
        if not self.packing:
            return [[i] for i in range(len(lengths))]
        rows: list[list[int]] = []
        room: list[int] = []
        for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
            row = next((r for r, free in enumerate(room) if free >= lengths[i]), None)
            if row is None:
                rows.append([])
                room.append(self.row_length or self.max_length)
                row = len(rows) - 1
            rows[row].append(i)
            room[row] -= lengths[i]
        return rows

    def _width(self, rows: list[list[int]], lengths: Sequence[int]) -> int:
        width = max((sum(lengths[i] for i in row) for row in rows), default=0)
        if self.pad_to_multiple_of:
            width = math.ceil(width / self.pad_to_multiple_of) * self.pad_to_multiple_of
        return width

    def _padded(self, pairs: list[tuple[np.ndarray, np.ndarray]], width: int) -> dict[str, Any]:
        input_ids = torch.full((len(pairs), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(pairs), width), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(pairs), width), dtype=torch.long)
        for row, (ids, sample_labels) in enumerate(pairs):
            input_ids[row, :len(ids)] = torch.from_numpy(ids)
            labels[row, :len(ids)] = torch.from_numpy(sample_labels)
            attention_mask[row, :len(ids)] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}

    def _packed(self, pairs: list[tuple[np.ndarray, np.ndarray]], rows: list[list[int]], width: int
                ) -> dict[str, Any]:
        input_ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
        position_ids = torch.zeros((len(rows), width), dtype=torch.long)
        segments = torch.zeros((len(rows), width), dtype=torch.long)
        for row, members in enumerate(rows):
            start = 0
            for segment, i in enumerate(members):
                ids, sample_labels = pairs[i]
                end = start + len(ids)
                input_ids[row, start:end] = torch.from_numpy(ids)
                labels[row, start:end] = torch.from_numpy(sample_labels)
                labels[row, start] = IGNORE_INDEX
                position_ids[row, start:end] = torch.arange(len(ids))
                segments[row, start:end] = segment
                start = end
            # The padding tail is a segment of its own, so it neither sees nor is seen by a real sample.
            position_ids[row, start:] = torch.arange(width - start)
            segments[row, start:] = len(members)
        batch: dict[str, Any] = {"input_ids": input_ids, "labels": labels, "position_ids": position_ids}
        if self.isolation == "position_ids":
            batch["use_cache"] = False
        else:
            batch["attention_mask"] = _block_diagonal_mask(segments)
        return batch


def _trained(labels: torch.Tensor) -> dict[str, Any]:
    """Flat positions whose next token is trained, and those tokens: the loss gathers with them instead of a
    boolean mask, whose result size the host would have to read back from the GPU."""
    index = trained_positions(labels).flatten().nonzero().squeeze(1)
    return {"num_trained_tokens": len(index), "trained_index": index, "trained_targets": labels.flatten()[index + 1]}


def _varlen_kwargs(rows: list[list[int]], lengths: Sequence[int], width: int) -> dict[str, Any]:
    """cu_seq_lens / max_length for flash-attention varlen over the flattened rows: each sample is a sequence, and
    so is a row's padding tail (it attends only to itself, as the position ids already say)."""
    sizes: list[int] = []
    for members in rows:
        sizes += [lengths[i] for i in members]
        tail = width - sum(lengths[i] for i in members)
        sizes += [tail] if tail else []
    cu = torch.tensor(np.cumsum([0, *sizes]), dtype=torch.int32)
    longest = max(sizes)
    return {"cu_seq_lens_q": cu, "cu_seq_lens_k": cu, "max_length_q": longest, "max_length_k": longest}


def _block_diagonal_mask(segments: torch.Tensor) -> torch.Tensor:
    """(rows, 1, width, width) additive mask: a token sees the earlier tokens of its own segment only."""
    width = segments.shape[1]
    causal = torch.ones(width, width, dtype=torch.bool).tril()
    allowed = (segments[:, :, None] == segments[:, None, :]) & causal
    blocked = torch.full(allowed.shape, torch.finfo(torch.float32).min)
    return torch.where(allowed, 0.0, blocked)[:, None]


def _ids_and_labels(sample: Any, position: int) -> tuple[np.ndarray, np.ndarray]:
    def field(name: str) -> np.ndarray:
        value = sample.get(name) if isinstance(sample, Mapping) else getattr(sample, name, None)
        if value is None:
            raise DataError(f"sample {position} of the batch has no '{name}'")
        return np.asarray(value, dtype=np.int64).reshape(-1)

    ids, labels = field("input_ids"), field("labels")
    if len(ids) != len(labels):
        raise DataError(f"sample {position} of the batch has {len(ids)} input_ids but {len(labels)} labels; "
                        f"expected one label per token")
    if len(ids) == 0:
        raise DataError(f"sample {position} of the batch has no tokens")
    return ids, labels
