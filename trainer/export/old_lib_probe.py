"""Run inside the old-library venv (`scripts/setup_ipu_env.sh`): loads an IPU export exactly as Graphcore's
pipeline does (`GPTNeoXForCausalLM.from_pretrained(path)`, `AutoTokenizer.from_pretrained(path)`, no dtype) and
saves (torch.save) what `trainer.export.verify` compares. Standalone on purpose: it imports nothing from Delphi,
whose code needs today's transformers.

    .venv-ipu/bin/python trainer/export/old_lib_probe.py EXPORT_DIR REQUEST.json RESULT.pt
REQUEST.json: {"prompts": [text, ...], "greedy_tokens": n, "one_token": [text, ...]}
"""
import json
import sys

import tokenizers
import torch
import transformers
from transformers import AutoTokenizer, GPTNeoXForCausalLM


def main(path: str, request_file: str, result_file: str) -> None:
    request = json.load(open(request_file))
    try:
        model, loading = GPTNeoXForCausalLM.from_pretrained(path, output_loading_info=True)
    except Exception as e:  # any failure is reported against the files it read
        sys.exit(f"config.json / pytorch_model*.bin: GPTNeoXForCausalLM.from_pretrained failed: {e}")
    model.eval()
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except Exception as e:
        sys.exit(f"tokenizer.json / tokenizer_config.json: AutoTokenizer.from_pretrained failed: {e}")
    result = {
        "versions": {"transformers": transformers.__version__, "tokenizers": tokenizers.__version__,
                     "torch": str(torch.__version__)},
        "loading_info": {k: sorted(v) for k, v in loading.items()},
        "dtype": str(model.dtype), "tokenizer_class": type(tokenizer).__name__,
        "pad_token_id": tokenizer.pad_token_id, "eos_token_id": tokenizer.eos_token_id,
        "padding_side": tokenizer.padding_side,
        "vocab_size": model.config.vocab_size,
        "rows": {"embed_in": model.gpt_neox.embed_in.weight.shape[0], "embed_out": model.embed_out.weight.shape[0]},
        "one_token": {t: tokenizer.encode(t) for t in request["one_token"]},
        "prompt_ids": [], "logits": [], "greedy": [],
    }
    with torch.no_grad():
        for text in request["prompts"]:
            ids = tokenizer.encode(text)
            seq = torch.tensor([ids])
            result["prompt_ids"].append(ids)
            result["logits"].append(model(input_ids=seq, use_cache=False).logits[0].float())
            greedy = []
            for _ in range(request["greedy_tokens"]):
                greedy.append(int(model(input_ids=seq, use_cache=False).logits[0, -1].argmax()))
                seq = torch.cat([seq, torch.tensor([[greedy[-1]]])], dim=1)
            result["greedy"].append(greedy)
    torch.save(result, result_file)


if __name__ == "__main__":
    main(*sys.argv[1:4])
