"""A sweep's trials: drawn, resolved into full configs, run one after another as plain training runs in their own
directories, each with a `trial.json` saying how it went."""
from __future__ import annotations

import itertools
import json
import random
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainer.config import ParsedArgs, TrainConfig, resolve, write_resolved
from trainer.errors import ConfigError
from trainer.sweep.spec import LAUNCHERS, Sweep, check_value, format_value


@dataclass(frozen=True)
class Trial:
    index: int
    name: str
    params: dict[str, Any]
    directory: Path
    config: TrainConfig


def draw_params(sweep: Sweep) -> list[dict[str, Any]]:
    """Grid: every combination, in file order. Random: `count` draws from a generator seeded by `seed`."""
    if sweep.method == "grid":
        keys = [p.key for p in sweep.parameters]
        return [dict(zip(keys, combo)) for combo in itertools.product(*(p.values for p in sweep.parameters))]
    if sweep.method == "bayes":
        raise ConfigError(f"{sweep.file}: method bayes picks each trial from the previous ones' results, which "
                          f"wandb's controller does: run `delphi sweep wandb {sweep.file}`")
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
        name = name.replace("/", "_").replace("\\", "_").replace(" ", "_")
        if name in ("", ".", ".."):
            raise ConfigError(f"{sweep.file} (run_name): {sweep.run_name!r} names trial {index} {name!r}, which is not "
                              f"a directory of its own inside the sweep's output_dir; use {{index}} or parameters")
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
    """`python [launcher LAUNCHER_ARGS] -m trainer train ARGS`, in the working directory the sweep was started
    from (where its relative paths were checked)."""
    overrides = trial_overrides(sweep, trial.name, trial.params, trial.directory)
    launch = []
    for part in LAUNCHERS[sweep.launcher]:
        launch += list(sweep.launcher_args) if part == "{args}" else [part]
    return [sys.executable, *launch, *base_args(sweep), *(f"--{k}={format_value(v)}" for k, v in overrides.items())]


LOG_TAIL_LINES = 40
STATE_FILE = "trial.json"  # status, attempts, wall time and, for a failed trial, the end of its log


def read_state(directory: Path) -> dict[str, Any]:
    path = directory / STATE_FILE
    if not path.is_file():
        return {}
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path}: not a readable trial state ({e}); delete it to run the trial again (its "
                          f"checkpoints are kept and resumed)") from None
    if not isinstance(state, dict) or not isinstance(state.get("params", {}), dict) or \
            not isinstance(state.get("attempts", 0), int):
        raise ConfigError(f"{path}: not a trial state (expected a JSON object with params and attempts); delete "
                          f"it to run the trial again")
    return state


def _write_state(directory: Path, state: dict[str, Any]) -> None:
    """Whole or not at all: written beside and renamed, so a killed sweep never leaves half a file."""
    tmp = directory / f".{STATE_FILE}.tmp"
    tmp.write_text(json.dumps(state, indent=1, default=str))
    tmp.replace(directory / STATE_FILE)


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
