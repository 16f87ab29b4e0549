"""Per-dataset sampling: draw sizes, per-epoch draws, rank splitting and length grouping, through a real
DataLoader and the real collator over tokenized samples."""
from __future__ import annotations

import random
from collections import Counter

import numpy as np
import pytest
from torch.utils.data import ConcatDataset, DataLoader

from trainer.config import DatasetConfig
from trainer.data.collate import DataCollator
from trainer.data.sampler import PerDatasetSampler, TokenBudgetBatchSampler, draw_count, draw_counts
from trainer.errors import ConfigError

WORDS = "the model reads a short answer and then writes a longer one about plants rivers and stars".split()


@pytest.fixture(scope="module")
def datasets(tokenizer):
    """Two datasets (40 and 25 samples) of tokenized texts from 1 to 60 words, labels on the second half."""
    rng = random.Random(0)
    out = []
    for size in (40, 25):
        samples = []
        for _ in range(size):
            ids = tokenizer(" ".join(rng.choices(WORDS, k=rng.randint(1, 60))))["input_ids"]
            samples.append({"input_ids": ids, "labels": [-100] * (len(ids) // 2) + ids[len(ids) // 2:]})
        out.append(samples)
    return out


@pytest.fixture(scope="module")
def lengths(datasets):
    return [[len(s["input_ids"]) for s in d] for d in datasets]


def _which_dataset(index: int, lengths) -> int:
    return int(index >= len(lengths[0]))


def test_draw_count_from_fraction_or_size():
    assert draw_count(40, fraction=0.25) == 10
    assert draw_count(40, size=7) == 7
    assert draw_count(40, size=100) == 40
    assert draw_count(3, fraction=0.1) == 1
    assert draw_count(0, fraction=0.5) == 0
    configs = [DatasetConfig.of("alpaca", fraction=0.5), DatasetConfig.of("airoboros", size=3)]
    assert draw_counts(configs, [40, 25]) == [20, 3]


def test_each_epoch_draws_the_configured_counts_afresh(lengths):
    sampler = PerDatasetSampler(lengths, [10, 20], seed=5)
    draws = []
    for epoch in range(3):
        sampler.set_epoch(epoch)
        order = list(sampler)
        assert len(order) == len(sampler) == 30 == len(set(order))
        assert Counter(_which_dataset(i, lengths) for i in order) == {0: 10, 1: 20}
        draws.append(frozenset(order))
    assert len(set(draws)) == 3


def test_same_seed_and_epoch_give_the_same_order_and_another_seed_does_not(lengths):
    def order(seed: int, epoch: int) -> list[int]:
        sampler = PerDatasetSampler(lengths, [10, 20], seed=seed)
        sampler.set_epoch(epoch)
        return list(sampler)

    assert order(5, 2) == order(5, 2)
    assert order(5, 2) != order(6, 2)
    assert order(5, 2) != order(5, 3)


def test_fixed_subset_is_kept_and_only_reshuffled(lengths):
    sampler = PerDatasetSampler(lengths, [10, 20], seed=5, resample=False)
    orders = []
    for epoch in range(3):
        sampler.set_epoch(epoch)
        orders.append(list(sampler))
    assert len({frozenset(o) for o in orders}) == 1
    assert orders[0] != orders[1]
    assert Counter(_which_dataset(i, lengths) for i in orders[0]) == {0: 10, 1: 20}


@pytest.mark.parametrize("sort_by_length", [False, True])
@pytest.mark.parametrize("counts, world_size", [([10, 20], 3), ([10, 19], 3), ([40, 25], 4)])
def test_ranks_get_equal_disjoint_shares_that_cover_the_draw(lengths, counts, world_size, sort_by_length):
    total = sum(counts)
    shares = []
    for rank in range(world_size):
        sampler = PerDatasetSampler(lengths, counts, seed=1, batch_size=2, rank=rank, world_size=world_size,
                                    sort_by_length=sort_by_length)
        sampler.set_epoch(4)
        shares.append(list(sampler))
        assert len(shares[-1]) == len(sampler) == -(-total // world_size)
    everything = [i for share in shares for i in share]
    single = PerDatasetSampler(lengths, counts, seed=1, sort_by_length=sort_by_length)
    single.set_epoch(4)
    assert set(everything) == set(single)
    assert len(set(everything)) == total
    assert len(everything) - total == (-total) % world_size  # only the padding to equal shares repeats


def test_sampler_drives_a_dataloader_with_the_collator(datasets, lengths, tokenizer):
    sampler = PerDatasetSampler(lengths, [40, 25], seed=0, batch_size=4, rank=1, world_size=2)
    loader = DataLoader(ConcatDataset(datasets), batch_size=4, sampler=sampler,
                        collate_fn=DataCollator(pad_token_id=tokenizer.pad_token_id, max_length=1024))
    batches = list(loader)
    assert len(batches) == len(loader) == -(-33 // 4)
    assert sum(b["input_ids"].shape[0] for b in batches) == len(sampler) == 33


def _padding(datasets, lengths, sort_by_length: bool, rank: int, tokenizer) -> float:
    """Padding share of the batches this rank collates over two epochs."""
    sizes = [len(s["input_ids"]) for d in datasets for s in d]
    collator = DataCollator(pad_token_id=tokenizer.pad_token_id, max_length=1024)
    sampler = PerDatasetSampler(lengths, [40, 25], seed=3, batch_size=4, rank=rank, world_size=2,
                                sort_by_length=sort_by_length)
    real = slots = 0
    for epoch in range(2):
        sampler.set_epoch(epoch)
        order = list(sampler)
        for start in range(0, len(order), 4):
            batch = [sizes[i] for i in order[start:start + 4]]
            real, slots = real + sum(batch), slots + collator.padded_size(batch)
    return 1 - real / slots


@pytest.mark.parametrize("rank", [0, 1])
def test_sort_by_length_cuts_padding_on_every_rank(datasets, lengths, tokenizer, rank):
    shuffled = _padding(datasets, lengths, False, rank, tokenizer)
    grouped = _padding(datasets, lengths, True, rank, tokenizer)
    assert grouped < shuffled / 2


def test_sort_by_length_still_reshuffles_each_epoch(lengths):
    sampler = PerDatasetSampler(lengths, [40, 25], seed=3, batch_size=4, sort_by_length=True)
    orders = []
    for epoch in range(2):
        sampler.set_epoch(epoch)
        orders.append(list(sampler))
    assert set(orders[0]) == set(orders[1]) and orders[0] != orders[1]
    flat = [n for d in lengths for n in d]
    spreads = [np.ptp([flat[i] for i in orders[0][s:s + 4]]) for s in range(0, 64, 4)]
    assert max(spreads) < np.ptp(flat) / 2


@pytest.mark.parametrize("kwargs, message", [
    ({"counts": [10]}, "2 datasets but 1 draw counts"),
    ({"counts": [41, 1]}, "dataset 0 has 40 samples, cannot draw 41"),
    ({"counts": [1, 1], "rank": 2, "world_size": 2}, "rank 2 is outside world_size 2"),
    ({"counts": [1, 1], "batch_size": 0}, "batch_size must be at least 1"),
])
def test_bad_arguments_are_clear_errors(lengths, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        PerDatasetSampler(lengths, seed=0, **kwargs)


def _flat(lengths) -> list[int]:
    return [n for d in lengths for n in d]


@pytest.fixture(scope="module")
def budget(lengths) -> int:
    """Room for four of the longest samples."""
    return 4 * max(_flat(lengths))


@pytest.mark.parametrize("resample, counts", [(True, [30, 20]), (False, [40, 25])])
def test_token_budget_batches_hold_each_drawn_sample_once_within_the_budget(lengths, budget, resample, counts):
    flat = _flat(lengths)
    sampler = TokenBudgetBatchSampler(lengths, counts, max_tokens=budget, seed=2, resample=resample)
    draws = PerDatasetSampler(lengths, counts, seed=2, resample=resample)
    for epoch in range(2):
        sampler.set_epoch(epoch)
        draws.set_epoch(epoch)
        batches = list(sampler)
        assert len(batches) == len(sampler) == len(sampler.epoch_batches())
        assert all(sum(flat[i] for i in b) <= budget for b in batches)
        assert sorted(i for b in batches for i in b) == sorted(draws)
        # Greedy over lengths in order: batches do not interleave in length, and none could take the next sample.
        by_length = sorted(batches, key=lambda b: (min(flat[i] for i in b), max(flat[i] for i in b)))
        for batch, following in zip(by_length, by_length[1:]):
            assert max(flat[i] for i in batch) <= min(flat[i] for i in following)
            assert sum(flat[i] for i in batch) + min(flat[i] for i in following) > budget
        assert sum(flat[i] for b in batches for i in b) / (len(batches) * budget) > 0.8  # the budget is used


@pytest.mark.parametrize("world_size", [2, 3, 4])
def test_token_budget_ranks_take_equal_counts_the_first_batches_repeating(lengths, budget, world_size):
    single = TokenBudgetBatchSampler(lengths, [40, 25], max_tokens=budget, seed=7)
    everything = single.epoch_batches()
    per_rank = [list(TokenBudgetBatchSampler(lengths, [40, 25], max_tokens=budget, seed=7, rank=r,
                                             world_size=world_size)) for r in range(world_size)]
    assert len({len(b) for b in per_rank}) == 1
    dealt = [per_rank[i % world_size][i // world_size] for i in range(world_size * len(per_rank[0]))]
    assert dealt == everything + everything[:len(dealt) - len(everything)]


def test_token_budget_order_is_deterministic_and_reshuffled_each_epoch(lengths, budget):
    def epoch(seed: int, number: int) -> list[list[int]]:
        sampler = TokenBudgetBatchSampler(lengths, [40, 25], max_tokens=budget, seed=seed, resample=False)
        sampler.set_epoch(number)
        return list(sampler)

    assert epoch(1, 0) == epoch(1, 0)
    assert epoch(1, 0) != epoch(1, 1) and epoch(1, 0) != epoch(2, 0)
    assert sorted(map(sorted, epoch(1, 0))) != sorted(map(sorted, epoch(1, 1)))  # ties broken anew


def test_token_budget_batches_collate_into_one_row(datasets, lengths, tokenizer, budget):
    flat = _flat(lengths)
    collator = DataCollator(pad_token_id=tokenizer.pad_token_id, max_length=max(flat), packing=True,
                            row_length=budget)
    loader = DataLoader(ConcatDataset(datasets), batch_sampler=TokenBudgetBatchSampler(
        lengths, [40, 25], max_tokens=budget, seed=0), collate_fn=collator)
    batches = list(loader)
    assert all(b["input_ids"].shape[0] == 1 and b["input_ids"].shape[1] <= budget for b in batches)
    assert sum(b["num_real_tokens"] for b in batches) == sum(flat)


def test_token_budget_below_the_longest_sample_is_refused(lengths):
    with pytest.raises(ConfigError, match=f"max_tokens 10 is less than the longest sample \\({max(_flat(lengths))} "
                                          "tokens\\)"):
        TokenBudgetBatchSampler(lengths, [40, 25], max_tokens=10, seed=0)
