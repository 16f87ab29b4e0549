"""Experiment sweeps: one YAML file names the base `--configs`, the keys to vary and how, and the metric to rank by.

    python -m trainer.sweep run configs/sweeps/demo-grid.yaml [--dry-run]
    python -m trainer.sweep wandb configs/sweeps/demo-grid.yaml     # the same sweep for `wandb sweep` + `wandb agent`
    python -m trainer.sweep report outputs/sweeps/demo-grid

Every trial is a plain `trainer_sft.py` run in its own directory, started with `--key=value` flags (the form a
wandb agent uses), so a trial can be rerun by hand and resumes like any run. Everything a trial will be given is
checked against the config schema before the first one starts.
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import random
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from trainer.config import REPO_ROOT, ParsedArgs, TrainConfig, build_config, resolve, write_resolved
from trainer.errors import ConfigError, DelphiError

METHODS = ("grid", "random", "bayes")  # bayes: only through wandb's controller
DISTRIBUTIONS = ("choice", "uniform", "log_uniform", "int_uniform")
LAUNCHERS = {
    "python": [],
    "torchrun": ["-m", "torch.distributed.run"],
    "deepspeed": ["-m", "deepspeed.launcher.runner"],
}
# Set per trial by the sweep itself: sweeping them would break the one-directory-per-trial rule or the grouping.
RESERVED_KEYS = ("output_dir", "wandb_group", "wandb_run_name", "wandb_tags")
SWEEP_KEYS = ("name", "configs", "config_files", "fixed", "parameters", "method", "count", "seed", "metric",
              "run_name", "launcher", "launcher_args", "output_dir")
LOG_TAIL_LINES = 40


@dataclass(frozen=True)
class Param:
    key: str
    where: str  # file:line (parameters.key), for errors
    distribution: str  # "grid" (a list of values), or one of DISTRIBUTIONS
    values: tuple = ()  # grid and choice
    low: float = 0.0
    high: float = 0.0

    def draw(self, rng: random.Random) -> Any:
        """One value; floats keep 6 significant digits so names, flags and tags stay readable."""
        if self.distribution in ("grid", "choice"):
            return rng.choice(self.values)
        if self.distribution == "int_uniform":
            return rng.randint(int(self.low), int(self.high))
        if self.distribution == "uniform":
            value = rng.uniform(self.low, self.high)
        else:
            value = math.exp(rng.uniform(math.log(self.low), math.log(self.high)))
        return min(max(float(f"{value:.6g}"), self.low), self.high)

    def wandb(self) -> dict[str, Any]:
        if self.distribution in ("grid", "choice"):
            return {"values": list(self.values)}
        name = {"log_uniform": "log_uniform_values"}.get(self.distribution, self.distribution)
        return {"distribution": name, "min": self.low, "max": self.high}


@dataclass(frozen=True)
class Metric:
    name: str = "eval_loss"  # any logged key: eval_loss (mean over validation sets), eval_<dataset>_loss, loss
    goal: str = "minimize"
    summary: str = "best"  # best: the best value the run logged; final: its last

    @property
    def better(self):
        return min if self.goal == "minimize" else max


@dataclass(frozen=True)
class Sweep:
    name: str
    file: Path
    configs: tuple[str, ...]
    config_files: tuple[Path, ...]
    fixed: dict[str, Any]
    parameters: tuple[Param, ...]
    method: str
    count: int
    seed: int
    metric: Metric
    run_name: str
    launcher: str
    launcher_args: tuple[str, ...]
    output_dir: Path


@dataclass(frozen=True)
class Trial:
    index: int
    name: str
    params: dict[str, Any]
    directory: Path
    config: TrainConfig


# ----------------------------------------------------------------------------------------------------------
# Reading and checking the sweep file

def _key_lines(text: str) -> dict[str, int]:
    """Line of every top-level key and of every key one level down (`parameters.learning_rate`)."""
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    lines: dict[str, int] = {}
    if isinstance(root, yaml.MappingNode):
        for key, value in root.value:
            lines[str(key.value)] = key.start_mark.line + 1
            if isinstance(value, yaml.MappingNode):
                lines.update({f"{key.value}.{k.value}": k.start_mark.line + 1 for k, _ in value.value})
    return lines


def format_value(value: Any) -> str:
    """A value as the trainer's `--key=value` flag takes it (and as a wandb agent writes it)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return str(value)


def check_value(key: str, value: Any, where: str) -> Any:
    """The config schema's verdict on one key and value, naming the sweep file's line if it is wrong.

    Returns the value as the key's declared type (YAML 1.1 reads `3e-4` as a string), `datasets` as written."""
    try:
        config = build_config({key: value}, {key: where})
    except ConfigError as e:
        raise ConfigError(str(e) if where in str(e) else f"{where}: {e}") from None
    return value if key == "datasets" else getattr(config, key)


def _param(key: str, spec: Any, where: str, method: str) -> Param:
    if key in RESERVED_KEYS:
        raise ConfigError(f"{where}: '{key}' is set by the sweep for each trial and cannot be varied")
    if isinstance(spec, list):
        spec = {"values": spec}
    if not isinstance(spec, dict):
        raise ConfigError(f"{where}: expected a list of values or a mapping with 'distribution', got {spec!r}")
    distribution = spec.get("distribution", "choice" if method != "grid" else "grid")
    if method == "grid" and distribution != "grid":
        raise ConfigError(f"{where}: a grid sweep takes a list of values, got distribution '{distribution}'")
    if distribution in ("grid", "choice"):
        values = spec.get("values")
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{where}: 'values' must be a non-empty list, got {values!r}")
        return Param(key, where, distribution, tuple(check_value(key, v, where) for v in values))
    if distribution not in DISTRIBUTIONS:
        raise ConfigError(f"{where}: unknown distribution '{distribution}'; known: {', '.join(DISTRIBUTIONS)}")
    low, high = (check_value(key, spec.get(b), where) if b in spec else None for b in ("min", "max"))
    numeric = (int,) if distribution == "int_uniform" else (int, float)
    if not all(isinstance(b, numeric) and not isinstance(b, bool) for b in (low, high)):
        kind = "integers" if distribution == "int_uniform" else "numbers"
        raise ConfigError(f"{where}: {distribution} needs 'min' and 'max' {kind}, got min={low!r} max={high!r}")
    if not low < high or (distribution == "log_uniform" and low <= 0):
        raise ConfigError(f"{where}: {distribution} needs {'0 < ' if distribution == 'log_uniform' else ''}"
                          f"min < max, got min={low} max={high}")
    return Param(key, where, distribution, low=low, high=high)


def load_sweep(path: Path | str) -> Sweep:
    """Read and check a sweep file; every mistake is a ConfigError naming the file, line and key."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
        data = yaml.safe_load(text)
        lines = _key_lines(text)
    except OSError as e:
        raise ConfigError(f"{path}: cannot read sweep file: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a sweep file is a mapping with 'configs' and 'parameters'")

    def where(key: str) -> str:
        return f"{path}:{lines.get(key, 1)} ({key})"

    for key in data:
        if key not in SWEEP_KEYS:
            raise ConfigError(f"{where(key)}: unknown sweep key '{key}'; known: {', '.join(SWEEP_KEYS)}")
    method = data.get("method", "grid")
    if method not in METHODS:
        raise ConfigError(f"{where('method')}: must be one of {', '.join(METHODS)}, got {method!r}")
    configs, files, launcher_args = (data.get(k) or [] for k in ("configs", "config_files", "launcher_args"))
    for key, value in (("configs", configs), ("config_files", files), ("launcher_args", launcher_args)):
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{where(key)}: must be a list of strings, got {value!r}")
    parameters = data.get("parameters") or {}
    fixed = data.get("fixed") or {}
    for key, value in (("parameters", parameters), ("fixed", fixed)):
        if not isinstance(value, dict):
            raise ConfigError(f"{where(key)}: must be a mapping of config keys, got {value!r}")
    if not parameters:
        raise ConfigError(f"{where('parameters')}: a sweep needs at least one parameter to vary")
    for key, value in fixed.items():
        if key in RESERVED_KEYS:
            raise ConfigError(f"{where('fixed.' + key)}: '{key}' is set by the sweep for each trial")
        fixed[key] = check_value(key, value, where(f"fixed.{key}"))
    count, seed = data.get("count"), data.get("seed", 0)
    if method == "random" and not (isinstance(count, int) and count >= 1):
        raise ConfigError(f"{where('count')}: a random sweep needs 'count', a number of trials >= 1, got {count!r}")
    if not isinstance(seed, int):
        raise ConfigError(f"{where('seed')}: must be an integer, got {seed!r}")
    metric_spec = data.get("metric") or {}
    if not isinstance(metric_spec, dict) or set(metric_spec) - {"name", "goal", "summary"}:
        raise ConfigError(f"{where('metric')}: expected a mapping with name, goal and summary, got {metric_spec!r}")
    metric = Metric(**metric_spec)
    if metric.goal not in ("minimize", "maximize") or metric.summary not in ("best", "final"):
        raise ConfigError(f"{where('metric')}: goal must be minimize or maximize and summary best or final, "
                          f"got goal={metric.goal!r} summary={metric.summary!r}")
    launcher = data.get("launcher", "python")
    if launcher not in LAUNCHERS:
        raise ConfigError(f"{where('launcher')}: must be one of {', '.join(LAUNCHERS)}, got {launcher!r}")
    name = str(data.get("name") or path.stem)
    return Sweep(
        name=name, file=path, configs=tuple(configs),
        config_files=tuple((path.parent / f).resolve() for f in files), fixed=fixed,
        parameters=tuple(_param(k, v, where(f"parameters.{k}"), method) for k, v in parameters.items()),
        method=method, count=count or 0, seed=seed, metric=metric,
        run_name=str(data.get("run_name", "{name}-{index:03d}")), launcher=launcher,
        launcher_args=tuple(launcher_args),
        output_dir=Path(data.get("output_dir") or Path("outputs/sweeps") / name).resolve())


# ----------------------------------------------------------------------------------------------------------
# Trials

def draw_params(sweep: Sweep) -> list[dict[str, Any]]:
    """Grid: every combination, in file order. Random: `count` draws from a generator seeded by `seed`."""
    if sweep.method == "grid":
        keys = [p.key for p in sweep.parameters]
        return [dict(zip(keys, combo)) for combo in itertools.product(*(p.values for p in sweep.parameters))]
    if sweep.method == "bayes":
        raise ConfigError(f"{sweep.file}: method bayes picks each trial from the previous ones' results, which "
                          f"wandb's controller does: run `python -m trainer.sweep wandb {sweep.file}`")
    rng = random.Random(sweep.seed)
    return [{p.key: p.draw(rng) for p in sweep.parameters} for _ in range(sweep.count)]


def trial_overrides(sweep: Sweep, trial_name: str, params: dict[str, Any], directory: Path) -> dict[str, Any]:
    """Fixed values, the trial's values, and where it writes and how wandb groups and tags it."""
    tags = ",".join(f"{k}={format_value(v)}".replace(",", " ")[:64] for k, v in params.items())
    return {**sweep.fixed, **params, "output_dir": str(directory), "wandb_group": sweep.name,
            "wandb_run_name": trial_name, "wandb_tags": tags}


def base_args(sweep: Sweep) -> list[str]:
    args = ["--configs", *sweep.configs]
    for file in sweep.config_files:
        args += ["--config_file", str(file)]
    return args


def plan(sweep: Sweep) -> list[Trial]:
    """Every trial with its fully resolved config, so no mistake surfaces only when its turn comes."""
    trials: list[Trial] = []
    seen: dict[str, int] = {}
    for index, params in enumerate(draw_params(sweep)):
        for p in sweep.parameters:
            check_value(p.key, params[p.key], p.where)
        try:
            name = sweep.run_name.format(index=index, name=sweep.name, **params)
        except (KeyError, ValueError, IndexError) as e:
            raise ConfigError(f"{sweep.file} (run_name): cannot format {sweep.run_name!r}: {e!r}; it may use "
                              f"{{index}}, {{name}} and the parameters' keys") from None
        name = name.replace("/", "_").replace(" ", "_")
        if name in seen:
            raise ConfigError(f"{sweep.file} (run_name): trials {seen[name]} and {index} are both named '{name}'; "
                              f"add {{index}} or more parameters to run_name")
        seen[name] = index
        directory = sweep.output_dir / name
        overrides = trial_overrides(sweep, name, params, directory)
        try:
            config = resolve(ParsedArgs(list(sweep.configs), list(sweep.config_files),
                                        [(k, format_value(v)) for k, v in overrides.items()], {}))
        except ConfigError as e:
            raise ConfigError(f"{sweep.file}: trial {index} ({name}): {e}") from None
        trials.append(Trial(index, name, params, directory, config))
    return trials


def command(sweep: Sweep, trial: Trial) -> list[str]:
    """`python [launcher] trainer_sft.py ARGS`, in the working directory the sweep was started from (where its
    relative paths were checked)."""
    overrides = trial_overrides(sweep, trial.name, trial.params, trial.directory)
    return [sys.executable, *LAUNCHERS[sweep.launcher], *sweep.launcher_args, str(REPO_ROOT / "trainer_sft.py"),
            *base_args(sweep), *(f"--{k}={format_value(v)}" for k, v in overrides.items())]


# ----------------------------------------------------------------------------------------------------------
# Running

STATE_FILE = "trial.json"  # status, attempts, wall time and, for a failed trial, the end of its log


def read_state(directory: Path) -> dict[str, Any]:
    path = directory / STATE_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def _write_state(directory: Path, state: dict[str, Any]) -> None:
    (directory / STATE_FILE).write_text(json.dumps(state, indent=1, default=str))


def run_trial(sweep: Sweep, trial: Trial) -> dict[str, Any]:
    """One attempt. The trainer resumes from the newest checkpoint in the trial's directory by itself."""
    trial.directory.mkdir(parents=True, exist_ok=True)
    state = read_state(trial.directory) or {"name": trial.name, "index": trial.index, "params": trial.params,
                                            "attempts": 0, "wall_seconds": 0.0}
    state.update(status="running", attempts=state["attempts"] + 1)
    _write_state(trial.directory, state)
    write_resolved(trial.config, trial.directory)
    log_path = trial.directory / "train.log"
    started = time.monotonic()
    with log_path.open("a", encoding="utf-8") as log:
        log.write(f"$ {' '.join(command(sweep, trial))}\n")
        log.flush()
        code = subprocess.run(command(sweep, trial), stdout=log, stderr=subprocess.STDOUT,
                              stdin=subprocess.DEVNULL).returncode
    state["wall_seconds"] += time.monotonic() - started
    state.update(status="finished" if code == 0 else "failed", returncode=code)
    state.pop("error", None)
    if code != 0:
        state["error"] = "\n".join(log_path.read_text(encoding="utf-8", errors="replace")
                                   .splitlines()[-LOG_TAIL_LINES:])
    _write_state(trial.directory, state)
    return state


def write_manifest(sweep: Sweep, trials: list[Trial]) -> None:
    """What `report` needs besides the trial directories: the metric and the varied keys."""
    sweep.output_dir.mkdir(parents=True, exist_ok=True)
    (sweep.output_dir / "sweep.json").write_text(json.dumps({
        "name": sweep.name, "file": str(sweep.file), "method": sweep.method,
        "metric": vars(sweep.metric), "parameters": [p.key for p in sweep.parameters],
        "trials": [t.name for t in trials]}, indent=1))


def run_sweep(sweep: Sweep, dry_run: bool = False, retry_failed: bool = False) -> list[dict[str, Any]]:
    """Run every trial not yet finished, in order; a failure is recorded and the next trial starts.

    A trial left `running` (the sweep was killed) resumes; a `failed` one keeps its record unless `retry_failed`:
    its cause (a bad path, a crash) usually needs fixing first."""
    trials = plan(sweep)
    for trial in trials:
        done = read_state(trial.directory)
        if done and done["params"] != json.loads(json.dumps(trial.params)):
            raise ConfigError(f"{trial.directory} holds a trial run with {done['params']}, not {trial.params}: "
                              f"the sweep file changed; give it another name or output_dir")
    if not dry_run:
        write_manifest(sweep, trials)
    states = []
    for trial in trials:
        state = read_state(trial.directory)
        status = state.get("status", "new")
        flags = " ".join(f"--{k}={format_value(v)}" for k, v in trial.params.items())
        if dry_run:
            print(f"[{trial.index}] {trial.name} ({status}): {flags}")
        elif status == "finished" or (status == "failed" and not retry_failed):
            print(f"[{trial.index}] {trial.name}: {status} already, skipped")
        else:
            print(f"[{trial.index}] {trial.name}: {'resuming' if status != 'new' else 'starting'} {flags}",
                  flush=True)
            state = run_trial(sweep, trial)
            print(f"[{trial.index}] {trial.name}: {state['status']} in {state['wall_seconds']:.0f} s"
                  + (f"\n{state['error']}" if state["status"] == "failed" else ""), flush=True)
        states.append(state)
    return states


# ----------------------------------------------------------------------------------------------------------
# wandb

def wandb_config(sweep: Sweep) -> dict[str, Any]:
    """The same sweep for `wandb sweep FILE` + `wandb agent ID` (run from the repository root).

    Fixed values become single-value parameters, so they show in every run's config. `$WANDB_RUN_ID` in
    `--output_dir` is expanded by the trainer: each agent run writes (and resumes) in its own directory. The agent
    learns results only through wandb, so its runs always report there."""
    fixed = {**sweep.fixed, "report_to": "wandb", "log_wandb": True}
    parameters = {k: {"value": v} for k, v in fixed.items()}
    parameters.update({p.key: p.wandb() for p in sweep.parameters})
    return {
        "name": sweep.name,
        "program": "trainer_sft.py",
        "method": sweep.method,
        "metric": {"name": sweep.metric.name, "goal": sweep.metric.goal},
        "parameters": parameters,
        "command": ["${env}", "${interpreter}", "${program}", *base_args(sweep),
                    f"--output_dir={sweep.output_dir}/$WANDB_RUN_ID", f"--wandb_group={sweep.name}", "${args}"],
    }


# ----------------------------------------------------------------------------------------------------------
# Command line

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer.sweep", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run every trial not finished yet, then write the report")
    run.add_argument("sweep_file", type=Path)
    run.add_argument("--dry-run", action="store_true", help="list the trials and their overrides, run nothing")
    run.add_argument("--retry-failed", action="store_true", help="run failed trials again (they resume)")
    export = sub.add_parser("wandb", help="write the equivalent wandb sweep configuration")
    export.add_argument("sweep_file", type=Path)
    export.add_argument("--output", type=Path, help="default: <sweep output_dir>/wandb_sweep.yaml")
    report = sub.add_parser("report", help="table and plots of a sweep directory")
    report.add_argument("sweep_dir", type=Path)
    args = parser.parse_args(argv)
    try:
        if args.command == "report":
            from trainer.sweep_report import write_report

            for path in write_report(args.sweep_dir):
                print(path)
            return 0
        sweep = load_sweep(args.sweep_file)
        if args.command == "wandb":
            out = args.output or sweep.output_dir / "wandb_sweep.yaml"
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(yaml.safe_dump(wandb_config(sweep), sort_keys=False))
            print(f"{out}\nthen, from {REPO_ROOT}: wandb sweep {out} && wandb agent <sweep id>")
            return 0
        states = run_sweep(sweep, dry_run=args.dry_run, retry_failed=args.retry_failed)
        if not args.dry_run:
            from trainer.sweep_report import write_report

            for path in write_report(sweep.output_dir):
                print(path)
        return 1 if any(s.get("status") == "failed" for s in states) else 0
    except DelphiError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
