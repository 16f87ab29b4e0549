"""One rank of the ZeRO-3 and FSDP2 tests (`torchrun --nproc_per_node N sharded_worker.py MODEL_DIR TMP OUT
STRATEGY MODE ACCUMULATION [STALL]`): 6 optimizer steps into TMP/OUT (a checkpoint every 2), loaded the way the
recipe loads (the Trainer's arguments first, then `load_model`), STRATEGY zero3 (TMP/zero3.json) or fsdp, MODE full,
lora or qlora (CUDA: one GPU per rank, bf16); the adapter modes also checkpoint and offload activations. What each rank holds goes to TMP/OUT-rank{r}.json. With STALL, the run touches TMP/OUT.stalled after
step 5 (checkpoint-4 published) and waits there to be killed.

N ranks x batch 1 x ACCUMULATION is the optimizer step's batch: 2 ranks x 2 and 1 rank x 4 train on the same
samples per step and must end at the same weights.

Test-only: DeepSpeed's shared-memory comm op would be JIT-compiled (~40 s); pure gloo needs no build.
"""
import importlib
import json
import os
import sys
import time
from pathlib import Path

importlib.import_module("deepspeed.comm.torch")
sys.modules["deepspeed.comm.torch"].build_shm_op = lambda: None

import torch  # noqa: E402
from transformers import TrainerCallback  # noqa: E402

from train_samples import collator, distributed_sampler, qa_samples  # noqa: E402
from trainer.compat import local_shard  # noqa: E402
from trainer.config import TrainConfig  # noqa: E402
from trainer.memory_plan import plan_run  # noqa: E402
from trainer.models import check_model_source, load_model  # noqa: E402
from trainer.strategy import Strategy, start_sharded_loading  # noqa: E402
from trainer.tokens import load_tokenizer  # noqa: E402
from trainer.train import train, training_arguments  # noqa: E402


class Record(TrainerCallback):
    """Writes what this rank holds at the end (its share of the weights and of the optimizer state), and with
    `stall` stops after step 5 until killed."""

    def __init__(self, path: Path, stall: Path | None, loaded_values: int):
        self.path = path
        self.stall = stall
        self.loaded_values = loaded_values  # weight values this rank held right after loading

    def on_step_end(self, args, state, control, **kwargs):
        if self.stall is not None and state.global_step == 5:  # torchrun gives each rank a session of its own
            Path(f"{self.stall}.{os.getpid()}").touch()
            time.sleep(600)

    def on_train_end(self, args, state, control, model=None, optimizer=None, **kwargs):
        inner = getattr(optimizer, "optimizer", optimizer)
        states = [t for s in getattr(inner, "state", {}).values() for t in s.values() if hasattr(t, "numel")]
        flat = getattr(inner, "fp32_partitioned_groups_flat", [])  # ZeRO-3's fp32 partition
        self.path.write_text(json.dumps({
            "world_size": args.world_size, "global_step": state.global_step, "loaded_values": self.loaded_values,
            "model": type(model).__name__, "optimizer": type(inner).__name__,
            "local_parameters": sum(local_shard(p).numel() for p in model.parameters()),
            "dtypes": sorted({str(local_shard(p).dtype) for p in model.parameters()}),
            "local_trainable": sum(local_shard(p).numel() for p in model.parameters() if p.requires_grad),
            "optimizer_values": sum(local_shard(t).numel() for t in states if t.dim() > 0)
            + sum(t.numel() for t in flat),
        }))


def main(model_dir: str, tmp: str, out: str, strategy: str, mode: str, accumulation: str, stall: str = "") -> None:
    tmp_path = Path(tmp)
    engine = {"deepspeed": True, "deepspeed_config": str(tmp_path / "zero3.json")} if strategy == "zero3" \
        else {"fsdp": "full_shard"}
    config = TrainConfig.of(model_name=model_dir, dtype="bf16" if torch.cuda.is_available() else "fp32", output_dir=str(tmp_path / out), mode=mode,
                            learning_rate=1e-3, num_train_epochs=2, per_device_train_batch_size=1,
                            gradient_accumulation_steps=int(accumulation), warmup_steps=1, logging_steps=1,
                            save_steps=2, eval_steps=3, report_to="none", max_length=32, save_total_limit=5,
                            residual_dropout=0.0, lora_dropout=0.0, lora_r=4, gradient_checkpointing=mode != "full",
                            activation_offload=mode != "full", **engine)
    tokenizer = load_tokenizer(model_dir)
    source = check_model_source(config.model, config.adapters)
    world_size = int(os.environ["WORLD_SIZE"])
    memory = plan_run(config, source.hf_config, world_size)
    args = training_arguments(config, has_eval=True, layer_class=source.architecture.layer_class)
    sharding = Strategy.of(config.optim)
    start_sharded_loading(sharding)
    loaded = load_model(config.model, config.adapters, tokenizer, max_length=32, deepspeed=sharding.deepspeed,
                        source=source, sharded=sharding.shards_weights)
    samples = qa_samples(tokenizer, 10)
    rank = int(os.environ["RANK"])
    held = sum(p.numel() for p in loaded.model.parameters())
    record = Record(tmp_path / f"{out}-rank{rank}.json", tmp_path / f"{out}.stalled" if stall else None, held)
    train(config, loaded.model, tokenizer, {"toy": samples}, {"toy": samples[:4]}, collator(tokenizer),
          distributed_sampler(config.optim.rng_seed), callbacks=[record], args=args, memory=memory)


if __name__ == "__main__":
    main(*sys.argv[1:])
