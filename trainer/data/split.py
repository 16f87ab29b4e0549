"""The train/validation split, done exactly as OASST does it so that the same seed holds out the same items."""
from __future__ import annotations

import math
from typing import TypeVar

import numpy as np

T = TypeVar("T")


def split_sizes(n: int, val_split: float) -> list[int]:
    """torch's fraction rule: `floor(n * fraction)` per part, the remainder dealt round-robin from train.

    Computed here rather than passed as fractions because `(1 - v) + v` can round above 1, which torch rejects.
    """
    sizes = [math.floor(n * (1 - val_split)), math.floor(n * val_split)]
    for i in range(n - sum(sizes)):
        sizes[i % 2] += 1
    return sizes


def split_indices(n: int, val_split: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Which of `n` items go to train and to validation, each in `torch.randperm(n)` order: exactly the members
    and order of `torch.utils.data.random_split(range(n), split_sizes(n, val_split), Generator().manual_seed(seed))`
    (as in OASST), as index arrays, so that a streamed build needs only the number of items."""
    import torch

    if n == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).numpy()
    n_train = split_sizes(n, val_split)[0]
    return perm[:n_train], perm[n_train:]


def seeded_split(items: list[T], val_split: float, seed: int) -> tuple[list[T], list[T]]:
    """`split_indices` applied to a list: train takes the permutation's first part, validation the rest, each in
    the permutation's order, as in OASST."""
    train, val = split_indices(len(items), val_split, seed)
    return [items[i] for i in train.tolist()], [items[i] for i in val.tolist()]
