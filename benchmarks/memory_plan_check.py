"""The memory plan (`delphi plan`) against the measured peak of real training steps, on CPU.

    python benchmarks/memory_plan_check.py [--hidden 512] [--layers 8] [--batch 4] [--max-length 512]

Each case runs in its own process: a random GPT-NeoX of the given shape (fp32, the tiny models' vocabulary),
three AdamW steps of `--batch` x `--max-length` tokens, full or LoRA, with and without activation checkpointing.
Measured: the process's peak resident memory (ru_maxrss) minus its resident memory just before the model is
built (after the imports and the batch), so that the libraries do not count. Planned: the plan's total for one
rank (weights + gradients + optimizer state + activations + the layer recomputed under checkpointing).
The peak also holds what the plan leaves out: the loss's logits (tokens x vocab x 4 bytes, twice), the allocator's
slack, and gradients of activations in flight during the backward pass.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
CASES = [("full", False), ("full", True), ("lora", False), ("lora", True)]


def resident_bytes() -> int:
    with open("/proc/self/statm", encoding="ascii") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def measure(args, mode: str, checkpointing: bool) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    from trainer.config import TrainConfig
    from trainer.lora import add_adapters
    from trainer.memory_plan import ModelShape, Setup, rank_memory
    from trainer.tiny import model_config

    torch.manual_seed(0)
    hf_config = model_config("gpt_neox", 1008, hidden=args.hidden, layers=args.layers, heads=8)
    hf_config.use_cache = False
    config = TrainConfig.of(model_name="x", dtype="fp32", mode=mode, per_device_train_batch_size=args.batch,
                            max_length=args.max_length, gradient_checkpointing=checkpointing, lora_r=16)
    planned = rank_memory(ModelShape.of(hf_config), Setup.of(config, 1, cuda=False))
    input_ids = torch.randint(0, 1000, (args.batch, args.max_length))
    before = resident_bytes()
    model = AutoModelForCausalLM.from_config(hf_config, attn_implementation="sdpa")
    if checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    if mode == "lora":
        model = add_adapters(model, config.adapters)
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
    for _ in range(3):
        model(input_ids=input_ids, labels=input_ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=False)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"mode": mode, "checkpointing": checkpointing, "planned": planned.device, "measured": peak - before,
            "parameters": sum(p.numel() for p in model.parameters())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--case", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        mode, checkpointing = args.case.split(":")
        print(json.dumps(measure(args, mode, checkpointing == "1")))
        return
    print(f"GPT-NeoX hidden {args.hidden} x {args.layers} layers, {args.batch} x {args.max_length} tokens, fp32, CPU")
    print("| mode | checkpointing | planned MiB | measured peak MiB | plan / measured |\n|---|---|---|---|---|")
    for mode, checkpointing in CASES:
        out = subprocess.run([sys.executable, __file__, "--case", f"{mode}:{int(checkpointing)}",
                              *(f"--{k.replace('_', '-')}={getattr(args, k)}" for k in
                                ("hidden", "layers", "batch", "max_length"))],
                             capture_output=True, text=True, check=True).stdout
        r = json.loads(out.strip().splitlines()[-1])
        print(f"| {mode} | {'yes' if checkpointing else 'no'} | {r['planned'] / 2**20:,.0f} | "
              f"{r['measured'] / 2**20:,.0f} | {r['planned'] / r['measured']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
