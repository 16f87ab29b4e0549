"""`delphi eval EXPORT_OR_RUN --tasks ...`: lm-evaluation-harness's HF backend on a training output, one of its
checkpoints, or an export.

The model is loaded as `delphi chat` loads it (adapters merged into their full-precision base), handed to lm-eval's
`HFLM`, and evaluated on the named tasks: lm-eval's own, or local ones (`--include_path DIR` of task YAML files,
which may read a local JSONL). Results go to `<dir>/lm_eval/results-<time>.json` and, when the directory belongs
to a training run with trackers, into those same tracker runs as `lm_eval/<task>/<metric>`. lm-eval is the
optional extra `delphi-trainer[eval]`.
"""
from __future__ import annotations

import importlib.util
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from trainer.errors import ConfigError
from trainer.schema import comma_list, nearest

RESULTS_DIR = "lm_eval"


def require_lm_eval() -> None:
    if importlib.util.find_spec("lm_eval") is None:
        raise ConfigError("delphi eval needs lm-evaluation-harness, which is not installed: pip install "
                          "'delphi-trainer[eval]' (or lm-eval)")


def task_manager(tasks: Sequence[str], include_path: Path | None):
    """lm-eval's task index; only the local tasks when `include_path` holds every task asked for (indexing all
    of lm-eval's takes half a minute). An unknown task is one line naming it."""
    from lm_eval.tasks import TaskManager

    if include_path is not None:
        if not include_path.is_dir():
            raise ConfigError(f"--include_path {include_path}: not a directory of lm-eval task YAML files")
        local = TaskManager(include_path=str(include_path), include_defaults=False)
        if all(task in local.all_tasks for task in tasks):
            return local
    manager = TaskManager(include_path=str(include_path) if include_path else None)
    unknown = [task for task in tasks if task not in manager.all_tasks]
    if unknown:
        where = f" (nor in {include_path})" if include_path else ""
        raise ConfigError(f"--tasks: unknown lm-eval task{'s' if len(unknown) > 1 else ''} "
                          f"{', '.join(repr(t) for t in unknown)}{nearest(unknown[0], manager.all_tasks)}: not one "
                          f"of lm-eval's {len(manager.all_tasks):,} tasks{where}")
    return manager


@dataclass(frozen=True)
class HarnessResult:
    path: Path  # the results file written
    metrics: dict[str, float]  # "task/metric" -> value


def run_directory(source: Path) -> Path | None:
    """The training run a source belongs to (for its trackers): a run, a checkpoint's run, or an export's source."""
    from trainer.inference import EXPORT_RECORD

    if (source / EXPORT_RECORD).is_file():
        try:
            source = Path(json.loads((source / EXPORT_RECORD).read_text(encoding="utf-8"))["source"])
        except (ValueError, KeyError, TypeError):
            return None
    if source.name.startswith("checkpoint-"):
        source = source.parent
    return source if (source / "resolved_config.yaml").is_file() else None


def evaluate(source: Path | str, tasks: Sequence[str], include_path: Path | None = None, limit: int | None = None,
             num_fewshot: int | None = None, batch_size: int = 8, trust_remote_code: bool = False,
             base_model: str | None = None) -> HarnessResult:
    source = Path(source)
    require_lm_eval()
    if not tasks:
        raise ConfigError("--tasks: name at least one lm-eval task (comma list)")
    if limit is not None and limit < 1:
        raise ConfigError(f"--limit must be at least 1, got {limit}")
    manager = task_manager(tasks, include_path)
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    from trainer.inference import load_for_inference

    loaded = load_for_inference(source, trust_remote_code=trust_remote_code, base_model=base_model)
    print("\n".join(loaded.notes), flush=True)
    lm = HFLM(pretrained=loaded.model, tokenizer=loaded.tokenizer, batch_size=batch_size)
    results = simple_evaluate(model=lm, tasks=list(tasks), task_manager=manager, limit=limit,
                              num_fewshot=num_fewshot, log_samples=False)
    metrics = {f"lm_eval/{task}/{name.split(',')[0]}": float(value)
               for task, figures in results["results"].items() for name, value in figures.items()
               if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)}
    out = source / RESULTS_DIR / f"results-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {"source": str(source.resolve()), "tasks": list(tasks), "limit": limit, "num_fewshot": num_fewshot,
              "results": results["results"], "versions": results.get("versions"), "n-shot": results.get("n-shot")}
    out.write_text(json.dumps(record, indent=1, default=str), encoding="utf-8")
    _to_trackers(source, metrics)
    return HarnessResult(out, metrics)


def _to_trackers(source: Path, metrics: dict[str, Any]) -> None:
    """Into the training run's own tracker runs (those it recorded), as one-off figures."""
    from trainer.inference import read_resolved_config
    from trainer.tracking import open_trackers

    run = run_directory(source)
    config = read_resolved_config(run) if run else None
    if config is None:
        return
    for tracker in open_trackers(config.logging, run, config.flat(), reopen=True):
        tracker.summary(metrics, 0)
        tracker.finish()
        print(f"lm-eval results added to the run's {tracker.name} run", flush=True)


def parse_args(argv: list[str]):
    from trainer.cli import ArgumentParser

    p = ArgumentParser(prog="delphi eval", description=__doc__)
    p.add_argument("source", help="a training output_dir, one of its checkpoint-N, or an export directory")
    p.add_argument("--tasks", required=True, help="comma list of lm-eval task names")
    p.add_argument("--include_path", type=Path, help="a directory of local lm-eval task YAML files")
    p.add_argument("--limit", type=int, help="at most this many documents per task")
    p.add_argument("--num_fewshot", type=int, help="few-shot examples per prompt; none: each task's own")
    p.add_argument("--batch_size", type=int, default=8, help="lm-eval's batch size")
    p.add_argument("--base_model", help="an adapter's base, when it has moved")
    p.add_argument("--trust_remote_code", action="store_true", help="run code shipped in the model directories")
    return p.parse_args(argv)


def main(argv: list[str]) -> int:
    """`delphi eval`; bad input raises DelphiError (the `delphi` wrapper prints it and exits with 2)."""
    args = parse_args(argv)
    source = Path(args.source)
    if not source.is_dir():
        raise ConfigError(f"{source}: no such directory; expected a training output, a checkpoint or an export")
    result = evaluate(source, comma_list(args.tasks), args.include_path, args.limit, args.num_fewshot,
                      args.batch_size, args.trust_remote_code, args.base_model)
    for key, value in result.metrics.items():
        print(f"{key} {value:.4f}")
    print(f"results written to {result.path}")
    return 0
