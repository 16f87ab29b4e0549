"""Dataset build benchmark: synthetic data at the scale users bring through Delphi's builder, beside the bare
fast tokenizer over the same texts (the floor), each arm in its own process.

    .venv/bin/python benchmarks/data_build.py --case oasst --scale 1 3 10 [--workers 1 2]
    .venv/bin/python benchmarks/data_build.py --case messages --conversations 1000000

Cases: `oasst`, an OASST1-shaped tree export (161,443 messages per scale step, the real export schema: trees of
ranked replies up to 6 deep, OASST-like text lengths) as JSONL; `messages`, chat records (`{"messages": [...]}`,
an optional system turn and 1-3 exchanges) as one Parquet file. The floor is the tokenizer's `encode_batch`
over every message text once, in one process, in slices of 4096 texts so that the floor's own memory does not
hide the build's: `floor` with the tokenizer's own thread pool on (as users run it; it uses every core),
`floor1` on one thread (TOKENIZERS_PARALLELISM=false: one core's work, the bare single-process tokenizer). Each arm prints wall seconds, CPU seconds (the build
counts its worker processes), tokens per CPU-second (the floor's tokens, every message once, for every arm),
and peak memory of the main process and of the largest
worker, with the load average beside them: on a shared machine wall-time speed-ups are only as good as the load.

Targets (issue 17): build <= 0.8x the floor with 2 workers on a 2-core machine; peak at 10x within 10% of 1x and
<= 1.5 GiB; cached rebuild <= 1 s. Uses the real GPT-NeoX-20B tokenizer from DELPHI_REFERENCE_DATA when set.
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
OASST1_MESSAGES = 161_443
SLICE = 4096

SYLLABLES = ["ka", "lo", "mi", "ne", "ru", "ta", "pe", "si", "do", "ga", "ver", "ing", "tion", "al", "er", "an",
             "the", "is", "of", "to", "and", "in", "for", "with", "on", "be", "str", "ex", "pro", "con", "re", "de"]
PUNCTUATION = [". ", ", ", "? ", ".\n", "\n\n", ": ", " "]


class Texts:
    """OASST-like message texts: log-normal lengths, prompts shorter than replies, punctuation and line breaks."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.vocab = ["".join(rng.choice(SYLLABLES) for _ in range(rng.randint(1, 3))) for _ in range(5000)]

    def __call__(self, median_words: float) -> str:
        rng = self.rng
        n = max(2, min(1500, int(rng.lognormvariate(0, 0.9) * median_words)))
        return "".join(rng.choice(self.vocab) + (rng.choice(PUNCTUATION) if rng.random() < 0.12 else " ")
                       for _ in range(n)).strip()


def make_export(path: Path, messages: int, seed: int = 0) -> None:
    """Trees shaped like OASST1's (a prompt, ranked sibling replies, up to 6 deep), one tree per line."""
    rng = random.Random(seed)
    text = Texts(rng)

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
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        while budget[0] > 0:
            root = message("prompter", None, 1, None, budget)
            f.write(json.dumps({"message_tree_id": root["message_id"], "tree_state": "ready_for_export",
                                "prompt": root}) + "\n")
    tmp.rename(path)


def make_chats(path: Path, conversations: int, seed: int = 0) -> None:
    """Chat records with an optional system turn and 1-3 exchanges, written as Parquet row groups."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = random.Random(seed)
    text = Texts(rng)
    tmp = path.with_suffix(".tmp")
    with pq.ParquetWriter(tmp, pa.schema([("messages", pa.list_(pa.struct([("role", pa.string()),
                                                                           ("content", pa.string())])))])) as w:
        for start in range(0, conversations, 10_000):
            batch = []
            for _ in range(min(10_000, conversations - start)):
                turns = [{"role": "system", "content": text(12)}] if rng.random() < 0.3 else []
                for _ in range(rng.choice([1, 1, 2, 3])):
                    turns += [{"role": "user", "content": text(25)}, {"role": "assistant", "content": text(110)}]
                batch.append(turns)
            w.write_table(pa.table({"messages": batch}))
    tmp.rename(path)


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


def message_texts(case: str, path: Path):
    """Every message text once, streamed."""
    if case == "oasst":
        with open(path, encoding="utf-8") as f:
            for line in f:
                stack = [json.loads(line)["prompt"]]
                while stack:
                    m = stack.pop()
                    yield m["text"]
                    stack.extend(m["replies"])
    else:
        import pyarrow.parquet as pq

        for batch in pq.ParquetFile(path).iter_batches(columns=["messages"]):
            for turns in batch.column("messages").to_pylist():
                yield from (t["content"] for t in turns)


def arm(name: str, case: str, path: Path, tokenizer_dir: Path, cache: Path, workers: int) -> dict:
    """Runs in a child process, so that its peak memory is its own."""
    from trainer.tokens import load_tokenizer

    tokenizer = load_tokenizer(str(tokenizer_dir))
    load = os.getloadavg()[0]
    if name.startswith("floor"):
        backend = tokenizer.backend_tokenizer
        seconds = cpu = 0.0
        texts = tokens = 0
        batch: list[str] = []

        def encode() -> None:
            nonlocal seconds, cpu, tokens
            wall0, cpu0 = time.perf_counter(), time.process_time()
            encodings = backend.encode_batch(batch, add_special_tokens=False)
            seconds += time.perf_counter() - wall0
            cpu += time.process_time() - cpu0
            tokens += sum(len(e.ids) for e in encodings)

        for text in message_texts(case, path):
            batch.append(text)
            texts += 1
            if len(batch) == SLICE:
                encode()
                batch = []
        if batch:
            encode()
        extra = {"messages": texts, "tokens": tokens, "cpu": cpu}
    else:
        import datasets

        from trainer.config import load_config
        from trainer.data.build import build_datasets

        datasets.disable_progress_bars()
        kind = "oasst_export" if case == "oasst" else "messages"
        section = WORK / f"bench-{os.getpid()}.yaml"
        section.write_text(json.dumps({"bench": {
            "datasets": [{kind: {"input_file_path": str(path), "val_split": 0.05}}],
            "max_length": 2048, "cache_dir": str(cache), "model_name": str(tokenizer_dir),
            "preprocessing_num_workers": workers}}))
        config = load_config(["--configs", "bench", "--config_file", str(section)])
        section.unlink()
        wall0, cpu0 = time.perf_counter(), time.process_time()
        (built,) = build_datasets(config.data, tokenizer)
        seconds = time.perf_counter() - wall0
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        extra = {"from_cache": built.from_cache, "train": len(built.train), "val": len(built.val),
                 "tokens": built.counts["train_tokens"] + built.counts["validation_tokens"],
                 "cpu": time.process_time() - cpu0 + children.ru_utime + children.ru_stime,
                 "worker_peak_mib": children.ru_maxrss / 1024}
    return {"arm": name, "seconds": seconds, "load": round((load + os.getloadavg()[0]) / 2, 1),
            "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, **extra}


def run_arm(name: str, case: str, size: int, workers: int) -> dict:
    # floor1: the tokenizer on one thread (TOKENIZERS_PARALLELISM=false), one core's worth of work
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"} if name == "floor1" else None
    out = subprocess.run([sys.executable, __file__, "--case", case, "--size", str(size), "--arm", name,
                          "--workers", str(workers)], check=True, capture_output=True, text=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])


def data_path(case: str, size: int) -> Path:
    return WORK / (f"oasst_synth_{size}.jsonl" if case == "oasst" else f"chats_{size}.parquet")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--case", choices=("oasst", "messages"), default="oasst")
    parser.add_argument("--scale", type=float, nargs="+", default=[1.0], help="oasst: multiples of OASST1's size")
    parser.add_argument("--conversations", type=int, default=1_000_000, help="messages: records to build")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--no-floor", action="store_true", help="skip the floor arm (the build arms only)")
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--arm", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.arm:
        cache = WORK / f"cache-{args.case}-{args.size}"
        print(json.dumps(arm(args.arm, args.case, data_path(args.case, args.size), _tokenizer_dir(), cache,
                             args.workers[0])))
        return
    WORK.mkdir(parents=True, exist_ok=True)
    _tokenizer_dir()
    sizes = [round(s * OASST1_MESSAGES) for s in args.scale] if args.case == "oasst" else [args.conversations]
    print(f"{'case':<22}{'arm':<30}{'seconds':>9}{'CPU s':>9}{'tok/CPU-s':>11}{'x floor':>9}{'x floor1':>9}"
          f"{'peak MiB':>10}{'worker MiB':>11}{'load':>6}")
    for size in sizes:
        path = data_path(args.case, size)
        if not path.is_file():
            (make_export if args.case == "oasst" else make_chats)(path, size)
        label = f"{args.case} {size:,}"
        floor = None if args.no_floor else run_arm("floor", args.case, size, 1)
        floor1 = None if args.no_floor else run_arm("floor1", args.case, size, 1)
        rows = [("floor: encode_batch", floor), ("floor1: encode_batch, 1 thread", floor1)] if floor else []
        for workers in args.workers:
            shutil.rmtree(WORK / f"cache-{args.case}-{size}", ignore_errors=True)
            rows.append((f"build, {workers} worker(s)", run_arm("build", args.case, size, workers)))
        rows.append(("cached rebuild", run_arm("build", args.case, size, args.workers[-1])))
        for name, r in rows:
            ratio, ratio1 = (f"{r['seconds'] / f['seconds']:.2f}" if f and not name.startswith("floor") else ""
                             for f in (floor, floor1))
            # Per CPU-second of the same texts: the floor's token count (every message once) for every arm.
            rate = (floor or r)["tokens"] / max(r["cpu"], 1e-9)
            print(f"{label:<22}{name:<30}{r['seconds']:>9.2f}{r['cpu']:>9.1f}{rate:>11,.0f}"
                  f"{ratio:>9}{ratio1:>9}{r['peak_mib']:>10.0f}{r.get('worker_peak_mib', 0):>11.0f}{r['load']:>6}", flush=True)


if __name__ == "__main__":
    main()
