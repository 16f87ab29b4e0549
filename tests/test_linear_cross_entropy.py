"""The chunked linear cross-entropy gives the loss and gradients of full logits + F.cross_entropy, on CPU."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from trainer.linear_cross_entropy import linear_cross_entropy

HIDDEN, VOCAB = 48, 784


def _inputs(n: int, seed: int, weight_grad: bool, bias: bool):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, HIDDEN, generator=g, requires_grad=True)
    weight = (0.2 * torch.randn(VOCAB, HIDDEN, generator=g)).requires_grad_(weight_grad)
    b = (0.1 * torch.randn(VOCAB, generator=g)).requires_grad_(weight_grad) if bias else None
    targets = torch.randint(0, VOCAB, (n,), generator=g)
    return hidden, weight, b, targets


def _loss_and_grads(loss_fn, hidden, weight, bias, targets, scale: float):
    leaves = [t for t in (hidden, weight, bias) if t is not None and t.requires_grad]
    for t in leaves:
        t.grad = None
    loss = loss_fn(hidden, weight, targets, bias)
    (loss * scale).backward()  # a grad_output other than 1, as after the division by the step's token count
    return loss.detach(), [t.grad.clone() for t in leaves]


def _reference(hidden, weight, targets, bias):
    return F.cross_entropy(F.linear(hidden, weight, bias).float(), targets, reduction="sum")


@pytest.mark.parametrize("n", [1, 7, 16, 37])
@pytest.mark.parametrize("weight_grad, bias", [(True, True), (True, False), (False, False)])
def test_fp32_matches_full_logits(n, weight_grad, bias):
    hidden, weight, b, targets = _inputs(n, seed=n, weight_grad=weight_grad, bias=bias)
    chunked = lambda h, w, t, b: linear_cross_entropy(h, w, t, b, chunk_size=8)  # noqa: E731
    loss, grads = _loss_and_grads(chunked, hidden, weight, b, targets, scale=0.25)
    ref_loss, ref_grads = _loss_and_grads(_reference, hidden, weight, b, targets, scale=0.25)
    assert loss.dtype == torch.float32 and loss.shape == ()
    torch.testing.assert_close(loss, ref_loss, rtol=1e-6, atol=1e-5)
    assert len(grads) == len(ref_grads)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    if not weight_grad:
        assert weight.grad is None


@pytest.mark.parametrize("n", [5, 29])
def test_bf16_autocast_matches_full_logits_under_autocast(n):
    hidden, weight, b, targets = _inputs(n, seed=100 + n, weight_grad=True, bias=True)
    chunked = lambda h, w, t, b: linear_cross_entropy(h, w, t, b, chunk_size=4)  # noqa: E731
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, grads = _loss_and_grads(chunked, hidden, weight, b, targets, scale=1.0)
        ref_loss, ref_grads = _loss_and_grads(_reference, hidden, weight, b, targets, scale=1.0)
    assert loss.dtype == torch.float32
    assert [g.dtype for g in grads] == [torch.float32] * 3  # each in its parameter's dtype
    torch.testing.assert_close(loss, ref_loss, rtol=2e-3, atol=1e-2)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want, rtol=2e-2, atol=2e-3)


def test_bf16_weights_without_autocast():
    hidden, weight, _, targets = _inputs(13, seed=3, weight_grad=True, bias=False)
    hidden = hidden.detach().bfloat16().requires_grad_()
    weight = weight.detach().bfloat16().requires_grad_()
    loss, grads = _loss_and_grads(lambda h, w, t, b: linear_cross_entropy(h, w, t, b, chunk_size=4),
                                  hidden, weight, None, targets, scale=1.0)
    ref_loss, ref_grads = _loss_and_grads(_reference, hidden, weight, None, targets, scale=1.0)
    torch.testing.assert_close(loss, ref_loss, rtol=2e-3, atol=1e-2)
    for got, want in zip(grads, ref_grads):
        assert got.dtype == torch.bfloat16
        torch.testing.assert_close(got.float(), want.float(), rtol=2e-2, atol=2e-3)


def test_no_rows_gives_zero_loss_and_zero_gradients():
    hidden, weight, b, targets = _inputs(0, seed=0, weight_grad=True, bias=True)
    loss = linear_cross_entropy(hidden, weight, targets, b)
    loss.backward()
    assert loss.item() == 0.0
    assert hidden.grad.shape == (0, HIDDEN)
    assert not weight.grad.any() and not b.grad.any()


def test_without_grad_only_the_loss_is_computed():
    hidden, weight, b, targets = _inputs(9, seed=9, weight_grad=True, bias=True)
    with torch.no_grad():
        loss = linear_cross_entropy(hidden, weight, targets, b, chunk_size=4)
    assert not loss.requires_grad
    torch.testing.assert_close(loss, _reference(hidden, weight, targets, b).detach(), rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("softcap", [30.0, 0.5])  # Gemma 2's final-logit cap, and one that bites hard
def test_soft_capped_logits_match_the_capped_full_logits(softcap):
    hidden, weight, b, targets = _inputs(21, seed=21, weight_grad=True, bias=True)

    def capped(h, w, t, bias):
        return F.cross_entropy(softcap * torch.tanh(F.linear(h, w, bias).float() / softcap), t, reduction="sum")

    loss, grads = _loss_and_grads(lambda h, w, t, bias: linear_cross_entropy(h, w, t, bias, chunk_size=8,
                                                                             softcap=softcap),
                                  hidden, weight, b, targets, scale=0.5)
    ref_loss, ref_grads = _loss_and_grads(capped, hidden, weight, b, targets, scale=0.5)
    uncapped, _ = _loss_and_grads(_reference, hidden, weight, b, targets, scale=0.5)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-6, atol=1e-5)
    assert abs(loss - uncapped) > 1e-3  # the cap changed the loss
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
