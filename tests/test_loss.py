"""summed_token_loss through real tiny models: the collator's trained indices and the chunked output layer give
today's loss and gradients (boolean mask, logits of the trained positions), with and without LoRA, for every
family: with the output head tied to the input embedding (Llama 3.2, Qwen2.5/Qwen3 small, Gemma; also the tiny MPT
and Falcon), the chunked head uses the one shared weight, whose gradient sums both uses; Gemma 2's final-logit
soft-capping is applied by the chunked loss as by the model's own head."""
from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from train_samples import collator, qa_samples
from trainer.loss import summed_token_loss


def _loss_and_grads(model, batch, chunked: bool):
    model.zero_grad()
    softcap = getattr(model.config, "final_logit_softcapping", None)
    loss, count, outputs = summed_token_loss(model, model.get_output_embeddings(), batch, chunked=chunked,
                                             softcap=softcap)
    (loss / 7).backward()  # any scale: the Trainer divides by the step's token count
    return loss.detach(), int(count), outputs, {n: p.grad.clone() for n, p in model.named_parameters()
                                               if p.grad is not None}


def _today(batch: dict) -> dict:
    """The batch as the collator built it before it carried trained indices: the loss falls back to the mask."""
    return {k: v for k, v in batch.items() if k not in ("num_trained_tokens", "trained_index", "trained_targets")}


TIED = {"falcon", "mpt", "llama", "qwen2", "qwen3", "gemma2", "gemma3_text"}
CASES = [(arch, lora) for arch in ("gpt_neox", "falcon", "mpt", "llama", "gemma2") for lora in (False, True)] + \
    [(arch, False) for arch in ("qwen2", "qwen3", "mistral", "gemma3_text", "phi3")]


@pytest.mark.parametrize("arch, lora", CASES, ids=[f"{a}-{'lora' if l else 'full'}" for a, l in CASES])
def test_chunked_loss_and_indices_give_todays_loss_and_gradients(tokenizer, tiny_model_dir, arch, lora):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir(arch))
    if lora:
        model = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear", task_type="CAUSAL_LM"))
    batch = collator(tokenizer)(qa_samples(tokenizer, 5))
    vocab = model.get_output_embeddings().out_features
    assert (model.get_output_embeddings().weight is model.get_input_embeddings().weight) == (arch in TIED)

    ref_loss, ref_count, ref_outputs, ref_grads = _loss_and_grads(model, _today(batch), chunked=False)
    loss, count, outputs, grads = _loss_and_grads(model, batch, chunked=True)

    assert count == ref_count == batch["num_trained_tokens"]
    assert ref_outputs.logits.shape == (ref_count, vocab) and outputs.logits.shape == (0, vocab)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-6, atol=1e-5)
    assert grads.keys() == ref_grads.keys() and len(grads) == sum(p.requires_grad for p in model.parameters())
    for name, grad in grads.items():  # fp32 summation order only: ~1e-6 on gradients of order 1
        torch.testing.assert_close(grad, ref_grads[name], rtol=1e-5, atol=1e-5, msg=name)
    indexed = _loss_and_grads(model, batch, chunked=False)
    torch.testing.assert_close(indexed[0], ref_loss, rtol=0, atol=0)


def test_chunked_loss_under_bf16_autocast_is_as_accurate_as_todays(tokenizer, tiny_model_dir):
    """Under autocast the two differ by bf16 rounding (the chunked backward scales its saved gradients after
    rounding them, the full-logit one before), so each is compared with the fp32 result."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir("gpt_neox"))
    batch = collator(tokenizer)(qa_samples(tokenizer, 5))
    exact_loss, _, _, exact = _loss_and_grads(model, batch, chunked=False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref_loss, _, _, ref_grads = _loss_and_grads(model, batch, chunked=False)
        loss, _, _, grads = _loss_and_grads(model, batch, chunked=True)
    assert abs(loss - exact_loss) <= 1.5 * abs(ref_loss - exact_loss) + 1e-4 * exact_loss
    for name, grad in grads.items():
        assert grad.dtype == torch.float32
        error, ref_error = ((g - exact[name]).norm() / exact[name].norm() for g in (grad, ref_grads[name]))
        assert error <= 1.5 * ref_error + 1e-4, (name, error, ref_error)


def test_chunked_loss_refuses_an_adapted_output_layer(tokenizer, tiny_model_dir):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir("gpt_neox")),
                           LoraConfig(r=4, target_modules=["lm_head"], task_type="CAUSAL_LM"))
    head = model.base_model.model.lm_head
    with pytest.raises(ValueError, match="chunked loss needs a plain torch.nn.Linear output layer, got Linear"):
        summed_token_loss(model, head, collator(tokenizer)(qa_samples(tokenizer, 2)), chunked=True)
