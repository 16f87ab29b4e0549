"""Packed rows keep samples apart under every attention implementation that runs on this CPU (transformers 5.24,
torch 2.13): the per-token loss, and its gradients, equal those of the samples run one by one.

What runs where (see the module docstring of trainer/data/collate.py for how each model is told the boundaries):
- GPT-NeoX: eager and sdpa (forward and backward); flex_attention forward only, since torch 2.13's FlexAttention
  has no CPU backward ("FlexAttention does not support backward on CPU"); its first call compiles with inductor.
- Falcon: eager and sdpa; flex_attention is refused by transformers (FalconForCausalLM has no flex support).
- MPT: eager only (sdpa and flex_attention are refused by transformers); isolation is the 4D block mask.
- Llama, Qwen2, Qwen3, Mistral, Gemma 3 and Phi-3: sdpa (their CPU default), and eager for Llama (the tiny
  Mistral and Gemma 3 have a 16-token sliding window, which the samples cross, so windowed masks are checked too).
- Gemma 2: eager only (transformers refuses sdpa: it cannot soft-cap attention logits).
- flash_attention_2 needs CUDA and flash_attn; it is not run here. Delphi's own `delphi_varlen`
  (trainer/varlen_attention.py) is: GPT-NeoX and the modern families but Gemma 2 hand it the collator's
  `cu_seq_lens_q/k` and `max_length_q/k` untouched and build no mask for it; on the CPU it runs SDPA per sample
  (grouped-query heads and sliding windows included), on CUDA torch's flash varlen kernel. It refuses Gemma 2's
  soft-capped attention.
Both layouts are checked: rows of max_length (for eager/sdpa) and the whole batch in one row (for varlen kernels).
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from train_samples import qa_samples
from trainer.data.collate import DataCollator, packing_isolation

MODERN = ["llama", "qwen2", "qwen3", "mistral", "gemma3_text", "phi3"]  # eager, sdpa and delphi_varlen
ON_CPU = [("gpt_neox", "eager"), ("gpt_neox", "sdpa"), ("falcon", "eager"), ("falcon", "sdpa"), ("mpt", "eager"),
          ("llama", "eager"), *[(arch, "sdpa") for arch in MODERN], ("gemma2", "eager")]
REFUSED = [("falcon", "flex_attention"), ("mpt", "sdpa"), ("mpt", "flex_attention"), ("gemma2", "sdpa")]
MAX_LENGTH = 48


@pytest.fixture(scope="module")
def samples(tokenizer):
    return qa_samples(tokenizer, 6)


def _collator(model, samples, one_row: bool) -> DataCollator:
    isolation = packing_isolation(model.config)
    total = sum(len(s["input_ids"]) for s in samples)
    return DataCollator(1, MAX_LENGTH, pad_to_multiple_of=8, packing=True, isolation=isolation,
                        row_length=total if one_row else None, flash_kwargs=isolation == "position_ids")


def _model_inputs(batch: dict) -> dict:
    return {k: v for k, v in batch.items()
            if k not in ("labels", "num_real_tokens", "num_trained_tokens", "trained_index", "trained_targets")}


def _packed_losses(model, batch, samples) -> dict[int, torch.Tensor]:
    """Per-token losses of each sample, found in the packed batch by its tokens."""
    logits = model(**_model_inputs(batch)).logits
    width = logits.shape[1]
    starts = (batch["position_ids"].flatten() == 0).nonzero().squeeze(1).tolist() + [batch["input_ids"].numel()]
    flat_ids = batch["input_ids"].flatten().tolist()
    out = {}
    for start, end in zip(starts, starts[1:]):
        for i, s in enumerate(samples):
            if flat_ids[start:end] == s["input_ids"]:
                row, col = divmod(start, width)
                out[i] = _token_losses(logits[row, col:col + end - start], s["labels"])
    return out


def _token_losses(logits: torch.Tensor, labels: list[int]) -> torch.Tensor:
    targets = torch.tensor(labels[1:])
    return F.cross_entropy(logits[:-1].float(), targets, ignore_index=-100, reduction="none")[targets != -100]


def _separate_losses(model, samples) -> dict[int, torch.Tensor]:
    return {i: _token_losses(model(input_ids=torch.tensor([s["input_ids"]])).logits[0], s["labels"])
            for i, s in enumerate(samples)}


def _assert_packed_equals_separate(model, batch, samples, separate_attention: str) -> None:
    """The packed batch's per-token losses, and the gradients of their sum, equal those of the samples run one by
    one (under `separate_attention`)."""
    packed = _packed_losses(model, batch, samples)
    assert sorted(packed) == list(range(len(samples)))
    sum(l.sum() for l in packed.values()).backward()
    packed_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.set_attn_implementation(separate_attention)
    separate = _separate_losses(model, samples)
    sum(l.sum() for l in separate.values()).backward()
    for i in separate:
        torch.testing.assert_close(packed[i], separate[i], atol=1e-5, rtol=1e-5)
    for name, p in model.named_parameters():
        torch.testing.assert_close(packed_grads[name], p.grad, atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("one_row", [False, True], ids=["rows", "one-row"])
@pytest.mark.parametrize("arch, attention", ON_CPU)
def test_packed_loss_and_gradients_equal_the_separate_samples(tiny_model_dir, samples, arch, attention, one_row):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir(arch), attn_implementation=attention).train()
    assert model.config._attn_implementation == attention
    batch = _collator(model, samples, one_row)(samples)
    assert (batch["input_ids"].shape[0] == 1) == one_row
    _assert_packed_equals_separate(model, batch, samples, attention)


@pytest.mark.parametrize("one_row", [False, True], ids=["rows", "one-row"])
def test_gpt_neox_flex_attention_forward_keeps_samples_apart(tiny_model_dir, samples, one_row):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir("gpt_neox"), attn_implementation="flex_attention")
    with torch.no_grad():
        batch = _collator(model, samples, one_row)(samples)
        packed, separate = _packed_losses(model.eval(), batch, samples), _separate_losses(model, samples)
    for i in separate:
        torch.testing.assert_close(packed[i], separate[i], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch, attention", REFUSED)
def test_implementations_the_model_class_lacks_are_refused(tiny_model_dir, arch, attention):
    with pytest.raises(ValueError, match="does not support an attention implementation"):
        AutoModelForCausalLM.from_pretrained(tiny_model_dir(arch), attn_implementation=attention)


@pytest.mark.parametrize("arch, one_row", [("gpt_neox", False), ("gpt_neox", True), *[(a, True) for a in MODERN]])
def test_varlen_attention_from_the_collators_kwargs(tiny_model_dir, samples, arch, one_row):
    from transformers.masking_utils import create_causal_mask

    from trainer.varlen_attention import register

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir(arch), attn_implementation=register()).train()
    batch = _collator(model, samples, one_row)(samples)
    embeds = model.get_input_embeddings()(batch["input_ids"])
    assert create_causal_mask(model.config, embeds, None, None, batch["position_ids"]) is None  # nothing built
    _assert_packed_equals_separate(model, batch, samples, "sdpa")  # lone samples carry no cu_seq_lens


def test_varlen_attention_refuses_gemma2s_soft_capping(tiny_model_dir, samples):
    from trainer.varlen_attention import register

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir("gemma2"), attn_implementation=register())
    batch = _collator(model, samples, True)(samples)
    with pytest.raises(ValueError, match="no logit soft-capping"):
        model(**_model_inputs(batch))
