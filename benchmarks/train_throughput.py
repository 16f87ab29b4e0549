"""Training throughput benchmark: Delphi beside what users would run instead, on the same tokenized samples.

    python benchmarks/train_throughput.py [--steps 4] [--repeats 1] [--modes full lora] [--delphi-layout sort]
        [--shape pythia-70m | llama]

Model (`--shape`): the Pythia-70M shape (GPT-NeoX, hidden 512, 6 layers, 8 heads, intermediate 2048, rotary_pct
0.25) with random weights and the real GPT-NeoX-20B tokenizer + the chat tokens (50,288 embedding rows); or a
Llama of the same width and depth (hidden 512, 6 layers, 8 query / 4 key-value heads, SwiGLU 1024, RMSNorm, the
head tied to the embedding) with the real Llama 3.2 tokenizer + the chat tokens (128,272 rows). Data: the OASST
threads of DELPHI_REFERENCE_DATA/oasst/en_100_tree.jsonl through Delphi's own builder (oasst format, max_length
512); every arm trains the same `steps x batch x accumulation` samples (a fixed random pick), fp32, batch 4 x
accumulation 2, the same optimizer (transformers' default: fused AdamW), learning rate and schedule, for the
same number of optimizer steps.

Arms, each in its own process and repeated (the median is reported):
- delphi: `trainer.recipe.run`, what `delphi train` runs (its sampler, collator, trained-positions-only output
  layer); `--delphi-layout` picks sort_by_length ("sort"), packing ("pack") or both ("sort+pack");
- trainer: transformers `Trainer`, `DataCollatorForSeq2Seq` dynamic padding (labels -100 on the prompt);
- trainer-grouped: the same with `train_sampling_strategy="group_by_length"`;
- trl-padding-free: TRL `SFTTrainer(padding_free=True)`, completion-only loss on a completion mask that marks the
  same trained tokens. TRL is imported from TRL_OVERLAY (default /tmp/trl-overlay) when it is not installed.

Trained tokens (label != -100 after the shift, what the loss uses), padding share and step time are counted the
same way for every arm, in `Trainer.training_step`; the first optimizer step is warm-up and not timed. Tokens
per CPU-second (the process's CPU time) is printed beside tokens/s: on a shared machine it moves far less with
other people's load than wall time does. Peak memory is the arm process's ru_maxrss. Target: delphi >= 1.3x the
fastest other arm, peak <= the plain trainer's.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
WORK = REPO / ".cache" / "bench-train"
KEYS = ("tokens_per_s", "tokens_per_cpu_s", "padding", "peak_gib")
ARMS = ("delphi", "trainer", "trainer-grouped", "trl-padding-free")
BATCH, ACCUMULATION, MAX_LENGTH = 4, 2, 512
HYPER = dict(learning_rate=1e-4, adam_beta1=0.9, adam_beta2=0.95, adam_epsilon=1e-12, weight_decay=0.0,
             warmup_steps=0, lr_scheduler_type="linear", max_grad_norm=2.0, num_train_epochs=1, logging_steps=1)
SEED = 1234


def reference_data() -> Path:
    value = os.environ.get("DELPHI_REFERENCE_DATA")
    if not value or not (Path(value) / "oasst/en_100_tree.jsonl").is_file():
        sys.exit("set DELPHI_REFERENCE_DATA to the reference data folder (with oasst/en_100_tree.jsonl)")
    return Path(value)


def shape_tokenizer(shape: str):
    """The shape's real tokenizer, plus the chat tokens."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    from trainer.tokens import add_chat_tokens

    if shape == "llama":
        tokenizer = AutoTokenizer.from_pretrained(reference_data() / "model_tokenizers/llama-3.2-3b-instruct")
    else:
        tokenizer = PreTrainedTokenizerFast(
            tokenizer_file=str(reference_data() / "tokenizers/gpt-neox-20b/20B_tokenizer.json"),
            eos_token="<|endoftext|>", bos_token="<|endoftext|>", unk_token="<|endoftext|>")
    add_chat_tokens(tokenizer)
    return tokenizer


def prepare(shape: str) -> Path:
    """The tokenizer + model directory of the shape, saved once; the tokenized data is cached by Delphi."""
    model_dir = WORK / f"{shape}-shape"
    if (model_dir / "model.safetensors").is_file():
        return model_dir
    import torch
    from transformers import AutoModelForCausalLM

    from trainer.tiny import model_config
    from trainer.tokens import padded_vocab_size

    tokenizer = shape_tokenizer(shape)
    torch.manual_seed(0)
    architecture = "llama" if shape == "llama" else "gpt_neox"
    config = model_config(architecture, padded_vocab_size(tokenizer), hidden=512, layers=6, heads=8)
    config.bos_token_id, config.eos_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    return model_dir


def delphi_config(model_dir: Path, mode: str, layout: str, output_dir: Path, samples: int):
    """`samples` threads, drawn once from the seed (the same draw for every arm: see `drawn_samples`)."""
    from trainer.config import TrainConfig

    # val_split: unused, but an empty split fails to reload from the cache.
    oasst = {"oasst_export": {"input_file_path": str(reference_data() / "oasst/en_100_tree.jsonl"),
                              "val_split": 0.05, "size": samples}}
    return TrainConfig.of(model_name=str(model_dir), dtype="fp32", residual_dropout=0.0, mode=mode,
                          datasets=[oasst], max_length=MAX_LENGTH, cache_dir=str(WORK / "data"),
                          per_device_train_batch_size=BATCH, gradient_accumulation_steps=ACCUMULATION,
                          sort_by_length="sort" in layout, packing="pack" in layout, output_dir=str(output_dir),
                          save_steps=10**6, eval_steps=10**6, report_to="none", log_wandb=False, rng_seed=SEED,
                          **HYPER)


def drawn_samples(config, built):
    """The training samples Delphi's sampler draws for this config: what the baselines train on too."""
    from trainer.data.sampler import PerDatasetSampler

    draw = PerDatasetSampler([built.train["length"]], [config.data.datasets[0].size], seed=config.optim.rng_seed,
                             resample=False)
    return built.train.select(sorted(draw.fixed.tolist()))


class StepClock:
    """Trained / real / processed tokens per `training_step` call and the time at each optimizer step's end."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id
        self.trained = self.real = self.processed = 0
        self.marks: list[tuple[float, float, int, int, int]] = []

    def count(self, inputs) -> None:
        labels = inputs["labels"]
        self.trained += int((labels[..., 1:] != -100).sum())
        self.real += int((inputs["input_ids"] != self.pad_token_id).sum())
        self.processed += labels.numel()

    def mark(self) -> None:
        self.marks.append((time.perf_counter(), time.process_time(), self.trained, self.real, self.processed))

    def result(self) -> dict:
        (t0, c0, tr0, re0, pr0), (t1, c1, tr1, re1, pr1) = self.marks[0], self.marks[-1]
        return {"steps": len(self.marks), "timed_steps": len(self.marks) - 1, "seconds": t1 - t0,
                "trained_tokens": tr1 - tr0, "tokens_per_s": (tr1 - tr0) / (t1 - t0),
                "tokens_per_cpu_s": (tr1 - tr0) / (c1 - c0),
                "padding": 1 - (re1 - re0) / (pr1 - pr0)}


def install_clock(clock: StepClock):
    """Counts every arm's batches at the same place: the Trainer's training_step, which all of them inherit."""
    from transformers import Trainer, TrainerCallback

    inner = Trainer.training_step

    def training_step(self, model, inputs, *args, **kwargs):
        clock.count(inputs)
        return inner(self, model, inputs, *args, **kwargs)

    Trainer.training_step = training_step

    class Mark(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            clock.mark()

    return Mark()


def run_arm(arm: str, mode: str, steps: int, layout: str, shape: str) -> dict:
    """One arm in this process: load, train `steps` optimizer steps, report the clock and the peak memory."""
    import datasets
    import torch

    from trainer.data.build import build_datasets
    from trainer.tokens import load_tokenizer

    datasets.disable_progress_bars()
    torch.manual_seed(SEED)
    model_dir = prepare(shape)
    output_dir = WORK / "runs" / f"{shape}-{arm}-{mode}"
    shutil.rmtree(output_dir, ignore_errors=True)  # train() would resume from an earlier run's checkpoint
    config = delphi_config(model_dir, mode, layout, output_dir, steps * BATCH * ACCUMULATION)
    tokenizer = load_tokenizer(str(model_dir), MAX_LENGTH)
    clock = StepClock(tokenizer.pad_token_id)
    mark = install_clock(clock)
    if arm == "delphi":
        from trainer.recipe import run

        run(config, callbacks=[mark])
    else:
        (built,) = build_datasets(config.data, tokenizer)
        train_baseline(arm, config, tokenizer, drawn_samples(config, built), mark)
    return {"arm": arm, "mode": mode, **clock.result(),
            "peak_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def train_baseline(arm: str, config, tokenizer, samples, mark) -> None:
    from transformers import AutoModelForCausalLM, DataCollatorForSeq2Seq, Trainer, TrainingArguments

    from trainer.lora import lora_config

    model = AutoModelForCausalLM.from_pretrained(config.model.model_name, attn_implementation="sdpa",
                                                 dtype="float32")
    model.config.use_cache = False
    if config.adapters.mode == "lora":
        from peft import get_peft_model

        model = get_peft_model(model, lora_config(config.adapters))
    common = dict(output_dir=config.outputs.output_dir, per_device_train_batch_size=BATCH,
                  gradient_accumulation_steps=ACCUMULATION, seed=SEED, save_strategy="no", report_to="none",
                  use_cpu=True, bf16=False, fp16=False, gradient_checkpointing=False,
                  disable_tqdm=True, **HYPER)
    if arm == "trl-padding-free":
        from trl import SFTConfig, SFTTrainer

        data = samples.map(lambda s: {"completion_mask": [int(x != -100) for x in s["labels"]]},
                           remove_columns=["labels", "length", "trained"])
        args = SFTConfig(**common, padding_free=True, max_length=None, completion_only_loss=True)
        trainer = SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer,
                             callbacks=[mark])
    else:
        data = samples.remove_columns(["length", "trained"])
        strategy = "group_by_length" if arm == "trainer-grouped" else "random"
        args = TrainingArguments(**common, train_sampling_strategy=strategy)
        collator = DataCollatorForSeq2Seq(tokenizer, padding=True, pad_to_multiple_of=8, label_pad_token_id=-100)
        trainer = Trainer(model=model, args=args, train_dataset=data, processing_class=tokenizer,
                          data_collator=collator, callbacks=[mark])
    trainer.train()


def child_env(arm: str) -> dict[str, str]:
    env = dict(os.environ)
    if arm.startswith("trl"):
        overlay = os.environ.get("TRL_OVERLAY", "/tmp/trl-overlay")
        env["PYTHONPATH"] = os.pathsep.join(p for p in (overlay, env.get("PYTHONPATH")) if p)
    return env


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=4, help="optimizer steps per run (the first is warm-up)")
    parser.add_argument("--repeats", type=int, default=1, help="3 for the median of 3 (about 25 min here)")
    parser.add_argument("--modes", nargs="+", default=["full", "lora"], choices=["full", "lora"])
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    parser.add_argument("--delphi-layout", default="sort+pack", choices=["sort", "pack", "sort+pack"])
    parser.add_argument("--shape", default="pythia-70m", choices=["pythia-70m", "llama"])
    parser.add_argument("--arm", help=argparse.SUPPRESS)
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.arm:
        print(json.dumps(run_arm(args.arm, args.mode, args.steps, args.delphi_layout, args.shape)))
        return
    reference_data()
    WORK.mkdir(parents=True, exist_ok=True)
    prepare(args.shape)
    results: dict[tuple[str, str], list[dict]] = {}
    for repeat in range(args.repeats):  # interleaved, so a noisy minute hits every arm alike
        for mode in args.modes:
            for arm in args.arms:
                command = [sys.executable, __file__, "--arm", arm, "--mode", mode, "--steps", str(args.steps),
                           "--delphi-layout", args.delphi_layout, "--shape", args.shape]
                done = subprocess.run(command, capture_output=True, text=True, env=child_env(arm))
                if done.returncode != 0:
                    print(f"{arm} {mode} failed:\n{done.stderr[-3000:]}", file=sys.stderr)
                    continue
                r = json.loads(done.stdout.strip().splitlines()[-1])
                results.setdefault((mode, arm), []).append(r)
                print(f"  run {repeat + 1} {mode:<5} {arm:<17} {r['tokens_per_s']:8.1f} tok/s  "
                      f"{r['peak_gib']:.2f} GiB", file=sys.stderr, flush=True)
    report(results, args)


def report(results: dict[tuple[str, str], list[dict]], args) -> None:
    model = ("Llama shape (512x6, GQA 8/4, tied, 128,272 vocab" if args.shape == "llama"
             else "Pythia-70M shape (GPT-NeoX 512x6, 50,288 vocab")
    print(f"{model}, random weights), OASST threads at max_length "
          f"{MAX_LENGTH}, fp32, batch {BATCH} x accum {ACCUMULATION}, {args.steps} optimizer steps (first untimed), "
          f"median of {args.repeats}; delphi layout: {args.delphi_layout}; {os.cpu_count()} CPUs, "
          f"torch threads {os.environ.get('OMP_NUM_THREADS', 'default')}, load average "
          f"{os.getloadavg()[0]:.1f}")
    print("| mode | arm | trained tokens/s | x fastest baseline | tokens/CPU-s | x fastest baseline | padding | "
          "peak GiB | runs (tok/s) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for mode in args.modes:
        med = {arm: {k: statistics.median(r[k] for r in runs) for k in KEYS}
               for (m, arm), runs in results.items() if m == mode}
        fastest = max((med[a]["tokens_per_s"] for a in med if a != "delphi"), default=float("nan"))
        fastest_cpu = max((med[a]["tokens_per_cpu_s"] for a in med if a != "delphi"), default=float("nan"))
        for arm in ARMS:
            if arm not in med:
                continue
            m = med[arm]
            runs = ", ".join(f"{r['tokens_per_s']:.0f}" for r in results[(mode, arm)])
            print(f"| {mode} | {arm} | {m['tokens_per_s']:.0f} | {m['tokens_per_s'] / fastest:.2f}x | "
                  f"{m['tokens_per_cpu_s']:.0f} | {m['tokens_per_cpu_s'] / fastest_cpu:.2f}x | {m['padding']:.1%} | "
                  f"{m['peak_gib']:.2f} | {runs} |")
        if "delphi" in med and "trainer" in med:
            d = med["delphi"]
            print(f"{mode}: delphi / fastest baseline = {d['tokens_per_s'] / fastest:.2f}x wall, "
                  f"{d['tokens_per_cpu_s'] / fastest_cpu:.2f}x CPU time (target >= 1.3x); "
                  f"peak {d['peak_gib']:.2f} vs plain trainer {med['trainer']['peak_gib']:.2f} GiB (target <=)")


if __name__ == "__main__":
    main()
