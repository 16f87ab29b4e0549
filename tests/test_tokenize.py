"""Segment-wise tokenization on the real tokenizers: exact ids, masking, truncation and the counts."""
from __future__ import annotations

import json

import numpy as np
import pytest

from trainer.config import TrainConfig
from trainer.data.conversation import ASSISTANT, PROMPTER, Conversation, Turn
from trainer.formats import format_for
from trainer.tokens import IGNORE_INDEX
from trainer.data.tokenize import SegmentEncoder, encode, encode_all, encode_prompt
from trainer.tokens import padded_vocab_size


def conv(*texts: str, context: str = "") -> Conversation:
    turns = tuple(Turn(PROMPTER if i % 2 == 0 else ASSISTANT, t, context if i == 0 else "")
                  for i, t in enumerate(texts))
    return Conversation(turns, "test", "test:1")


def fmt_for(tokenizer, name: str = "oasst", system: str | None = None):
    config = TrainConfig.of(prompt_format=name, use_system_prefix=system is not None,
                            **({"system_prefix": system} if system is not None else {}))
    return format_for(config.data, tokenizer)


def trained_ids(sample) -> list[int]:
    return sample.labels[sample.labels != IGNORE_INDEX].tolist()


def exchanges_of_en_100(reference_data) -> list[Conversation]:
    """Every (prompter, assistant reply) pair of the bundled OASST trees: real message texts."""
    pairs = []

    def walk(message):
        for reply in message.get("replies") or []:
            if message["role"] == PROMPTER:
                pairs.append(conv(message["text"], reply["text"]))
            walk(reply)

    for line in (reference_data / "oasst" / "en_100_tree.jsonl").read_text(encoding="utf-8").splitlines():
        walk(json.loads(line)["prompt"])
    return pairs


# ------------------------------------------------------------------------------------------- the OA test tokenizer

def test_one_exchange_encodes_to_the_oasst_collator_ids(oa_test_tokenizer):
    tok = oa_test_tokenizer
    sample = encode(conv("Dummy Question?", "Dummy Answer."), fmt_for(tok), SegmentEncoder(tok), 512, True)
    assert sample.input_ids.tolist() == [2, 42, 358, 83, 95, 227, 55, 440, 341, 79, 327, 37, 0, 3, 42, 358, 83, 95,
                                         227, 501, 89, 93, 331, 20, 0]
    assert sample.input_ids.dtype == np.int32 and sample.labels.dtype == np.int32
    assert tok.decode(trained_ids(sample)) == "Dummy Answer.<|endoftext|>"
    assert (sample.labels[:14] == IGNORE_INDEX).all() and sample.trained_tokens == 11
    assert not sample.truncated and sample.turns_dropped == 0


def test_label_masking_false_trains_every_token(oa_test_tokenizer):
    tok = oa_test_tokenizer
    sample = encode(conv("Dummy Question?", "Dummy Answer."), fmt_for(tok), SegmentEncoder(tok), 512, False)
    assert sample.labels[0] == IGNORE_INDEX  # nothing precedes it, so it is never a target
    assert (sample.labels[1:] == sample.input_ids[1:]).all() and sample.trained_tokens == 24


def test_truncation_drops_the_oldest_exchange_and_keeps_the_system_prefix(oa_test_tokenizer):
    tok = oa_test_tokenizer
    fmt, encoder = fmt_for(tok, system="Be brief."), SegmentEncoder(tok)
    full = conv("First question?", "First answer.", "Second question?", "Second answer.", "Third?", "Third.")
    last_two = encode(conv(*[t.text for t in full.turns[2:]]), fmt, encoder, 512, True)
    sample = encode(full, fmt, encoder, len(last_two.input_ids), True)
    assert sample.input_ids.tolist() == last_two.input_ids.tolist()
    assert sample.truncated and sample.turns_dropped == 2
    assert tok.decode(sample.input_ids).startswith("<|system|>Be brief.<|endoftext|><|prompter|>Second question?")
    assert tok.decode(trained_ids(sample)) == "Second answer.<|endoftext|>Third.<|endoftext|>"


def test_truncated_airoboros_sample_is_the_shorter_conversation_rendered_anew(oa_test_tokenizer):
    """Dropping an exchange re-renders the rest: the new first block gets the preamble's " USER: " spacing."""
    tok = oa_test_tokenizer
    fmt, encoder = fmt_for(tok, "airoboros"), SegmentEncoder(tok)
    shorter = encode(conv("Second question?", "Second answer."), fmt, encoder, 512, True)
    sample = encode(conv("First question?", "First answer.", "Second question?", "Second answer."), fmt, encoder,
                    len(shorter.input_ids), True)
    assert sample.input_ids.tolist() == shorter.input_ids.tolist() and sample.turns_dropped == 2
    assert tok.decode(sample.input_ids).endswith("input. USER: Second question? ASSISTANT: Second answer."
                                                 "<|endoftext|>")


def test_a_last_exchange_too_long_keeps_its_head(oa_test_tokenizer):
    tok = oa_test_tokenizer
    fmt, encoder = fmt_for(tok, system="Be brief."), SegmentEncoder(tok)
    last = encode(conv("Third?", "Third answer is long."), fmt, encoder, 512, True)
    sample = encode(conv("First?", "First.", "Third?", "Third answer is long."), fmt, encoder,
                    len(last.input_ids) - 3, True)
    assert sample.input_ids.tolist() == last.input_ids[:-3].tolist()
    assert sample.truncated and sample.turns_dropped == 2
    assert trained_ids(sample) == trained_ids(last)[:-3]


def test_samples_without_a_trained_token_are_counted_not_kept(oa_test_tokenizer):
    tok = oa_test_tokenizer
    fmt, encoder = fmt_for(tok), SegmentEncoder(tok)
    prompt_only = len(tok(fmt.generation_prompt(conv("A rather long question, isn't it?").turns, None),
                          add_special_tokens=False).input_ids)
    convs = [conv("A rather long question, isn't it?", "Yes."), conv("Short?", "No.")]
    assert encode(convs[0], fmt, encoder, prompt_only, True) is None
    samples, stats = encode_all(convs, fmt, encoder, prompt_only, True)
    assert len(samples) == 1 and stats.samples == 1 and stats.dropped_no_trained_tokens == 1
    assert stats.tokens == len(samples[0].input_ids) and stats.trained_tokens == samples[0].trained_tokens > 0


def test_encode_all_encodes_each_distinct_text_once(oa_test_tokenizer):
    tok = oa_test_tokenizer
    fmt, encoder = fmt_for(tok), SegmentEncoder(tok)
    # Two OASST threads sharing their first exchange, as every root-to-leaf branch of a tree does.
    convs = [conv("Q1", "A1", "Q2", "A2"), conv("Q1", "A1", "Q2b", "A2b")]
    samples, stats = encode_all(convs, fmt, encoder, 512, True)
    assert len(encoder) == len({"<|prompter|>", "<|assistant|>", "<|endoftext|>", "Q1", "A1", "Q2", "A2", "Q2b",
                                "A2b"})
    for sample, c in zip(samples, convs):
        joined = "".join(s.text for s in fmt.render(c))
        assert sample.input_ids.tolist() == tok(joined, add_special_tokens=False).input_ids
    assert stats.samples == 2 and stats.truncated == 0
    assert stats.tokens == sum(len(s.input_ids) for s in samples)


@pytest.mark.parametrize("label_masking", [True, False])
def test_encode_all_agrees_with_encode_one_by_one(oa_test_tokenizer, label_masking):
    tok = oa_test_tokenizer
    fmt = fmt_for(tok, system="Be brief.")
    convs = [conv("Dummy Question?", "Dummy Answer."),
             conv("A first, rather long question?", "A first long answer.", "Second?", "Second answer."),
             conv("Q", "A", context="an input"),
             conv("Short?", "Yes.")]
    max_length = 40  # the two-exchange sample (69 tokens) loses its first exchange (31 tokens are left)
    samples, stats = encode_all(convs, fmt, SegmentEncoder(tok), max_length, label_masking)
    one_by_one = [encode(c, fmt, SegmentEncoder(tok), max_length, label_masking) for c in convs]
    assert len(samples) == len(one_by_one) == 4 and stats.truncated == 1
    for got, expected in zip(samples, one_by_one):
        assert got.input_ids.tolist() == expected.input_ids.tolist()
        assert got.labels.tolist() == expected.labels.tolist()
        assert (got.trained_tokens, got.truncated, got.turns_dropped) == \
               (expected.trained_tokens, expected.truncated, expected.turns_dropped)
    assert stats.trained_tokens == sum(s.trained_tokens for s in samples)


# ----------------------------------------------------------------------------------------- the GPT-NeoX-20B tokenizer

def test_neox20b_vocab_and_chat_tokens(neox20b_tokenizer):
    tok = neox20b_tokenizer
    assert len(tok) == 50282 and padded_vocab_size(tok) == 50288
    for token in ("<|prompter|>", "<|assistant|>", "<|system|>"):
        assert len(tok(token, add_special_tokens=False).input_ids) == 1


def test_oasst_segments_equal_the_whole_string_on_real_messages(neox20b_tokenizer, reference_data):
    tok = neox20b_tokenizer
    fmt, encoder = fmt_for(tok, system="You are Joi.\nKnowledge cutoff: 2021-09-01"), SegmentEncoder(tok)
    tricky = conv("  leading spaces", "trailing newline\n", "e\u0301 (NFC) and 👍 and  two  spaces",
                  "a literal <|endoftext|> inside", "Translate.", "Übersetzt", context="\nindented input")
    convs = exchanges_of_en_100(reference_data) + [tricky]
    samples, stats = encode_all(convs, fmt, encoder, 4096, True)
    assert stats.samples == len(convs) and stats.truncated == 0
    for sample, c in zip(samples, convs):
        joined = "".join(s.text for s in fmt.render(c))
        assert sample.input_ids.tolist() == tok(joined, add_special_tokens=False).input_ids, c.turns[0].text[:40]


@pytest.mark.parametrize("name", ["airoboros", "alpaca", "plain"])
def test_template_prompt_ids_are_what_inference_encodes(neox20b_tokenizer, name):
    """Source and target tokenized apart (qlora fork): the prompt part equals the tokenized generation prompt."""
    tok = neox20b_tokenizer
    fmt, encoder = fmt_for(tok, name), SegmentEncoder(tok)
    for c in (conv("Tell me a joke about bananas.", "What did the banana say? R.I.P.E."),
              conv("  spaced instruction  ", "\nanswer on a new line"),
              conv("Write a websocket application in node.js. PLAINFORMAT", "const ws = require('ws');"),
              conv("BEGININPUT\nBEGINCONTEXT\nurl: x\nENDCONTEXT\nText.\nENDINPUT\nBEGININSTRUCTION\nQ?\n"
                   "ENDINSTRUCTION", "A."),
              conv("Translate to German.", "Hallo", context="Hello")):
        sample = encode(c, fmt, encoder, 4096, True)
        prompt = tok(fmt.generation_prompt(c.turns[:1], None), add_special_tokens=False).input_ids
        reply = tok(c.turns[1].text, add_special_tokens=False).input_ids
        end = tok(fmt.end_key, add_special_tokens=False).input_ids
        assert sample.input_ids.tolist() == prompt + reply + end
        assert sample.labels[len(prompt):].tolist() == reply + end
        assert encode_prompt(c.turns[:1], fmt, encoder, None).tolist() == prompt


@pytest.mark.parametrize("name", ["oasst", "airoboros", "alpaca", "plain"])
def test_multi_turn_chat_prompt_is_the_training_prefix(neox20b_tokenizer, name):
    """A reply in the history is encoded apart from the text before it, as it was trained: `encode_prompt`."""
    tok = neox20b_tokenizer
    fmt, encoder = fmt_for(tok, name, system="Be brief."), SegmentEncoder(tok)
    c = conv("What is a meme?", "A unit of culture.", "Who coined it?", "Dawkins.")
    sample = encode(c, fmt, encoder, 4096, True)
    prompt = encode_prompt(c.turns[:3], fmt, encoder, fmt.system).tolist()
    assert sample.input_ids[:len(prompt)].tolist() == prompt
    assert tok.decode(sample.input_ids[len(prompt):]) == "Dawkins." + fmt.end_key
