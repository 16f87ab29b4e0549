"""Dataset build benchmark: an OASST1-sized export (161,443 messages in trees) through Delphi's builder, beside the
bare fast tokenizer's `encode_batch` over the same messages (the floor), each arm in its own process.

    .venv/bin/python benchmarks/data_build.py [--messages 161443]

Prints messages/s, the ratio of build + tokenize to the floor (target <= 1.25), the cached rebuild time (target
<= 3 s) and each arm's peak memory (target <= 2 GiB). Uses the real GPT-NeoX-20B tokenizer from
DELPHI_REFERENCE_DATA when set, else a tokenizer trained on the bundled data.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
WORK = REPO / ".cache" / "bench-data"

SYLLABLES = ["ka", "lo", "mi", "ne", "ru", "ta", "pe", "si", "do", "ga", "ver", "ing", "tion", "al", "er", "an",
             "the", "is", "of", "to", "and", "in", "for", "with", "on", "be", "str", "ex", "pro", "con", "re", "de"]


def _words(rng: random.Random, n: int) -> list[str]:
    return ["".join(rng.choice(SYLLABLES) for _ in range(rng.randint(1, 3))) for _ in range(n)]


def make_export(path: Path, messages: int, seed: int = 0) -> None:
    """Trees shaped like OASST1's (a prompt, ranked sibling replies, up to 6 deep) with OASST-like text lengths:
    log-normal, prompts shorter than replies, sentences with punctuation and line breaks."""
    rng = random.Random(seed)
    vocab = _words(rng, 5000)
    punctuation = [". ", ", ", "? ", ".\n", "\n\n", ": ", " "]

    def text(median_words: float) -> str:
        n = max(2, min(1500, int(rng.lognormvariate(0, 0.9) * median_words)))
        return "".join(rng.choice(vocab) + (rng.choice(punctuation) if rng.random() < 0.12 else " ")
                       for _ in range(n)).strip()

    def message(role: str, parent: str | None, depth: int, rank: int | None, budget: list[int]) -> dict:
        budget[0] -= 1
        m = {"message_id": str(uuid.UUID(int=rng.getrandbits(128))), "parent_id": parent,
             "text": text(25 if role == "prompter" else 110), "role": role, "lang": "en", "review_count": 3,
             "review_result": True, "deleted": False, "synthetic": False, "rank": rank, "replies": []}
        if depth < 6 and budget[0] > 0:
            child = "assistant" if role == "prompter" else "prompter"
            k = rng.choice([1, 2, 3, 3]) if role == "prompter" else rng.choice([0, 1, 1, 2])
            for r in range(min(k, budget[0])):
                m["replies"].append(message(child, m["message_id"], depth + 1, r if k > 1 else None, budget))
        return m

    budget = [messages]
    with open(path, "w", encoding="utf-8") as f:
        while budget[0] > 0:
            root = message("prompter", None, 1, None, budget)
            f.write(json.dumps({"message_tree_id": root["message_id"], "tree_state": "ready_for_export",
                                "prompt": root}) + "\n")


def _tokenizer_dir() -> Path:
    out = WORK / "tokenizer"
    if (out / "tokenizer_config.json").is_file():
        return out
    reference = os.environ.get("DELPHI_REFERENCE_DATA")
    if reference and (Path(reference) / "tokenizers/gpt-neox-20b/20B_tokenizer.json").is_file():
        from transformers import PreTrainedTokenizerFast

        tok = PreTrainedTokenizerFast(tokenizer_file=f"{reference}/tokenizers/gpt-neox-20b/20B_tokenizer.json",
                                      eos_token="<|endoftext|>", bos_token="<|endoftext|>",
                                      unk_token="<|endoftext|>")
    else:
        from trainer.tiny import train_tokenizer

        tok = train_tokenizer(line for p in sorted((REPO / "data").rglob("*.json*"))
                              for line in p.read_text(encoding="utf-8").splitlines())
    tok.save_pretrained(out)
    return out


def arm(name: str, export: Path, tokenizer_dir: Path, cache: Path) -> dict:
    """Runs in a child process, so that its peak memory is its own."""
    from trainer.tokens import load_tokenizer

    tokenizer = load_tokenizer(str(tokenizer_dir))
    if name == "floor":
        texts = []
        with open(export, encoding="utf-8") as f:
            for line in f:
                stack = [json.loads(line)["prompt"]]
                while stack:
                    m = stack.pop()
                    texts.append(m["text"])
                    stack.extend(m["replies"])
        start = time.perf_counter()
        tokenizer.backend_tokenizer.encode_batch(texts, add_special_tokens=False)
        seconds, extra = time.perf_counter() - start, {"messages": len(texts)}
    else:
        import datasets

        from trainer.config import load_config
        from trainer.data.build import build_datasets

        datasets.disable_progress_bars()
        section = WORK / "bench.yaml"
        section.write_text(json.dumps({"bench": {
            "datasets": [{"oasst_export": {"input_file_path": str(export), "val_split": 0.05}}],
            "max_length": 2048, "cache_dir": str(cache), "model_name": str(tokenizer_dir)}}))
        config = load_config(["--configs", "bench", "--config_file", str(section)])
        start = time.perf_counter()
        (built,) = build_datasets(config.data, tokenizer)
        seconds = time.perf_counter() - start
        extra = {"from_cache": built.from_cache, "train": len(built.train), "val": len(built.val),
                 "tokens": int(sum(built.train["length"]))}
    return {"arm": name, "seconds": seconds, "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            **extra}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=161_443)
    parser.add_argument("--arm", help=argparse.SUPPRESS)
    args = parser.parse_args()
    export, cache = WORK / f"oasst_synth_{args.messages}.jsonl", WORK / "cache"
    if args.arm:
        print(json.dumps(arm(args.arm, export, _tokenizer_dir(), cache)))
        return
    WORK.mkdir(parents=True, exist_ok=True)
    if not export.is_file():
        make_export(export, args.messages)
    _tokenizer_dir()
    shutil.rmtree(cache, ignore_errors=True)
    results = {}
    for name in ("floor", "build", "cached"):
        out = subprocess.run([sys.executable, __file__, "--messages", str(args.messages), "--arm", name],
                             check=True, capture_output=True, text=True).stdout
        results[name] = json.loads(out.strip().splitlines()[-1])
    floor, build, cached = results["floor"], results["build"], results["cached"]
    n = floor["messages"]
    print(f"export: {n:,} messages, {export.stat().st_size / 2**20:.0f} MiB; {build['train']:,} train + "
          f"{build['val']:,} val threads, {build['tokens']:,} train tokens")
    print(f"{'arm':<34}{'seconds':>9}{'messages/s':>12}{'peak MiB':>10}")
    for label, r in (("floor: encode_batch", floor), ("delphi: build + tokenize", build),
                     ("delphi: cached rebuild", cached)):
        print(f"{label:<34}{r['seconds']:>9.2f}{n / r['seconds']:>12,.0f}{r['peak_mib']:>10.0f}")
    print(f"build / floor = {build['seconds'] / floor['seconds']:.2f}x (target <= 1.25x); cached rebuild "
          f"{cached['seconds']:.2f} s (target <= 3 s, from cache: {cached['from_cache']}); peak "
          f"{max(build['peak_mib'], cached['peak_mib']):.0f} MiB (target <= 2048)")


if __name__ == "__main__":
    main()
