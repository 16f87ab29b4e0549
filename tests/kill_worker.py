"""A training process for the kill -9 tests (`python kill_worker.py MODEL_DIR OUT MOMENT FLAG`): the run of
test_checkpoints.SETTINGS, which stops at MOMENT, touches FLAG and waits there to be killed.

MOMENT is "checkpoint" (checkpoint-4 half written: after its optimizer state), "rotation" (a rotated-out
checkpoint half deleted, save_total_limit 1) or "final" (the final model's files half moved into output_dir).
Test-only: the stop is a patch around the library call made at that moment.
"""
import shutil
import sys
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from test_checkpoints import config
from train_samples import collator, distributed_sampler, qa_samples
from trainer.tokens import load_tokenizer
from trainer.train import train


def stop_here(flag: Path) -> None:
    flag.touch()
    time.sleep(600)


def main(model_dir: str, out: str, moment: str, flag: str) -> None:
    flag_path = Path(flag)
    if moment == "checkpoint":
        save = torch.save

        def torn_save(obj, f, *args, **kwargs):
            save(obj, f, *args, **kwargs)
            if "checkpoint-4" in str(f) and str(f).endswith("optimizer.pt"):
                stop_here(flag_path)

        torch.save = torn_save
    elif moment == "rotation":
        rmtree = shutil.rmtree

        def torn_rmtree(path, *args, **kwargs):
            if ".rotating" in str(path) and Path(path).name.startswith("checkpoint-"):
                (Path(path) / "optimizer.pt").unlink()
                stop_here(flag_path)
            rmtree(path, *args, **kwargs)

        shutil.rmtree = torn_rmtree
    else:
        import os

        replace = os.replace

        def torn_replace(src, dst, *args, **kwargs):
            replace(src, dst, *args, **kwargs)
            if "final" in str(src) and str(dst).endswith("model.safetensors"):
                stop_here(flag_path)

        os.replace = torn_replace
    tokenizer = load_tokenizer(model_dir)
    overrides = {"save_total_limit": 1} if moment == "rotation" else {}
    cfg = config(Path(model_dir), Path(out), **overrides)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    train(cfg, model, tokenizer, {"toy": qa_samples(tokenizer, 12)}, {}, collator(tokenizer),
          distributed_sampler(cfg.optim.rng_seed))


if __name__ == "__main__":
    main(*sys.argv[1:])
