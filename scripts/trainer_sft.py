"""Supervised fine-tuning from the command line.

    deepspeed --num_gpus 2 trainer_sft.py --configs defaults demo-data tiny-pythia --deepspeed
    torchrun --nproc_per_node 2 trainer_sft.py --configs defaults demo-data tiny-pythia
    python trainer_sft.py --configs defaults demo-data tiny-pythia --num_train_epochs=1

Parse the config, load tokenizer and model, build the data, train. Bad input prints one message, exit code 2.
"""
from __future__ import annotations

import dataclasses
import os
import sys

from trainer.config import TrainConfig, resolve, split_argv
from trainer.errors import DelphiError


def sampler_factory(config: TrainConfig, built):
    """Per-dataset draws: fixed once (OASST without `use_custom_sampler`) or redrawn every epoch (with it)."""
    from trainer.data.sampler import PerDatasetSampler, draw_counts

    lengths = [b.train["length"] for b in built]
    counts = draw_counts(config.datasets, [len(x) for x in lengths])
    return lambda _data, world_size, rank: PerDatasetSampler(
        lengths, counts, seed=config.rng_seed, batch_size=config.per_device_train_batch_size, rank=rank,
        world_size=world_size, resample=config.use_custom_sampler, sort_by_length=config.sort_by_length)


def run(argv: list[str]) -> None:
    # The deepspeed launcher appends --local_rank=N; the rank is read from the environment instead.
    config = resolve(split_argv(argv, extra_options={"local_rank": True}))
    # A wandb agent starts every run with the same command: `--output_dir=outputs/sweeps/x/$WANDB_RUN_ID` (from
    # `python -m trainer.sweep wandb`) gives each its own directory, so none resumes another's checkpoints.
    config = dataclasses.replace(config, output_dir=os.path.expandvars(config.output_dir))
    from trainer.data.build import build_datasets
    from trainer.data.collate import packing_isolation, training_collator
    from trainer.data.report import dataset_figures
    from trainer.models import load_model
    from trainer.tokens import load_tokenizer
    from trainer.train import train

    tokenizer = load_tokenizer(config.effective_tokenizer_name, config.max_length)
    loaded = load_model(config, tokenizer)
    if int(os.environ.get("RANK", "0")) == 0:
        print("\n".join(loaded.notes), flush=True)
    built = build_datasets(config, tokenizer)
    collator = training_collator(config, tokenizer.pad_token_id, packing_isolation(loaded.model.config))
    report = {f"{b.name}/{key}": value for b in built for key, value in dataset_figures(b, config, collator).items()}
    train(config, loaded.model, tokenizer, {b.name: b.train for b in built}, {b.name: b.val for b in built},
          collator, sampler_factory(config, built), data_report=report, optim=loaded.optimizer)


def main(argv: list[str] | None = None) -> int:
    try:
        run(sys.argv[1:] if argv is None else argv)
    except DelphiError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
