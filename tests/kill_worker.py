"""A training process for the kill -9 and signal tests (`python kill_worker.py MODEL_DIR OUT MOMENT FLAG [MODE]`): the
run of test_checkpoints.SETTINGS (MODE full or lora), which stops at MOMENT, touches FLAG and waits there to be
killed or signalled.

MOMENT is "checkpoint" (checkpoint-4 half written: after its optimizer state), "rotation" (a rotated-out
checkpoint half deleted, save_total_limit 1), "final" (the final model's files half moved into output_dir) or
"step3" (the end of optimizer step 3, where it waits 3 s for a signal, then trains on) or "none" (a plain run).
Test-only: the stop is a patch around the library call made at that moment, or a callback.
"""
import shutil
import sys
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, TrainerCallback, set_seed

from test_checkpoints import config
from train_samples import collator, distributed_sampler, qa_samples
from trainer.cli import guarded
from trainer.models import load_model
from trainer.tokens import load_tokenizer
from trainer.train import train


def stop_here(flag: Path) -> None:
    flag.touch()
    time.sleep(600)


class WaitAtStep3(TrainerCallback):
    def __init__(self, flag: Path):
        self.flag = flag

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == 3:
            self.flag.touch()
            time.sleep(3)


def main(model_dir: str, out: str, moment: str, flag: str, mode: str = "full") -> None:
    flag_path = Path(flag)
    callbacks = [WaitAtStep3(flag_path)] if moment == "step3" else []
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
    elif moment == "final":
        import os

        replace = os.replace

        def torn_replace(src, dst, *args, **kwargs):
            replace(src, dst, *args, **kwargs)
            if "final" in str(src) and str(dst).endswith("model.safetensors"):
                stop_here(flag_path)

        os.replace = torn_replace
    tokenizer = load_tokenizer(model_dir)
    overrides = {"save_total_limit": 1} if moment == "rotation" else {}
    cfg = config(Path(model_dir), Path(out), mode=mode, **overrides)
    if mode == "full":
        model = AutoModelForCausalLM.from_pretrained(model_dir)
    else:
        set_seed(cfg.optim.rng_seed)  # the LoRA initialisation, as the recipe seeds it
        model = load_model(cfg.model, cfg.adapters, tokenizer, max_length=cfg.data.max_length).model
    train(cfg, model, tokenizer, {"toy": qa_samples(tokenizer, 12)}, {}, collator(tokenizer),
          distributed_sampler(cfg.optim.rng_seed), callbacks=callbacks)


if __name__ == "__main__":
    sys.exit(guarded(lambda argv: main(*argv) or 0, sys.argv[1:]))
