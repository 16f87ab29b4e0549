"""The SFT recipe: config in, trained model out. What `delphi train`, `trainer_sft.py`, the sweeps' trials, the
benchmarks and the tests all run.

    tokenizer -> model (full / LoRA / QLoRA) -> datasets (cached) -> collator -> sampler -> train()
"""
from __future__ import annotations

import os
from typing import Sequence

from trainer.config import TrainConfig
from trainer.train import TrainResult


def sampler_factory(config: TrainConfig, built, counts: Sequence[int]):
    """Per-dataset draws of `counts` samples: fixed once (OASST without `use_custom_sampler`) or redrawn every
    epoch (with it); dealt as samples (batches of `per_device_train_batch_size`), or with `padding_free` as
    token-budget micro-batches."""
    from trainer.data.sampler import PerDatasetSampler, TokenBudgetBatchSampler

    data, optim = config.data, config.optim
    lengths = [b.train["length"] for b in built]
    if data.padding_free:
        budget = data.token_budget(optim.per_device_train_batch_size)
        return lambda _data, world_size, rank: TokenBudgetBatchSampler(
            lengths, counts, max_tokens=budget, seed=optim.rng_seed, rank=rank, world_size=world_size,
            resample=data.use_custom_sampler)
    return lambda _data, world_size, rank: PerDatasetSampler(
        lengths, counts, seed=optim.rng_seed, batch_size=optim.per_device_train_batch_size, rank=rank,
        world_size=world_size, resample=data.use_custom_sampler, sort_by_length=data.sort_by_length)


def run(config: TrainConfig, callbacks: Sequence = ()) -> TrainResult:
    """Train as the config says, on 1 process or many (the launcher, `torchrun` or `deepspeed`, sets the ranks).
    `callbacks` are extra `transformers.TrainerCallback`s (benchmarks and tests watch the run through them)."""
    from trainer.data.build import build_datasets
    from trainer.data.collate import packing_isolation, training_collator
    from trainer.data.report import dataset_figures, dataset_stats
    from trainer.data.sampler import draw_counts
    from trainer.formats import FORMATS, format_for
    from trainer.models import VARLEN_ATTENTIONS, load_model
    from trainer.tokens import load_tokenizer
    from trainer.train import train

    data = config.data
    tokenizer = load_tokenizer(config.model.tokenizer, data.max_length, FORMATS[data.prompt_format].required_tokens)
    # Saved with the tokenizer in every checkpoint and the final output: servers then prompt as training did.
    tokenizer.chat_template = format_for(data, tokenizer).chat_template()
    loaded = load_model(config.model, config.adapters, tokenizer, max_length=data.max_length,
                        deepspeed=config.optim.deepspeed, padding_free=data.padding_free)
    rank0 = int(os.environ.get("RANK", "0")) == 0
    if rank0:
        print("\n".join(loaded.notes), flush=True)
    built = build_datasets(data, tokenizer)
    counts = draw_counts(data.datasets, [len(b.train) for b in built])
    if rank0 and config.logging.shows_dataset_stats:
        print(dataset_stats(built, counts, data.use_custom_sampler), flush=True)
    one_row = data.token_budget(config.optim.per_device_train_batch_size) \
        if data.padding_free and loaded.attention in VARLEN_ATTENTIONS else None
    collator = training_collator(data, tokenizer.pad_token_id, packing_isolation(loaded.model.config), one_row)
    report = {f"{b.name}/{key}": value for b in built for key, value in dataset_figures(b, config, collator).items()}
    return train(config, loaded.model, tokenizer, {b.name: b.train for b in built}, {b.name: b.val for b in built},
                 collator, sampler_factory(config, built, counts), data_report=report, optim=loaded.optimizer,
                 callbacks=callbacks)
