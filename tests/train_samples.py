"""Test helpers for training: tiny prompt/answer samples from the fixture tokenizer (a stand-in for the data
builder, tested elsewhere), the production collator, and a plain distributed sampler factory."""
from __future__ import annotations

QA = [("What is two plus two?", "Four."), ("Name a colour.", "Blue, like the sky on a clear day."),
      ("Say hi.", "Hi!"), ("Count to five.", "One, two, three, four, five."),
      ("What do cats say?", "Cats say meow, and sometimes they purr for a long time."),
      ("Capital of France?", "Paris."), ("Is water wet?", "Yes, water makes things wet."),
      ("Spell dog.", "D, O, G.")]


def qa_samples(tokenizer, n: int) -> list[dict[str, list[int]]]:
    """n samples (cycling through QA); the prompt is masked with -100, the answer and end token are trained."""
    out = []
    for i in range(n):
        question, answer = QA[i % len(QA)]
        prompt = tokenizer.encode(f"<|prompter|>{question}{tokenizer.eos_token}<|assistant|>")
        reply = tokenizer.encode(answer) + [tokenizer.eos_token_id]
        out.append({"input_ids": prompt + reply, "labels": [-100] * len(prompt) + reply})
    return out


def distributed_sampler(seed: int, shuffle: bool = True):
    """A sampler factory for tests: every sample once per epoch, split evenly across ranks (torch's own)."""
    from torch.utils.data import DistributedSampler

    return lambda data, replicas, rank: DistributedSampler(data, replicas, rank, shuffle=shuffle, seed=seed)


def collator(tokenizer, max_length: int = 128):
    """The production collator, as training builds it."""
    from trainer.data.collate import DataCollator

    return DataCollator(tokenizer.pad_token_id, max_length)


def cpu_ranks_env(repo, tmp, deepspeed_config: str) -> dict[str, str]:
    """The environment of torchrun'd CPU ranks (gloo) for the multi-process tests, and `deepspeed_config` from
    configs/ copied into `tmp` with the no-compile recipe: torch's AdamW instead of DeepSpeed's JIT-compiled one."""
    import json
    import os

    ds_config = json.loads((repo / "configs" / deepspeed_config).read_text())
    ds_config["optimizer"]["params"]["torch_adam"] = True
    (tmp / deepspeed_config).write_text(json.dumps(ds_config))
    return {**os.environ, "PYTHONPATH": f"{repo}{os.pathsep}{repo / 'tests'}", "OMP_NUM_THREADS": "1",
            "DS_ACCELERATOR": "cpu", "TORCH_EXTENSIONS_DIR": str(tmp / "torch-ext")}
