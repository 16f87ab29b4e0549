"""The train/validation split, done exactly as OASST does it so that the same seed holds out the same items."""
from __future__ import annotations

import math
import warnings
from typing import TypeVar

T = TypeVar("T")


def split_sizes(n: int, val_split: float) -> list[int]:
    """torch's fraction rule: `floor(n * fraction)` per part, the remainder dealt round-robin from train.

    Computed here rather than passed as fractions because `(1 - v) + v` can round above 1, which torch rejects.
    """
    sizes = [math.floor(n * (1 - val_split)), math.floor(n * val_split)]
    for i in range(n - sum(sizes)):
        sizes[i % 2] += 1
    return sizes


def seeded_split(items: list[T], val_split: float, seed: int) -> tuple[list[T], list[T]]:
    """`torch.utils.data.random_split(items, [1 - val_split, val_split], Generator().manual_seed(seed))`.

    Membership follows `torch.randperm(n)`: train takes its first part, validation the rest, each in the
    permutation's order, as in OASST.
    """
    import torch
    from torch.utils.data import random_split

    if not items:
        return [], []
    with warnings.catch_warnings():
        # Sizes [1, 0] sum to 1, so torch reads them as fractions (same result) and warns about the empty part.
        warnings.filterwarnings("ignore", message="Length of split at index")
        train, val = random_split(items, split_sizes(len(items), val_split),
                                  generator=torch.Generator().manual_seed(seed))
    return [items[i] for i in train.indices], [items[i] for i in val.indices]
