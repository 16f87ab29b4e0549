"""A sweep file: the base `--configs`, the keys to vary and how, the metric to rank by; read and checked against
the config schema, every mistake named by the file's line and key."""
from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from trainer.config import build_config
from trainer.errors import ConfigError

METHODS = ("grid", "random", "bayes")  # bayes: only through wandb's controller
DISTRIBUTIONS = ("choice", "uniform", "log_uniform", "int_uniform")
# How each launcher starts `python -m trainer train` (Delphi installed, or the sweep started in a checkout).
LAUNCHERS = {
    "python": ["-m", "trainer", "train"],
    "torchrun": ["-m", "torch.distributed.run", "{args}", "-m", "trainer", "train"],
    "deepspeed": ["-m", "deepspeed.launcher.runner", "{args}", "--module", "trainer", "train"],
}
# Set per trial by the sweep itself: sweeping them would break the one-directory-per-trial rule or the grouping.
RESERVED_KEYS = ("output_dir", "wandb_group", "wandb_run_name", "wandb_tags")
SWEEP_KEYS = ("name", "configs", "config_files", "fixed", "parameters", "method", "count", "seed", "metric",
              "run_name", "launcher", "launcher_args", "output_dir")


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


# ----------------------------------------------------------------------------------------------------------
# Reading and checking the sweep file

def _key_lines(text: str, path: Path) -> dict[str, int]:
    """Line of every top-level key and of every key one level down (`parameters.learning_rate`); a key given twice
    at either level (YAML keeps the last without a word) is refused, naming both lines."""
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    lines: dict[str, int] = {}

    def add(name: str, node: yaml.Node) -> None:
        if name in lines:
            raise ConfigError(f"{path}:{node.start_mark.line + 1}: '{name}' given twice (first at line "
                              f"{lines[name]}); keep one")
        lines[name] = node.start_mark.line + 1

    if isinstance(root, yaml.MappingNode):
        for key, value in root.value:
            add(str(key.value), key)
            if isinstance(value, yaml.MappingNode):
                for k, _ in value.value:
                    add(f"{key.value}.{k.value}", k)
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
    return value if key == "datasets" else config.flat()[key]


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
        lines = _key_lines(text, path)
        data = yaml.safe_load(text)
    except OSError as e:
        raise ConfigError(f"{path}: cannot read sweep file: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte 0x{e.object[e.start]:02x}); sweep files must be "
                          f"UTF-8") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f":{mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}{at}: not valid YAML: {getattr(e, 'problem', None) or e}") from None
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
    both = sorted(set(fixed) & set(parameters))
    if both:
        raise ConfigError(f"{where('parameters.' + both[0])}: '{both[0]}' is both varied (parameters) and fixed "
                          f"(line {lines.get('fixed.' + both[0])}); keep one")
    for key, value in fixed.items():
        if key in RESERVED_KEYS:
            raise ConfigError(f"{where('fixed.' + key)}: '{key}' is set by the sweep for each trial")
        fixed[key] = check_value(key, value, where(f"fixed.{key}"))
    count, seed = data.get("count"), data.get("seed", 0)
    if method == "grid" and count is not None:
        raise ConfigError(f"{where('count')}: a grid sweep runs every combination of the parameters' values; 'count' "
                          f"applies to random sweeps (method: random)")
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
