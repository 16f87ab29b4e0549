"""The data report: what a user checks before spending GPU hours on a config."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from trainer.config import TrainConfig
from trainer.data.build import BuiltDataset
from trainer.data.collate import DataCollator, training_collator
from trainer.data.parity import parity_line
from trainer.data.sampler import PerDatasetSampler, TokenBudgetBatchSampler
from trainer.disk_space import writing
from trainer.tokens import IGNORE_INDEX

PERCENTILES = (50, 90, 95, 99, 100)
TRAINED_OPEN, TRAINED_CLOSE = "⟦", "⟧"


def dataset_figures(built: BuiltDataset, config: TrainConfig, collator: DataCollator | None = None) -> dict:
    """Counts after each step, token-length percentiles, truncation, padding and trained-token shares.

    Padding is measured on the batches training would make: the sampler's epoch-0 order (length-grouped with
    `sort_by_length`) through the collator (packed rows with `packing`)."""
    lengths = np.asarray(built.train["length"], dtype=np.int64)
    trained = np.asarray(built.train["trained"], dtype=np.int64)
    n = len(lengths)
    counts = built.counts
    collator = collator or training_collator(config.data, pad_token_id=0)
    return {
        "counts": counts,
        "train_samples": n,
        "val_samples": len(built.val),
        "length_percentiles": {f"p{p}": histogram_percentile(built.length_histogram["train"], p)
                               for p in PERCENTILES},
        "truncated_fraction": counts.get("train_truncated", 0) / max(n, 1),
        "padding_fraction": padding_fraction(lengths, config, collator),
        "tokens": int(lengths.sum()),
        "trained_tokens": int(trained.sum()),
        "trained_share": float(trained.sum() / max(lengths.sum(), 1)),
        "from_cache": built.from_cache,
        "seconds": round(built.seconds, 3),
        "skipped_lines": built.skipped[:20],
        "parity": built.parity,
    }


def histogram_percentile(histogram: list[list[int]], p: float) -> int:
    """`int(np.percentile(lengths, p))` (linear interpolation) from [length, count] pairs in length order: the
    build gathers lengths as a histogram, bounded by max_length, however many samples there are. 0 when empty."""
    if not histogram:
        return 0
    values = np.array([length for length, _ in histogram], dtype=np.float64)
    ends = np.cumsum([count for _, count in histogram])
    position = (int(ends[-1]) - 1) * np.true_divide(p, 100)
    below = np.floor(position)
    gamma = position - below

    def order_statistic(k: float) -> float:
        return values[np.searchsorted(ends, min(k, ends[-1] - 1), side="right")]

    a, b = order_statistic(below), order_statistic(below + 1)
    # numpy's lerp, including its form for gamma >= 0.5, so that the result is the same float
    return int(b - (b - a) * (1 - gamma) if gamma >= 0.5 else a + (b - a) * gamma)


def padding_fraction(lengths: np.ndarray, config: TrainConfig, collator: DataCollator) -> float:
    """Share of the token slots in the training batches of one epoch that are padding."""
    if len(lengths) == 0:
        return 0.0
    data, optim = config.data, config.optim
    if data.padding_free:
        budget = data.token_budget(optim.per_device_train_batch_size)
        batches = TokenBudgetBatchSampler([lengths], [len(lengths)], max_tokens=budget, seed=optim.rng_seed,
                                          resample=False).epoch_batches()
    else:
        size = optim.per_device_train_batch_size
        order = PerDatasetSampler([lengths], [len(lengths)], seed=optim.rng_seed, batch_size=size, resample=False,
                                  sort_by_length=data.sort_by_length).epoch_order()[:len(lengths)]
        batches = [order[i:i + size] for i in range(0, len(order), size)]
    slots = sum(collator.padded_size(lengths[batch].tolist()) for batch in batches)
    return 1.0 - float(lengths.sum()) / slots


def render_marked(tokenizer, input_ids, labels) -> str:
    """The sample's text with every trained span between ⟦ and ⟧."""
    ids = np.asarray(input_ids)
    trained = np.asarray(labels) != IGNORE_INDEX
    pieces, start = [], 0
    for i in range(1, len(ids) + 1):
        if i == len(ids) or trained[i] != trained[start]:
            text = tokenizer.decode(ids[start:i].tolist(), skip_special_tokens=False)
            pieces.append(f"{TRAINED_OPEN}{text}{TRAINED_CLOSE}" if trained[start] else text)
            start = i
    return "".join(pieces)


def format_report(built: list[BuiltDataset], figures: list[dict], tokenizer, examples: int) -> str:
    lines = []
    for b, f in zip(built, figures):
        source = "cache" if f["from_cache"] else "built"
        lines.append(f"== {b.name} ({source} in {f['seconds']:.2f} s, {b.cache_path})")
        for key, value in f["counts"].items():
            lines.append(f"  {key:<40} {value:>10,}")
        pct = "  ".join(f"{k}={v}" for k, v in f["length_percentiles"].items())
        lines.append(f"  train tokens per sample: {pct}")
        lines.append(f"  truncated {f['truncated_fraction']:.1%}  padding {f['padding_fraction']:.1%}  "
                     f"trained-token share {f['trained_share']:.1%} ({f['trained_tokens']:,} of {f['tokens']:,})")
        if b.parity:
            lines.append(f"  {parity_line(b.parity)}")
        if f["skipped_lines"]:
            lines.append(f"  skipped bad lines: {', '.join(f['skipped_lines'])}")
        for i in range(min(examples, len(b.train))):
            row = b.train[i]
            lines.append(f"  -- example {i} ({row['length']} tokens, {row['trained']} trained "
                         f"{TRAINED_OPEN}like this{TRAINED_CLOSE}):")
            lines.append("     " + render_marked(tokenizer, row["input_ids"], row["labels"]).replace("\n", "\n     "))
    return "\n".join(lines)


def write_dump(path: Path | str, built: list[BuiltDataset], tokenizer) -> int:
    """Every processed sample as one JSON line, for auditing what the model will be trained on. Written beside
    `path` under a temporary name and renamed, so that the dump is whole or absent (a full disk included)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    written = 0
    with writing(f"the dump {path.name}", path.parent, "nothing else was changed; free space and run it again",
                 partial=lambda: tmp.unlink(missing_ok=True)):
        with open(tmp, "w", encoding="utf-8") as f:
            for b in built:
                for split, data in (("train", b.train), ("validation", b.val)):
                    for row in data:
                        f.write(json.dumps({
                            "dataset": b.name, "split": split,
                            "text": tokenizer.decode(row["input_ids"], skip_special_tokens=False),
                            "input_ids": row["input_ids"], "labels": row["labels"]}, ensure_ascii=False) + "\n")
                        written += 1
        tmp.replace(path)
    return written


def dataset_stats(built: list[BuiltDataset], draws: list[int], resample: bool) -> str:
    """OASST's `show_dataset_stats` (and `verbose`) print: training sizes and shares, evaluation sizes and shares,
    then what the sampler draws from each dataset per epoch."""
    train_total = sum(len(b.train) for b in built)
    eval_total = sum(len(b.val) for b in built)
    rule = "-" * 80
    lines = ["Training dataset sizes (before sampling):"]
    lines += [f"{b.name}: {len(b.train):,} ({len(b.train) / max(train_total, 1):.2%})" for b in built]
    lines += [f"Total train: {train_total:,}", rule, "Evaluation set sizes:"]
    lines += [f"{b.name}: {len(b.val):,} ({len(b.val) / max(eval_total, 1):.2%})" for b in built]
    lines += [f"Total eval: {eval_total:,}", rule,
              f"Sampler draws per epoch ({'drawn anew every epoch' if resample else 'drawn once'}):"]
    lines += [f"{b.name}: {n:,} of {len(b.train):,} (fraction {n / max(len(b.train), 1):.2f})"
              for b, n in zip(built, draws)]
    lines.append(f"Total per epoch: {sum(draws):,}")
    return "\n".join(lines)
