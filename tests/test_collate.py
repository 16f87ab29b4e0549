"""Dynamic padding and packing: layouts, token counts, and packed rows giving the same per-token loss as the
samples run one by one through real tiny GPT-NeoX, MPT and Falcon models."""
from __future__ import annotations

import doctest
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from trainer.data import collate
from trainer.data.collate import DataCollator, packing_isolation
from trainer.tokens import IGNORE_INDEX
from trainer.errors import ConfigError, DataError

TEXTS = [
    "What is the capital of France? Paris is the capital of France.",
    "Name a prime number. Seven.",
    "How do plants make food? They use sunlight, water and carbon dioxide in photosynthesis.",
    "Say hi. Hi!",
    "Count to five. One, two, three, four, five.",
    "Why is the sky blue? Air scatters blue light more than red light.",
]


@pytest.fixture(scope="module")
def samples(tokenizer):
    """Tokenized texts, eos-terminated, with the first half of each masked to -100 like a prompt."""
    out = []
    for text in TEXTS:
        ids = np.asarray(tokenizer(text)["input_ids"] + [tokenizer.eos_token_id], dtype=np.int32)
        labels = ids.copy()
        labels[: len(ids) // 2] = IGNORE_INDEX
        out.append({"input_ids": ids, "labels": labels})
    return out


@pytest.fixture(scope="module")
def row_length(samples) -> int:
    """A packing max_length where any two samples fit one row, whatever the tokenizer's compression."""
    return 2 * max(len(s["input_ids"]) for s in samples)


def test_docstring_examples_hold():
    assert doctest.testmod(collate).failed == 0


def test_padding_to_the_longest_with_masked_labels(samples, tokenizer):
    batch = DataCollator(pad_token_id=tokenizer.pad_token_id, max_length=512)(samples[:3])
    lengths = [len(s["input_ids"]) for s in samples[:3]]
    assert set(batch) == {"input_ids", "attention_mask", "labels", "num_real_tokens", "num_trained_tokens",
                          "trained_index", "trained_targets"}
    assert batch["input_ids"].shape == batch["labels"].shape == (3, max(lengths))
    assert batch["input_ids"].dtype == torch.long
    for row, (sample, length) in enumerate(zip(samples, lengths)):
        assert batch["input_ids"][row, :length].tolist() == sample["input_ids"].tolist()
        assert batch["labels"][row, :length].tolist() == sample["labels"].tolist()
        assert batch["attention_mask"][row].tolist() == [1] * length + [0] * (max(lengths) - length)
        assert (batch["input_ids"][row, length:] == tokenizer.pad_token_id).all()
        assert (batch["labels"][row, length:] == IGNORE_INDEX).all()


def test_padding_rounds_up_to_the_multiple(samples, tokenizer):
    longest = max(len(s["input_ids"]) for s in samples[:2])
    batch = DataCollator(pad_token_id=tokenizer.pad_token_id, max_length=512, pad_to_multiple_of=16)(samples[:2])
    assert batch["input_ids"].shape[1] == -(-longest // 16) * 16 > longest
    assert batch["attention_mask"].sum().item() == sum(len(s["input_ids"]) for s in samples[:2])


def test_objects_and_lists_are_accepted_like_dicts(samples):
    as_objects = [SimpleNamespace(input_ids=s["input_ids"].tolist(), labels=s["labels"].tolist()) for s in samples]
    collator = DataCollator(pad_token_id=1, max_length=512)
    from_objects, from_dicts = collator(as_objects), collator(samples)
    assert from_objects.keys() == from_dicts.keys()
    for key, value in from_objects.items():
        assert torch.equal(value, from_dicts[key]) if torch.is_tensor(value) else value == from_dicts[key]


@pytest.mark.parametrize("sample, message", [
    ({"input_ids": [5] * 9, "labels": [5] * 9}, "sample 1 of the batch has 9 tokens, more than max_length 8"),
    ({"input_ids": [5, 6], "labels": [5]}, "sample 1 of the batch has 2 input_ids but 1 labels"),
    ({"input_ids": [5, 6]}, "sample 1 of the batch has no 'labels'"),
    ({"input_ids": [], "labels": []}, "sample 1 of the batch has no tokens"),
])
@pytest.mark.parametrize("packing", [False, True])
def test_bad_samples_are_clear_errors(sample, message, packing):
    with pytest.raises(DataError, match=message):
        DataCollator(pad_token_id=1, max_length=8, packing=packing)([{"input_ids": [3], "labels": [3]}, sample])


def _segments(batch: dict) -> list[tuple[int, int, int]]:
    """(row, start, end) of every run of position_ids counting up from 0."""
    out = []
    for row, positions in enumerate(batch["position_ids"].tolist()):
        starts = [i for i, p in enumerate(positions) if p == 0] + [len(positions)]
        out += [(row, a, b) for a, b in zip(starts, starts[1:])]
    return out


@pytest.mark.parametrize("pad_to_multiple_of", [None, 8])
def test_packing_places_every_sample_once_within_max_length(samples, tokenizer, row_length, pad_to_multiple_of):
    max_length = row_length
    collator = DataCollator(pad_token_id=tokenizer.pad_token_id, max_length=max_length, packing=True,
                            pad_to_multiple_of=pad_to_multiple_of)
    batch = collator(samples)
    rows, width = batch["input_ids"].shape
    assert rows < len(samples)
    assert width <= max_length or width == -(-max_length // pad_to_multiple_of) * pad_to_multiple_of
    if pad_to_multiple_of:
        assert width % pad_to_multiple_of == 0
    found = {}
    for row, start, end in _segments(batch):
        ids = tuple(batch["input_ids"][row, start:end].tolist())
        match = [i for i, s in enumerate(samples) if tuple(s["input_ids"].tolist()) == ids]
        if match:
            (i,) = match
            assert i not in found
            found[i] = (row, start, end)
            assert batch["labels"][row, start].item() == IGNORE_INDEX
            assert batch["labels"][row, start + 1:end].tolist() == samples[i]["labels"][1:].tolist()
        else:
            assert set(ids) == {tokenizer.pad_token_id} and end == width
            assert (batch["labels"][row, start:end] == IGNORE_INDEX).all()
    assert sorted(found) == list(range(len(samples)))
    assert batch["num_real_tokens"] == sum(len(s["input_ids"]) for s in samples)
    assert collator.padded_size([len(s["input_ids"]) for s in samples]) == rows * width
    assert batch["use_cache"] is False


def test_token_counts_match_the_padded_batch(samples, tokenizer):
    collator = DataCollator(pad_token_id=tokenizer.pad_token_id, max_length=512, pad_to_multiple_of=8)
    batch = collator(samples)
    assert batch["num_real_tokens"] == batch["attention_mask"].sum().item()
    assert collator.padded_size([len(s["input_ids"]) for s in samples]) == batch["input_ids"].numel()


def _token_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-position loss of predicting labels[t] from logits[t-1]; 0 where the label is -100."""
    return torch.nn.functional.cross_entropy(logits[:-1].float(), labels[1:], ignore_index=IGNORE_INDEX,
                                             reduction="none")


def _packed_losses_by_sample(model, batch, samples) -> dict[int, torch.Tensor]:
    with torch.no_grad():
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
    out = {}
    for row, start, end in _segments(batch):
        ids = batch["input_ids"][row, start:end].tolist()
        for i, s in enumerate(samples):
            if s["input_ids"].tolist() == ids:
                out[i] = _token_losses(logits[row, start:end], batch["labels"][row, start:end])
    return out


@pytest.fixture(scope="module")
def models(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    return {arch: AutoModelForCausalLM.from_pretrained(tiny_model_dir(arch)).eval()
            for arch in ("gpt_neox", "mpt", "falcon")}


@pytest.mark.parametrize("arch", ["gpt_neox", "mpt", "falcon"])
def test_packed_rows_give_the_per_token_loss_of_separate_samples(models, samples, tokenizer, row_length, arch):
    model = models[arch]
    collator = DataCollator(pad_token_id=tokenizer.pad_token_id, max_length=row_length, packing=True,
                            isolation=packing_isolation(model.config))
    batch = collator(samples)
    assert batch["input_ids"].shape[0] < len(samples)
    packed = _packed_losses_by_sample(model, batch, samples)
    assert sorted(packed) == list(range(len(samples)))
    all_separate = []
    for i, s in enumerate(samples):
        ids, labels = torch.tensor(s["input_ids"], dtype=torch.long), torch.tensor(s["labels"], dtype=torch.long)
        with torch.no_grad():
            separate = _token_losses(model(input_ids=ids[None]).logits[0], labels)
        torch.testing.assert_close(packed[i], separate, atol=1e-5, rtol=1e-5)
        all_separate.append(separate[labels[1:] != IGNORE_INDEX])
    with torch.no_grad():
        loss = model(**batch).loss
    torch.testing.assert_close(loss, torch.cat(all_separate).mean(), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch, leak", [("gpt_neox", {"use_cache": True}), ("falcon", {"use_cache": True}),
                                        ("mpt", {"attention_mask": None})])
def test_without_the_isolation_the_samples_would_mix(models, samples, tokenizer, row_length, arch, leak):
    """The control for the test above: what the collator adds is what keeps the samples apart."""
    model = models[arch]
    collator = DataCollator(pad_token_id=tokenizer.pad_token_id, max_length=row_length, packing=True,
                            isolation=packing_isolation(model.config))
    batch = {**collator(samples), **leak}
    packed = _packed_losses_by_sample(model, batch, samples)
    worst = 0.0
    for i, s in enumerate(samples):
        labels = torch.tensor(s["labels"], dtype=torch.long)
        with torch.no_grad():
            separate = model(input_ids=torch.tensor(s["input_ids"], dtype=torch.long)[None]).logits[0]
        worst = max(worst, (packed[i] - _token_losses(separate, labels)).abs().max().item())
    assert worst > 1e-2


@pytest.mark.parametrize("arch", ["gpt_neox", "mpt", "falcon"])
def test_padded_batch_gives_the_per_token_loss_of_separate_samples(models, samples, tokenizer, arch):
    model = models[arch]
    batch = DataCollator(pad_token_id=tokenizer.pad_token_id, max_length=512, pad_to_multiple_of=8)(samples)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    for row, s in enumerate(samples):
        n = len(s["input_ids"])
        labels = torch.tensor(s["labels"], dtype=torch.long)
        with torch.no_grad():
            separate = model(input_ids=torch.tensor(s["input_ids"], dtype=torch.long)[None]).logits[0]
        torch.testing.assert_close(_token_losses(logits[row, :n], labels), _token_losses(separate, labels),
                                   atol=1e-5, rtol=1e-5)


def test_isolation_per_architecture(models):
    assert [packing_isolation(models[a].config) for a in ("gpt_neox", "falcon", "mpt")] == \
        ["position_ids", "position_ids", "block_mask"]


def test_packing_is_refused_for_unverified_architectures():
    from transformers import BloomConfig, GPT2Config

    for config in (GPT2Config(), BloomConfig()):
        with pytest.raises(ConfigError, match=f"packing: true is not supported for model type '{config.model_type}'"
                                              r".*set packing: false"):
            packing_isolation(config)


@pytest.mark.parametrize("packing", [False, True])
def test_trained_index_and_targets_are_the_boolean_mask_selection(samples, tokenizer, row_length, packing):
    from trainer.loss import trained_positions

    batch = DataCollator(pad_token_id=tokenizer.pad_token_id, max_length=row_length, packing=packing,
                         pad_to_multiple_of=8)(samples)
    labels = batch["labels"]
    keep = trained_positions(labels)
    assert batch["trained_index"].dtype == batch["trained_targets"].dtype == torch.long
    assert torch.equal(batch["trained_index"], keep.flatten().nonzero().squeeze(1))
    assert torch.equal(batch["trained_targets"], labels[:, 1:][labels[:, 1:] != IGNORE_INDEX])
    # The samples' first labels are prompt (-100), so packing masks no trained label.
    assert batch["num_trained_tokens"] == int(keep.sum()) == sum(
        int((torch.as_tensor(s["labels"][1:]) != IGNORE_INDEX).sum()) for s in samples)


def test_row_length_puts_a_budget_of_samples_in_one_row(samples, tokenizer, row_length):
    total = sum(len(s["input_ids"]) for s in samples)
    collator = DataCollator(pad_token_id=tokenizer.pad_token_id, max_length=row_length, packing=True,
                            row_length=total, pad_to_multiple_of=8)
    batch = collator(samples)
    assert batch["input_ids"].shape == (1, -(-total // 8) * 8)
    assert len(_segments(batch)) == len(samples) + (total % 8 != 0)  # every sample, then the padding tail
    split = DataCollator(pad_token_id=tokenizer.pad_token_id, max_length=row_length, packing=True,
                         row_length=total - 1)(samples)
    assert split["input_ids"].shape[0] == 2


def test_flash_kwargs_mark_every_sample_and_the_padding_tail(samples, tokenizer, row_length):
    batch = DataCollator(pad_token_id=tokenizer.pad_token_id, max_length=row_length, packing=True,
                         pad_to_multiple_of=8, flash_kwargs=True)(samples)
    rows, width = batch["input_ids"].shape
    starts = [row * width + start for row, start, _ in _segments(batch)]
    assert batch["cu_seq_lens_q"].dtype == torch.int32 and batch["cu_seq_lens_q"] is batch["cu_seq_lens_k"]
    assert batch["cu_seq_lens_q"].tolist() == starts + [rows * width]
    longest = max(end - start for _, start, end in _segments(batch))
    assert batch["max_length_q"] == batch["max_length_k"] == longest and isinstance(longest, int)


@pytest.mark.parametrize("options, message", [
    (dict(row_length=64), "row_length 64 needs packing"),
    (dict(packing=True, row_length=16), "row_length 16 needs packing and at least max_length 32"),
    (dict(flash_kwargs=True), "flash_kwargs needs packing with position_ids isolation"),
    (dict(packing=True, isolation="block_mask", flash_kwargs=True), "flash_kwargs needs packing with position_ids"),
])
def test_layout_options_that_cannot_work_are_refused(options, message):
    with pytest.raises(ConfigError, match=message):
        DataCollator(pad_token_id=1, max_length=32, **options)
