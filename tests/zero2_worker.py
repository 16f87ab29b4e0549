"""One rank of the ZeRO-2 tests (`torchrun --nproc_per_node 2 zero2_worker.py MODEL_DIR TMP [OUT SAVE_STEPS]`):
6 optimizer steps into TMP/OUT (default `out`), a checkpoint every SAVE_STEPS (default 6).

Test-only: DeepSpeed's shared-memory comm op would be JIT-compiled (~40 s); pure gloo needs no build.
"""
import importlib
import json
import os
import sys
from pathlib import Path

importlib.import_module("deepspeed.comm.torch")
sys.modules["deepspeed.comm.torch"].build_shm_op = lambda: None

from transformers import AutoModelForCausalLM, TrainerCallback  # noqa: E402

from train_samples import collator, distributed_sampler, qa_samples  # noqa: E402
from trainer.config import TrainConfig  # noqa: E402
from trainer.tokens import load_tokenizer  # noqa: E402
from trainer.train import train  # noqa: E402


class Record(TrainerCallback):
    """Writes what each rank holds at the end: its optimizer partition, steps, scheduler steps."""

    def __init__(self, path: Path):
        self.path = path

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


def main(model_dir: str, tmp: str, out: str = "out", save_steps: str = "6") -> None:
    tmp_path = Path(tmp)
    tokenizer = load_tokenizer(model_dir)
    config = TrainConfig.of(model_name=model_dir, dtype="fp32", output_dir=str(tmp_path / out), deepspeed=True,
                            deepspeed_config=str(tmp_path / "zero2.json"), learning_rate=1e-3, num_train_epochs=2,
                            per_device_train_batch_size=1, gradient_accumulation_steps=2, warmup_steps=1,
                            logging_steps=1, save_steps=int(save_steps), eval_steps=3, report_to="none",
                            max_length=32, save_total_limit=5)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    samples = qa_samples(tokenizer, 10)
    rank = int(os.environ["RANK"])
    train(config, model, tokenizer, {"toy": samples}, {"toy": samples[:4]}, collator(tokenizer),
          distributed_sampler(config.optim.rng_seed), callbacks=[Record(tmp_path / f"{out}-rank{rank}.json")])


if __name__ == "__main__":
    main(*sys.argv[1:])
