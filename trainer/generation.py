"""One reply from a prompt, with the controls of Graphcore's IPU pipeline for OASST Pythia and their meanings.

`temperature` 0 is greedy (argmax); above 0 the logits are divided by it and sampled. `k` keeps the k most
probable tokens before sampling; 0 keeps all. `output_length` caps the new tokens; None lets the reply run to the
end key or the end of the context. So a script written for the IPU notebook drives Delphi unchanged. The end key
itself is never part of the reply, and special tokens are never printed.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, TextIO

import torch
from transformers import GenerationConfig, TextStreamer

from trainer.errors import ConfigError


@dataclass(frozen=True)
class SamplingOptions:
    temperature: float = 1.0  # the IPU pipeline's default
    k: int = 5  # the IPU pipeline's default
    output_length: int | None = None

    def check(self, vocab_size: int, context: int) -> None:
        """Every out-of-range value at once, each naming its option and the range (the IPU pipeline asserts)."""
        problems = []
        if not self.temperature >= 0:  # also refuses NaN
            problems.append(f"--temperature must be >= 0 (0 means greedy), got {self.temperature}")
        if not 0 <= self.k <= vocab_size:
            problems.append(f"--k must be in 0..{vocab_size} (the model's vocab; 0 disables top-k), got {self.k}")
        if self.output_length is not None and not 1 <= self.output_length < context:
            problems.append(f"--output_length must be in 1..{context - 1} (the context is {context} tokens and the "
                            f"prompt needs at least one), or none, got {self.output_length}")
        if problems:
            raise ConfigError("\n".join(problems))


@dataclass(frozen=True)
class Reply:
    text: str  # decoded without special tokens, cut before the end key
    token_ids: list[int]  # every generated id, the end key's included when it was generated
    ended: bool  # the end key was generated (not cut off by output_length or the context)


def generation_config(options: SamplingOptions, max_new_tokens: int, end_ids: list[int], pad_id: int,
                      stop_strings: list[str]) -> GenerationConfig:
    """Every sampling knob set, so none falls back to the checkpoint's `generation_config.json` (top_p,
    repetition penalty, a top_k of 50) and the IPU semantics hold exactly."""
    sampling = {"do_sample": False}
    if options.temperature > 0:
        sampling = {"do_sample": True, "temperature": options.temperature, "top_k": options.k, "top_p": 1.0,
                    "typical_p": 1.0}
    return GenerationConfig(max_new_tokens=max_new_tokens, num_beams=1, repetition_penalty=1.0, **sampling,
                            eos_token_id=end_ids, pad_token_id=pad_id, stop_strings=stop_strings or None)


class EndKeyStreamer(TextStreamer):
    """Prints the reply as it is generated (special tokens skipped), and nothing from the end key on: a text end
    key such as the plain format's newline arrives inside a decoded chunk, so the chunk is cut there."""

    def __init__(self, tokenizer, end_key: str, out: TextIO):
        super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
        self.end_key = end_key
        self.out = out
        self.done = False

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        if not self.done:
            head, found, _ = text.partition(self.end_key)
            self.done = bool(found)
            self.out.write(head)
        if stream_end:
            self.out.write("\n")
        self.out.flush()


def generate_reply(model, tokenizer, prompt_ids: Sequence[int], options: SamplingOptions, end_key: str,
                   max_new_tokens: int, out: TextIO | None = None) -> Reply:
    """Generate after `prompt_ids` until `end_key`, `max_new_tokens`, whichever comes first; stream to `out`.

    An end key that is one special token (eos for oasst, airoboros, alpaca) stops as an id; any other (the plain
    format's newline, which BPE may merge with neighbours) stops as a string. eos also stops the plain format:
    there it was never trained, so what follows it is noise.
    """
    special = end_key in tokenizer.all_special_tokens
    end_ids = tokenizer.convert_tokens_to_ids([end_key]) if special else []
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in end_ids:
        end_ids.append(tokenizer.eos_token_id)
    stop_strings = [] if special else [end_key]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else end_ids[0]
    config = generation_config(options, max_new_tokens, end_ids, pad_id, stop_strings)
    device = model.device
    input_ids = torch.tensor([list(prompt_ids)], dtype=torch.long, device=device)
    streamer = EndKeyStreamer(tokenizer, end_key, out) if out is not None else None
    with torch.inference_mode():
        output = model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                                generation_config=config, streamer=streamer,
                                tokenizer=tokenizer if stop_strings else None)
    new = output[0, input_ids.shape[1]:].tolist()
    text = tokenizer.decode(new, skip_special_tokens=True)
    head, found, _ = text.partition(end_key)  # a special end key never shows in this decoding: found stays ""
    ended = bool(found) or (bool(new) and new[-1] in end_ids)
    return Reply(head, new, ended)
