"""`--verify`: the IPU export loaded by the pipeline's own libraries (transformers 4.25.1, tokenizers 0.13.3) in
their own venv, compared with the exporting side. Loading alone proves little: 4.25.1 silently initialises any
tensor it cannot find (a head saved as `lm_head` would load "fine" and be random), so logits and greedy tokens
are compared, and every finding names the file and field at fault.
"""
from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path

import torch

from trainer.errors import ConfigError, RunError
from trainer.export.check import GREEDY_TOKENS, Comparison, Outputs, compare
from trainer.export.ipu import ONE_TOKEN
from trainer.paths import CHECKOUT

PROBE = Path(__file__).with_name("old_lib_probe.py")
# Buffers 4.25.1 keeps in its state dict and rebuilds itself when a checkpoint omits them (as today's does).
REBUILT_BUFFERS = ("attention.bias", "attention.masked_bias", "rotary_emb.inv_freq")


def old_lib_python() -> Path:
    venv = Path(os.environ.get("DELPHI_IPU_VENV", CHECKOUT / ".venv-ipu"))
    python = venv / "bin" / "python"
    if not python.is_file():
        raise ConfigError(f"--verify: no old-library venv at {venv}; create it with `bash scripts/setup_ipu_env.sh` "
                          f"(or point DELPHI_IPU_VENV at one with transformers==4.25.1 and tokenizers==0.13.3)")
    return python


def run_probe(out: Path, prompts: list[str], end_key: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        request, result = Path(tmp) / "request.json", Path(tmp) / "result.pt"
        request.write_text(json.dumps({"prompts": prompts, "greedy_tokens": GREEDY_TOKENS,
                                       "one_token": list(dict.fromkeys((*ONE_TOKEN, end_key)))}))
        done = subprocess.run([str(old_lib_python()), str(PROBE), str(out), str(request), str(result)],
                              capture_output=True, text=True, env={**os.environ, "PYTHONPATH": ""})
        if done.returncode != 0:
            raise RunError(f"--verify: transformers 4.25.1 could not load {out}:\n"
                              + "\n".join(done.stderr.strip().splitlines()[-5:]))
        return torch.load(result, weights_only=True)


def verify_ipu(out: Path, prompts: list[str], ids: list[list[int]], exported: Outputs, end_key: str) -> Comparison:
    """Raises ConfigError listing every mismatch; returns the logit comparison when all agree."""
    seen = run_probe(out, prompts, end_key)
    problems = load_problems(seen)
    problems += [f"tokenizer.json: {t!r} encodes as {got} under tokenizers {seen['versions']['tokenizers']}, "
                 f"expected one token" for t, got in seen["one_token"].items() if len(got) != 1]
    problems += [f"tokenizer.json: prompt {i} tokenizes as {got[:12]}... under tokenizers 0.13.3 but "
                 f"{want[:12]}... here" for i, (got, want) in enumerate(zip(seen["prompt_ids"], ids)) if got != want]
    comparison = compare(f"transformers {seen['versions']['transformers']} vs export", exported,
                         Outputs(seen["logits"], seen["greedy"]), "fp32")
    if not problems and not comparison.ok:
        problems.append(f"config.json / pytorch_model*.bin: {comparison.line()}")
    if not problems and comparison.greedy_same != comparison.prompts:
        problems.append(f"config.json / pytorch_model*.bin: greedy tokens differ: {seen['greedy']} under 4.25.1, "
                        f"{exported.greedy} here")
    if problems:
        raise RunError(f"--verify: {out} under transformers 4.25.1:\n  " + "\n  ".join(problems))
    return comparison


def load_problems(seen: dict) -> list[str]:
    info, problems = seen["loading_info"], []
    missing = [k for k in info["missing_keys"] if not k.endswith(REBUILT_BUFFERS)]
    if missing:
        problems.append(f"pytorch_model*.bin: tensors missing, initialised at random by 4.25.1: {missing[:6]}")
    if info["unexpected_keys"]:
        problems.append(f"pytorch_model*.bin: tensors 4.25.1's GPT-NeoX does not have: {info['unexpected_keys'][:6]}")
    if info["mismatched_keys"]:
        problems.append(f"pytorch_model*.bin / config.json: shape mismatches: {info['mismatched_keys'][:6]}")
    rows = seen["rows"]
    if not rows["embed_in"] == rows["embed_out"] == seen["vocab_size"]:
        problems.append(f"config.json: vocab_size {seen['vocab_size']} but embed_in has {rows['embed_in']} rows "
                        f"and embed_out {rows['embed_out']}")
    if seen["tokenizer_class"] != "GPTNeoXTokenizerFast":
        problems.append(f"tokenizer_config.json: tokenizer_class loads as {seen['tokenizer_class']}, "
                        f"expected GPTNeoXTokenizerFast")
    if seen["pad_token_id"] is None:
        problems.append("special_tokens_map.json: pad_token is not set (the pipeline right-pads with it)")
    return problems
