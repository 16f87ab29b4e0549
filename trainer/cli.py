"""`delphi`: one command for everything, with one argument style (`--key value`, `--key=value`; dashes and
underscores alike) and one error wrapper (a `DelphiError` is one `error: ...` line and exit code 2).

    delphi train  --configs defaults demo-data tiny-pythia [--key value ...]    (= python trainer_sft.py ...)
    delphi data   --configs ... [--examples N] [--dump FILE] [--rebuild]       (= python -m trainer.data ...)
    delphi plan   --configs ... [--ranks N] [--ranks_per_node N]              (memory per rank; loads no weights)
    delphi export RUN_DIR EXPORT_DIR [--target hf|ipu] [--verify]             (= python -m trainer.export ...)
    delphi chat   --model DIR [--temperature 0] [--k 5]                       (= python -m trainer.chat ...)
    delphi sweep  run|wandb|report ...                                        (= python -m trainer.sweep ...)

`torchrun --nproc_per_node 8 -m trainer train ...` and `deepspeed --module trainer train ...` launch the same
training on many processes, from any directory once Delphi is installed.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Callable, Sequence

from trainer.errors import ConfigError, DelphiError
from trainer.schema import dashes_to_underscores

USAGE = __doc__.split("\n\n")[1]


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """The description as written; an option's default after its help, where it has one worth showing."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default not in (None, False, argparse.SUPPRESS) and "%(default)" not in text:
            text += " (default: %(default)s)"
        return text


class ArgumentParser(argparse.ArgumentParser):
    """argparse for the non-config commands, with the same spelling rules as the config flags, defaults in
    `--help`, and errors that go through the one wrapper."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, formatter_class=HelpFormatter, **kwargs)

    def parse_args(self, args=None, namespace=None):
        return super().parse_args(dashes_to_underscores(sys.argv[1:] if args is None else args), namespace)

    def error(self, message: str):
        raise ConfigError(f"{self.prog}: {message} (see {self.prog} --help)")


def wants_help(argv: Sequence[str]) -> bool:
    return any(a in ("-h", "--help") for a in argv)


def train_command(argv: list[str]) -> int:
    from trainer.config import resolve, split_argv
    from trainer.help import config_help

    if wants_help(argv):
        print(config_help("delphi train", argv, extra={
            "--local_rank N": "the rank the deepspeed launcher appends (OASST's flag); it must match LOCAL_RANK, "
                              "which deepspeed and torchrun set and Delphi reads"}))
        return 0
    from trainer.recipe import run

    args = split_argv(argv, extra_options={"local_rank": True})
    check_local_rank(args.extra.get("local_rank"), os.environ.get("LOCAL_RANK"))
    run(resolve(args))
    return 0


def check_local_rank(flag: str | None, environment: str | None) -> None:
    """OASST's `--local_rank N`: the launchers pass the rank both as this flag and as LOCAL_RANK, which is what
    Delphi (through accelerate) reads; a flag that disagrees with it, or a rank without a launcher, is an error
    rather than a value silently ignored. -1 is OASST's "not distributed"."""
    if flag is None or flag == "-1":
        return
    if not flag.isdigit():
        raise ConfigError(f"command line --local_rank: expected a rank (0 or more, or -1), got {flag!r}")
    if environment is None and flag != "0":
        raise ConfigError(f"command line --local_rank {flag}: no launcher set LOCAL_RANK; start the ranks with "
                          f"torchrun or deepspeed, which pass it")
    if environment is not None and environment != flag:
        raise ConfigError(f"command line --local_rank {flag} disagrees with LOCAL_RANK={environment} from the "
                          f"launcher")


DATA_OPTIONS = {"examples": True, "dump": True, "rebuild": False}


def data_command(argv: list[str]) -> int:
    """Builds (or loads from cache) every dataset of the config, prints the data report, writes it as JSON with
    the resolved config into `output_dir`, and optionally dumps every processed sample as JSONL."""
    import json

    from trainer.config import resolve, split_argv, write_resolved
    from trainer.help import config_help

    if wants_help(argv):
        print(config_help("delphi data", argv, extra={
            "--examples N": "rendered examples per dataset, trained spans between ⟦ and ⟧ (default 2)",
            "--dump FILE": "write every processed sample (text, input_ids, labels) as JSONL",
            "--rebuild": "tokenize again even if the cache holds the datasets"}))
        return 0
    args = split_argv(argv, DATA_OPTIONS)
    examples = args.extra.get("examples", "2")
    if not str(examples).isdigit():
        raise ConfigError(f"--examples must be a number of samples (0 or more), got {examples!r}")
    dump = Path(args.extra["dump"]) if "dump" in args.extra else None
    if dump is not None and (dump.is_dir() or not dump.parent.is_dir()):
        raise ConfigError(f"--dump {dump}: " + ("is a directory; give a file name" if dump.is_dir() else
                                                f"the directory {dump.parent} does not exist"))
    config = resolve(args)
    if not config.data.datasets:
        raise ConfigError("the config names no datasets: add a section with a `datasets:` list to --configs")
    import datasets

    from trainer.data.build import build_datasets
    from trainer.data.report import dataset_figures, format_report, write_dump
    from trainer.files import check_writable_dir
    from trainer.formats import FORMATS
    from trainer.resume import holds_a_run
    from trainer.tokens import load_tokenizer

    check_writable_dir(config.outputs.output_dir, "output_dir")
    datasets.disable_progress_bars()
    fmt_cls = FORMATS[config.data.prompt_format]
    tokenizer = load_tokenizer(config.model.tokenizer, format_tokens=fmt_cls.required_tokens,
                               trust_remote_code=config.model.trust_remote_code, chat_tokens=fmt_cls.adds_chat_tokens)
    built = build_datasets(config.data, tokenizer, rebuild=args.extra.get("rebuild", False))
    figures = [dataset_figures(b, config) for b in built]
    print(format_report(built, figures, tokenizer, int(examples)))
    out = Path(config.outputs.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "data_report.json").write_text(json.dumps(dict(zip((b.name for b in built), figures)), indent=1))
    if holds_a_run(out):  # its resolved config is the run's own, listed in its completion marker
        print(f"report written to {out}/ (the resolved config of the training run there is left as it is)")
    else:
        write_resolved(config, out)
        print(f"report and resolved config written to {out}/")
    if dump is not None:
        print(f"{write_dump(dump, built, tokenizer):,} samples dumped to {dump}")
    return 0


PLAN_OPTIONS = {"ranks": True, "ranks_per_node": True}


def plan_command(argv: list[str]) -> int:
    """The memory plan of a configured run, from config.json alone (the model is built on the meta device): bytes
    per rank under the configured strategy and the others, against this machine's memory."""
    from trainer.config import resolve, split_argv
    from trainer.help import config_help

    if wants_help(argv):
        print(config_help("delphi plan", argv, extra={
            "--ranks N": "the ranks the run will have (default: WORLD_SIZE, else 1)",
            "--ranks_per_node N": "ranks sharing one host's memory (default: all of them, at most LOCAL_WORLD_SIZE)"}))
        return 0
    args = split_argv(argv, PLAN_OPTIONS)
    ranks = _count(args.extra.get("ranks", os.environ.get("WORLD_SIZE", "1")), "ranks")
    per_node = _count(args.extra["ranks_per_node"], "ranks_per_node") if "ranks_per_node" in args.extra else None
    config = resolve(args)
    import torch

    from trainer.memory_plan import plan_run
    from trainer.models import check_model_source, choose_attention
    from trainer.strategy import Strategy, check_host_memory, check_strategy

    source = check_model_source(config.model, config.adapters)
    strategy = Strategy.of(config.optim)
    check_strategy(config, strategy, torch.cuda.is_available())
    eager = choose_attention(config.model, source, config.data.padding_free)[0] == "eager"
    memory = plan_run(config, source.hf_config, ranks, eager, per_node)
    print(f"strategy: {strategy.describe()}")
    print(memory.describe())
    check_host_memory(memory)
    return 0


def _count(value: str, name: str) -> int:
    if not str(value).isdigit() or int(value) < 1:
        raise ConfigError(f"--{name} must be a whole number of at least 1, got {value!r}")
    return int(value)


def export_command(argv: list[str]) -> int:
    from trainer.export.cli import main

    return main(argv)


def chat_command(argv: list[str]) -> int:
    from trainer.chat import main

    return main(argv)


def sweep_command(argv: list[str]) -> int:
    from trainer.sweep.cli import main

    return main(argv)


COMMANDS: dict[str, Callable[[list[str]], int]] = {
    "train": train_command, "data": data_command, "plan": plan_command, "export": export_command,
    "chat": chat_command,
    "sweep": sweep_command,
}


def guarded(command: Callable[[list[str]], int], argv: list[str]) -> int:
    """The one error wrapper: bad input is one line on stderr and exit code 2, never a traceback; a run stopped by
    a signal exits with the shell's code for it (130 for Ctrl-C); a disk that fills up anywhere is one line too."""
    from trainer.disk_space import free_bytes, is_disk_full, size_text

    try:
        return command(argv)
    except DelphiError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("error: interrupted (Ctrl-C); what was saved is whole (saves are complete or absent), so the same "
              "command can be run again", file=sys.stderr)
        return 130
    except OSError as e:
        if not is_disk_full(e) or not e.filename:
            raise
        where = Path(e.filename).parent
        print(f"error: the disk is full: writing {e.filename} failed with {size_text(free_bytes(where))} left; "
              f"free space and run the command again", file=sys.stderr)
        return 2


def main(argv: Sequence[str] | None = None) -> int:
    from trainer import compat

    compat.quiet_library_messages()  # before any command imports transformers' Trainer or peft
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(f"usage: delphi COMMAND [options]   (delphi COMMAND --help for each)\n\n{USAGE}")
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        from trainer.schema import nearest

        print(f"error: unknown command '{name}'{nearest(name, COMMANDS)}; commands: {', '.join(COMMANDS)}",
              file=sys.stderr)
        return 2
    return guarded(COMMANDS[name], rest)
