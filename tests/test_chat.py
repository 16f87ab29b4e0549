"""Chat: loading training outputs, the IPU sampling controls, stopping at the end key, history truncation and the
EXAMPLE_PROMPTS mode, on tiny GPT-NeoX (and Llama, Gemma 2) models taught one conversation through the training
encoder."""
from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

from trainer.chat import main
from trainer.chat_session import ChatSession, chat_format, fit_history
from trainer.checkpoints import write_marker
from trainer.cli import guarded
from trainer.config import TrainConfig, write_resolved
from trainer.data.conversation import ASSISTANT, PROMPTER, Conversation, Turn
from trainer.data.tokenize import SegmentEncoder, encode, encode_prompt
from trainer.generation import SamplingOptions, generate_reply
from trainer.formats import build_format, detect_format, format_for
from trainer.inference import context_length, load_for_inference
from trainer.tiny import save_tiny_model
from trainer.tokens import load_tokenizer

EXCHANGES = [("What is a meme?", "A unit of culture that spreads."),
             ("Who coined the word?", "Richard Dawkins, in 1976.")]
TURNS = tuple(Turn(role, text) for q, a in EXCHANGES for role, text in ((PROMPTER, q), (ASSISTANT, a)))
MAX_LENGTH = 128


def run_chat(argv: list[str], environ: dict[str, str]) -> int:
    """`delphi chat ARGV` with this environment, through the one error wrapper."""
    return guarded(lambda args: main(args, environ), argv)


def taught_model(directory: Path, base: Path, format_name: str) -> Path:
    """A training output: `base` trained (overfit) on the conversation as the trainer encodes it, saved with its
    tokenizer (model_max_length = max_length, as training saves it) and resolved_config.yaml."""
    config = TrainConfig.of(model_name=str(base), prompt_format=format_name, max_length=MAX_LENGTH, dtype="fp32")
    tokenizer = load_tokenizer(str(base), MAX_LENGTH)
    fmt = format_for(config.data, tokenizer)
    sample = encode(Conversation(TURNS, "test"), fmt, SegmentEncoder(tokenizer), MAX_LENGTH, label_masking=True)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(base)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    ids = torch.tensor(sample.input_ids, dtype=torch.long)[None]
    labels = torch.tensor(sample.labels, dtype=torch.long)[None]
    for _ in range(60):
        loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert loss.item() < 0.05
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    write_resolved(config, directory)
    write_marker(directory, "final", 60, 1)  # the save completed, as training marks it
    return directory


@pytest.fixture(scope="module")
def taught(tiny_model_dir, tmp_path_factory):
    made: dict[tuple[str, str], Path] = {}

    def make(format_name: str, architecture: str = "gpt_neox") -> Path:
        if (format_name, architecture) not in made:
            made[format_name, architecture] = taught_model(tmp_path_factory.mktemp(format_name),
                                                           tiny_model_dir(architecture), format_name)
        return made[format_name, architecture]

    return make


def expected_transcript(exchanges) -> str:
    lines = ["To complete the chat, enter an empty prompt"]
    for question, answer in exchanges:
        lines += [f"Prompter: AUTO {question}", f"Assistant: {answer}"]
    return "\n".join(lines + ["Prompter: AUTO ", ""])


@pytest.mark.parametrize("format_name, architecture", [("oasst", "gpt_neox"), ("plain", "gpt_neox"),
                                                       ("oasst", "llama"), ("plain", "gemma2")])
def test_example_prompts_mode_answers_each_prompt_in_the_trained_format_and_exits_0(taught, format_name,
                                                                                    architecture, capsys,
                                                                                    monkeypatch):
    """Gemma 2 generates through its sliding-window cache and soft-capped attention."""
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")  # else deepspeed (imported by save_pretrained) warns on stdout
    code = run_chat(["--model", str(taught(format_name, architecture)), "--temperature", "0"],
                    environ={"EXAMPLE_PROMPTS": json.dumps([q for q, _ in EXCHANGES])})
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert captured.out == expected_transcript(EXCHANGES)
    assert f"prompt format: {format_name} (from the run's resolved config)" in captured.err


def test_example_prompts_mode_on_openassistants_tokenizer(oa_test_tokenizer, tmp_path, capsys):
    base = save_tiny_model(tmp_path / "base", "gpt_neox", oa_test_tokenizer)
    out = taught_model(tmp_path / "out", base, "oasst")
    code = run_chat(["--model", str(out), "--temperature", "0", "--k", "0"],
                    environ={"EXAMPLE_PROMPTS": json.dumps([EXCHANGES[0][0]])})
    assert code == 0
    assert capsys.readouterr().out == expected_transcript(EXCHANGES[:1])


@pytest.mark.parametrize("format_name", ["oasst", "plain"])
def test_generation_stops_at_the_end_key_which_is_never_printed(taught, format_name):
    loaded = load_for_inference(taught(format_name))
    fmt, _ = chat_format(loaded)
    prompt = encode_prompt(TURNS[:1], fmt, SegmentEncoder(loaded.tokenizer), None).tolist()
    stream = io.StringIO()
    reply = generate_reply(loaded.model, loaded.tokenizer, prompt, SamplingOptions(temperature=0), fmt.end_key,
                           max_new_tokens=40, out=stream)
    assert reply.ended and len(reply.token_ids) < 40
    assert reply.text == EXCHANGES[0][1]
    assert stream.getvalue() == EXCHANGES[0][1] + "\n"
    end_text = loaded.tokenizer.decode(reply.token_ids[-1:])
    assert fmt.end_key in end_text  # the last generated token carries the end key: generation stopped there


def test_temperature_zero_is_deterministic_and_equals_top_k_one(tiny_model_dir, tokenizer):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir("gpt_neox")).eval()
    prompt = tokenizer("<|prompter|>Tell me a joke.<|endoftext|><|assistant|>")["input_ids"]

    def sample(seed: int, **options) -> list[int]:
        torch.manual_seed(seed)
        return generate_reply(model, tokenizer, prompt, SamplingOptions(**options), tokenizer.eos_token,
                              max_new_tokens=12).token_ids

    greedy = sample(1, temperature=0)
    assert len(greedy) == 12
    assert sample(2, temperature=0) == greedy
    assert sample(3, temperature=0, k=0) == greedy
    assert sample(4, temperature=1.0, k=1) == greedy
    assert sample(5, temperature=2.0, k=1) == greedy
    free = sample(6, temperature=1.0, k=0)
    assert sample(6, temperature=1.0, k=0) == free  # the seed makes sampling reproducible
    assert free != greedy  # with top-k off, a random model's flat distribution does not give the argmax path


def test_history_is_truncated_from_the_oldest_exchange(tokenizer):
    fmt = build_format("oasst", tokenizer)
    encoder = SegmentEncoder(tokenizer)
    turns = [*TURNS, Turn(PROMPTER, "And in which book?")]
    system = "Be brief."
    full = encode_prompt(turns, fmt, encoder, system)
    last_two = encode_prompt(turns[2:], fmt, encoder, system)
    last = encode_prompt(turns[4:], fmt, encoder, system)

    ids, dropped = fit_history(turns, fmt, encoder, system, len(full))
    assert dropped == 0 and ids.tolist() == full.tolist()
    ids, dropped = fit_history(turns, fmt, encoder, system, len(full) - 1)
    assert dropped == 2 and ids.tolist() == last_two.tolist()
    ids, dropped = fit_history(turns, fmt, encoder, system, len(last))
    assert dropped == 4 and ids.tolist() == last.tolist()
    assert tokenizer.decode(ids.tolist()) == "<|system|>Be brief.<|endoftext|><|prompter|>And in which book?" \
                                             "<|endoftext|><|assistant|>"
    with pytest.raises(Exception, match=f"the prompt alone is {len(last)} tokens, but only {len(last) - 1} fit"):
        fit_history(turns, fmt, encoder, system, len(last) - 1)


def test_session_drops_the_oldest_exchange_when_the_context_is_full(taught):
    loaded = load_for_inference(taught("oasst"))
    fmt, _ = chat_format(loaded)
    encoder = SegmentEncoder(loaded.tokenizer)
    second = encode_prompt([*TURNS[:3]], fmt, encoder, None)
    loaded.tokenizer.model_max_length = len(second) - 1 + 20  # the whole history does not fit with 20 to spare
    session = ChatSession(loaded, fmt, SamplingOptions(temperature=0, output_length=20), None, io.StringIO())
    assert session.respond(EXCHANGES[0][0]).text == EXCHANGES[0][1]
    session.respond(EXCHANGES[1][0])
    assert [t.text for t in session.history] == [EXCHANGES[1][0], session.history[1].text]
    assert len(session.history) == 2


@pytest.mark.parametrize("mode", ["lora", "qlora"])
def test_adapter_output_loads_base_plus_adapter_unquantized(tiny_model_dir, tokenizer, tmp_path, mode):
    from peft import get_peft_model

    from trainer.lora import lora_config

    base = tiny_model_dir("gpt_neox")
    config = TrainConfig.of(model_name=str(base), mode=mode, lora_dropout=0.0, prompt_format="plain")
    peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(base), lora_config(config.adapters))
    torch.manual_seed(0)
    for name, param in peft_model.named_parameters():
        if "lora_B" in name:  # B starts at zero; make the adapter change the output
            param.data.normal_(0, 0.5)
    out = tmp_path / "out"
    peft_model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    write_resolved(config, out)
    write_marker(out, "final", 0, 1)

    ids = torch.tensor([tokenizer("User: Hi\nAssistant: ")["input_ids"]])
    with torch.no_grad():
        expected = peft_model.eval()(ids).logits
        plain_base = AutoModelForCausalLM.from_pretrained(base)(ids).logits
        merged = load_for_inference(out, device="cpu")
        unmerged = load_for_inference(out, device="cpu", merge=False)
        torch.testing.assert_close(merged.model(ids).logits, expected, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(unmerged.model(ids).logits, expected)
    assert not torch.allclose(expected, plain_base, atol=1e-3)
    assert merged.config.adapters.mode == mode and not any("lora" in n for n, _ in merged.model.named_parameters())
    assert f"model: {mode} adapter {out} on base {base} (torch.float32, merged)" in merged.notes
    assert "Linear4bit" not in repr(merged.model)


def test_export_without_resolved_config_defaults_by_its_tokenizer(tiny_model_dir, tmp_path):
    export = tmp_path / "export"
    shutil.copytree(tiny_model_dir("gpt_neox"), export)
    loaded = load_for_inference(export)
    fmt, how = chat_format(loaded)
    assert loaded.config is None and fmt.name == "oasst"
    assert how == "prompt format: oasst (no resolved_config.yaml, and the tokenizer holds <|prompter|>, " \
                  "<|assistant|>, <|system|>)"
    assert context_length(loaded.model, loaded.tokenizer) == 2048


def test_a_tokenizer_without_chat_tokens_means_plain(reference_data):
    raw = PreTrainedTokenizerFast(tokenizer_file=str(reference_data / "tokenizers/gpt-neox-20b/20B_tokenizer.json"),
                                  eos_token="<|endoftext|>")
    assert detect_format(raw)[0] == "plain"
    assert detect_format(load_tokenizer(str(reference_data / "tokenizers/oa-test")))[0] == "oasst"


def test_bad_values_name_the_option_and_its_range(taught, tmp_path, capsys):
    model = str(taught("oasst"))
    assert run_chat(["--model", model, "--temperature", "-0.5", "--k", "5000", "--output_length", "0"],
                    environ={}) == 2
    err = capsys.readouterr().err
    assert "--temperature must be >= 0 (0 means greedy), got -0.5" in err
    assert "--k must be in 0..1008 (the model's vocab; 0 disables top-k), got 5000" in err
    assert f"--output_length must be in 1..{MAX_LENGTH - 1}" in err
    assert run_chat(["--model", model], environ={"EXAMPLE_PROMPTS": '{"q": 1}'}) == 2
    assert "EXAMPLE_PROMPTS: expected a JSON list of strings" in capsys.readouterr().err
    assert run_chat(["--model", model], environ={"EXAMPLE_PROMPTS": "[oops"}) == 2
    assert "EXAMPLE_PROMPTS: not valid JSON" in capsys.readouterr().err
    assert run_chat(["--model", str(tmp_path)], environ={}) == 2
    assert "holds neither config.json nor adapter_config.json" in capsys.readouterr().err
