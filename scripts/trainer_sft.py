"""Supervised fine-tuning from the command line.

    deepspeed --num_gpus 2 trainer_sft.py --configs defaults demo-data tiny-pythia --deepspeed
    torchrun --nproc_per_node 2 trainer_sft.py --configs defaults demo-data tiny-pythia
    python trainer_sft.py --configs defaults demo-data tiny-pythia --num_train_epochs=1

Parse the config, load tokenizer and model, build the data, train. Bad input prints one message, exit code 2.
"""
from __future__ import annotations

import sys

from trainer.config import TrainConfig, resolve, split_argv
from trainer.errors import DelphiError


def load_causal_lm(config: TrainConfig, tokenizer):
    """The model to train (to be replaced by `trainer.models.load_model`: full, LoRA or QLoRA)."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(config.model_name)


def run(argv: list[str]) -> None:
    # The deepspeed launcher appends --local_rank=N; the rank is read from the environment instead.
    config = resolve(split_argv(argv, extra_options={"local_rank": True}))
    from trainer.data.build import build_datasets
    from trainer.data.collate import DataCollator
    from trainer.data.sampler import PerDatasetSampler
    from trainer.delphi_trainer import distributed_sampler
    from trainer.tokens import load_tokenizer
    from trainer.train import train

    tokenizer = load_tokenizer(config.effective_tokenizer_name, config.max_length)
    model = load_causal_lm(config, tokenizer)
    data = build_datasets(config, tokenizer)
    collator = DataCollator(tokenizer.pad_token_id, pad_to_multiple_of=8, packing=config.packing,
                            max_length=config.max_length)
    sampler_factory = (PerDatasetSampler.factory(config) if config.use_custom_sampler
                       else distributed_sampler(config.rng_seed))
    train(config, model, tokenizer, data.train, data.val, collator, sampler_factory, data_report=data.report)


def main(argv: list[str] | None = None) -> int:
    try:
        run(sys.argv[1:] if argv is None else argv)
    except DelphiError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
