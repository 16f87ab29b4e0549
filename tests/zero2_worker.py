"""One rank of the ZeRO-2 tests (`torchrun --nproc_per_node N zero2_worker.py MODEL_DIR TMP OUT ACCUMULATION
SAVE_STEPS [SIGNAL_AT]`): 6 optimizer steps into TMP/OUT, a checkpoint every SAVE_STEPS; what each rank holds goes to
TMP/OUT-rank{r}.json and rank 0's parameters after step 3 to TMP/OUT-step3.pt. With SIGNAL_AT, rank 0 alone sends
itself SIGTERM at the end of that step (a preemption that reaches one rank first).

N ranks x batch 1 x ACCUMULATION is the optimizer step's batch, so 2 ranks x 2 and 1 rank x 4 train on the same
samples per step (DistributedSampler deals one permutation round-robin) and must end at the same weights.

Test-only: DeepSpeed's shared-memory comm op would be JIT-compiled (~40 s); pure gloo needs no build.
"""
import importlib
import json
import os
import signal
import sys
from pathlib import Path

importlib.import_module("deepspeed.comm.torch")
sys.modules["deepspeed.comm.torch"].build_shm_op = lambda: None

import torch  # noqa: E402
from transformers import AutoModelForCausalLM, TrainerCallback  # noqa: E402

from train_samples import collator, distributed_sampler, qa_samples  # noqa: E402
from trainer.cli import guarded  # noqa: E402
from trainer.config import TrainConfig  # noqa: E402
from trainer.tokens import load_tokenizer  # noqa: E402
from trainer.train import train  # noqa: E402


class Record(TrainerCallback):
    """Writes what each rank holds at the end (its optimizer partition, steps, scheduler steps) and, on rank 0,
    the full parameters after the third optimizer step (the first that moves them: WarmupDecayLR starts at 0)."""

    def __init__(self, path: Path, early: Path):
        self.path = path
        self.early = early

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step == 3 and state.is_world_process_zero:
            torch.save({n: p.detach().float().cpu().clone() for n, p in model.named_parameters()}, self.early)

    def on_train_end(self, args, state, control, model=None, optimizer=None, lr_scheduler=None, **kwargs):
        zero = optimizer.optimizer if hasattr(optimizer, "optimizer") else optimizer
        self.path.write_text(json.dumps({
            "deepspeed": args.deepspeed is not None, "world_size": args.world_size,
            "optimizer": type(zero).__name__,
            "partition": sum(p.numel() for p in zero.single_partition_of_fp32_groups),
            "parameters": sum(p.numel() for p in model.parameters()),
            "global_step": state.global_step,
            "scheduler": type(lr_scheduler).__name__ if not hasattr(lr_scheduler, "scheduler")
            else type(lr_scheduler.scheduler).__name__,
            "scheduler_steps": getattr(getattr(lr_scheduler, "scheduler", lr_scheduler), "last_batch_iteration",
                                       -2) + 1,
        }))


class SignalRank0(TrainerCallback):
    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step and state.is_world_process_zero:
            os.kill(os.getpid(), signal.SIGTERM)


def main(model_dir: str, tmp: str, out: str, accumulation: str, save_steps: str, signal_at: str = "") -> None:
    tmp_path = Path(tmp)
    tokenizer = load_tokenizer(model_dir)
    config = TrainConfig.of(model_name=model_dir, dtype="fp32", output_dir=str(tmp_path / out), deepspeed=True,
                            deepspeed_config=str(tmp_path / "zero2.json"), learning_rate=1e-3, num_train_epochs=2,
                            per_device_train_batch_size=1, gradient_accumulation_steps=int(accumulation),
                            warmup_steps=1, logging_steps=1, save_steps=int(save_steps), eval_steps=3,
                            report_to="none", max_length=32, save_total_limit=5)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    samples = qa_samples(tokenizer, 10)
    rank = int(os.environ["RANK"])
    train(config, model, tokenizer, {"toy": samples}, {"toy": samples[:4]}, collator(tokenizer),
          distributed_sampler(config.optim.rng_seed),
          callbacks=[Record(tmp_path / f"{out}-rank{rank}.json", tmp_path / f"{out}-step3.pt"),
                     *([SignalRank0(int(signal_at))] if signal_at else [])])


if __name__ == "__main__":
    sys.exit(guarded(lambda argv: main(*argv) or 0, sys.argv[1:]))
