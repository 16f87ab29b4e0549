"""Test helpers for training: tiny prompt/answer samples from the fixture tokenizer and a padding collator.

Stand-ins for the data builder and `trainer.data.collate.DataCollator`, which are built and tested elsewhere.
"""
from __future__ import annotations

import torch

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


class PadCollator:
    """Right-pads a batch: input_ids with the pad id, labels with -100, attention_mask 1 on real tokens."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, samples):
        width = max(len(s["input_ids"]) for s in samples)

        def pad(key, value):
            return torch.tensor([list(s[key]) + [value] * (width - len(s[key])) for s in samples])

        ids = pad("input_ids", self.pad_token_id)
        mask = torch.tensor([[1] * len(s["input_ids"]) + [0] * (width - len(s["input_ids"])) for s in samples])
        return {"input_ids": ids, "attention_mask": mask, "labels": pad("labels", -100)}
