"""The SFT recipe: config in, trained model out. What `delphi train`, `trainer_sft.py`, the sweeps' trials, the
benchmarks and the tests all run.

    seed -> checks -> memory plan -> tokenizer -> datasets (cached) -> model (full / LoRA / QLoRA) -> collator ->
    sampler -> train()

The cheap checks come first (output_dir and what it holds, cache_dir, the model's config.json and weights files,
the strategy and what it needs, the tokenizer against the model) and the datasets are read before the weights load,
so that a bad input is one line within seconds, not after minutes of loading.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import torch

from trainer.config import TrainConfig
from trainer.errors import ConfigError, DataError
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


def run(config: TrainConfig, callbacks: Sequence = ()) -> TrainResult | None:
    """Train as the config says, on 1 process or many (the launcher, `torchrun` or `deepspeed`, sets the ranks).
    `callbacks` are extra `transformers.TrainerCallback`s (benchmarks and tests watch the run through them).
    None: output_dir holds this run, finished."""
    from transformers import set_seed

    from trainer.data.build import build_datasets
    from trainer.data.collate import packing_isolation, training_collator
    from trainer.data.report import dataset_figures, dataset_stats
    from trainer.data.sampler import draw_counts
    from trainer.formats import FORMATS, format_for
    from trainer.memory_plan import plan_run
    from trainer.models import (VARLEN_ATTENTIONS, check_model_source, check_positions, check_tokenizer_fits,
                                choose_attention, load_model, optimizer_name)
    from trainer.resume import check_run
    from trainer.run_lock import check_free
    from trainer.strategy import Strategy, check_host_memory, check_strategy, start_sharded_loading
    from trainer.tokens import load_tokenizer
    from trainer.train import train, training_arguments

    rank0 = int(os.environ.get("RANK", "0")) == 0
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if rank0:
        check_free(Path(config.outputs.output_dir))  # another live run there: refused before any long work
    start = check_run(config, world_size)
    if start.finished_step is not None:
        if rank0:
            print(start.finished_line(), flush=True)
        return None
    model, data = config.model, config.data
    if not data.datasets:
        raise ConfigError("the config names no datasets (datasets is empty or null): add a section with a "
                          "`datasets:` list to --configs, or give --datasets")
    source = check_model_source(model, config.adapters)
    check_positions(source, data.max_length, data.val_max_length)
    strategy = Strategy.of(config.optim)
    check_strategy(config, strategy, torch.cuda.is_available())
    eager = choose_attention(model, source, data.padding_free)[0] == "eager"
    memory = plan_run(config, source.hf_config, world_size, eager)
    check_host_memory(memory)
    fmt_cls = FORMATS[data.prompt_format]
    tokenizer = load_tokenizer(model.tokenizer, data.max_length, fmt_cls.required_tokens, model.trust_remote_code,
                               fmt_cls.adds_chat_tokens)
    check_tokenizer_fits(source, tokenizer, model)
    # Saved with the tokenizer in every checkpoint and the final output: servers then prompt as training did.
    tokenizer.chat_template = format_for(data, tokenizer).chat_template()
    built = build_datasets(data, tokenizer)
    for b in built:
        if not len(b.train):
            dropped = b.counts.get("train_dropped_no_trained_tokens", 0)
            raise DataError(f"no training sample of dataset '{b.name}' fits max_length {data.max_length}: "
                            f"{dropped:,} had nothing left to train on once cut to it; raise max_length")
    # Seeded right before anything draws from the global RNG (the embedding rows added for the chat tokens, the
    # LoRA initialisation), whatever ran before: the Trainer seeds only when it is built, after the model.
    set_seed(config.optim.rng_seed)
    args = training_arguments(config, has_eval=any(len(b.val) for b in built),
                              optim_name=optimizer_name(config.adapters), layer_class=source.architecture.layer_class)
    start_sharded_loading(strategy)
    loaded = load_model(model, config.adapters, tokenizer, max_length=data.max_length,
                        deepspeed=config.optim.deepspeed, padding_free=data.padding_free, source=source,
                        sharded=strategy.shards_weights)
    if rank0:
        print("\n".join(loaded.notes), flush=True)
    counts = draw_counts(data.datasets, [len(b.train) for b in built])
    if rank0 and config.logging.shows_dataset_stats:
        print(dataset_stats(built, counts, data.use_custom_sampler), flush=True)
    one_row = data.token_budget(config.optim.per_device_train_batch_size) \
        if data.padding_free and loaded.attention in VARLEN_ATTENTIONS else None
    collator = training_collator(data, tokenizer.pad_token_id, packing_isolation(loaded.model.config), one_row)
    report = {f"{b.name}/{key}": value for b in built for key, value in dataset_figures(b, config, collator).items()}
    return train(config, loaded.model, tokenizer, {b.name: b.train for b in built}, {b.name: b.val for b in built},
                 collator, sampler_factory(config, built, counts), data_report=report, optim=loaded.optimizer,
                 callbacks=callbacks, args=args, memory=memory)
