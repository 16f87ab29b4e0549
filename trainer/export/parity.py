"""The train<->serve parity check at export, read back from the written files and kept as `parity.json` in the
export.

Every export: the chat template, the special tokens and the added tokens of the written tokenizer are the ones
the run was trained with; `generation_config.json`'s `eos_token_id` holds the format's end key (when it is one
token); a pad token exists. With the model's own chat template (`prompt_format: chat_template`) also: the pad token
is neither the eos nor the end-of-turn token, and for probe conversations (several turns, with and without a
system prompt where the template takes one) the written tokenizer's `apply_chat_template` gives exactly the ids
training gave, and its `apply_chat_template(add_generation_prompt=True)` is the prefix each reply was trained to
continue (`trainer.data.parity`). A failure is one line naming the file and what differs.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from trainer.data.conversation import ASSISTANT, PROMPTER, Conversation, Turn
from trainer.errors import DataError, RunError

PARITY_FILE = "parity.json"
PROBE_TURNS = (Turn(PROMPTER, "What is the capital of France?"), Turn(ASSISTANT, "Paris."),
               Turn(PROMPTER, "And of Italy?"), Turn(ASSISTANT, "Rome, since 1871."))
PROBE_SYSTEM = "You answer in one line."


def eos_ids(generation: dict[str, Any]) -> list[int]:
    value = generation.get("eos_token_id")
    return value if isinstance(value, list) else [] if value is None else [value]


def stop_ids(model_dir: Path | str | None) -> list[int]:
    """The eos ids of a local model directory's own generation_config.json (none for hub names or without one)."""
    path = Path(model_dir) / "generation_config.json" if model_dir else None
    return eos_ids(json.loads(path.read_text())) if path is not None and path.is_file() else []


def add_stops(model, tokenizer, fmt, base_stops: list[int]) -> None:
    """The generation config stops at the tokenizer's eos, the format's end key (one token) and every stop id the
    base model's own generation config had (`base_stops`: Llama 3's `<|end_of_text|>` and `<|eom_id|>`, Qwen's
    `<|endoftext|>`): a model trained on its own template keeps what its servers stop at."""
    end = tokenizer.encode(fmt.end_key, add_special_tokens=False)
    stops = [*base_stops, tokenizer.eos_token_id, *(end if len(end) == 1 else [])]
    model.generation_config.eos_token_id = list(dict.fromkeys(stops))


def check_export(out: Path, fmt, trained_tokenizer, trust_remote_code: bool = False) -> dict[str, Any]:
    """Read the export back, check it (RunError naming the file at the first problem), write parity.json."""
    from transformers import AutoTokenizer

    written = AutoTokenizer.from_pretrained(out, trust_remote_code=trust_remote_code)
    generation_file = out / "generation_config.json"
    stops = eos_ids(json.loads(generation_file.read_text())) if generation_file.is_file() else []
    end = written.encode(fmt.end_key, add_special_tokens=False)
    end_ids = end if len(end) == 1 else []
    problems = []
    if written.chat_template != fmt.chat_template():
        problems.append("the chat template (chat_template.jinja) differs from the one trained with")
    if written.special_tokens_map != trained_tokenizer.special_tokens_map:
        problems.append(f"special_tokens_map.json: {written.special_tokens_map} differ from the trained "
                        f"{trained_tokenizer.special_tokens_map}")
    added = {i: (t.content, t.special) for i, t in written.added_tokens_decoder.items()}
    trained_added = {i: (t.content, t.special) for i, t in trained_tokenizer.added_tokens_decoder.items()}
    if added != trained_added:
        first = next(i for i in sorted(set(added) | set(trained_added)) if added.get(i) != trained_added.get(i))
        problems.append(f"tokenizer_config.json: added token {first} is {added.get(first)}, trained with "
                        f"{trained_added.get(first)}")
    missing = [i for i in end_ids if i not in stops]
    if missing and generation_file.is_file():
        problems.append(f"generation_config.json: eos_token_id {stops} lacks the end-of-turn token "
                        f"{fmt.end_key!r} (id {missing[0]})")
    if written.pad_token_id is None:
        problems.append("tokenizer_config.json: no pad token")
    own_template = not fmt.adds_chat_tokens
    if own_template and written.pad_token_id in {written.eos_token_id, *end_ids}:
        problems.append(f"tokenizer_config.json: the pad token {written.pad_token!r} is an end token")
    probes = probe_checks(fmt, written) if own_template and not problems else []
    if problems:
        raise RunError(f"parity: {out}: {problems[0]}")
    record = {
        "prompt_format": fmt.name,
        "chat_template_unchanged": True, "special_tokens_unchanged": True, "added_tokens_unchanged": True,
        "eos_token_id": stops, "end_of_turn_token": fmt.end_key, "end_of_turn_ids": end_ids,
        "pad_token": written.pad_token, "pad_token_id": written.pad_token_id,
        "probe_conversations": probes,
        "result": "ok",
    }
    (out / PARITY_FILE).write_text(json.dumps(record, indent=1) + "\n")
    return record


def probe_checks(fmt, written) -> list[str]:
    """Probe conversations encoded as training encoded them, checked against the written tokenizer's template;
    what was checked, one line each (a template refusing a system prompt is said, not failed)."""
    from trainer.data.parity import DataParity
    from trainer.data.tokenize import SegmentEncoder, encode
    from trainer.formats.own_template import ChatTemplateFormat

    served = DataParity(ChatTemplateFormat(written, fmt.system), label_masking=True, seed=0)
    encoder = SegmentEncoder(fmt.tokenizer)
    done = []
    for system in (None, PROBE_SYSTEM):
        conv = Conversation(PROBE_TURNS, "export", f"probe conversation (system {system!r})", system=system)
        try:
            sample = encode(conv, fmt, encoder, 1 << 30, True)
        except DataError as e:
            done.append(f"{conv.origin}: not checked, the template refuses it: {str(e).split(': ')[-1]}")
            continue
        try:
            served.check("probe", [sample], {id(conv)}, 1)
        except DataError as e:
            raise RunError(f"parity: the exported tokenizer: {e}") from None
        done.append(f"{conv.origin}: {len(sample.input_ids)} ids == apply_chat_template; each reply right after "
                    f"apply_chat_template(add_generation_prompt=True); end-of-turn token trained")
    return done


def parity_export_line(record: dict[str, Any]) -> str:
    probes = f"; {len(record['probe_conversations'])} probe conversation(s) render as trained" \
        if record["probe_conversations"] else ""
    return (f"parity: chat template, special and added tokens unchanged; eos_token_id {record['eos_token_id']} "
            f"holds {record['end_of_turn_token']!r}; pad {record['pad_token']!r}{probes}: {record['result']}")
