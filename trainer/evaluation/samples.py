"""Sample generations at every evaluation: a few prompts per validation set, answered by the model being trained.

The prompts are the configured ones of a dataset entry (`eval_prompts`), rendered by the run's prompt format
exactly as a chat would send them, or else a seeded pick of the set's own samples: the tokens before the first
trained token (the first reply) are the prompt and that reply is the reference. The pick is made once, so every
evaluation answers the same prompts. Replies are greedy (and, with `eval_sample_temperature` > 0, also sampled
under a fixed seed that leaves the training RNG untouched), stop at the format's end key and are capped at
`eval_sample_tokens`. Rank 0 generates alone: nothing in a forward pass of the unwrapped model talks to the other
ranks, which wait at the next collective.
"""
from __future__ import annotations

import json
import random
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch

from trainer.data.conversation import PROMPTER, Turn
from trainer.data.tokenize import SegmentEncoder, encode_prompt
from trainer.formats import PromptFormat
from trainer.generation import SamplingOptions, generate_reply
from trainer.tokens import IGNORE_INDEX
from trainer.varlen_attention import NAME as VARLEN

SAMPLES_FILE = "samples.jsonl"
LINE_WIDTH = 100  # the console line's cut


@dataclass(frozen=True)
class SamplePrompt:
    dataset: str
    prompt_ids: tuple[int, ...]
    prompt: str  # the user's text (configured), or the decoded prompt (picked from the set)
    reference: str | None  # the set's own reply; None for a configured prompt


def first_exchange(input_ids: Sequence[int], labels: Sequence[int]) -> tuple[np.ndarray, np.ndarray] | None:
    """(prompt ids, first reply ids) of a tokenized sample; None when it has no untrained prompt before its first
    trained token (`label_masking: false` trains every token, so the boundary is not in the labels)."""
    ids, trained = np.asarray(input_ids), np.asarray(labels) != IGNORE_INDEX
    if not trained.any() or trained[0]:
        return None
    start = int(trained.argmax())
    rest = ~trained[start:]
    end = start + int(rest.argmax()) if rest.any() else len(ids)
    return ids[:start], ids[start:end]


def picked_prompts(dataset: str, samples, count: int, seed: int, tokenizer, end_key: str,
                   max_prompt_tokens: int) -> list[SamplePrompt]:
    """`count` prompts of a tokenized validation set, in a seeded order, skipping samples without a prompt
    boundary or with a prompt longer than `max_prompt_tokens`."""
    order = list(range(len(samples)))
    random.Random(f"{seed}/{dataset}").shuffle(order)
    picked = []
    for index in order:
        if len(picked) == count:
            break
        sample = samples[index]
        split = first_exchange(sample["input_ids"], sample["labels"])
        if split is None or len(split[0]) > max_prompt_tokens:
            continue
        prompt, reply = split
        reference = tokenizer.decode(reply, skip_special_tokens=True).partition(end_key)[0].strip()
        picked.append(SamplePrompt(dataset, tuple(int(i) for i in prompt),
                                   tokenizer.decode(prompt, skip_special_tokens=True).strip(), reference))
    return picked


def configured_prompts(dataset: str, texts: Sequence[str], fmt: PromptFormat, tokenizer) -> list[SamplePrompt]:
    """The entry's own prompts, each the first user message of a chat in the run's format and system prompt."""
    encoder = SegmentEncoder(tokenizer)
    return [SamplePrompt(dataset, tuple(int(i) for i in encode_prompt([Turn(PROMPTER, text)], fmt, encoder,
                                                                       fmt.system)), text, None)
            for text in texts]


@contextmanager
def generating(model) -> Iterator[None]:
    """Eval mode, no gradients, and an attention that works without the collator's packed-row boundaries (the
    padding-free varlen kernel needs them), restored afterwards."""
    was_training = model.training
    config = getattr(model, "config", None)
    attention = getattr(config, "_attn_implementation", None)
    if attention == VARLEN:
        model.set_attn_implementation("sdpa")
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        if attention == VARLEN:
            model.set_attn_implementation(VARLEN)
        model.train(was_training)


@dataclass(frozen=True)
class SampleSettings:
    max_new_tokens: int = 48
    temperature: float = 0.0  # 0: greedy only; above 0: a sampled reply as well
    seed: int = 0


def generate_samples(model, tokenizer, prompts: Sequence[SamplePrompt], end_key: str, settings: SampleSettings,
                     step: int) -> list[dict[str, Any]]:
    """One row per prompt: step, dataset, prompt, greedy completion, reference (and the sampled completion)."""
    rows = []
    greedy = SamplingOptions(temperature=0.0, k=0, output_length=settings.max_new_tokens)
    sampled = SamplingOptions(temperature=settings.temperature, k=0, output_length=settings.max_new_tokens)
    with generating(model):
        for prompt in prompts:
            reply = generate_reply(model, tokenizer, prompt.prompt_ids, greedy, end_key, settings.max_new_tokens)
            row = {"step": step, "dataset": prompt.dataset, "prompt": prompt.prompt, "completion": reply.text.strip(),
                   "reference": prompt.reference}
            if settings.temperature > 0:
                devices = [model.device] if model.device.type == "cuda" else []
                with torch.random.fork_rng(devices=devices):
                    torch.manual_seed(settings.seed + step)
                    row["sampled"] = generate_reply(model, tokenizer, prompt.prompt_ids, sampled, end_key,
                                                    settings.max_new_tokens).text.strip()
            rows.append(row)
    return rows


def append_samples(output_dir: Path, rows: Sequence[Mapping[str, Any]]) -> Path:
    path = output_dir / SAMPLES_FILE
    with path.open("a", encoding="utf-8") as f:
        f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    return path


def sample_line(rows: Sequence[Mapping[str, Any]]) -> str | None:
    """The console's one line per evaluation: the first sample, cut."""
    if not rows:
        return None
    row = rows[0]
    prompt = " ".join(row["prompt"].split())
    completion = " ".join(row["completion"].split())
    line = f"  sample {row['dataset']}: {prompt!r} -> {completion!r}"
    return line if len(line) <= LINE_WIDTH else line[:LINE_WIDTH - 1] + "…"
