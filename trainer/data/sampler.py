"""Which training samples each rank sees, in which order, each epoch.

Indices refer to the datasets concatenated in order (as `torch.utils.data.ConcatDataset` numbers them).
Each dataset contributes `draw_count` samples: with `resample=True` (OASST's `use_custom_sampler`) a fresh
random draw every epoch, seeded by `seed + epoch`; with `resample=False` one fixed subset drawn from `seed`
and only reshuffled each epoch. The union is shuffled, or with `sort_by_length` grouped into batches of
similar length, and dealt to the ranks like `DistributedSampler`: rank r takes every world_size-th index.
When the total does not divide evenly, the first indices are repeated to fill the last round, so every rank
gets the same count (unequal counts would hang a distributed step) and no drawn sample is dropped.

`TokenBudgetBatchSampler` yields whole micro-batches instead: the same draw cut into batches of at most a
number of tokens (padding-free layouts), dealt to the ranks the same way.
"""
from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler

from trainer.config import DatasetConfig
from trainer.errors import ConfigError

# OASST sorted by length inside windows of 200 samples; here the window scales with the batch.
MEGA_BATCH_FACTOR = 50


def draw_count(dataset_size: int, fraction: float = 1.0, size: int | None = None) -> int:
    """Samples a dataset contributes per epoch: `size` (capped at the dataset), else `fraction` of it,
    never fewer than one from a non-empty dataset (a listed dataset is never silently dropped)."""
    if size is not None:
        return min(size, dataset_size)
    return min(dataset_size, max(1, int(dataset_size * fraction))) if dataset_size else 0


def draw_counts(datasets: Sequence[DatasetConfig], sizes: Sequence[int]) -> list[int]:
    """`draw_count` for each configured dataset, from its `fraction` / `size`."""
    return [draw_count(n, ds.fraction, ds.size) for ds, n in zip(datasets, sizes, strict=True)]


class PerDatasetSampler(Sampler[int]):
    """Per-rank sample indices for one epoch; call `set_epoch` before each epoch, as with DistributedSampler.

    `lengths[d][i]` is the token count of sample i of dataset d (only used by `sort_by_length`; the dataset
    sizes come from it). `batch_size` is the per-rank batch size the DataLoader will use.
    """

    def __init__(self, lengths: Sequence[Sequence[int]], counts: Sequence[int], *, seed: int, batch_size: int = 1,
                 rank: int = 0, world_size: int = 1, resample: bool = True, sort_by_length: bool = False) -> None:
        if len(lengths) != len(counts):
            raise ConfigError(f"sampler: {len(lengths)} datasets but {len(counts)} draw counts")
        for d, (dataset, count) in enumerate(zip(lengths, counts)):
            if not 0 <= count <= len(dataset):
                raise ConfigError(f"sampler: dataset {d} has {len(dataset)} samples, cannot draw {count}")
        if not 0 <= rank < world_size:
            raise ConfigError(f"sampler: rank {rank} is outside world_size {world_size}")
        if batch_size < 1:
            raise ConfigError(f"sampler: batch_size must be at least 1, got {batch_size}")
        self.lengths = np.concatenate([np.asarray(d, dtype=np.int64) for d in lengths]) if lengths else np.zeros(0, np.int64)
        self.sizes = [len(d) for d in lengths]
        self.counts = list(counts)
        self.seed = seed
        self.batch_size = batch_size
        self.rank = rank
        self.world_size = world_size
        self.resample = resample
        self.sort_by_length = sort_by_length
        self.epoch = 0
        self.fixed: np.ndarray | None = None if resample else self._draw(np.random.default_rng(seed))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return math.ceil(sum(self.counts) / self.world_size)

    def __iter__(self) -> Iterator[int]:
        return iter(self.epoch_order()[self.rank::self.world_size].tolist())

    def epoch_order(self) -> np.ndarray:
        """All ranks' indices for this epoch, padded to a multiple of world_size; rank r takes [r::world_size]."""
        rng = np.random.default_rng(self.seed + self.epoch)
        drawn = self._draw(rng) if self.fixed is None else self.fixed
        order = self._by_length(drawn, rng) if self.sort_by_length else rng.permutation(drawn)
        missing = len(self) * self.world_size - len(order)
        return np.concatenate([order, order[:missing]])

    def _draw(self, rng: np.random.Generator) -> np.ndarray:
        offsets = np.cumsum([0, *self.sizes[:-1]])
        picks = [offset + rng.choice(size, count, replace=False)
                 for offset, size, count in zip(offsets, self.sizes, self.counts)]
        return np.concatenate(picks) if picks else np.zeros(0, dtype=np.int64)

    def _by_length(self, drawn: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Shuffle, sort inside mega-batches (longest first), cut into global batches and shuffle those.

        A global batch is batch_size x world_size indices, so after dealing every rank's batch k comes from
        the same global batch. Only full batches are shuffled; the short remainder stays last so the full
        ones stay aligned with the ranks' batch boundaries.
        """
        step = self.batch_size * self.world_size
        mega = step * MEGA_BATCH_FACTOR
        order = rng.permutation(drawn)
        for start in range(0, len(order), mega):
            window = order[start:start + mega]
            order[start:start + mega] = window[np.argsort(-self.lengths[window], kind="stable")]
        full = len(order) // step * step
        batches = order[:full].reshape(-1, step)[rng.permutation(full // step)]
        return np.concatenate([batches.reshape(-1), order[full:]])


class TokenBudgetBatchSampler(Sampler[list[int]]):
    """Per-rank micro-batches of whole samples whose lengths sum to at most `max_tokens`; call `set_epoch` before
    each epoch (and before `len`, which counts the current epoch's batches: with `resample` the draw, hence the
    count, can change from one epoch to the next).

    The epoch's samples are `PerDatasetSampler`'s draw. They are sorted by length (ties in random order) and cut
    greedily: a batch takes the next samples while they fit. Each batch therefore holds samples of similar length
    and close to `max_tokens` tokens, so every step does about the same work and a one-row layout pads almost
    nothing. The batch order is shuffled with `seed + epoch`, then batches are dealt to the ranks in turn; when
    they do not divide evenly the first ones are repeated, so every rank takes the same number of steps.
    """

    def __init__(self, lengths: Sequence[Sequence[int]], counts: Sequence[int], *, max_tokens: int, seed: int,
                 rank: int = 0, world_size: int = 1, resample: bool = True) -> None:
        self.draws = PerDatasetSampler(lengths, counts, seed=seed, resample=resample)  # all ranks' samples
        longest = int(self.draws.lengths.max(initial=0))
        if max_tokens < longest:
            raise ConfigError(f"sampler: max_tokens {max_tokens} is less than the longest sample ({longest} tokens); "
                              f"a budget must hold any one sample")
        if not 0 <= rank < world_size:
            raise ConfigError(f"sampler: rank {rank} is outside world_size {world_size}")
        self.max_tokens = max_tokens
        self.rank = rank
        self.world_size = world_size

    def set_epoch(self, epoch: int) -> None:
        self.draws.set_epoch(epoch)

    def __len__(self) -> int:
        return math.ceil(len(self.epoch_batches()) / self.world_size)

    def __iter__(self) -> Iterator[list[int]]:
        batches = self.epoch_batches()
        rounds = math.ceil(len(batches) / self.world_size)
        filled = [batches[i % len(batches)] for i in range(rounds * self.world_size)]
        return iter(filled[self.rank::self.world_size])

    def epoch_batches(self) -> list[list[int]]:
        """All ranks' batches for this epoch, in training order, before the fill."""
        order = self.draws.epoch_order()  # a random permutation of the draw: the stable sort keeps ties random
        order = order[np.argsort(self.draws.lengths[order], kind="stable")]
        batches: list[list[int]] = []
        room = 0
        for index, length in zip(order.tolist(), self.draws.lengths[order].tolist()):
            if length > room:
                batches.append([])
                room = self.max_tokens
            batches[-1].append(index)
            room -= length
        # A stream of seed + epoch of its own, independent of the one that drew and permuted the samples.
        rng = np.random.default_rng([self.draws.seed + self.draws.epoch, 1])
        return [batches[i] for i in rng.permutation(len(batches))]
