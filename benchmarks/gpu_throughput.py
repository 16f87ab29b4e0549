"""GPU training throughput (issues 9, 15): Delphi beside the length-grouped HF Trainer and TRL's padding-free
SFTTrainer, on Pythia-410M / 1.4B, Llama-3.2-1B and Qwen2.5-0.5B shapes, full / LoRA / QLoRA, bf16, max_length
2048, in one device call.

    python benchmarks/gpu_throughput.py --tokenizer 20B_tokenizer.json --oasst en_100_tree.jsonl [--tiny]
        [--shapes 1.4b 410m llama-1b qwen-0.5b] [--llama-tokenizer DIR] [--qwen-tokenizer DIR]
        [--modes full lora qlora] [--arms ...] [--work DIR] [--out DIR] [--deadline 430]

Models, random weights: GPT-NeoX with Pythia's shape (410M: hidden 1024, 1.4B: hidden 2048; 24 layers, 16 heads,
rotary_pct 0.25, untied head) and the GPT-NeoX-20B tokenizer + the chat tokens (50,288 rows); Llama with
Llama-3.2-1B's shape (hidden 2048, 16 layers, 32 query / 8 key-value heads, SwiGLU 8192, tied head) and its real
tokenizer (`--llama-tokenizer`: ../shared/data/model_tokenizers/llama-3.2-3b-instruct, 128,272 rows); Qwen2 with
Qwen2.5-0.5B's shape (hidden 896, 24 layers, 14 / 2 heads, SwiGLU 4864, q/k/v biases, tied head) and its real
tokenizer (`--qwen-tokenizer`: .../qwen2.5-0.5b-instruct, 151,680 rows). `--tiny` shrinks every shape to hidden 64
x 2 layers, for trying the script on a CPU. Data: the OASST threads of `--oasst` through Delphi's builder
(max_length 2048), in the oasst format for GPT-NeoX and in the model's own chat template (`prompt_format:
chat_template`: the ids are `apply_chat_template`'s, the assistant turns and their end-of-turn token trained) for
Llama and Qwen; every arm trains the same `--samples` threads (a fixed pick, repeated when there are
fewer), one epoch, accumulation 1, the same optimizer (Delphi's choice: fused AdamW, paged AdamW for QLoRA on CUDA),
learning rate and schedule, no activation checkpointing. Full: fp32 master weights + bf16 autocast; LoRA: bf16
base; QLoRA: NF4 base, bf16 compute; LoRA r16 / alpha 32 on all linear layers (Delphi's `lora_config` for all).

Arms, each in its own process, under a timeout:
- delphi: `trainer.recipe.run`, what `delphi train` runs, with sort_by_length + packing, batch `--batch`
  (flash-attention 2 where installed, else sdpa), the chunked loss, no per-step host syncs;
- delphi-padding-free: the same with `padding_free: true`: token-budget micro-batches (`--batch` x max_length
  tokens), one packed row each under a varlen kernel (flash-attention 2 where installed, else torch's own
  `delphi_varlen`); `--compile` adds `compile: true` (untried on a GPU);
- trainer-grouped: `Trainer` + `DataCollatorForSeq2Seq` + `train_sampling_strategy="group_by_length"`;
- trl-padding-free: `SFTTrainer(padding_free=True)` on the same tokens: completion-only loss (a `completion_mask`)
  for GPT-NeoX; assistant-only loss (TRL's `assistant_masks`, which it always applies) on the template for Llama
  and Qwen. TRL's own template masking (`assistant_only_loss`) needs `{% generation %}` markers, which TRL 1.16
  adds to Qwen2.5's template but has none for Llama 3.2's, so both take the masks of Delphi's rendering, which
  its parity check holds equal to the template's;
- scaling out (issue 20), the delphi arm with one change each, on every GPU of the machine (`torchrun
  --nproc_per_node` the device count; one GPU reaches the same code paths with one rank): delphi-8bit
  (`optim: adamw_8bit`, QLoRA `paged_adamw_8bit`; LoRA and QLoRA), delphi-fsdp (`fsdp: full_shard`; QLoRA across
  ranks: 4-bit weights stored in bf16, and full), delphi-zero3 (`configs/zero3.json` with torch's AdamW, as
  DeepSpeed's fused one is compiled on first use; QLoRA and full; needs deepspeed on the device: build its wheel
  here with `pip wheel --no-deps deepspeed==0.19.8 -w .whl`).
  Every delphi arm also records the memory plan's per-rank total beside the measured peak (`plan GiB`).

Measured the same way for all: tokens are counted on the CPU side of each arm's collator (no device sync), time
runs from the end of optimizer step `--warmup` to the end of the last step, with a device synchronize at both
ends; the process then exits before any save. Trained tokens/s (labels != -100 after the shift); MFU = 6·N·tok/s
(full) or 4·N·tok/s (LoRA, QLoRA: no weight gradients) over 989 TFLOP/s for an H100/H200 (bf16 dense; any other
device: MFU 0), N = non-embedding parameters + head (attention score FLOPs not counted); padding = 1 - real /
processed positions; peak = torch.cuda.max_memory_allocated (CPU: peak RSS).

One device call (prepare once here, from the repository root; `.whl` + `.bench` are ~64 MB of the 64 MiB a call
may carry: transformers 5.24.0 13.5 MB, bitsandbytes 0.50.2 43.1 MB, trl 1.16.0 0.95 MB, peft 0.21.2 0.84 MB,
regex 2026.11.19 0.81 MB, datasets 5.2.0 0.61 MB, multiprocess 0.70.19 0.15 MB, dill 0.4.1 0.12 MB, the tokenizer
2.5 MB, the OASST trees 1.0 MB; leave bitsandbytes out and pass `--modes full lora` when QLoRA is not wanted, as
the Llama and Qwen shapes must: their tokenizers add 13 MB, and `--shapes llama-1b qwen-0.5b --modes full lora`
is the call for them):

    printf '/.whl/\\n/.bench/\\n' >> "$(git rev-parse --git-path info/exclude)"; mkdir -p .bench
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \\
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \\
      transformers==5.24.0 peft==0.21.2 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 regex==2026.11.19 \\
      trl==1.16.0 bitsandbytes==0.50.2
    cp ../shared/data/tokenizers/gpt-neox-20b/20B_tokenizer.json ../shared/data/oasst/en_100_tree.jsonl .bench/
    cp -r ../shared/data/model_tokenizers/llama-3.2-3b-instruct ../shared/data/model_tokenizers/qwen2.5-0.5b-instruct \
      .bench/    # the Llama and Qwen shapes only; then add --llama-tokenizer .bench/llama-3.2-3b-instruct
                 # --qwen-tokenizer .bench/qwen2.5-0.5b-instruct to the command below

then `run` with carry [".whl", ".bench"], timeout_s 480, and the command:

    set -o pipefail; export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1
    WANDB_MODE=disabled TORCHINDUCTOR_CACHE_DIR=/tmp/inductor; python3 -m pip install -q --no-index --no-deps
    --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit;
    timeout 465 python3 benchmarks/gpu_throughput.py --tokenizer .bench/20B_tokenizer.json
    --oasst .bench/en_100_tree.jsonl --work /tmp/bench --out $OUT --deadline 430 2>&1 | tee $OUT/log.txt

(one line). Arms are run shape by shape, mode by mode; one that would start with under `--min-arm` seconds left
before `--deadline` (seconds since start) is skipped and shown as such, so the table always prints. $OUT receives
log.txt, results.json and report.md. On this CPU: `--tiny --max-length 512 --batch 4 --samples 64` (with
`--shapes llama-1b qwen-0.5b --llama-tokenizer ... --qwen-tokenizer ...` for the modern ones).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
# Scale-out arms: the modes each runs in, and what it changes in the delphi arm's config.
SCALE_ARMS = {"delphi-8bit": (("lora", "qlora"), {"optim": "adamw_8bit"}),
              "delphi-fsdp": (("qlora", "full"), {"fsdp": "full_shard"}),
              "delphi-zero3": (("qlora", "full"), {"deepspeed": True, "deepspeed_config": "zero3"})}
ARMS = ("delphi", "delphi-padding-free", "trainer-grouped", "trl-padding-free", *SCALE_ARMS)
MODES = ("full", "lora", "qlora")
# architecture, format, tokenizer argument, shape (and, for the modern ones, the attributes their tiny config sets
# otherwise).
SHAPES = {
    "1.4b": dict(architecture="gpt_neox", format="oasst", tokenizer="tokenizer", hidden=2048, layers=24, heads=16),
    "410m": dict(architecture="gpt_neox", format="oasst", tokenizer="tokenizer", hidden=1024, layers=24, heads=16),
    "llama-1b": dict(architecture="llama", format="chat_template", tokenizer="llama_tokenizer", hidden=2048,
                     layers=16, heads=32, num_key_value_heads=8, intermediate_size=8192),
    "qwen-0.5b": dict(architecture="qwen2", format="chat_template", tokenizer="qwen_tokenizer", hidden=896,
                      layers=24, heads=14, num_key_value_heads=2, intermediate_size=4864),
}
TINY = dict(hidden=64, layers=2, heads=4, num_key_value_heads=2, intermediate_size=128)
HYPER = dict(learning_rate=1e-5, adam_beta1=0.9, adam_beta2=0.95, adam_epsilon=1e-12, weight_decay=0.0,
             warmup_steps=0, lr_scheduler_type="linear", max_grad_norm=2.0, num_train_epochs=1)
PEAK_BF16 = {"H100": 989e12, "H200": 989e12}  # dense bf16, vendor datasheet
SEED = 1234


def shape_of(args, shape: str) -> dict:
    return SHAPES[shape] | (TINY if args.tiny else {})


def shape_tokenizer(args, shape: str):
    """The shape's real tokenizer, plus the chat tokens."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    from trainer.tokens import add_chat_tokens

    source = getattr(args, shape_of(args, shape)["tokenizer"])
    if not source:
        sys.exit(f"--shapes {shape} needs --{shape_of(args, shape)['tokenizer'].replace('_', '-')}")
    if shape_of(args, shape)["architecture"] == "gpt_neox":
        tokenizer = PreTrainedTokenizerFast(tokenizer_file=source, eos_token="<|endoftext|>",
                                            bos_token="<|endoftext|>", unk_token="<|endoftext|>")
    else:
        tokenizer = AutoTokenizer.from_pretrained(source)
    add_chat_tokens(tokenizer)
    return tokenizer


def model_dir(args, shape: str) -> Path:
    """The random-weight model with the tokenizer (+ chat tokens), saved once per shape (bf16 on a GPU)."""
    path = Path(args.work) / f"{'tiny-' if args.tiny else ''}{shape}-shape"
    if (path / "config.json").is_file():
        return path
    import torch
    from transformers import AutoModelForCausalLM

    from trainer.tiny import model_config
    from trainer.tokens import padded_vocab_size

    tokenizer = shape_tokenizer(args, shape)
    torch.manual_seed(0)
    spec = shape_of(args, shape)
    config = model_config(spec["architecture"], padded_vocab_size(tokenizer), hidden=spec["hidden"],
                          layers=spec["layers"], heads=spec["heads"], max_positions=2048)
    for key in ("num_key_value_heads", "intermediate_size"):
        if key in spec and spec["architecture"] != "gpt_neox":
            setattr(config, key, spec[key])
    config.bos_token_id, config.eos_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id
    cuda = torch.cuda.is_available()
    with torch.device("cuda" if cuda else "cpu"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16 if cuda else torch.float32)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    del model
    torch.cuda.empty_cache()  # the arms run in other processes: leave them the memory
    return path


def matmul_params(path: Path) -> int:
    """N of the MFU formula: every parameter but the input embedding (the head is a matmul, the lookup is not;
    a head tied to the embedding counts once, as the head)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path))
    embedding, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    tied = head.numel() if head is embedding else 0
    return sum(p.numel() for p in model.parameters()) - embedding.numel() + tied


def delphi_config(args, path: Path, mode: str, output_dir: Path, shape: str, **overrides):
    """Every arm's settings as Delphi's config; `--samples` threads drawn once from the seed (the draw the
    baselines take too: `drawn_samples`)."""
    import torch

    from trainer.config import TrainConfig

    oasst = {"oasst_export": {"input_file_path": str(Path(args.oasst).resolve()), "val_split": 0.05,
                              "size": args.samples}}
    return TrainConfig.of(model_name=str(path), dtype="bf16" if torch.cuda.is_available() else "fp32",
                          residual_dropout=0.0, mode=mode, datasets=[oasst], max_length=args.max_length,
                          prompt_format=shape_of(args, shape)["format"],
                          cache_dir=str(Path(args.work) / "data"), per_device_train_batch_size=args.batch,
                          gradient_accumulation_steps=1, sort_by_length=True, packing=True, use_flash_attention=True,
                          output_dir=str(output_dir), save_steps=10**6, eval_steps=10**6, logging_steps=10**6,
                          report_to="none", log_wandb=False, rng_seed=SEED, **HYPER, **overrides)


def drawn_samples(config, built):
    """The training samples Delphi's sampler draws for this config, for the baselines."""
    from trainer.data.sampler import PerDatasetSampler, draw_counts

    lengths = built.train["length"]
    draw = PerDatasetSampler([lengths], draw_counts(config.data.datasets, [len(lengths)]),
                             seed=config.optim.rng_seed, resample=False)
    return built.train.select(sorted(draw.fixed.tolist()))


class Meter:
    """Counts each micro-batch's tokens on the CPU as the collator makes it, and times the optimizer steps after
    the warm-up; at the last step it writes the result and ends the process (no save is timed or waited for)."""

    def __init__(self, pad_token_id: int, warmup: int, result_path: Path, record: dict):
        self.pad_token_id, self.warmup, self.result_path, self.record = pad_token_id, warmup, result_path, record
        self.batches: list[tuple[int, int, int]] = []  # (trained, real, processed), in collation order
        self.marks: list[tuple] = []  # Delphi's logged (trained, real, processed) at the warm-up and the last step
        self.started = self.seconds = 0.0

    def wrap(self, collate):
        def counted(samples):
            batch = collate(samples)
            labels = batch["labels"]
            self.batches.append((int((labels[..., 1:] != -100).sum()), int((batch["input_ids"] != self.pad_token_id)
                                 .sum()), labels.numel()))
            return batch
        return counted

    def callback(self, logged: bool = False):
        """Times the steps after the warm-up. `logged`: the counts come from Delphi's own (made on the CPU by its
        collator), logged at just those two steps, instead of from a wrapped collator."""
        import torch
        from transformers import TrainerCallback

        meter = self

        class StepEnd(TrainerCallback):
            def on_train_begin(self, args, state, control, model=None, **kwargs):
                meter.record.setdefault("attention", model.config._attn_implementation)

            def on_step_end(self, args, state, control, **kwargs):
                if state.global_step not in (meter.warmup, state.max_steps):
                    return
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                if state.global_step == meter.warmup:
                    meter.started = time.perf_counter()
                else:
                    meter.seconds = time.perf_counter() - meter.started
                    if not logged:
                        meter.finish(state.max_steps, meter.batch_counts(state.max_steps))
                control.should_log = True

            def on_log(self, args, state, control, logs=None, **kwargs):
                if logged and logs and "trained_tokens" in logs:
                    counts = tuple(logs[k] for k in ("trained_tokens", "real_tokens", "processed_tokens"))
                    meter.marks.append(counts)
                    if state.global_step == state.max_steps:
                        meter.finish(state.max_steps, tuple(b - a for a, b in zip(*meter.marks[-2:])))

        return StepEnd()

    def batch_counts(self, steps: int) -> tuple[int, int, int]:
        return tuple(sum(b[i] for b in self.batches[self.warmup:steps]) for i in range(3))

    def finish(self, steps: int, counts: tuple) -> None:
        """Rank 0 writes the result; every rank ends here, at the same step."""
        import torch

        trained, real, processed = counts
        seconds = self.seconds
        peak = (torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available()
                else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20)
        self.record.update(steps=steps, timed_steps=steps - self.warmup, seconds=seconds, trained_tokens=trained,
                           tokens_per_s=trained / seconds, padding=1 - real / processed, peak_gib=peak)
        if int(os.environ.get("RANK", "0")) == 0:
            self.result_path.write_text(json.dumps(self.record))
        os._exit(0)


def run_arm(args) -> None:
    """One arm in this process: load, train until the Meter ends the process."""
    import datasets
    import torch

    from trainer.data.build import build_datasets
    from trainer.tokens import load_tokenizer

    datasets.disable_progress_bars()
    torch.manual_seed(SEED)
    path = model_dir(args, args.shape)
    output_dir = Path(args.work) / "runs" / f"{args.shape}-{args.mode}-{args.arm}"
    shutil.rmtree(output_dir, ignore_errors=True)  # a run would resume from an earlier run's checkpoint
    record = {"arm": args.arm, "mode": args.mode, "shape": args.shape}
    tokenizer = load_tokenizer(str(path), args.max_length)
    meter = Meter(tokenizer.pad_token_id, args.warmup, Path(args.result), record)
    if args.arm.startswith("delphi"):
        from trainer.recipe import run

        extra = {"padding_free": True, "compile": args.compile} if args.arm == "delphi-padding-free" else {}
        extra |= SCALE_ARMS.get(args.arm, ((), {}))[1]
        if extra.get("deepspeed"):
            extra["deepspeed_config"] = torch_adam_json(Path(args.work))
        if extra.get("optim") and args.mode == "qlora":
            extra["optim"] = "paged_adamw_8bit"
        config = delphi_config(args, path, args.mode, output_dir, args.shape, **extra)
        record["plan_gib"] = planned_gib(config, path)
        run(config, callbacks=[meter.callback(logged=True)])
    else:
        config = delphi_config(args, path, args.mode, output_dir, args.shape)
        (built,) = build_datasets(config.data, tokenizer)
        baseline(args.arm, config, tokenizer, drawn_samples(config, built), meter)
    sys.exit(f"{args.arm}: training ended after fewer than --warmup {args.warmup} + 1 optimizer steps; "
             f"raise --samples")


def torch_adam_json(work: Path) -> str:
    """configs/zero3.json with torch's AdamW (DeepSpeed's fused Adam is JIT-compiled, which needs the CUDA
    toolkit on the device)."""
    settings = json.loads((REPO / "configs" / "zero3.json").read_text())
    settings["optimizer"]["params"]["torch_adam"] = True
    path = work / f"zero3-torch-adam-{os.environ.get('RANK', '0')}.json"
    path.write_text(json.dumps(settings))
    return str(path)


def planned_gib(config, path: Path) -> float:
    """The memory plan's per-rank total for this run (what `delphi plan` prints), to set beside the peak."""
    from transformers import AutoConfig

    from trainer.memory_plan import plan_run

    memory = plan_run(config, AutoConfig.from_pretrained(path), int(os.environ.get("WORLD_SIZE", "1")))
    return memory.chosen.device / 2**30


def baseline(arm: str, config, tokenizer, samples, meter) -> None:
    """What a user would run instead, with the same model, adapters, precision and optimizer as Delphi."""
    import torch
    from transformers import AutoModelForCausalLM, DataCollatorForSeq2Seq, Trainer, TrainingArguments
    from transformers.utils import is_flash_attn_2_available

    from trainer.lora import lora_config
    from trainer.models import optimizer_name, quantization_config, weights_dtype

    cuda = torch.cuda.is_available()
    meter.record["attention"] = "flash_attention_2" if is_flash_attn_2_available() else "sdpa"
    mode = config.adapters.mode
    kwargs = dict(attn_implementation=meter.record["attention"],
                  dtype=weights_dtype(config.model, config.adapters, deepspeed=False))
    if mode == "qlora":
        kwargs.update(quantization_config=quantization_config(config.model, config.adapters),
                      device_map={"": 0 if cuda else "cpu"})
    model = AutoModelForCausalLM.from_pretrained(config.model.model_name, **kwargs)
    model.config.use_cache = False
    if mode != "full":
        from peft import get_peft_model, prepare_model_for_kbit_training

        if mode == "qlora":
            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        model = get_peft_model(model, lora_config(config.adapters))
    common = dict(output_dir=config.outputs.output_dir,
                  per_device_train_batch_size=config.optim.per_device_train_batch_size,
                  gradient_accumulation_steps=1, seed=SEED, save_strategy="no", report_to="none", use_cpu=not cuda,
                  bf16=cuda, fp16=False, gradient_checkpointing=False, logging_steps=10**6, disable_tqdm=True,
                  optim=optimizer_name(config.adapters), **HYPER)
    if arm == "trl-padding-free":
        from trl import SFTConfig, SFTTrainer

        # The chat template's assistant turns as TRL's assistant mask, else the prompt-format's reply tokens as a
        # completion mask: what Delphi trains, either way.
        mask = "assistant_masks" if config.data.prompt_format == "chat_template" else "completion_mask"
        data = samples.map(lambda s: {mask: [int(x != -100) for x in s["labels"]]},
                           remove_columns=[c for c in samples.column_names if c != "input_ids"])
        trainer = SFTTrainer(model=model, args=SFTConfig(**common, padding_free=True, max_length=None,
                                                         completion_only_loss=mask == "completion_mask"),
                             train_dataset=data, processing_class=tokenizer, callbacks=[meter.callback()])
    else:
        trainer = Trainer(model=model, args=TrainingArguments(**common, train_sampling_strategy="group_by_length"),
                          train_dataset=samples.select_columns(["input_ids", "labels"]), processing_class=tokenizer,
                          data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True, pad_to_multiple_of=8,
                                                               label_pad_token_id=-100),
                          callbacks=[meter.callback()])
    trainer.data_collator = meter.wrap(trainer.data_collator)
    trainer.train()


def child_env(arm: str) -> dict[str, str]:
    env = dict(os.environ)
    overlay = os.environ.get("TRL_OVERLAY", "/tmp/trl-overlay")
    if arm.startswith("trl") and Path(overlay).is_dir():  # TRL is not among Delphi's dependencies
        env["PYTHONPATH"] = os.pathsep.join(p for p in (overlay, env.get("PYTHONPATH")) if p)
    return env


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokenizer", help="the GPT-NeoX-20B tokenizer.json (1.4b, 410m)")
    parser.add_argument("--oasst", required=True, help="an OASST tree export (en_100_tree.jsonl)")
    parser.add_argument("--llama-tokenizer", help="the Llama 3.2 tokenizer directory (llama-1b)")
    parser.add_argument("--qwen-tokenizer", help="the Qwen2.5 tokenizer directory (qwen-0.5b)")
    parser.add_argument("--tiny", action="store_true", help="every shape shrunk to hidden 64 x 2 layers (CPU)")
    parser.add_argument("--shapes", nargs="+", default=["1.4b", "410m"], choices=list(SHAPES))
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    parser.add_argument("--samples", type=int, default=512, help="threads every arm trains on (one epoch)")
    parser.add_argument("--batch", type=int, default=8, help="samples per micro-batch; delphi-padding-free: x "
                                                             "max_length tokens")
    parser.add_argument("--max-length", type=int, default=2048)
    parser.add_argument("--warmup", type=int, default=2, help="optimizer steps left out of the timing")
    parser.add_argument("--compile", action="store_true", help="delphi-padding-free: compile: true")
    parser.add_argument("--work", default=str(REPO / ".cache" / "bench-gpu"))
    parser.add_argument("--out", help="where results.json and report.md go (default: --work)")
    parser.add_argument("--deadline", type=float, default=430, help="seconds since start by which arms must end")
    parser.add_argument("--arm-timeout", type=float, default=150)
    parser.add_argument("--min-arm", type=float, default=25, help="do not start an arm with less time left")
    parser.add_argument("--arm", help=argparse.SUPPRESS)
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    parser.add_argument("--shape", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.arm:
        run_arm(args)
        return
    started = time.perf_counter()
    shapes = args.shapes
    Path(args.work).mkdir(parents=True, exist_ok=True)
    out = Path(args.out or args.work)
    out.mkdir(parents=True, exist_ok=True)
    for shape in shapes:
        prepare_data(args, model_dir(args, shape), shape)
    results = []
    for shape in shapes:
        params = matmul_params(model_dir(args, shape))
        for mode in args.modes:
            for arm in args.arms:
                if arm in SCALE_ARMS and mode not in SCALE_ARMS[arm][0]:
                    continue
                results.append(run_child(args, shape, mode, arm, started) | {"params": params})
    (out / "results.json").write_text(json.dumps(results, indent=1))
    text = report(results, args)
    (out / "report.md").write_text(text)
    print(text)


def prepare_data(args, path: Path, shape: str) -> None:
    """Builds and caches the tokenized threads once per tokenizer, so the arms only memory-map them."""
    from trainer.data.build import build_datasets
    from trainer.tokens import load_tokenizer

    config = delphi_config(args, path, "full", Path(args.work) / "runs", shape)
    build_datasets(config.data, load_tokenizer(str(path), args.max_length))


def run_child(args, shape: str, mode: str, arm: str, started: float) -> dict:
    record = {"arm": arm, "mode": mode, "shape": shape}
    left = args.deadline - (time.perf_counter() - started)
    if left < args.min_arm:
        return record | {"status": f"skipped: {left:.0f} s left before --deadline"}
    result = Path(args.work) / "results" / f"{shape}-{mode}-{arm}.json"
    result.parent.mkdir(parents=True, exist_ok=True)
    result.unlink(missing_ok=True)
    launcher = [sys.executable]
    if arm in ("delphi-fsdp", "delphi-zero3"):
        import torch

        ranks = torch.cuda.device_count() or 2
        launcher += ["-m", "torch.distributed.run", "--nproc_per_node", str(ranks), "--master_port", "29533"]
    command = [*launcher, __file__, "--arm", arm, "--mode", mode, "--shape", shape, "--result", str(result),
               *(f"--{k.replace('_', '-')}={getattr(args, k)}" for k in ("tokenizer", "oasst", "samples", "batch",
                                                                          "max_length", "warmup", "work")
                 if getattr(args, k) is not None),
               *(f"--{k.replace('_', '-')}={getattr(args, k)}" for k in ("llama_tokenizer", "qwen_tokenizer")
                 if getattr(args, k)),
               *(["--compile"] if args.compile else []), *(["--tiny"] if args.tiny else [])]
    begin = time.perf_counter()
    try:
        done = subprocess.run(command, capture_output=True, text=True, env=child_env(arm),
                              timeout=min(args.arm_timeout, left))
        status = "ok" if result.is_file() else f"failed (exit {done.returncode}): {done.stderr[-1500:]}"
    except subprocess.TimeoutExpired:
        status = f"timeout after {min(args.arm_timeout, left):.0f} s"
    record |= json.loads(result.read_text()) if result.is_file() else {}
    record |= {"status": status, "wall_s": time.perf_counter() - begin}
    line = f"{record.get('tokens_per_s', 0):10.0f} tok/s" if status == "ok" else status.splitlines()[0]
    print(f"[{time.perf_counter() - started:5.0f} s] {shape} {mode:<5} {arm:<17} {line}", file=sys.stderr,
          flush=True)
    if status.startswith("failed"):
        print(status, file=sys.stderr, flush=True)
    return record


def peak_flops() -> float:
    """Dense bf16 peak of this GPU; unknown device or CPU: infinite, so MFU reads 0 rather than a wrong number."""
    import torch

    name = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    return next((v for k, v in PEAK_BF16.items() if k in name), math.inf)


def report(results: list[dict], args) -> str:
    peak = peak_flops()
    device = f"peak {peak / 1e12:.0f} TFLOP/s bf16" if math.isfinite(peak) else "unknown peak: MFU reads 0"
    lines = [f"samples {args.samples}, batch {args.batch} (delphi-padding-free: {args.batch * args.max_length:,} "
             f"tokens), "
             f"max_length {args.max_length}, {args.warmup} warm-up steps untimed; {device}",
             "| shape | mode | arm | attention | trained tok/s | x best baseline | MFU | padding | peak GiB | "
             "plan GiB | timed steps | status |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for shape, mode in dict.fromkeys((r["shape"], r["mode"]) for r in results):
        rows = [r for r in results if (r["shape"], r["mode"]) == (shape, mode)]
        best = max((r.get("tokens_per_s", 0) for r in rows if not r["arm"].startswith("delphi")), default=0)
        for r in rows:
            speed = r.get("tokens_per_s")
            if speed is None:
                lines.append(f"| {shape} | {mode} | {r['arm']} | | | | | | | | | {r['status'].splitlines()[0]} |")
                continue
            mfu = (6 if mode == "full" else 4) * r["params"] * speed / peak
            ratio = f"{speed / best:.2f}x" if best else "-"
            plan = f"{r['plan_gib']:.1f}" if "plan_gib" in r else "-"
            lines.append(f"| {shape} | {mode} | {r['arm']} | {r['attention']} | {speed:,.0f} | {ratio} | {mfu:.1%} | "
                         f"{r['padding']:.1%} | {r['peak_gib']:.1f} | {plan} | {r['timed_steps']} | ok |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
