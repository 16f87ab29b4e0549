"""The `datasets:` list: each entry a bare kind name or `{name: {options}}`, the options every kind has
(`DatasetConfig`) and the kind's own (declared in its module, `trainer/data/kinds/`), checked together."""
from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from typing import Any

from trainer.data.kinds import KINDS
from trainer.errors import ConfigError
from trainer.schema import build, check, fields_of, nearest, option


@dataclass(frozen=True)
class DatasetConfig:
    """One entry of the `datasets:` list: the options every kind has, plus the kind's own (`options`)."""

    name: str = option("", "the dataset kind")
    input_file_path: str | None = option(None, "local file or directory of shards: JSON/JSONL (.gz, .zst), Parquet, "
                                               "Arrow; relative: cache_dir, cwd, repository")
    hub_name: str | None = option(None, "hub dataset, used without input_file_path; none: the kind's")
    hub_config: str | None = option(None, "the hub dataset's configuration (load_dataset's name)")
    hub_split: str | None = option(None, "the hub dataset's split to read; none: every split, joined")
    streaming: bool = option(False, "read the hub dataset as it downloads instead of downloading it first")
    val_split: float | None = option(None, "held-out share; none: the kind's")
    fraction: float = option(1.0, "share of the training split to use (per epoch with use_custom_sampler)")
    size: int | None = option(None, "number of training samples to use instead of a fraction")
    manual_seed: int = option(287631038922, "split seed (OASST's)")
    skip_bad_lines: bool = option(False, "skip and count malformed lines instead of stopping at the first")
    eval_only: bool = option(False, "never trained on: the whole set is a validation set (measures forgetting)")
    eval_prompts: tuple[str, ...] | None = option(None, "the prompts of its samples at every evaluation; none: a "
                                                        "seeded pick of its validation samples' prompts")
    options: Any = None  # the kind's options object (`DatasetKind.options`), None for kinds without any

    def __post_init__(self) -> None:
        problems = []
        if not 0.0 <= self.effective_val_split < 1.0:
            problems.append(("val_split", f"must be in [0, 1), got {self.val_split}"))
        if not 0.0 < self.fraction <= 1.0:
            problems.append(("fraction", f"must be in (0, 1], got {self.fraction}"))
        if self.size is not None and self.size < 1:
            problems.append(("size", f"must be at least 1, got {self.size}"))
        if self.size is not None and self.fraction != 1.0:
            problems.append(("size", "give 'fraction' or 'size', not both"))
        if not 0 <= self.manual_seed < 2**64:
            problems.append(("manual_seed", f"must be in 0..2**64-1, got {self.manual_seed}"))
        if self.eval_prompts is not None and not all(p.strip() for p in self.eval_prompts):
            problems.append(("eval_prompts", f"must be a list of non-empty strings, got {list(self.eval_prompts)!r}"))
        if self.input_file_path:
            problems += [(key, "applies to hub datasets; this entry reads input_file_path")
                         for key in ("hub_config", "hub_split", "streaming") if getattr(self, key)]
        check(problems)

    @classmethod
    def of(cls, name: str, **values: Any) -> DatasetConfig:
        """An entry from Python values, checked as a YAML entry would be (kind options given flat)."""
        return parse_datasets([{name: values}], "DatasetConfig.of")[0]

    @property
    def kind(self):
        return KINDS[self.name]

    @property
    def effective_val_split(self) -> float:
        return self.kind.val_split if self.val_split is None else self.val_split

    @property
    def effective_hub_name(self) -> str | None:
        return self.hub_name or self.kind.hub_name

    def option_items(self) -> dict[str, Any]:
        """Every option of the entry, the kind's own included, for cache keys, reports and resolved configs."""
        common = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "options"}
        return common | (dataclasses.asdict(self.options) if self.options is not None else {})


COMMON_DATASET_OPTIONS = tuple(f for f in fields_of(DatasetConfig) if f not in ("name", "options"))


def kind_options(name: str) -> tuple[str, ...]:
    cls = KINDS[name].options
    return tuple(fields_of(cls)) if cls else ()


def parse_datasets(items: Any, where: str) -> tuple[DatasetConfig, ...]:
    """`datasets:` entries are a bare name (`- alpaca`) or a one-key mapping (`- oasst_export: {lang: en}`)."""
    if items is None:
        return ()
    if not isinstance(items, (list, tuple)):
        raise ConfigError(f"{where}: 'datasets' must be a list of dataset entries, got {items!r}")
    out, problems = [], []
    for i, item in enumerate(items):
        here = f"{where}: datasets[{i}]"
        if isinstance(item, DatasetConfig):
            out.append(item)
            continue
        if isinstance(item, str):
            name, options = item, {}
        elif isinstance(item, dict) and len(item) == 1:
            (name, options), = item.items()
            options = options or {}
        elif isinstance(item, dict) and sum(v is None for v in item.values()) == 1 and \
                next(k for k, v in item.items() if v is None) in KINDS:
            # The model card's YAML: options indented at the name's own column parse as siblings of it.
            name = next(k for k, v in item.items() if v is None)
            options = {k: v for k, v in item.items() if k != name}
            print(f"warning: {here}: the options of '{name}' ({', '.join(options)}) sit at the same indentation "
                  f"as '{name}:'; read them as its options (indent them one level deeper to silence this)",
                  file=sys.stderr)
        else:
            problems.append(f"{here}: expected a dataset name or a mapping '{{name: {{options}}}}', got {item!r}")
            continue
        if name not in KINDS:
            problems.append(f"{here}: unknown dataset '{name}'{nearest(str(name), KINDS)}; known: {', '.join(KINDS)}")
            continue
        if not isinstance(options, dict):
            problems.append(f"{here}: options of '{name}' must be a mapping, got {options!r}")
            continue
        entry, entry_problems = _dataset_entry(name, options, f"{here} ({name})")
        problems += entry_problems
        if entry is not None:
            out.append(entry)
    if problems:
        raise ConfigError("\n".join(problems))
    return tuple(out)


def _dataset_entry(name: str, options: dict[str, Any], here: str) -> tuple[DatasetConfig | None, list[str]]:
    own = kind_options(name)
    common, specific, problems = {}, {}, []
    for key, value in options.items():
        if key in COMMON_DATASET_OPTIONS:
            common[key] = value
        elif key in own:
            specific[key] = value
        else:
            other = [k for k in KINDS if key in kind_options(k)]
            hint = f"; it applies to {', '.join(other)} only" if other else nearest(key, COMMON_DATASET_OPTIONS + own)
            problems.append(f"{here}: unknown option '{key}'{hint}")
    kind_cls = KINDS[name].options
    extra = None
    if kind_cls is not None:
        extra, found = build(kind_cls, specific, lambda _key: here)
        problems += found
    entry, found = build(DatasetConfig, {"name": name, **common}, lambda _key: here)
    problems += found
    if problems or entry is None:
        return None, problems
    return dataclasses.replace(entry, options=extra), []

