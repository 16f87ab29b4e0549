"""The export's own check: fixed chat prompts, their logits and greedy continuations, compared within the
tolerance of the weights' dtype.

The same prompt ids and the same greedy loop run in the old-library probe (`old_lib_probe.py`), so the two sides
are compared token for token.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from trainer.data.conversation import PROMPTER, Turn

CHECK_PROMPTS = ("What is the capital of France?", "Write a haiku about the sea.",
                 "Explain in one sentence what a fine-tuned language model is.")
GREEDY_TOKENS = 8
# Largest |logit difference| accepted, relative to max(1, largest |logit|): fp32 allows summation-order noise;
# fp16 keeps 11 mantissa bits and bf16 8, and rounding every weight to them moves logits by that order.
TOLERANCE = {"fp32": 1e-4, "fp16": 1e-2, "bf16": 5e-2}


def check_prompts(prompt_format) -> list[str]:
    """Each check prompt rendered as the model was trained to be asked."""
    return [prompt_format.generation_prompt([Turn(PROMPTER, q)], prompt_format.system) for q in CHECK_PROMPTS]


def prompt_ids(tokenizer, texts: list[str]) -> list[list[int]]:
    return [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]


def tokenizer_problem(tokenizer, texts: list[str], expected: list[list[int]]) -> str | None:
    """Why `tokenizer` fails the check prompts, or None: each must encode to the `expected` ids (the source
    tokenizer's), to at least one token, and decode back to its text exactly."""
    for text, want in zip(texts, expected):
        got = tokenizer(text, add_special_tokens=False)["input_ids"]
        if not got:
            return f"{text!r:.60} encodes to no tokens (tokenizer of {len(tokenizer)} tokens)"
        if got != want:
            return f"{text!r:.60} encodes to {len(got)} ids, not the source tokenizer's {len(want)}"
        back = tokenizer.decode(got, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        if back != text:
            return f"{text!r:.60} decodes back as {back!r:.60}"
    return None


@dataclass(frozen=True)
class Outputs:
    logits: list[torch.Tensor]  # per prompt: [len, vocab] in fp32
    greedy: list[list[int]]  # per prompt: GREEDY_TOKENS argmax continuations


@torch.no_grad()
def run_prompts(model, prompt_ids: list[list[int]]) -> Outputs:
    """One prompt at a time (no padding to differ between libraries); greedy without a cache, as the IPU
    pipeline runs it."""
    logits, greedy = [], []
    for ids in prompt_ids:
        seq = torch.tensor([ids])
        logits.append(model(input_ids=seq, use_cache=False).logits[0].float())
        out: list[int] = []
        for _ in range(GREEDY_TOKENS):
            step = model(input_ids=seq, use_cache=False).logits[0, -1]
            out.append(int(step.argmax()))
            seq = torch.cat([seq, torch.tensor([[out[-1]]])], dim=1)
        greedy.append(out)
    return Outputs(logits, greedy)


@dataclass(frozen=True)
class Comparison:
    what: str
    max_diff: float
    tolerance: float
    greedy_same: int
    prompts: int

    @property
    def ok(self) -> bool:
        """Logits decide; greedy agreement is reported (a cast may flip a near-tie without being wrong), and
        `verify` requires it where both sides compute in fp32 on the same weights."""
        return self.max_diff <= self.tolerance

    def line(self) -> str:
        verdict = "ok" if self.ok else "FAILED"
        return (f"{self.what}: max |logit diff| {self.max_diff:.3g} (tolerance {self.tolerance:.3g}) over "
                f"{self.prompts} prompts; greedy {GREEDY_TOKENS}-token continuations equal on "
                f"{self.greedy_same}/{self.prompts}: {verdict}")


def compare(what: str, reference: Outputs, other: Outputs, dtype: str) -> Comparison:
    scale = max(1.0, max(float(x.abs().max()) for x in reference.logits))
    diff = max(float((a - b).abs().max()) for a, b in zip(reference.logits, other.logits))
    same = sum(a == b for a, b in zip(reference.greedy, other.greedy))
    return Comparison(what, diff, TOLERANCE[dtype] * scale, same, len(reference.logits))
